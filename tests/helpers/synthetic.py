"""A tiny synthetic reaching dataset and policy config for tests and quick checks.

Images show a bright dot at the target; the low-dim state is the current
position; the action chunk moves from the state to the target. A policy must
read the image to do well, so "it learned" is a meaningful check.
"""
from __future__ import annotations

import numpy as np

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dp_runtime.model.config import PolicyConfig


def tiny_config(image_size: int = 24, **overrides) -> "PolicyConfig":
    from dp_runtime.model.config import EncoderConfig, ImageSpec, LowDimSpec, PolicyConfig, UnetConfig
    kw = dict(
        images=[ImageSpec("camera", (image_size, image_size, 3), topic="/camera/image_raw")],
        low_dims=[LowDimSpec("state", 2, topic="/joint_states", names=["joint1", "joint2"])],
        action_dim=2, action_names=["joint1", "joint2"], horizon=8, n_obs_steps=2, n_action_steps=4,
        num_inference_steps=8, obs_interval_s=0.1,
        encoder=EncoderConfig(base_width=8, pool="spatial_softmax", num_kp=8, feature_dim=16),
        unet=UnetConfig(down_dims=(32, 64), kernel_size=3, n_groups=4, diffusion_step_embed_dim=32))
    kw.update(overrides)
    return PolicyConfig(**kw)


def render_dot(pos: np.ndarray, size: int) -> np.ndarray:
    """pos in [-1, 1]^2 -> (size, size, 3) uint8 with a 3x3 dot."""
    img = np.full((size, size, 3), 30, dtype=np.uint8)
    c = np.clip(((pos + 1) / 2 * (size - 1)).round().astype(int), 1, size - 2)
    img[c[1] - 1:c[1] + 2, c[0] - 1:c[0] + 2] = (255, 200, 40)
    return img


def reaching_dataset(cfg: "PolicyConfig", n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    size = cfg.images[0].shape[0]
    target = rng.uniform(-0.8, 0.8, size=(n, 2))
    state = rng.uniform(-0.8, 0.8, size=(n, 2))
    imgs = np.stack([render_dot(t, size) for t in target])
    frac = (np.arange(cfg.horizon) + 1) / cfg.horizon
    action = state[:, None, :] + (target - state)[:, None, :] * frac[None, :, None]
    prev_state = state - 0.05 * (target - state)
    return {
        "camera": np.repeat(imgs[:, None], cfg.n_obs_steps, axis=1),
        "state": np.stack([prev_state, state], axis=1)[:, -cfg.n_obs_steps:].astype(np.float32),
        "action": action.astype(np.float32),
    }
