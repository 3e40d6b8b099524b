"""What a foreign checkpoint's low-dim observations and actions are, from what the checkpoint says.

robosuite names its end-effector observations (``robot0_eef_pos``, ``robot0_eef_quat`` xyzw,
``robot0_gripper_qpos``); diffusion_policy's real UR5 tasks read ``robot_eef_pose`` (TCP position and
rotation vector); UMI ``robot0_eef_rot_axis_angle``. Actions: diffusion_policy's ``abs_action`` tasks
predict [pos3, rotation_6d, gripper] per arm (its RotationTransformer's ``rotation_6d`` is pytorch3d's,
the first two rows); otherwise robosuite's OSC_POSE deltas [dpos, d-axis-angle, gripper] in [-1, 1],
scaled by the controller's output_max (0.05 m, 0.5 rad by default: not in the checkpoint, so recorded
as assumed); robomimic names its action parts in ``train.action_keys``. A vector no rule recognizes
keeps no layout (joint values with their names, as before); dp-export --layout says it explicitly.

LeRobot's checkpoints record shapes only; its datasets name each element (``meta/info.json``, features
``names``), and its end-effector pipelines (the kinematics processor steps) name the pose ``ee.x ee.y ee.z``
and ``ee.wx ee.wy ee.wz`` (a rotation vector) beside ``ee.gripper_pos``: ``dp-export --layout
meta/info.json`` reads the layout from those names.
"""
from __future__ import annotations

import re
from typing import Any

from ..errors import CheckpointError
from ..layout import Segment

# robosuite's OSC_POSE defaults (controller config output_max): metres / radians per unit of a delta action
OSC_POS_SCALE, OSC_ROT_SCALE = 0.05, 0.5
OSC_ASSUMED = "robosuite OSC_POSE output_max defaults (0.05 m, 0.5 rad per unit); not in the checkpoint"

# observation key suffix -> its segments (the first match wins; sizes are checked against the shape)
OBS_RULES: tuple[tuple[str, int, tuple[Segment, ...]], ...] = (
    # UMI (real_inference_util.get_real_umi_obs_dict): the rotation of inv(episode start pose) @ pose, rotation_6d
    ("eef_rot_axis_angle_wrt_start", 6, (Segment("rotation", 6, representation="rotation_6d_rows", mode="start"),)),
    ("eef_pos_wrt_start", 3, (Segment("position", 3, axes="xyz", mode="start"),)),
    ("eef_pos", 3, (Segment("position", 3, axes="xyz"),)),
    ("eef_quat", 4, (Segment("rotation", 4, representation="quat_xyzw"),)),
    ("eef_rot_axis_angle", 3, (Segment("rotation", 3, representation="axis_angle"),)),
    # UMI stores the rotation under this name as rotation_6d (shape_meta rotation_rep, pytorch3d's rows)
    ("eef_rot_axis_angle", 6, (Segment("rotation", 6, representation="rotation_6d_rows"),)),
    ("eef_pose", 6, (Segment("position", 3, axes="xyz"), Segment("rotation", 3, representation="axis_angle"))),
)

# robomimic action_keys part (after the last "/") -> its segment
ACTION_KEY_RULES: dict[str, Segment] = {
    "abs_pos": Segment("position", 3, axes="xyz"),
    "abs_rot_6d": Segment("rotation", 6, representation="rotation_6d_rows"),
    "abs_rot_axis_angle": Segment("rotation", 3, representation="axis_angle"),
    "rel_pos": Segment("position", 3, axes="xyz", mode="delta", assumed="robomimic rel_pos: a per-step delta"),
    "rel_rot_axis_angle": Segment("rotation", 3, representation="axis_angle", mode="delta",
                                  assumed="robomimic rel_rot_axis_angle: a per-step delta"),
    "gripper": Segment("gripper", 1),
}


# element names -> segments (LeRobot's end-effector features); the names must come in this order
NAME_RULES: tuple[tuple[tuple[str, ...], Segment], ...] = (
    (("ee.x", "ee.y", "ee.z"), Segment("position", 3, axes="xyz")),
    (("ee.wx", "ee.wy", "ee.wz"), Segment("rotation", 3, representation="axis_angle")),
)
GRIPPER_NAMES = ("ee.gripper_pos", "gripper.pos", "gripper_pos", "gripper")


def named_layout(names: list[str]) -> list[dict[str, Any]]:
    """The segments of a vector whose elements are ``names`` (a LeRobot dataset's feature names): the
    end-effector pose by NAME_RULES, a gripper by GRIPPER_NAMES, runs of other names as joints; [] when no
    end-effector name is there (joint values with their names, as before)."""
    out: list[Segment] = []
    run: list[str] = []
    i = 0
    while i < len(names):
        rule = next((seg for group, seg in NAME_RULES if tuple(names[i:i + len(group)]) == group), None)
        if rule is None and names[i] not in GRIPPER_NAMES:
            run.append(names[i])
            i += 1
            continue
        if run:
            out.append(Segment("joints", len(run), names=tuple(run)))
            run = []
        out.append(rule or Segment("gripper", 1))
        i += rule.size if rule else 1
    if run:
        out.append(Segment("joints", len(run), names=tuple(run)))
    return [s.to_json() for s in out] if any(s.kind in ("position", "rotation") for s in out) else []


