"""BatchNorm -> GroupNorm conversion and the running-statistics guard.

EMA averages parameters, not the running statistics BatchNorm keeps in
buffers, so an EMA policy with BatchNorm normalizes with statistics that never
matched its weights. These helpers remove such layers and prove they are gone.
"""
from __future__ import annotations

from typing import Iterable, Mapping

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm, _LazyNormBase
from torch.nn.modules.instancenorm import _InstanceNorm

from ..errors import BatchNormError

RUNNING_STAT_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def replace_bn_with_gn(module: nn.Module, features_per_group: int = 16) -> nn.Module:
    """Replace every BatchNorm in ``module`` (recursively, in place) with GroupNorm.

    Each GroupNorm gets ``num_features // features_per_group`` groups (at least 1),
    as diffusion_policy's helper does. Returns ``module``.
    """
    for name, child in list(module.named_children()):
        if isinstance(child, _BatchNorm):
            groups = max(1, child.num_features // features_per_group)
            setattr(module, name, nn.GroupNorm(groups, child.num_features))
        else:
            replace_bn_with_gn(child, features_per_group)
    return module


def _keeps_running_stats(module: nn.Module) -> bool:
    if isinstance(module, (_BatchNorm, _LazyNormBase)) and not isinstance(module, _InstanceNorm):
        return True
    if isinstance(module, _InstanceNorm) and module.track_running_stats:
        return True
    own_buffers = {name for name, _ in module.named_buffers(recurse=False)}
    return bool(own_buffers & {"running_mean", "running_var"})


def running_stats_layers(module: nn.Module) -> list[tuple[str, str]]:
    """Every layer of ``module`` that keeps running statistics, as (qualified_name, type_name).

    Judged by type and by buffers, never by name: a GroupNorm still called
    ``bn1`` is fine, a custom module with a ``running_mean`` buffer is not.
    """
    return [(name or "<root>", type(m).__name__)
            for name, m in module.named_modules() if _keeps_running_stats(m)]


def running_stats_keys(state_dict_keys: Iterable[str]) -> list[tuple[str, str]]:
    """Layers betrayed by a raw state dict: any running_mean/var/num_batches_tracked key."""
    layers: dict[str, str] = {}
    for key in state_dict_keys:
        prefix, _, leaf = key.rpartition(".")
        if leaf in RUNNING_STAT_BUFFERS:
            layers.setdefault(prefix or "<root>", f"state-dict buffer {leaf}")
    return sorted(layers.items())


def norm_inventory(module: nn.Module) -> list[dict]:
    """All normalization layers of ``module`` for the bundle manifest."""
    out = []
    norm_types = (_BatchNorm, _InstanceNorm, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm, nn.RMSNorm)
    for name, m in module.named_modules():
        kind = type(m).__name__
        if isinstance(m, norm_types) or _keeps_running_stats(m):
            out.append({"name": name, "type": kind, "running_stats": _keeps_running_stats(m)})
    return out


def assert_no_running_stats(module: nn.Module, where: str = "model", hint: str = "") -> None:
    """Raise BatchNormError naming every running-statistics layer of ``module``."""
    layers = running_stats_layers(module)
    if layers:
        raise BatchNormError(layers, where=where, hint=hint)


def assert_state_dict_clean(state_dict: Mapping[str, object], where: str, hint: str = "", reason: str = "") -> None:
    layers = running_stats_keys(state_dict.keys())
    if layers:
        raise BatchNormError(layers, where=where, hint=hint, reason=reason)
