"""ActionQueue: a timestamped chunk; action i is due at ``t_obs + i * dt``.

When a chunk arrives, actions already due (plus the execution latency) are
dropped, keeping the newest if all are late; with ``blend`` > 0 the first
actions of the new chunk that fall due when the old one still had actions are
cross-faded from old to new. ``pop(now)`` gives the action due now; an empty
queue when a command was due counts as starvation.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass
class QueueStats:
    chunks: int = 0
    dropped: int = 0  # actions dropped on arrival because they were already due
    skipped: int = 0  # actions passed over because a later one was already due at pop time
    popped: int = 0
    starved: int = 0  # pops with nothing left to execute

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class ActionQueue:
    def __init__(self, dt: float, execution_latency: float = 0.0):
        if dt <= 0:
            raise ValueError(f"dt must be > 0, got {dt}")
        self.dt = dt
        self.latency = execution_latency
        self.items: deque[tuple[float, np.ndarray]] = deque()
        self.stats = QueueStats()
        self.chunk = 0  # id of the chunk the queue holds (each push is a new one)
        self.popped_chunk = 0  # the chunk of the last popped action (that chose it: see push's held_until)
        self.held_until = -float("inf")  # the queued chunk's actions due until then are the previous one's
        self.last: tuple[float, np.ndarray] | None = None  # the last popped action and its due time (executing now)

    def __len__(self) -> int:
        return len(self.items)

    def clear(self) -> None:
        self.items.clear()
        self.last = None

    def push(self, actions: np.ndarray, t_obs: float, now: float, blend: int = 0,
             held_until: float = -float("inf")) -> int:
        """Replace the queue with ``actions`` (N, A) stamped from ``t_obs``; returns how many were dropped.

        ``blend``: cross-fade over this many actions where old and new overlap in due time (the
        new chunk's j-th overlapping action gets weight (j + 1) / (blend + 1), the old one the rest).
        ``held_until``: the actions due until then were held fixed to the previous chunk's (inpainting's
        committed prefix): they still count as the previous chunk's, so the switch is where the new one chooses.
        """
        due = [(t_obs + i * self.dt, np.asarray(a)) for i, a in enumerate(actions)]
        cutoff = now + self.latency
        keep = [d for d in due if d[0] >= cutoff - 1e-9]
        if not keep:
            keep = [due[-1]]  # all late: the newest is still the best thing to do
        dropped = len(due) - len(keep)
        if blend > 0 and self.items:
            keep = self._blend(keep, blend)
        self.items = deque(keep)
        self.chunk += 1
        self.held_until = held_until
        self.stats.chunks += 1
        self.stats.dropped += dropped
        return dropped

    def pop(self, now: float) -> np.ndarray | None:
        """The action due at ``now`` (None if the queue is empty or the next action is still ahead)."""
        while len(self.items) > 1 and self.items[1][0] <= now + 1e-9:
            self.items.popleft()
            self.stats.skipped += 1
        if not self.items:
            self.stats.starved += 1
            return None
        due, action = self.items[0]
        if due > now + self.dt / 2:
            return None
        self.items.popleft()
        self.stats.popped += 1
        self.popped_chunk = self.chunk if due > self.held_until + 1e-9 else self.chunk - 1
        self.last = (due, action)
        return action

    def _blend(self, new: list[tuple[float, np.ndarray]], n: int) -> list[tuple[float, np.ndarray]]:
        old = list(self.items)
        out, j = [], 0
        for due, action in new:
            match = next((a for d, a in old if abs(d - due) <= self.dt / 2), None)
            if match is not None and j < n:
                w = (j + 1) / (n + 1)
                action = (1.0 - w) * match + w * action
                j += 1
            out.append((due, action))
        return out

    def remaining(self) -> list[tuple[float, np.ndarray]]:
        return list(self.items)
