"""End-effector actions decoded into poses, as each framework means them (numpy only).

An action vector's layout (layout.py) says which values are a position, a rotation (in which
representation) and a gripper, and how the pose parts are meant:
- ``absolute``: the target pose itself (diffusion_policy's ``*_abs`` tasks, the real UR5's TCP waypoints);
  axes the segment leaves out keep the reference pose's (a planar PushT target holds z and orientation).
- ``delta``: a per-step change times ``scale``, applied to the pose when the step executes, as robosuite's
  OSC_POSE does: position + scale * dpos, rotation R(scale * drot) @ R (a world-frame rotation first).
- ``relative``: a pose in the frame of the pose measured at the chunk's observation time (UMI:
  ``base @ action``), so a chunk is decoded against the observation that produced it, never re-anchored.
Rotations are made exact on decode (Gram-Schmidt for 6-D, normalization for quaternions).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from .errors import InputError
from .layout import Layout, slices
from .rotations import REPRESENTATIONS, hemisphere, orthonormalize

AXES = {"x": 0, "y": 1, "z": 2}


@dataclass(frozen=True)
class Pose:
    position: np.ndarray  # (3,) metres
    rotation: np.ndarray  # (3, 3), maps the end-effector frame into the reference frame

    def compose(self, other: "Pose") -> "Pose":
        """self @ other: ``other`` expressed in this pose's frame, into the reference frame."""
        return Pose(self.position + self.rotation @ other.position, self.rotation @ other.rotation)


IDENTITY = Pose(np.zeros(3), np.eye(3))  # read only: decode copies what it changes


@dataclass(frozen=True)
class EeAction:
    pose: Pose | None  # None: the layout has no position or rotation
    gripper: np.ndarray  # (n,) the gripper values, as the policy outputs them (empty: none)
    joints: np.ndarray  # (n,) joint values in the layout's order (empty: none)


def needs_reference(layout: Layout) -> bool:
    """Whether decoding needs a measured pose: delta or relative segments, or an absolute pose that leaves
    out a position axis or the rotation."""
    posed = [s for s in layout if s.kind in ("position", "rotation")]
    if not posed:
        return False
    axes = "".join(s.axes for s in posed if s.kind == "position")
    return posed[0].mode != "absolute" or len(axes) < 3 or not any(s.kind == "rotation" for s in posed)


def decode(action: np.ndarray, layout: Layout, reference: Pose | None) -> EeAction:
    """One action (A,) -> its pose, gripper and joint parts. ``reference``: the pose a delta applies to (the
    measured pose when the step executes), a relative pose is expressed in (the pose at the chunk's observation
    time), and a partial absolute pose takes its missing parts from; an InputError when one is needed and None.
    The pose segments share one mode (layout.parse checks it)."""
    action = np.asarray(action, np.float64)
    parts = slices(layout)
    posed = [(s, sl) for s, sl in parts if s.kind in ("position", "rotation")]
    pose = None
    if posed:
        if reference is None and needs_reference(layout):
            raise InputError("an end-effector action relative to the measured pose arrived before any pose was "
                             "measured (delta, relative or partial pose segments)")
        mode = posed[0][0].mode
        base = reference or IDENTITY
        # relative: the action is a pose in the base's frame, its left-out parts the base itself
        start = IDENTITY if mode == "relative" else base
        position, rotation = start.position.copy(), start.rotation
        for s, sl in posed:
            v = action[sl]
            if s.kind == "position":
                idx = [AXES[a] for a in s.axes]
                position[idx] = base.position[idx] + s.scale * v if mode == "delta" else v
            elif mode == "delta":  # robosuite OSC: the delta rotation applied in the reference frame, first
                rotation = REPRESENTATIONS[s.representation].to_matrix(s.scale * v) @ base.rotation
            else:
                rotation = _exact(REPRESENTATIONS[s.representation].to_matrix(v), s.representation)
        pose = Pose(position, rotation)
        if mode == "relative":
            pose = base.compose(pose)
    pick = [np.zeros(0)]
    gripper = np.concatenate(pick + [action[sl] for s, sl in parts if s.kind == "gripper"])
    joints = np.concatenate(pick + [action[sl] for s, sl in parts if s.kind == "joints"])
    return EeAction(pose, gripper, joints)


