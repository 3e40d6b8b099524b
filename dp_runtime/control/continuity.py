"""Continuity at chunk switches: how far the command jumps when one chunk hands over to the next.

``boundary_jump_ratio``: the mean absolute change from the last executed action of the old chunk to
the first executed action of the new one, over the mean absolute change between consecutive
actions inside a chunk, per action dimension, then averaged. Actions the new chunk held fixed to the
old one's (inpainting's committed prefix) count as the old chunk's: the switch is where the new
chunk first chooses, wherever inference started relative to the ticks. 1.0: a switch is as smooth as the
chunk itself; a jerk at every switch shows as a large ratio.
"""
from __future__ import annotations

import numpy as np


class BoundaryJumps:
    def __init__(self) -> None:
        self.boundary_sum: np.ndarray | None = None
        self.inside_sum: np.ndarray | None = None
        self.switches = 0
        self.steps_inside = 0
        self._last: tuple[np.ndarray, int] | None = None

    def add(self, action: np.ndarray, chunk: int) -> None:
        """One executed action and the chunk it came from."""
        action = np.asarray(action, dtype=np.float64)
        if self.boundary_sum is None:
            self.boundary_sum, self.inside_sum = np.zeros_like(action), np.zeros_like(action)
        if self._last is not None:
            step = np.abs(action - self._last[0])
            if chunk == self._last[1]:
                self.inside_sum += step
                self.steps_inside += 1
            else:
                self.boundary_sum += step
                self.switches += 1
        self._last = (action, chunk)

    @classmethod
    def pooled(cls, parts: "list[BoundaryJumps]") -> "BoundaryJumps":
        """Switches and inside steps of several runs (episodes) together, for one ratio over all."""
        out = cls()
        for j in parts:
            if j.boundary_sum is None:
                continue
            if out.boundary_sum is None:
                out.boundary_sum, out.inside_sum = np.zeros_like(j.boundary_sum), np.zeros_like(j.inside_sum)
            out.boundary_sum += j.boundary_sum
            out.inside_sum += j.inside_sum
            out.switches += j.switches
            out.steps_inside += j.steps_inside
        return out

    def break_sequence(self) -> None:
        """Execution stopped (stale inputs, stop, reset): the next action starts afresh, not a switch."""
        self._last = None

    def ratio(self) -> float | None:
        if not self.switches or not self.steps_inside:
            return None
        inside = self.inside_sum / self.steps_inside
        boundary = self.boundary_sum / self.switches
        moving = inside > 1e-12  # a dimension that never moves inside chunks has no scale to compare with
        if not moving.any():
            return None
        return float(np.mean(boundary[moving] / inside[moving]))
