"""Action limits applied to every command: clip to joint bounds, cap the change per control step; for an
end-effector pose, a workspace box and the largest linear and angular step per control step."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from ..layout import Layout
from ..pose_action import Pose, decode, encode, needs_reference
from ..rotations import angle_between, matrix_to_quat, quat_to_matrix, slerp


@dataclass
class PoseLimits:
    """Limits of an absolute end-effector pose (metres, radians, per control step; None = unlimited)."""
    lower: np.ndarray | None = None  # (3,) workspace box
    upper: np.ndarray | None = None
    max_linear_step: float | None = None
    max_angular_step: float | None = None

    def apply(self, pose: Pose, previous: Pose | None) -> Pose:
        position = np.clip(pose.position, self.lower if self.lower is not None else -np.inf,
                           self.upper if self.upper is not None else np.inf)
        rotation = pose.rotation
        if previous is not None and self.max_linear_step:
            step = position - previous.position
            n = float(np.linalg.norm(step))
            if n > self.max_linear_step:
                position = previous.position + step * (self.max_linear_step / n)
        if previous is not None and self.max_angular_step:
            angle = float(angle_between(previous.rotation, rotation))
            if angle > self.max_angular_step:  # along the shorter arc, never through the rotation vector
                q = slerp(matrix_to_quat(previous.rotation), matrix_to_quat(rotation), self.max_angular_step / angle)
                rotation = quat_to_matrix(q)
        return Pose(position, rotation)


@dataclass
class ActionLimits:
    lower: np.ndarray | None = None  # (A,)
    upper: np.ndarray | None = None  # (A,)
    max_delta: np.ndarray | None = None  # (A,) per control step; None = unlimited
    pose: PoseLimits | None = None  # an absolute end-effector pose in the action (layout)
    layout: Layout = ()
    limited: int = 0  # commands whose pose the end-effector limits changed

    def apply(self, action: np.ndarray, previous: np.ndarray | None) -> np.ndarray:
        out = np.asarray(action, dtype=np.float64).copy()
        if self.lower is not None or self.upper is not None:
            out = np.clip(out, self.lower if self.lower is not None else -np.inf,
                          self.upper if self.upper is not None else np.inf)
        if self.max_delta is not None and previous is not None:
            out = previous + np.clip(out - previous, -self.max_delta, self.max_delta)
        if self.pose is not None:
            wanted = decode(out, self.layout, None).pose
            last = None if previous is None else decode(previous, self.layout, None).pose
            limited = self.pose.apply(wanted, last)
            if np.abs(limited.position - wanted.position).max() > 1e-12 or \
                    np.abs(limited.rotation - wanted.rotation).max() > 1e-12:
                self.limited += 1
                out = encode(limited, self.layout, out)
        return out

    @classmethod
    def from_lists(cls, dim: int, lower: list[float], upper: list[float], max_delta: list[float],
                   layout: Layout = (), ee_lower: list[float] = (), ee_upper: list[float] = (),
                   ee_linear: float = 0.0, ee_angular: float = 0.0) -> "ActionLimits":
        def arr(v: list[float], name: str, n: int = dim, what: str = "one per action joint") -> np.ndarray | None:
            if not v:
                return None
            if len(v) == 1:
                v = list(v) * n
            if len(v) != n:
                raise ConfigError(f"{name} has {len(v)} values, expected 1 or {n} ({what})")
            return np.asarray(v, dtype=np.float64)
        pose = None
        if ee_lower or ee_upper or ee_linear or ee_angular:
            posed = {s.kind for s in layout} & {"position", "rotation"}
            if not posed or needs_reference(layout):
                raise ConfigError("ee_workspace_lower/upper and ee_max_linear/angular_step limit an absolute end-effector "
                                  "pose (x, y, z and a rotation); the bundle's action "
                                  f"{'has none' if not posed else 'is a delta, relative or partial pose'}")
            pose = PoseLimits(arr(ee_lower, "ee_workspace_lower", 3, "x, y, z"),
                              arr(ee_upper, "ee_workspace_upper", 3, "x, y, z"), ee_linear or None, ee_angular or None)
        return cls(arr(lower, "action_lower"), arr(upper, "action_upper"), arr(max_delta, "action_max_delta"),
                   pose, tuple(layout))
