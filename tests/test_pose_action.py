"""End-effector actions decoded as each framework means them: diffusion_policy's absolute 10-D (equal to its own
undo_transform_action), robosuite OSC deltas against the pose when the step executes, UMI's poses relative to
the pose at observation time, PushT's planar target; refused before any pose was measured."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dp_runtime import layout, rotations
from dp_runtime.checkpoint.layouts import arm_action
from dp_runtime.errors import ConfigError, InputError
from dp_runtime.pose_action import Pose, decode, needs_reference
from tests.helpers.framework_rotations import dp_undo_transform_action, p3d_axis_angle_to_matrix, umi_rot6d_to_mat

ABS = tuple(arm_action(True))
DELTA = tuple(arm_action(False))
RNG = np.random.default_rng(0)


def random_pose() -> Pose:
    return Pose(RNG.normal(size=3), rotations.quat_to_matrix(RNG.normal(size=4)))


def test_absolute_10d_equals_diffusion_policys_own_undo_transform_action():
    # network outputs: positions, slightly non-orthonormal 6-D rows (as a denoiser gives), gripper in [-1, 1]
    m = rotations.quat_to_matrix(RNG.normal(size=(500, 4)))
    actions = np.concatenate([RNG.normal(size=(500, 3)),
                              rotations.matrix_to_rot6d_rows(m) + RNG.normal(scale=0.03, size=(500, 6)),
                              RNG.uniform(-1, 1, size=(500, 1))], axis=1)
    theirs = dp_undo_transform_action(actions)  # (500, 7): pos, axis-angle, gripper
    their_m = p3d_axis_angle_to_matrix(torch.from_numpy(theirs[:, 3:6])).numpy()
    for a, t, tm in zip(actions, theirs, their_m):
        ours = decode(a, ABS, None)
        assert np.abs(ours.pose.position - t[:3]).max() < 1e-6
        assert np.abs(ours.pose.rotation - tm).max() < 1e-6
        assert np.abs(rotations.quat_to_axis_angle(rotations.matrix_to_quat(ours.pose.rotation)) - t[3:6]).max() < 1e-6
        assert ours.gripper.tolist() == [t[6]]
    # dual arm (20 -> 14): two poses, in the same order
    both = np.concatenate([actions[0], actions[1]])
    assert np.allclose(dp_undo_transform_action(both[None])[0], np.concatenate([theirs[0], theirs[1]]), atol=1e-9)


def test_osc_deltas_apply_to_the_pose_when_the_step_executes():
    now = random_pose()
    a = np.array([1.0, -0.5, 0.2, 0.0, 0.0, 1.0, -1.0])  # +5 cm x, ..., 0.5 rad about z, gripper open
    out = decode(a, DELTA, now)
    assert np.allclose(out.pose.position, now.position + 0.05 * a[:3])
    turn = rotations.REPRESENTATIONS["axis_angle"].to_matrix(np.array([0, 0, 0.5]))
    assert np.allclose(out.pose.rotation, turn @ now.rotation)  # robosuite: the delta applied in the base frame
    with pytest.raises(InputError, match="before any pose was measured"):
        decode(a, DELTA, None)


def test_umi_relative_actions_are_decoded_against_the_pose_at_observation_time():
    rel = layout.parse([{"kind": "position", "mode": "relative"},
                        {"kind": "rotation", "representation": "rotation_6d_rows", "mode": "relative"},
                        {"kind": "gripper", "size": 1}], 10, "umi")
    base = random_pose()
    local = random_pose()
    a = np.concatenate([local.position, rotations.matrix_to_rot6d_rows(local.rotation), [0.08]])
    out = decode(a, rel, base)
    # UMI: pose10d_to_mat(action) composed on the base pose as base @ action (umi/common/pose_util.py)
    mat = np.eye(4)
    mat[:3, :3], mat[:3, 3] = umi_rot6d_to_mat(a[3:9]), a[:3]
    bmat = np.eye(4)
    bmat[:3, :3], bmat[:3, 3] = base.rotation, base.position
    want = bmat @ mat
    assert np.abs(out.pose.position - want[:3, 3]).max() < 1e-9 and np.abs(out.pose.rotation - want[:3, :3]).max() < 1e-9
    assert out.gripper.tolist() == [0.08]


def test_planar_target_holds_z_and_orientation():
    xy = layout.parse([{"kind": "position", "axes": "xy"}], 2, "pusht")
    held = random_pose()
    out = decode(np.array([0.3, -0.2]), xy, held)
    assert np.allclose(out.pose.position, [0.3, -0.2, held.position[2]]) and np.allclose(out.pose.rotation, held.rotation)
    assert needs_reference(xy) and not needs_reference(ABS) and needs_reference(DELTA)
    with pytest.raises(InputError):
        decode(np.array([0.3, -0.2]), xy, None)


def test_mixed_pose_modes_and_scaled_6d_are_refused():
    with pytest.raises(ConfigError, match="mix modes"):
        layout.parse([{"kind": "position", "mode": "delta"}, {"kind": "rotation", "representation": "axis_angle"}],
                     6, "a")
    with pytest.raises(ConfigError, match="a scale applies to angles"):
        layout.parse([{"kind": "rotation", "representation": "rotation_6d_rows", "mode": "delta", "scale": 0.5}],
                     6, "a")


def limits(**kw):
    from dp_runtime.control.limits import ActionLimits
    return ActionLimits.from_lists(10, [], [], [], ABS, **kw)


def abs_action(position, rotation, gripper=0.5):
    return np.concatenate([position, rotations.matrix_to_rot6d_rows(rotation), [gripper]])


def test_workspace_box_and_steps_limit_an_absolute_pose_and_are_counted():
    lim = limits(ee_lower=[-0.5, -0.5, 0.05], ee_upper=[0.5, 0.5, 0.8], ee_linear=0.02, ee_angular=0.1)
    start = abs_action([0.3, 0.0, 0.2], np.eye(3))
    assert np.allclose(lim.apply(start, None), start) and lim.limited == 0
    below = lim.apply(abs_action([0.3, 0.0, -0.1], np.eye(3)), None)  # under the table: clamped to z 0.05
    assert np.allclose(below[:3], [0.3, 0.0, 0.05]) and lim.limited == 1
    far = lim.apply(abs_action([0.4, 0.0, 0.2], np.eye(3)), start)  # 10 cm in one tick: 2 cm
    assert np.allclose(far[:3], [0.32, 0.0, 0.2]) and lim.limited == 2
    turn = rotations.REPRESENTATIONS["axis_angle"].to_matrix(np.array([0, 0, -3.0]))  # 3 rad the short way
    limited = lim.apply(abs_action([0.3, 0.0, 0.2], turn), start)
    got = decode(limited, ABS, None).pose.rotation
    want = rotations.REPRESENTATIONS["axis_angle"].to_matrix(np.array([0, 0, -0.1]))
    assert np.abs(got - want).max() < 1e-9 and limited[9] == 0.5  # the gripper untouched
    assert lim.limited == 3


def test_pose_limits_need_an_absolute_pose():
    from dp_runtime.control.limits import ActionLimits
    with pytest.raises(ConfigError, match="limit an absolute end-effector pose .* delta, relative or partial"):
        ActionLimits.from_lists(7, [], [], [], DELTA, ee_linear=0.01)
    with pytest.raises(ConfigError, match="has none"):
        ActionLimits.from_lists(2, [], [], [], layout.joints(["j1", "j2"]), ee_lower=[0, 0, 0])
    with pytest.raises(ConfigError, match="ee_workspace_upper has 2 values, expected 1 or 3"):
        limits(ee_upper=[0.5, 0.5])


def test_a_limited_quaternion_keeps_its_hemisphere():
    quat = layout.parse([{"kind": "position"}, {"kind": "rotation", "representation": "quat_wxyz"}], 7, "q")
    from dp_runtime.control.limits import ActionLimits
    lim = ActionLimits.from_lists(7, [], [], [], quat, ee_upper=[0.1, 1, 1])
    q = -rotations.REPRESENTATIONS["quat_wxyz"].from_matrix(rotations.quat_to_matrix(np.array([0.1, 0.2, 0.3, 0.9])))
    out = lim.apply(np.concatenate([[0.5, 0, 0], q]), None)
    assert out[0] == 0.1 and np.allclose(out[3:], q)  # clamped x; the same quaternion, same sign


def test_replay_errors_per_segment_are_in_metres_and_radians():
    from dp_runtime.replay.report import segment_errors
    rec = np.stack([abs_action([0.3, 0.0, 0.2], np.eye(3), 1.0)] * 4)
    turn = rotations.REPRESENTATIONS["axis_angle"].to_matrix(np.array([0, 0, 0.2]))
    pred = np.stack([abs_action([0.33, 0.04, 0.2], turn, 0.5)] * 4)
    e = segment_errors(pred, rec, ABS)
    assert e["0:position"]["unit"] == "m" and abs(e["0:position"]["p50"] - 0.05) < 1e-9
    assert e["1:rotation rotation_6d_rows"]["unit"] == "rad" and abs(e["1:rotation rotation_6d_rows"]["max"] - 0.2) < 1e-9
    assert e["2:gripper"]["p50"] == 0.5
    # a delta's error is what it moves the arm: the scale applied (0.05 m per unit, OSC)
    d = segment_errors(np.array([[1.0, 0, 0, 0, 0, 0, 0]]), np.zeros((1, 7)), DELTA)
    assert abs(d["0:position"]["max"] - 0.05) < 1e-12 and abs(d["1:rotation axis_angle"]["max"]) < 1e-12
    assert segment_errors(pred, rec, layout.joints([f"a{i}" for i in range(10)])) == {}


def test_umi_relative_observation_history_is_in_the_newest_frame():
    """UMI's obs_pose_repr relative: each history pose as inv(newest) @ pose (umi/common/pose_util.py composes
    4x4 matrices; written here with them), in the observation's own segments."""
    from dp_runtime.pose_action import ee_poses, relative_rows
    segs = layout.parse([{"kind": "position", "mode": "relative"},
                         {"kind": "rotation", "representation": "rotation_6d_rows", "mode": "relative"}], 9, "eef")
    poses = [random_pose() for _ in range(3)]
    history = np.stack([np.concatenate([p.position, rotations.matrix_to_rot6d_rows(p.rotation)]) for p in poses])
    merged = ee_poses({"eef": history}, {"eef": segs})
    rel = relative_rows(history, segs, merged, merged[-1])
    base = np.eye(4)
    base[:3, :3], base[:3, 3] = poses[-1].rotation, poses[-1].position
    for row, p in zip(rel, poses):
        m = np.eye(4)
        m[:3, :3], m[:3, 3] = p.rotation, p.position
        want = np.linalg.inv(base) @ m
        assert np.abs(row[:3] - want[:3, 3]).max() < 1e-5
        assert np.abs(umi_rot6d_to_mat(row[3:].astype(np.float64)) - want[:3, :3]).max() < 1e-5
    assert np.allclose(rel[-1], [0, 0, 0, 1, 0, 0, 0, 1, 0], atol=1e-6)  # the newest is the identity


