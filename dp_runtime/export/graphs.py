"""The two graphs a bundle holds, as torch modules ready to trace.

``EncoderGraph``: raw observation history -> global condition, run once per chunk.
``DenoiseStepGraph``: one DDIM step with the epsilon UNet and the DDIM update
in-graph, plus the unnormalized actions. The DDIM coefficient table
(alphas_cumprod and the final-step alpha) is taken from diffusers'
DDIMScheduler; the runtime only feeds (timestep, prev_timestep) pairs, so the
step count stays a runtime choice.
"""
from __future__ import annotations

import torch
from diffusers import DDIMScheduler
from torch import nn

from ..model import DiffusionPolicy


class EncoderGraph(nn.Module):
    def __init__(self, policy: DiffusionPolicy):
        super().__init__()
        self.policy = policy
        self.keys = [s.key for s in policy.cfg.images] + [s.key for s in policy.cfg.low_dims]

    def forward(self, *obs: torch.Tensor) -> torch.Tensor:
        """obs in manifest order: images (B, To, H, W, C) uint8, low-dim (B, To, D) float32 -> (B, G)."""
        return self.policy.encode(dict(zip(self.keys, obs)))


class DenoiseStepGraph(nn.Module):
    def __init__(self, policy: DiffusionPolicy, scheduler: DDIMScheduler):
        super().__init__()
        self.policy = policy
        cfg = scheduler.config
        self.register_buffer("alphas_cumprod", scheduler.alphas_cumprod.clone().float())
        self.register_buffer("final_alpha_cumprod",
                             torch.as_tensor(scheduler.final_alpha_cumprod, dtype=torch.float32).reshape(1))
        self.clip_sample = bool(cfg.clip_sample)
        self.clip_range = float(cfg.get("clip_sample_range", 1.0))
        if cfg.get("thresholding", False):
            raise ValueError("DDIM thresholding is not supported in the bundle graph")

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, prev_timestep: torch.Tensor,
                cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """sample (B, T, A) normalized; timestep, prev_timestep (1,) int64; cond (B, G).

        Returns (prev_sample (B, T, A) normalized, actions (B, T, A) unnormalized from prev_sample).
        """
        eps = self.policy.model(sample, timestep, global_cond=cond)
        alpha_t = self.alphas_cumprod[timestep].reshape(1, 1, 1)
        prev_alpha = torch.where(prev_timestep >= 0, self.alphas_cumprod[prev_timestep.clamp(min=0)],
                                 self.final_alpha_cumprod).reshape(1, 1, 1)
        x0 = (sample - (1 - alpha_t) ** 0.5 * eps) / alpha_t ** 0.5
        if self.clip_sample:
            x0 = x0.clamp(-self.clip_range, self.clip_range)
        prev = prev_alpha ** 0.5 * x0 + (1 - prev_alpha) ** 0.5 * eps
        return prev, self.policy.unnormalize_action(prev)


def ddim_schedule(scheduler_config: dict, num_inference_steps: int) -> tuple[list[int], list[int]]:
    """(timesteps, prev_timesteps) exactly as diffusers' DDIMScheduler.step walks them."""
    sched = DDIMScheduler.from_config(scheduler_config)
    sched.set_timesteps(num_inference_steps)
    ratio = sched.config.num_train_timesteps // sched.num_inference_steps
    ts = [int(t) for t in sched.timesteps]
    return ts, [t - ratio for t in ts]
