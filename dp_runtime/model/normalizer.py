"""Min-max normalization to [-1, 1] per dimension, stored as scale/offset.

Same convention as diffusion_policy's LinearNormalizer:
``normalized = raw * scale + offset``. Lives inside the exported graph so the
runtime never does normalization math that could drift from training.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError

RANGE_EPS = 1e-4


def minmax_stats(data: np.ndarray) -> dict[str, list[float]]:
    """(N, D) raw data -> {'scale', 'offset', 'min', 'max'} mapping [min, max] to [-1, 1]."""
    data = np.asarray(data, dtype=np.float64).reshape(-1, data.shape[-1])
    lo, hi = data.min(axis=0), data.max(axis=0)
    rng = hi - lo
    flat = rng < RANGE_EPS
    # Constant dimensions map to 0 instead of dividing by ~0.
    scale = np.where(flat, 1.0, 2.0 / np.where(flat, 1.0, rng))
    offset = np.where(flat, -(hi + lo) / 2, -1.0 - scale * lo)
    return {"scale": scale.tolist(), "offset": offset.tolist(), "min": lo.tolist(), "max": hi.tolist()}


class _Affine(nn.Module):
    def __init__(self, scale, offset):
        super().__init__()
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32))
        self.register_buffer("offset", torch.as_tensor(offset, dtype=torch.float32))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.offset

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.offset) / self.scale


class Normalizer(nn.Module):
    """Per-key affine normalizers; keys are low-dim observation keys and 'action'."""

    def __init__(self, sizes: dict[str, int], stats: dict[str, dict] | None = None):
        super().__init__()
        self.params = nn.ModuleDict()
        for key, size in sizes.items():
            s = (stats or {}).get(key, {"scale": [1.0] * size, "offset": [0.0] * size})
            if len(s["scale"]) != size or len(s["offset"]) != size:
                raise ConfigError(f"normalizer stats for {key!r} have {len(s['scale'])} dims, expected {size}")
            self.params[key] = _Affine(s["scale"], s["offset"])

    def normalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        return self.params[key].normalize(x)

    def unnormalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        return self.params[key].unnormalize(x)

    def stats(self) -> dict[str, dict[str, list[float]]]:
        return {k: {"scale": m.scale.tolist(), "offset": m.offset.tolist()} for k, m in self.params.items()}
