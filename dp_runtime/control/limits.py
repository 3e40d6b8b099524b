"""Action limits applied to every command: clip to joint bounds, cap the change per control step."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError


@dataclass
class ActionLimits:
    lower: np.ndarray | None = None  # (A,)
    upper: np.ndarray | None = None  # (A,)
    max_delta: np.ndarray | None = None  # (A,) per control step; None = unlimited

    def apply(self, action: np.ndarray, previous: np.ndarray | None) -> np.ndarray:
        out = np.asarray(action, dtype=np.float64).copy()
        if self.lower is not None or self.upper is not None:
            out = np.clip(out, self.lower if self.lower is not None else -np.inf,
                          self.upper if self.upper is not None else np.inf)
        if self.max_delta is not None and previous is not None:
            out = previous + np.clip(out - previous, -self.max_delta, self.max_delta)
        return out

    @classmethod
    def from_lists(cls, dim: int, lower: list[float], upper: list[float], max_delta: list[float]) -> "ActionLimits":
        def arr(v: list[float], name: str) -> np.ndarray | None:
            if not v:
                return None
            if len(v) == 1:
                v = v * dim
            if len(v) != dim:
                raise ConfigError(f"{name} has {len(v)} values, expected 1 or {dim} (one per action joint)")
            return np.asarray(v, dtype=np.float64)
        return cls(arr(lower, "action_lower"), arr(upper, "action_upper"), arr(max_delta, "action_max_delta"))