def test_umi_wrt_start_rotation_is_the_rotation_of_inv_start_at_pose():
    """UMI's robot0_eef_rot_axis_angle_wrt_start (umi/real_world/real_inference_util.py, get_real_umi_obs_dict:
    convert_pose_mat_rep(pose_mat, base_pose_mat=start_pose_mat, pose_rep='relative') = inv(start) @ pose, then
    mat_to_pose10d(...)[:, 3:], the rotation_6d rows): written here with 4x4 matrices."""
    from dp_runtime.pose_action import ee_poses, relative_rows
    segs = layout.parse([{"kind": "rotation", "representation": "rotation_6d_rows", "mode": "start"}], 6, "wrt_start",
                        observation=True)
    start, poses = random_pose(), [random_pose() for _ in range(2)]
    history = np.stack([rotations.matrix_to_rot6d_rows(p.rotation) for p in poses])
    rel = relative_rows(history, segs, ee_poses({"wrt": history}, {"wrt": segs}), start)
    s = np.eye(4)
    s[:3, :3], s[:3, 3] = start.rotation, start.position
    for row, p in zip(rel, poses):
        m = np.eye(4)
        m[:3, :3], m[:3, 3] = p.rotation, p.position
        want = (np.linalg.inv(s) @ m)[:3, :3]
        assert np.abs(umi_rot6d_to_mat(row.astype(np.float64)) - want).max() < 1e-5
