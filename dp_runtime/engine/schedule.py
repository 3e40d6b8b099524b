"""The DDIM walk (timestep, previous timestep) for a step count, exactly as diffusers' DDIMScheduler.step.

Lives beside the engine so a runtime change of ``num_inference_steps`` needs only
diffusers (imported here, lazily), not the exporter or torch models.
"""
from __future__ import annotations

from typing import Any

from ..spec import DdimConfig


def ddim_schedule(scheduler_config: dict[str, Any], num_inference_steps: int) -> tuple[list[int], list[int]]:
    """(timesteps, prev_timesteps) as DDIMScheduler walks them for ``num_inference_steps``."""
    from diffusers import DDIMScheduler
    sched = DDIMScheduler.from_config(scheduler_config)
    sched.set_timesteps(num_inference_steps)
    ratio = sched.config.num_train_timesteps // sched.num_inference_steps
    ts = [int(t) for t in sched.timesteps]
    return ts, [t - ratio for t in ts]


def ddim_config(scheduler_config: dict[str, Any]) -> DdimConfig:
    """The full DDIMScheduler config (diffusers' defaults filled in) for the manifest."""
    from diffusers import DDIMScheduler
    return DdimConfig.of(dict(DDIMScheduler.from_config(scheduler_config).config))
