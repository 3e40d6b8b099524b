"""Shared pieces of the checkpoint importers: config access, state-dict renaming, policy assembly.

Each importer (diffusion_policy, robomimic, LeRobot) turns its source into
``Imported``: our PolicyConfig plus a state dict in our parameter names that
remembers, per key, the source key it came from, so a mismatch names the key
the user can find in their own checkpoint.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..digest import sha256_path
from ..errors import CheckpointError, ConfigError
from ..model import DiffusionPolicy, PolicyConfig
from ..model.norms import assert_no_running_stats, assert_state_dict_clean
from .native import Checkpoint

log = logging.getLogger(__name__)

_MISSING = object()
# torchvision ResNet children in order; robomimic and LeRobot keep children()[:-2] as a Sequential.
RESNET_CHILDREN = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


def get(cfg: dict, path: str, kind: type | tuple[type, ...] | None = None, default: Any = _MISSING,
        where: str = "config", resolve: Callable[[Any], Any] = lambda v: v) -> Any:
    """``cfg['a']['b']`` for path ``'a.b'``, resolved and type-checked; errors name the path."""
    node: Any = cfg
    for part in path.split("."):
        node = resolve(node)
        if not isinstance(node, dict) or part not in node:
            if default is not _MISSING:
                return default
            raise CheckpointError(f"{where} has no {path!r}")
        node = node[part]
    value = resolve(node)
    if kind is not None and value is not None and not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise CheckpointError(f"{where} {path!r} is {value!r}, expected {names}")
    return value


@dataclass
class Imported:
    """A foreign checkpoint translated to our names, before the policy is built."""
    source_format: str
    weights: str  # "ema" | "live"
    config: PolicyConfig | None = None  # set once the importer has read everything it needs
    state: dict[str, torch.Tensor] = field(default_factory=dict)  # our key -> tensor
    origin: dict[str, str] = field(default_factory=dict)  # our key -> source key
    ema: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    # Key prefixes that keep the rebuilt model's own (config-derived) values: the [-1, 1] pixel mapping,
    # identity normalizers where the source has no statistics.
    defaults: list[str] = field(default_factory=lambda: ["obs_encoder.preprocess."])

    def put(self, ours: str, source_key: str, tensor: torch.Tensor) -> None:
        self.state[ours] = tensor
        self.origin[ours] = source_key

    def identity_normalizer(self, key: str) -> None:
        """``key`` is used unnormalized (the source stores no statistics for it)."""
        self.defaults.append(f"normalizer.params.{key}.")


def ema_or_live(path: Path, ema: Any, live: Any, allow_non_ema: bool, why: str,
                guard: Callable[[Any], None]) -> tuple[Any, str]:
    """(state, "ema"), or the live state only when asked (--allow-non-ema), with a warning.

    ``why``: why the checkpoint has no EMA weights, in the source framework's words. ``guard`` checks the
    chosen state (the running-statistics refusal) before any warning about it.
    """
    if ema is not None:
        guard(ema)
        return ema, "ema"
    if not allow_non_ema:
        raise CheckpointError(f"{path} holds no EMA weights ({why}); pass --allow-non-ema to export the live "
                              "weights deliberately")
    guard(live)
    log.warning("%s: exporting the LIVE weights (%s)", path, why)
    return live, "live"


SCHEDULER_FIELDS = {"num_train_timesteps": int, "beta_start": float, "beta_end": float, "beta_schedule": str,
                    "clip_sample": bool, "clip_sample_range": float, "set_alpha_to_one": bool, "steps_offset": int}
DDPM_EXPORT_STEPS = 16


def ddim_scheduler(src: dict, defaults: dict[str, Any], path: Path) -> dict[str, Any]:
    """A framework's noise-scheduler settings -> the diffusers DDIM config the bundle runs.

    ``defaults``: the framework's own defaults for fields its config may leave out.
    """
    if src.get("prediction_type", "epsilon") != "epsilon":
        raise CheckpointError(f"{path}: not supported: prediction_type {src.get('prediction_type')!r} (epsilon only)")
    base = {"beta_start": 0.0001, "beta_end": 0.02, "clip_sample": True, "set_alpha_to_one": True, "steps_offset": 0}
    merged = {**base, **defaults, **{k: v for k, v in src.items() if k in SCHEDULER_FIELDS}}
    out = {k: kind(merged[k]) for k, kind in SCHEDULER_FIELDS.items() if k in merged}
    out["prediction_type"] = "epsilon"
    return out


def export_steps(configured: int | None, scheduler: dict[str, Any], trained_with_ddim: bool) -> int:
    """DDIM steps the bundle is exported with (dp-export --steps overrides).

    DDIM-trained policies keep their configured count. DDPM-trained ones are sampled with
    DDIM (stochastic DDPM sampling has no deterministic bundle equivalent) at no more than
    16 steps: their configured count is the DDPM chain (often 100), far more than DDIM needs.
    """
    steps = int(configured or scheduler["num_train_timesteps"])
    if not trained_with_ddim:
        chain, steps = steps, min(steps, DDPM_EXPORT_STEPS)
        default = min(steps, int(scheduler["num_train_timesteps"]))
        log.info(f"trained with DDPM, {chain} steps; the bundle samples with DDIM at {default} steps by default "
                 "(dp-export --steps N to change)")
    return min(steps, int(scheduler["num_train_timesteps"]))


def guard_raw(state_keys, where: str, hint: str, reason: str = "") -> None:
    """Any running_mean/running_var/num_batches_tracked key is a BatchNorm, whatever its layer is called."""
    assert_state_dict_clean(dict.fromkeys(state_keys), where=where, hint=hint, reason=reason)


def map_resnet_sequential(imp: Imported, src: dict[str, torch.Tensor], src_prefix: str, dst_prefix: str) -> None:
    """``{src_prefix}.{i}.*`` (ResNet children()[:-2] as a Sequential) -> ``{dst_prefix}.{conv1,...}.*``."""
    pat = re.compile(re.escape(src_prefix) + r"\.(\d)\.(.+)")
    for key, t in src.items():
        m = pat.fullmatch(key)
        if m:
            idx = int(m.group(1))
            if idx >= len(RESNET_CHILDREN):
                raise CheckpointError(f"{key}: backbone has more than the ResNet-18 stages ({len(RESNET_CHILDREN)})")
            imp.put(f"{dst_prefix}.{RESNET_CHILDREN[idx]}.{m.group(2)}", key, t)


def copy_prefixed(imp: Imported, src: dict[str, torch.Tensor], src_prefix: str, dst_prefix: str,
                  rename: Callable[[str], str] = lambda k: k, skip: Callable[[str], bool] = lambda k: False) -> None:
    """Copy every ``src_prefix.*`` key to ``dst_prefix.*`` (after ``rename`` of the remainder)."""
    n = len(src_prefix) + 1
    for key, t in src.items():
        if key.startswith(src_prefix + ".") and not skip(key):
            imp.put(f"{dst_prefix}.{rename(key[n:])}", key, t)


def feature_map_hw(h: int, w: int) -> tuple[int, int]:
    """Spatial size of a ResNet-18 layer4 output for an h x w input (five stride-2 stages)."""
    for _ in range(5):
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    return h, w


def check_pos_grid(key: str, xs: torch.Tensor, ys: torch.Tensor, input_hw: tuple[int, int]) -> None:
    """A stored SpatialSoftmax coordinate grid must match the one we compute for the cropped input.

    A different grid size means the crop in the config is not the one the weights were trained with.
    """
    h, w = feature_map_hw(*input_hw)
    want_x = torch.linspace(-1.0, 1.0, w).repeat(h)
    want_y = torch.linspace(-1.0, 1.0, h).repeat_interleave(w)
    xs, ys = xs.flatten().float(), ys.flatten().float()
    if xs.numel() != want_x.numel():
        raise CheckpointError(f"{key}: keypoint grid has {xs.numel()} cells, but the configured {input_hw[0]}x"
                              f"{input_hw[1]} encoder input gives a {h}x{w} feature map (crop or image shape "
                              "in the config differ from the training run)")
    if not (torch.allclose(xs, want_x, atol=1e-5) and torch.allclose(ys, want_y, atol=1e-5)):
        raise CheckpointError(f"{key}: keypoint coordinate grid differs from the standard [-1, 1] grid")


def affine_min_max(lo, hi, eps: float = 0.0) -> dict[str, list[float]]:
    """Map [lo, hi] to [-1, 1] as ``raw * scale + offset`` (a zero range divides by ``eps`` instead)."""
    lo, hi = torch.as_tensor(lo, dtype=torch.float64).flatten(), torch.as_tensor(hi, dtype=torch.float64).flatten()
    rng = hi - lo
    rng = torch.where(rng == 0, torch.full_like(rng, eps if eps else 1.0), rng)
    scale = 2.0 / rng
    return {"scale": scale.tolist(), "offset": (-1.0 - scale * lo).tolist()}


def affine_mean_std(mean, std, eps: float = 0.0) -> dict[str, list[float]]:
    """``(raw - mean) / (std + eps)`` as ``raw * scale + offset``."""
    mean = torch.as_tensor(mean, dtype=torch.float64).flatten()
    std = torch.as_tensor(std, dtype=torch.float64).flatten() + eps
    return {"scale": (1.0 / std).tolist(), "offset": (-mean / std).tolist()}


def put_normalizer(imp: Imported, key: str, stats: dict[str, list[float]], source: str) -> None:
    imp.put(f"normalizer.params.{key}.scale", source, torch.tensor(stats["scale"], dtype=torch.float32))
    imp.put(f"normalizer.params.{key}.offset", source, torch.tensor(stats["offset"], dtype=torch.float32))


def put_image_mean_std(imp: Imported, key: str, mean, std, source: str) -> None:
    """Per-channel ``(pixel/255 - mean) / std`` for image_range 'mean_std'."""
    mean = torch.as_tensor(mean, dtype=torch.float32).flatten()
    std = torch.as_tensor(std, dtype=torch.float32).flatten()
    imp.put(f"obs_encoder.preprocess.{key}.mean", source, mean.reshape(1, -1, 1, 1))
    imp.put(f"obs_encoder.preprocess.{key}.std", source, std.reshape(1, -1, 1, 1))


def centre_crop(shape_hw: tuple[int, int], crop_hw, rule: str) -> tuple[int, int, int, int] | None:
    """(top, left, h, w) of an eval-time centre crop. torchvision rounds the offset, robomimic floors it."""
    if crop_hw is None:
        return None
    (H, W), (h, w) = shape_hw, (int(crop_hw[0]), int(crop_hw[1]))
    if h > H or w > W:
        raise ConfigError(f"crop {h}x{w} is larger than the image {H}x{W}")
    if rule == "round":
        return int(round((H - h) / 2.0)), int(round((W - w) / 2.0)), h, w
    return (H - h) // 2, (W - w) // 2, h, w


def assemble(imp: Imported, path: Path, hint: str) -> Checkpoint:
    """Build our policy from ``imp``, load it strictly (naming source keys on mismatch) and guard it."""
    try:
        imp.config.validate()
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from e
    policy = DiffusionPolicy(imp.config)
    assert_no_running_stats(policy, where=f"policy rebuilt from {path.name}", hint=hint)
    own = policy.state_dict()
    for key, value in own.items():
        if key not in imp.state and key.startswith(tuple(imp.defaults)):
            imp.put(key, "(from config)", value)
    missing = sorted(set(own) - set(imp.state))
    unexpected = sorted(set(imp.state) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match the config: " +
            (f"the config needs {missing[:4]}{'...' if len(missing) > 4 else ''} which the weights lack; "
             if missing else "") +
            (f"weights {[imp.origin[k] for k in unexpected[:4]]} have no place in the model the config describes"
             if unexpected else ""))
    for key in own:  # model order: the first mismatch reported is the earliest layer
        tensor = imp.state[key]
        if tuple(own[key].shape) != tuple(tensor.shape):
            raise CheckpointError(f"{path}: weight {imp.origin[key]!r} has shape {tuple(tensor.shape)}, the "
                                  f"config implies {tuple(own[key].shape)} (config and weights disagree)")
    policy.load_state_dict({k: v.float() for k, v in imp.state.items()}, strict=True)
    policy.eval()
    return Checkpoint(policy=policy, config=imp.config, weights=imp.weights, ema=imp.ema, source=str(path),
                      sha256=sha256_path(path), source_format=imp.source_format, extra=imp.extra)
