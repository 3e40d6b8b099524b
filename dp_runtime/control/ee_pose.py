"""The measured end-effector pose, for actions that are relative to it.

A policy's pose observations (the low-dim keys whose segments are positions and rotations: one
PoseStamped or fk key, or robosuite's separate position and quaternion keys) are merged into one
measured pose with a short history. Which pose an action is decoded against depends on its mode:
- ``delta`` (robosuite OSC): the pose measured when the step executes (the newest);
- ``relative`` (UMI): the pose measured at the observation time of the chunk that planned it, so a
  chunk's actions stay one consistent path however the arm moves meanwhile (never re-anchored per tick);
- an absolute pose that leaves out axes or the rotation (PushT's xy): the pose held when the policy
  started commanding (after a start, reset or discontinuity), so z and the orientation do not follow sag.
"""
from __future__ import annotations

from collections import deque

import numpy as np

from ..errors import ConfigError
from ..layout import slices
from ..pose_action import AXES, Pose, needs_reference
from ..rotations import REPRESENTATIONS
from ..spec import PolicySpec

HISTORY = 256  # measured poses kept (seconds at a few hundred Hz: more than an observation history spans)


def position_scale(spec: PolicySpec, dt: float) -> np.ndarray:
    """(3,) normalized action units per metre of the commanded position, 1 where unknown: the departure rule's
    scale. An absolute or relative position: the action normalizer's scale on its dims (the workspace's range
    maps to [-1, 1]). A per-step delta has no range of positions, only of steps: a metre is then one unit per
    metre/s of the fastest commandable speed (``scale`` per step over ``dt``), so discontinuity_speed 3.5 is
    3.5x the speed the policy can command at all (robosuite OSC at 10 Hz: 1.75 m/s); the delta normalizer's scale
    would call every ordinary motion a jump."""
    out = np.ones(3)
    scale = spec.action.scale
    for s, sl in slices(spec.action.segments):
        if s.kind != "position":
            continue
        axes = [AXES[a] for a in s.axes]
        if s.mode == "delta":
            out[axes] = dt / s.scale
        elif scale:
            out[axes] = np.asarray(scale[sl])
    return out


def one_end_effector(spec: PolicySpec) -> None:
    """A ConfigError where the policy's action or observations hold the poses of several end effectors (a dual-arm
    policy: diffusion_policy's 20-D / 14-D actions, UMI's robot0_* and robot1_* keys): the runner merges the pose
    observations into one measured pose and decodes one pose per action, so two arms would be mixed, not run."""
    for part in ("position", "rotation"):
        held = [s for s in spec.action.segments if s.kind == part]
        if len(held) > 1:
            raise ConfigError(f"the bundle's action holds {len(held)} end-effector {part}s (a dual-arm policy); the "
                              "runner commands one end effector per policy")
        keys = [o.key for o in spec.observations if o.kind == "low_dim" and any(
            s.kind == part and s.mode in ("absolute", "relative") for s in o.segments)]
        if len(keys) > 1:
            raise ConfigError(f"observations {', '.join(keys)} each hold an end-effector {part} (a dual-arm policy's "
                              "robot0_* and robot1_* keys); the runner reads one end effector's pose per policy")


class PoseTracker:
    def __init__(self, spec: PolicySpec):
        one_end_effector(spec)
        self.keys = {o.key: o.segments for o in spec.observations
                     if o.kind == "low_dim" and {s.kind for s in o.segments} <= {"position", "rotation"}}
        # the keys that carry a position: a measured position is compared with the previous one at these only, each
        # sample at its own stamp (robosuite's pose is two keys of one message, delivered in either order: the newer
        # message's rotation before its position would pair the old position with the new stamp)
        self.position_keys = {k for k, segments in self.keys.items() if any(s.kind == "position" for s in segments)}
        posed = [s for s in spec.action.segments if s.kind in ("position", "rotation")]
        self.posed = bool(posed)  # the action holds a pose (the departure rule compares the measured one)
        self.needed = needs_reference(spec.action.segments)  # its actions are decoded against the measured pose
        self.mode = posed[0].mode if posed else ""
        self.position: np.ndarray | None = None  # the newest measured parts, merged over the pose keys
        self.rotation: np.ndarray | None = None
        self.axes: set[str] = set()
        self.history: deque[tuple[float, Pose]] = deque(maxlen=HISTORY)
        self.held: Pose | None = None
        self.chunk_poses: dict[int, Pose] = {}  # relative: queue chunk id -> the pose at its observation time

    def add(self, key: str, stamp: float, value: np.ndarray) -> None:
        """One sample of a pose observation (ignored for other keys)."""
        segments = self.keys.get(key)
        if segments is None:
            return
        value = np.asarray(value, np.float64)
        for s, sl in slices(segments):
            if s.kind == "position":
                if self.position is None:
                    self.position = np.zeros(3)
                self.position[[AXES[a] for a in s.axes]] = value[sl]
                self.axes |= set(s.axes)
            else:
                self.rotation = REPRESENTATIONS[s.representation].to_matrix(value[sl])
        pose = self.measured()
        if pose is not None:
            self.history.append((stamp, pose))

    def measured(self) -> Pose | None:
        """The newest full pose (None until x, y, z and a rotation were all measured)."""
        if self.position is None or self.rotation is None or len(self.axes) < 3:
            return None
        return Pose(self.position.copy(), self.rotation.copy())

    def at(self, stamp: float) -> Pose | None:
        """The newest pose measured at or before ``stamp`` (the observation time of a chunk)."""
        found = None
        for t, pose in self.history:
            if t > stamp + 1e-9:
                break
            found = pose
        return found

    def chunk_planned(self, chunk: int, t_obs: float) -> None:
        """A chunk reached the queue: remember the pose its relative actions are expressed in."""
        if self.mode == "relative":
            pose = self.at(t_obs)
            if pose is not None:
                self.chunk_poses[chunk] = pose
            for old in [c for c in self.chunk_poses if c < chunk - 2]:
                del self.chunk_poses[old]

    def reference(self, chunk: int) -> Pose | None:
        """The pose the action about to be commanded (from queue chunk ``chunk``) is decoded against."""
        if self.mode == "delta":
            return self.measured()
        if self.mode == "relative":
            return self.chunk_poses.get(chunk)
        if self.held is None:
            self.held = self.measured()
        return self.held

    def clear(self) -> None:
        """Start, reset or a discontinuity: the held pose and the chunks' poses belong to the old course."""
        self.held = None
        self.chunk_poses.clear()
