"""Observations from the training data to measure reduced-precision variants on.

Random observations exercise the graphs, but a variant's error matters on the
inputs the robot will send: with a dp-dataset file (or any .npz holding one
(N, n_obs_steps, ...) array per observation key) the exporter also measures
every variant on real observation histories.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ConfigError, ShapeError
from ..obs_spec import validate_obs
from ..spec import PolicySpec


def calibration_observations(path: str | Path, spec: PolicySpec, samples: int,
                             seed: int) -> list[dict[str, np.ndarray]]:
    """``samples`` observation histories (batch 1) drawn from ``path`` without replacement."""
    try:
        with np.load(path) as z:
            missing = [k for k in spec.keys if k not in z.files]
            if missing:
                raise ConfigError(f"calibration data {path}: no array for observation key(s) {missing}; "
                                  f"expected one (N, {spec.n_obs_steps}, ...) array per key of {spec.keys}")
            arrays = {k: z[k] for k in spec.keys}
    except (OSError, ValueError) as e:
        raise ConfigError(f"calibration data {path}: {e} (expected an .npz, e.g. written by dp-dataset)") from e
    try:
        count = validate_obs(arrays, spec.image_shapes, spec.low_dim_sizes, spec.n_obs_steps)
    except ShapeError as e:
        raise ConfigError(f"calibration data {path} does not match the policy: {e}") from e
    if not count:
        raise ConfigError(f"calibration data {path} holds no samples")
    rows = np.random.default_rng(seed).permutation(count)[:samples]
    return [{k: a[i:i + 1] for k, a in arrays.items()} for i in rows]
