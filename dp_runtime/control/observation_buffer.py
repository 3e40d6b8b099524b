"""ObservationBuffer: timestamped samples per key -> the n_obs_steps history the bundle expects.

Times are header stamps in seconds (never arrival times), so the node can run
on another machine than the robot and replay can use the bag's clock.

Quaternions (q and -q are one rotation) are kept continuous here, where histories are assembled, for the
node, replay and dp-dataset alike: each sample on the hemisphere of its key's previous one, the first after
a start, a reset or a discontinuity on the canonical one (w >= 0). The sign a policy sees then depends on the
pose and the path since the last start, never on what the stream went through before (an episode that spun,
the arm before a teleport: read across a bag, 17 of 300 grasp demonstrations began on the other hemisphere).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from ..errors import InputError, ShapeError, StaleInputError
from ..layout import Layout
from ..pose_action import continuous_quaternions, quaternion_slices


@dataclass
class Observation:
    history: dict[str, np.ndarray]  # images (To, H, W, C) uint8, low-dim (To, D) float32; newest last
    stamp: float  # header stamp of the newest camera frame used (the observation's time)
    ages: dict[str, float]


class ObservationBuffer:
    def __init__(self, image_shapes: Mapping[str, tuple[int, ...]], low_dim_sizes: Mapping[str, int],
                 n_obs_steps: int, obs_interval_s: float, max_obs_age: float, capacity: int = 64,
                 max_ahead: float = 0.1, layouts: Mapping[str, Layout] | None = None):
        """``layouts``: the low-dim keys' segments (those holding quaternions are kept continuous)."""
        self.quaternions = {k: v for k, v in (layouts or {}).items() if quaternion_slices(v)}
        self.image_shapes = {k: tuple(v) for k, v in image_shapes.items()}
        self.low_dim_sizes = dict(low_dim_sizes)
        self.n_obs_steps = n_obs_steps
        self.interval = obs_interval_s
        self.max_obs_age = max_obs_age
        self.max_ahead = max_ahead
        self.capacity = capacity
        self.samples: dict[str, deque[tuple[float, np.ndarray]]] = {
            k: deque(maxlen=capacity) for k in [*self.image_shapes, *self.low_dim_sizes]}
        self.cut: float | None = None  # a discontinuity dropped every sample older than this stamp

    @property
    def keys(self) -> list[str]:
        return list(self.samples)

    def reset(self) -> None:
        for q in self.samples.values():
            q.clear()
        self.cut = None

    def drop_before(self, stamp: float, key: str | None = None) -> None:
        """A discontinuity at ``stamp``: samples older than it describe another situation; an input with
        none since then ages from ``stamp`` (it is awaited, not stale, for max_obs_age). With ``key``: only
        that input's older samples (it was silent: its history before the gap is another time's)."""
        for k, q in self.samples.items():
            while (key is None or k == key) and q and q[0][0] < stamp:
                q.popleft()
        if key is None:
            self.cut = stamp
        for k in self.quaternions if key is None else [key]:
            if k in self.quaternions:
                self._restart_quaternions(k)

    def _restart_quaternions(self, key: str) -> None:
        """The samples kept after a discontinuity, signed as if the stream began with them (the one that revealed
        it continued the course before)."""
        kept, previous = self.samples[key], None
        for i, (stamp, value) in enumerate(kept):
            previous = continuous_quaternions(value, self.quaternions[key], previous)
            kept[i] = (stamp, previous)

    def newest(self, key: str) -> float | None:
        """The stamp of ``key``'s newest sample (None: none yet)."""
        q = self.samples.get(key)
        return q[-1][0] if q else None

    def ready(self) -> bool:
        """Every input has a sample to assemble a history from."""
        return all(self.samples.values())

    def add(self, key: str, stamp: float, value: np.ndarray, now: float | None = None) -> None:
        """Store one sample; raises InputError/ShapeError (nothing stored) when it is unusable.

        With ``now`` (the receiving clock), a stamp more than ``max_ahead`` ahead of it is refused:
        the sender's clock runs ahead, or the message predates a backward clock jump (a looped bag).
        Stored, it would make every later, correctly stamped message look out of order until the
        clock caught up, freezing the policy on one observation.
        """
        if key not in self.samples:
            raise InputError(f"unknown observation key {key!r}; expected one of {self.keys}")
        if now is not None and stamp > now + self.max_ahead:
            raise InputError(f"{key!r}: stamp {stamp:.6f} is {stamp - now:.3f} s ahead of the clock "
                             f"(max_stamp_ahead {self.max_ahead} s): the sender's clock runs ahead (synchronize "
                             "the clocks, e.g. chrony), or it was sent before the clock jumped back")
        value = np.asarray(value)
        if key in self.image_shapes:
            if value.dtype != np.uint8 or value.shape != self.image_shapes[key]:
                raise ShapeError(f"image {key!r}: expected uint8 {self.image_shapes[key]}, "
                                 f"got {value.dtype} {value.shape}")
        else:
            value = value.astype(np.float32)
            if value.shape != (self.low_dim_sizes[key],):
                raise ShapeError(f"low-dim {key!r}: expected ({self.low_dim_sizes[key]},), got {value.shape}")
            if not np.all(np.isfinite(value)):
                raise InputError(f"low-dim {key!r} contains NaN or inf")
        q = self.samples[key]
        if q and stamp <= q[-1][0]:
            raise InputError(f"{key!r}: out-of-order stamp {stamp:.6f} <= previous {q[-1][0]:.6f}")
        if key in self.quaternions:
            value = continuous_quaternions(value, self.quaternions[key], q[-1][1] if q else None).astype(np.float32)
        q.append((float(stamp), value))

    def ages(self, now: float) -> dict[str, float]:
        empty = float("inf") if self.cut is None else now - self.cut
        return {k: (now - q[-1][0]) if q else empty for k, q in self.samples.items()}

    def stale(self, now: float) -> dict[str, float]:
        """Inputs older than max_obs_age at ``now`` (inf: never received), by key."""
        return {k: a for k, a in self.ages(now).items() if a > self.max_obs_age}

    @staticmethod
    def describe(stale: Mapping[str, float]) -> str:
        return ", ".join(f"{k} ({'never received' if a == float('inf') else f'{a:.3f} s old'})"
                         for k, a in stale.items())

    def newest_stamp(self) -> float | None:
        keys = list(self.image_shapes) or list(self.low_dim_sizes)
        stamps = [self.samples[k][-1][0] for k in keys if self.samples[k]]
        return max(stamps) if stamps else None

    def _at(self, key: str, target: float) -> np.ndarray:
        """The sample stamped nearest ``target`` (the oldest when history is still short)."""
        q = self.samples[key]
        best = min(range(len(q)), key=lambda i: (abs(q[i][0] - target), -i))
        return q[best][1]

    def assemble(self, now: float) -> Observation:
        """The history for a policy step at ``now``; StaleInputError if any input is missing or stale."""
        ages = self.ages(now)
        stale = self.stale(now)
        if stale:
            raise StaleInputError(f"stale inputs (max_obs_age {self.max_obs_age} s): {self.describe(stale)}")
        if not self.ready():
            missing = [k for k, q in self.samples.items() if not q]
            raise StaleInputError(f"no {', '.join(missing)} sample since the discontinuity at {self.cut:.6f}")
        t_obs = self.newest_stamp()
        times = [t_obs - (self.n_obs_steps - 1 - i) * self.interval for i in range(self.n_obs_steps)]
        history = {k: np.stack([self._at(k, t) for t in times]) for k in self.samples}
        return Observation(history, t_obs, ages)
