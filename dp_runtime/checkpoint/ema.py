"""Loading a diffusers ``EMAModel.state_dict()`` onto a policy."""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from ..errors import CheckpointError


def load_ema_state(model: nn.Module, ema_state: Mapping[str, Any]) -> dict[str, Any]:
    """Copy ``shadow_params`` (in ``model.parameters()`` order) into ``model``.

    Returns the EMA settings (decay, optimization_step, power, ...) for the manifest.
    """
    if "shadow_params" not in ema_state:
        raise CheckpointError("EMA state has no 'shadow_params'; expected diffusers EMAModel.state_dict()")
    params = list(model.parameters())
    shadow = ema_state["shadow_params"]
    if len(shadow) != len(params):
        raise CheckpointError(f"EMA state has {len(shadow)} shadow params, model has {len(params)}")
    names = [n for n, _ in model.named_parameters()]
    for name, p, s in zip(names, params, shadow):
        if tuple(p.shape) != tuple(s.shape):
            raise CheckpointError(f"EMA shadow param for {name!r} has shape {tuple(s.shape)}, "
                                  f"model expects {tuple(p.shape)}")
    with torch.no_grad():
        for p, s in zip(params, shadow):
            p.copy_(s.to(p.dtype))
    return {k: ema_state[k] for k in ("decay", "min_decay", "optimization_step", "update_after_step",
                                      "use_ema_warmup", "inv_gamma", "power") if k in ema_state}
