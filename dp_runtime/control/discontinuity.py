"""Discontinuities: when the robot is no longer where the plan put it, the plan loses its authority.

A chunk's plan (its queued actions, soft_inpaint's guidance, aligned noise) and the observation history
describe one continuous episode of motion. A scene reset, a pushed arm, an e-stop and resume or a
collision break that: the next chunk must come from observations after the break, not be steered back
toward where the old plan was going. Three signs, each a plain comparison of what the runner already has:

- **departure**: a measured joint is further from every command executed in the last chunk's time than
  ``threshold`` in normalized action units (the training range is [-1, 1]; the action normalizer's scale
  converts), so the measurement is not lagging behind the commands but somewhere else (armed once the
  robot follows the commands, so one disturbance is one break);
- **jump**: between two consecutive samples a measured joint moved faster than ``speed`` (normalized units
  per second; a teleport, a re-homed encoder: a break too small for the departure rule still changes the
  scene the plan was made for, and no commanded motion is that fast);
- **input gap**: an input was silent for longer than ``max_obs_age`` (the inputs were stale in between,
  so the history before the gap belongs to another time).

A backward clock jump (a looped bag, a restarted simulator) is a fourth, found by the node's control loop.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np


MIN_SAMPLE_INTERVAL_S = 0.002


@dataclass(frozen=True)
class Discontinuity:
    stamp: float  # the first sample after the break: older samples belong to before it
    reason: str


class DepartureCheck:
    """Measured joint positions against the commands executed lately (the robot's own lag is inside the
    window: the measurement lies on the path between recent commands, whatever the controller's delay), and
    against the previous measurement (the jump rule)."""

    def __init__(self, threshold: float, speed: float, scale: np.ndarray, window_s: float, names: list[str]):
        """``threshold``: normalized distance (departure rule); ``speed``: normalized units per second (jump
        rule); ``scale``: (A,) normalized units per raw unit (the action normalizer's |scale|); ``window_s``:
        how far back a command still counts as one the robot may be following."""
        self.threshold = threshold
        self.speed = speed
        self.scale = np.abs(np.asarray(scale, np.float64))
        self.window_s = window_s
        self.names = names
        self.commands: deque[tuple[float, np.ndarray]] = deque()
        self.last: tuple[float, np.ndarray] | None = None  # the previous measurement
        # The departure rule is armed once the robot is seen following the commands (within half the threshold):
        # at start, and after a break, while the disturbance lasts (a person still moving the arm, a robot not yet
        # taking commands), a departure is the same break again, not a new one.
        self.armed = False
        self.peak_departure = 0.0  # the largest departure and speed that did not break (the thresholds' margin)
        self.peak_speed = 0.0

    def executed(self, t: float, command: np.ndarray) -> None:
        """A command sent at ``t`` (the robot's clock)."""
        self.commands.append((t, np.asarray(command, np.float64)))
        while self.commands and self.commands[0][0] < t - self.window_s:
            self.commands.popleft()

    def clear(self) -> None:
        self.commands.clear()
        self.last = None
        self.armed = False

    def departure(self, stamp: float, measured: np.ndarray) -> tuple[float, int] | None:
        """(normalized distance to the nearest recent command, the joint furthest from it), or None when
        nothing was commanded in the window before ``stamp``."""
        recent = [c for t, c in self.commands if stamp - self.window_s <= t <= stamp]
        if not recent:
            return None
        gaps = np.abs(np.stack(recent) - np.asarray(measured, np.float64)) * self.scale  # (N, A)
        worst = gaps.max(axis=1)
        i = int(np.argmin(worst))
        return float(worst[i]), int(np.argmax(gaps[i]))

    def jump(self, stamp: float, measured: np.ndarray) -> tuple[float, int] | None:
        """(the fastest normalized speed since the previous measurement, per second, its joint), or None for the
        first measurement."""
        if self.last is None:
            return None
        t0, q0 = self.last
        dt = max(stamp - t0, MIN_SAMPLE_INTERVAL_S)  # stamps a hair apart are not a velocity
        moved = np.abs(np.asarray(measured, np.float64) - q0) * self.scale
        return float(moved.max() / dt), int(np.argmax(moved))

    def check(self, stamp: float, measured: np.ndarray) -> Discontinuity | None:
        """A Discontinuity when ``measured`` (stamped ``stamp``) breaks either rule, else None."""
        jump = self.jump(stamp, measured)
        self.last = (stamp, np.asarray(measured, np.float64))
        if jump is not None and jump[0] <= self.speed:
            self.peak_speed = max(self.peak_speed, jump[0])
        elif jump is not None:
            return Discontinuity(stamp, f"measured {self.names[jump[1]]} moved at {jump[0]:.2f} normalized units/s "
                                        f"since its previous sample, over discontinuity_speed {self.speed:g}")
        d = self.departure(stamp, measured)
        if d is None:
            return None
        if not self.armed:
            self.armed = d[0] <= self.threshold / 2
            return None
        if d[0] <= self.threshold:
            self.peak_departure = max(self.peak_departure, d[0])
            return None
        distance, joint = d
        return Discontinuity(stamp, f"measured {self.names[joint]} is {distance:.3f} (normalized) from every "
                                    f"command of the last {self.window_s:.2f} s, over discontinuity_threshold "
                                    f"{self.threshold:g}")


def input_gap(key: str, previous: float | None, stamp: float, max_gap_s: float) -> Discontinuity | None:
    """The sample at ``stamp`` follows its predecessor by more than ``max_gap_s``."""
    if previous is None or stamp - previous <= max_gap_s:
        return None
    return Discontinuity(stamp, f"input gap: {key!r} was silent for {stamp - previous:.3f} s "
                                f"(max_obs_age {max_gap_s:g} s)")