def _exact(m: np.ndarray, representation: str) -> np.ndarray:
    """A decoded matrix made exact: 6-D (Gram-Schmidt) and quaternions (normalized) already are; a 9-value
    matrix is projected onto the nearest rotation."""
    return orthonormalize(m) if representation == "matrix" else m


def encode(pose: Pose, layout: Layout, action: np.ndarray) -> np.ndarray:
    """``action`` (A,) with its absolute pose segments rewritten to ``pose`` (each in its representation; a
    quaternion keeps the hemisphere it had), the other values as they were: a limited pose back in the vector."""
    out = np.asarray(action, np.float64).copy()
    for s, sl in slices(layout):
        if s.kind == "position":
            out[sl] = pose.position[[AXES[a] for a in s.axes]]
        elif s.kind == "rotation":
            value = REPRESENTATIONS[s.representation].from_matrix(pose.rotation)
            out[sl] = hemisphere(value, out[sl]) if s.representation.startswith("quat_") else value
    return out


def _quaternion_segments(layout: Layout) -> list[tuple]:
    """(segment, slice) of each quaternion in a vector of this layout."""
    return [(s, sl) for s, sl in slices(layout) if s.kind == "rotation" and s.representation.startswith("quat_")]


def quaternion_slices(layout: Layout) -> list[slice]:
    """Where a vector of this layout holds quaternions (whose sign is a choice: q and -q are one rotation)."""
    return [sl for _, sl in _quaternion_segments(layout)]


def continuous_quaternions(value: np.ndarray, layout: Layout, previous: np.ndarray | None) -> np.ndarray:
    """``value`` with each quaternion on the hemisphere of ``previous`` (the stream's previous sample), or with
    none (a stream's start, a reset, a discontinuity) on the canonical one (w >= 0): the sign a policy sees then
    depends on the pose and the path since the last start, never on what the stream went through before (the
    episodes before in a bag, the arm before a teleport: 17 of 300 grasp demonstrations began on the other
    hemisphere)."""
    out = np.array(value, copy=True)
    for s, sl in _quaternion_segments(layout):
        rep = REPRESENTATIONS[s.representation]
        ref = rep.from_matrix(rep.to_matrix(out[sl])) if previous is None else np.asarray(previous)[sl]
        out[sl] = hemisphere(out[sl], ref)
    return out


def ee_poses(history: Mapping[str, np.ndarray], layouts: Mapping[str, Layout]) -> list[Pose]:
    """The end effector's pose in each frame of a history (each key (To, D)), merged over the keys that hold its
    parts: robosuite and UMI keep the position and the rotation in separate keys (``robot0_eef_pos``,
    ``robot0_eef_rot_axis_angle``), and a relative pose needs both (axes no key holds: 0; no rotation: identity).
    Every pose key holds the same measured pose, whatever mode the policy sees it in."""
    frames = len(next(iter(history.values())))
    position, rotation = np.zeros((frames, 3)), np.tile(np.eye(3), (frames, 1, 1))
    for key, layout in layouts.items():
        rows = np.asarray(history[key], np.float64)
        for s, sl in slices(layout):
            if s.kind == "position":
                position[:, [AXES[a] for a in s.axes]] = rows[:, sl]
            elif s.kind == "rotation":
                rotation = np.stack([REPRESENTATIONS[s.representation].to_matrix(v) for v in rows[:, sl]])
    return [Pose(p, r) for p, r in zip(position, rotation)]


def relative_rows(rows: np.ndarray, layout: Layout, poses: list[Pose], base: Pose) -> np.ndarray:
    """(To, D) pose observations -> each frame's pose (``poses``: the whole end-effector pose per frame, ee_poses)
    in the coordinates of ``base``, written in the rows' own segments: inv(base) @ pose, as UMI's
    ``convert_pose_mat_rep(..., pose_rep='relative')`` on the 4x4 of position and rotation together, for
    ``obs_pose_repr: relative`` (base: the newest pose, which becomes the identity) and ``*_wrt_start`` (base: the
    start pose). A position key alone is turned by the base's rotation too: inv(base) @ pose, not pose - base."""
    inv = base.rotation.T
    out = np.asarray(rows, np.float64).copy()
    for i, (row, p) in enumerate(zip(rows, poses)):
        out[i] = encode(Pose(inv @ (p.position - base.position), inv @ p.rotation), layout, row)
    return out.astype(np.float32)
