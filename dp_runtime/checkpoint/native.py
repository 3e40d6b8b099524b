"""Our checkpoint format: one safetensors file, no pickle.

Tensors: ``ema.<name>`` and ``live.<name>`` (the EMA and the live weights).
Header metadata ``dp_runtime``: JSON with format version, policy config,
normalizer statistics and EMA settings (power, decay, step).
Loading returns the EMA weights unless the caller asks for the live ones.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..digest import sha256_file
from ..errors import CheckpointError, ConfigError
from ..model import DiffusionPolicy, PolicyConfig
from ..model.norms import assert_no_running_stats, assert_state_dict_clean

FORMAT = "dp_runtime.checkpoint"
FORMAT_VERSION = 1
WEIGHT_SETS = ("ema", "live")


@dataclass
class Checkpoint:
    policy: DiffusionPolicy
    config: PolicyConfig
    weights: str  # "ema" | "live"
    ema: dict[str, Any] = field(default_factory=dict)  # power, decay, step, ...
    source: str = ""
    sha256: str = ""
    source_format: str = "dp_runtime"
    extra: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(path: str | os.PathLike, live: DiffusionPolicy, ema_model: DiffusionPolicy | None,
                    ema_settings: dict[str, Any], extra: dict[str, Any] | None = None) -> Path:
    """Write live + EMA weights; written to a temp file then renamed so a crash leaves nothing half-done."""
    assert_no_running_stats(live, where="policy to save")
    path = Path(path)
    tensors = {f"live.{k}": v.detach().cpu().clone().contiguous() for k, v in live.state_dict().items()}
    if ema_model is not None:
        tensors.update({f"ema.{k}": v.detach().cpu().clone().contiguous() for k, v in ema_model.state_dict().items()})
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "config": live.cfg.to_dict(),
        "normalizer": live.normalizer.stats(), "ema": ema_settings if ema_model is not None else None,
        "extra": extra or {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"dp_runtime": json.dumps(meta)})
    os.replace(tmp, path)
    return path


def read_metadata(path: Path) -> dict[str, Any]:
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("dp_runtime")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): {e}") from e
    if raw is None:
        raise CheckpointError(f"{path}: safetensors file has no 'dp_runtime' metadata; "
                              "expected a checkpoint written by dp_runtime.train")
    meta = json.loads(raw)
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format {meta.get('format')!r} v{meta.get('format_version')}, "
                              f"expected {FORMAT!r} v{FORMAT_VERSION}")
    return meta


def load_checkpoint(path: str | os.PathLike, weights: str = "ema", allow_non_ema: bool = False) -> Checkpoint:
    """Load a policy with its EMA weights (or ``weights="live"``).

    Raises CheckpointError for a missing/corrupt file, missing EMA weights or
    weights that do not match the config; BatchNormError if the model keeps
    running statistics.
    """
    path = Path(path)
    if weights not in WEIGHT_SETS:
        raise CheckpointError(f"weights must be one of {WEIGHT_SETS}, got {weights!r}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    meta = read_metadata(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read tensors (truncated or corrupt?): {e}") from e
    if not any(k.startswith("ema.") for k in tensors) and weights == "ema":
        if not allow_non_ema:
            raise CheckpointError(f"{path} holds no EMA weights (only live ones); pass weights='live' "
                                  "to use the live weights deliberately")
        weights = "live"
    prefix = weights + "."
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    assert_state_dict_clean(state, where=f"checkpoint {path.name}")
    try:
        cfg = PolicyConfig.from_dict(meta["config"])
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from e
    policy = DiffusionPolicy(cfg, meta.get("normalizer"))
    assert_no_running_stats(policy, where=f"policy from {path.name}")
    load_state_strict(policy, state, str(path))
    policy.eval()
    return Checkpoint(policy=policy, config=cfg, weights=weights, ema=meta.get("ema") or {},
                      source=str(path), sha256=sha256_file(path), extra=meta.get("extra", {}))


def load_state_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Load ``state`` into ``model``, naming the first mismatching key on failure."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"{where}: weights do not match the config: missing {missing[:5]}"
                              f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                              f"{'...' if len(unexpected) > 5 else ''}")
    for k, v in state.items():
        if tuple(own[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{where}: weight {k!r} has shape {tuple(v.shape)}, "
                                  f"config expects {tuple(own[k].shape)}")
    model.load_state_dict(state, strict=True)