def obs_layout(key: str, size: int, pose_repr: str | None = None) -> list[dict[str, Any]]:
    """The segments of low-dim observation ``key`` by robosuite's / diffusion_policy's / UMI's names ([]: none);
    ``pose_repr`` "relative" (UMI's ``obs_pose_repr``): the pose history is seen relative to the newest pose (a
    ``*_wrt_start`` key stays relative to the start pose)."""
    if key.endswith("gripper_qpos") or key.endswith("gripper_width"):
        return [Segment("gripper", size).to_json()]
    if re.search(r"_wrt\d+$", key):  # no joint values to read it as: refused, not wired to a JointState
        raise CheckpointError(f"observation {key}: UMI's pose of one arm relative to another (a bimanual policy); "
                              "dp_runtime runs one end effector per policy")
    mode = {"relative": {"mode": "relative"}}.get(pose_repr or "", {})
    for suffix, n, segments in OBS_RULES:
        if key.endswith(suffix) and size == n:
            return [s.to_json() | (mode if s.mode == "absolute" else {}) for s in segments]
    return []


def arm_action(abs_action: bool | None, rotation_rep: str = "rotation_6d") -> tuple[Segment, ...]:
    """One arm's action in diffusion_policy's robomimic tasks (``abs_action``, its RotationTransformer's
    ``rotation_6d``: pytorch3d's rows) or robosuite's OSC deltas."""
    if abs_action:
        rep = {"rotation_6d": "rotation_6d_rows", "axis_angle": "axis_angle"}.get(rotation_rep, "")
        return (Segment("position", 3, axes="xyz"), Segment("rotation", 6 if rep.startswith("rotation_6d") else 3,
                                                            representation=rep or "rotation_6d_rows"),
                Segment("gripper", 1))
    return (Segment("position", 3, axes="xyz", mode="delta", scale=OSC_POS_SCALE, assumed=OSC_ASSUMED),
            Segment("rotation", 3, representation="axis_angle", mode="delta", scale=OSC_ROT_SCALE,
                    assumed=OSC_ASSUMED),
            Segment("gripper", 1))


def diffusion_policy_action(action_dim: int, obs_keys: list[str], abs_action: bool | None,
                            rotation_rep: str | None, pose_repr: str | None = None) -> list[dict[str, Any]]:
    """diffusion_policy's action layout: robomimic tasks (10/20 absolute, 7/14 delta per arm), the real UR5
    tasks (6: TCP pose waypoints; 2: PushT's xy), UMI (``action_pose_repr``: 10-D per arm, relative to the pose
    at the observation time, or absolute), else [] (no rule: joint values)."""
    if pose_repr in ("relative", "abs") and action_dim in (10, 20):
        mode = "relative" if pose_repr == "relative" else "absolute"
        return [s.to_json() | ({"mode": mode} if s.kind != "gripper" else {})
                for s in arm_action(True, rotation_rep or "rotation_6d") * (action_dim // 10)]
    if "robot_eef_pose" in obs_keys:
        if action_dim == 6:
            return [Segment("position", 3, axes="xyz").to_json(),
                    Segment("rotation", 3, representation="axis_angle").to_json()]
        if action_dim == 2:
            return [Segment("position", 2, axes="xy").to_json()]
        return []
    if not any(k.endswith("eef_pos") for k in obs_keys):
        return []
    arms = {10: (1, True), 20: (2, True), 7: (1, False), 14: (2, False)}.get(action_dim)
    if arms is None:
        return []
    n, absolute = arms
    if abs_action is not None and bool(abs_action) != absolute:
        return []  # the dimension and the flag disagree: no guess
    note = "" if abs_action is not None else f"abs_action not in the config; {action_dim}-D read as " + \
        ("absolute pose" if absolute else "OSC deltas")
    segments = arm_action(absolute, rotation_rep or "rotation_6d") * n
    return [s.to_json() | ({"assumed": note} if note and not s.assumed else {}) for s in segments]


def robomimic_action(action_keys: list[str], action_dim: int, obs_keys: list[str]) -> list[dict[str, Any]]:
    """robomimic's action layout: from ``train.action_keys`` where each names a known part, else (one
    ``actions`` key, a robosuite arm observed) robosuite's 7-D OSC deltas per arm, else []."""
    parts = [ACTION_KEY_RULES.get(k.rsplit("/", 1)[-1]) for k in action_keys]
    if action_keys and all(parts) and sum(p.size for p in parts) == action_dim:
        return [p.to_json() for p in parts]
    robosuite = any(k.endswith("eef_pos") for k in obs_keys)
    if robosuite and action_keys in ([], ["actions"]) and action_dim in (7, 14):
        return [s.to_json() for s in arm_action(False) * (action_dim // 7)]
    return []
