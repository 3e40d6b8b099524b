"""A small trainer: DDPM epsilon training + diffusers EMAModel (power 0.75), writes our checkpoint.

Input arrays (a dataset dict): per observation key ``(N, n_obs_steps, ...)``
(uint8 images HWC, float32 low-dim) and ``action`` ``(N, horizon, action_dim)``.
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch
from diffusers import DDPMScheduler
from diffusers.training_utils import EMAModel

from .checkpoint import save_checkpoint
from .errors import ShapeError
from .model import DiffusionPolicy, PolicyConfig, minmax_stats
from .model.norms import assert_no_running_stats
from .obs_spec import validate_obs

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-6
    seed: int = 0
    ema_power: float = 0.75
    ema_max_decay: float = 0.9999
    use_ema: bool = True
    log_every: int = 100


def make_ema(params, power: float = 0.75, max_decay: float = 0.9999) -> EMAModel:
    """diffusers EMAModel with diffusion_policy's warmup schedule ``1 - (1 + step) ** -power``.

    ``use_ema_warmup=True`` is required: without it diffusers ignores ``power``.
    """
    return EMAModel(params, decay=max_decay, min_decay=0.0, update_after_step=0,
                    use_ema_warmup=True, inv_gamma=1.0, power=power)


def fit_normalizer(cfg: PolicyConfig, data: Mapping[str, np.ndarray]) -> dict:
    stats = {s.key: minmax_stats(data[s.key]) for s in cfg.low_dims}
    stats["action"] = minmax_stats(data["action"])
    return stats


def check_dataset(cfg: PolicyConfig, data: Mapping[str, np.ndarray]) -> int:
    n = len(data["action"]) if "action" in data else 0
    if "action" not in data:
        raise ShapeError("dataset has no 'action' array")
    if data["action"].shape[1:] != (cfg.horizon, cfg.action_dim):
        raise ShapeError(f"dataset 'action' has shape {data['action'].shape}, expected "
                         f"(N, {cfg.horizon}, {cfg.action_dim})")
    obs = {k: data[k][:1] for k in [s.key for s in cfg.images] + [s.key for s in cfg.low_dims] if k in data}
    validate_obs(obs, {s.key: s.shape for s in cfg.images}, {s.key: s.size for s in cfg.low_dims},
                 cfg.n_obs_steps)
    for k in obs:
        if len(data[k]) != n:
            raise ShapeError(f"dataset key {k!r} has {len(data[k])} samples, 'action' has {n}")
    return n


@dataclass
class TrainResult:
    policy: torch.nn.Module
    ema_policy: torch.nn.Module | None
    ema_settings: dict
    extra: dict


def fit(cfg: PolicyConfig, data: Mapping[str, np.ndarray], tcfg: TrainConfig = TrainConfig(),
        progress: Callable[[int, float], None] | None = None,
        policy_factory: Callable[[PolicyConfig, dict], torch.nn.Module] = DiffusionPolicy) -> TrainResult:
    """Train in memory; the EMA copy averages parameters only (buffers keep their initial values,
    as in the reference implementations)."""
    n = check_dataset(cfg, data)
    torch.manual_seed(tcfg.seed)
    rng = np.random.default_rng(tcfg.seed)
    policy = policy_factory(cfg, fit_normalizer(cfg, data))
    policy.train()
    ema_policy = copy.deepcopy(policy).eval().requires_grad_(False) if tcfg.use_ema else None
    ema = make_ema(policy.parameters(), tcfg.ema_power, tcfg.ema_max_decay) if tcfg.use_ema else None
    sched = DDPMScheduler.from_config(cfg.scheduler)
    opt = torch.optim.AdamW(policy.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    lr_sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=tcfg.lr, total_steps=tcfg.steps,
                                                   pct_start=0.05)
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in data.items()}
    t0, losses = time.time(), []
    for step in range(tcfg.steps):
        idx = torch.from_numpy(rng.integers(0, n, size=min(tcfg.batch_size, n)))
        batch = {k: v[idx] for k, v in tensors.items()}
        action = batch.pop("action").float()
        loss = policy.compute_loss(batch, action, sched)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lr_sched.step()
        if ema is not None:
            ema.step(policy.parameters())
        losses.append(loss.item())
        if progress and (step + 1) % tcfg.log_every == 0:
            progress(step + 1, float(np.mean(losses[-tcfg.log_every:])))
    policy.eval()
    ema_settings = None
    if ema is not None:
        ema.copy_to(ema_policy.parameters())
        ema_settings = {"library": "diffusers.EMAModel", "power": tcfg.ema_power, "inv_gamma": 1.0,
                        "use_ema_warmup": True, "max_decay": tcfg.ema_max_decay,
                        "decay": float(ema.cur_decay_value or 0.0), "step": int(ema.optimization_step)}
    extra = {"train": asdict(tcfg), "final_loss": float(np.mean(losses[-50:])),
             "train_seconds": round(time.time() - t0, 1), "samples": n}
    return TrainResult(policy, ema_policy, ema_settings or {}, extra)


def train(cfg: PolicyConfig, data: Mapping[str, np.ndarray], out: str | Path,
          tcfg: TrainConfig = TrainConfig(), progress: Callable[[int, float], None] | None = None) -> Path:
    """Train a GroupNorm policy and write ``out`` (our safetensors checkpoint). Returns the path."""
    check_dataset(cfg, data)
    r = fit(cfg, data, tcfg, progress)
    assert_no_running_stats(r.policy, where="trained policy")
    return save_checkpoint(out, r.policy, r.ema_policy, r.ema_settings, r.extra)
