"""Validation of observation histories against the policy's observation spec (numpy only).

Shared by the torch policy, the engine and the replay so every entry point
rejects bad input with the same message.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from .errors import InputError, ShapeError


def validate_obs(obs: Mapping[str, np.ndarray], image_shapes: Mapping[str, Sequence[int]],
                 low_dim_sizes: Mapping[str, int], n_obs_steps: int) -> int:
    """Check a batched history: images (B, To, H, W, C) uint8, low-dim (B, To, D) float32.

    Returns the batch size. Raises ShapeError / InputError naming the key.
    """
    expected = set(image_shapes) | set(low_dim_sizes)
    missing, extra = expected - set(obs), set(obs) - expected
    if missing:
        raise ShapeError(f"observation is missing key(s) {sorted(missing)}; expected {sorted(expected)}")
    if extra:
        raise ShapeError(f"observation has unknown key(s) {sorted(extra)}; expected {sorted(expected)}")
    batch = None
    for key, shape in image_shapes.items():
        a = np.asarray(obs[key])
        want = (n_obs_steps, *shape)
        if a.dtype != np.uint8 or a.ndim != 5 or tuple(a.shape[1:]) != want:
            raise ShapeError(f"image {key!r}: expected uint8 (B, {', '.join(map(str, want))}), "
                             f"got {a.dtype} {tuple(a.shape)}")
        batch = a.shape[0] if batch is None else batch
    for key, size in low_dim_sizes.items():
        a = np.asarray(obs[key])
        if a.dtype != np.float32 or a.ndim != 3 or tuple(a.shape[1:]) != (n_obs_steps, size):
            raise ShapeError(f"low-dim {key!r}: expected float32 (B, {n_obs_steps}, {size}), "
                             f"got {a.dtype} {tuple(a.shape)}")
        if not np.all(np.isfinite(a)):
            raise InputError(f"low-dim {key!r} contains NaN or inf")
        batch = a.shape[0] if batch is None else batch
    sizes = {np.asarray(obs[k]).shape[0] for k in expected}
    if len(sizes) != 1:
        raise ShapeError(f"observation keys disagree on batch size: {sorted(sizes)}")
    return int(batch)
