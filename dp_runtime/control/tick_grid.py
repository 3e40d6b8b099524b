"""TickGrid: the control loop's ``t0 + k*dt`` schedule on the node clock.

Ticks land on a fixed grid so timer jitter never accumulates into the command
stream; slots missed while the process was paused are skipped, not replayed;
a backward clock jump (a looped bag under sim time) restarts the grid.
"""
from __future__ import annotations


class TickGrid:
    def __init__(self, t0: float, dt: float):
        self.t0, self.dt, self.k = t0, dt, 0

    def next_target(self) -> float:
        """The clock time to sleep until."""
        return self.t0 + (self.k + 1) * self.dt

    def advance(self, now: float) -> float:
        """Take the next slot on the grid at ``now`` (skipping missed ones); returns its time."""
        self.k = max(self.k + 1, int((now - self.t0) / self.dt))
        return self.t0 + self.k * self.dt

    def restart(self, now: float) -> None:
        self.t0, self.k = now, 0
