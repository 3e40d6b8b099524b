"""The command-interface table: every entry builds its message and decodes it back (replay's recorded commands)."""
import numpy as np
import pytest

pytest.importorskip("std_msgs")

from dp_runtime.errors import ConfigError, InputError  # noqa: E402
from dp_runtime import layout, rotations  # noqa: E402
from dp_runtime.checkpoint.layouts import arm_action  # noqa: E402
from dp_runtime.ros.commands import (COMMAND_INTERFACES, CommandContext, command_interface,  # noqa: E402
                                     command_to_vector)
from tests.helpers.framework_rotations import dp_undo_transform_action  # noqa: E402

NAMES = ["j1", "j2"]


@pytest.mark.parametrize("name", sorted(n for n, i in COMMAND_INTERFACES.items() if not i.pose))
def test_each_interface_round_trips(name):
    ci = COMMAND_INTERFACES[name]
    actions = np.array([[0.5, -1.0], [0.6, -0.9]]) if ci.per_chunk else np.array([0.5, -1.0])
    msg = ci.build(actions, CommandContext(NAMES, 12.5, 0.1))
    assert isinstance(msg, ci.message_class)
    first = actions[0] if ci.per_chunk else actions
    assert np.allclose(command_to_vector(msg, ci.msgtype, NAMES), first)
    # Early rosbag2 type names ('pkg/Type') are the same type.
    assert np.allclose(command_to_vector(msg, ci.msgtype.replace("/msg/", "/"), NAMES), first)


def test_unknown_interface_and_type_are_refused_by_name():
    with pytest.raises(ConfigError, match="command_interface must be one of .*'twist'"):
        command_interface("velocity")
    with pytest.raises(InputError, match="unsupported command type geometry_msgs/msg/Twist"):
        command_to_vector(object(), "geometry_msgs/msg/Twist", NAMES)


def test_pose_targets_equal_diffusion_policys_own_undo_of_the_same_actions():
    """A diffusion_policy *_abs action (10-D: pos, rotation_6d rows, gripper) as a PoseStamped target: the pose
    robosuite would be sent by the framework's env runner (undo_transform_action), within 1e-6."""
    ci = command_interface("pose")
    abs_layout = tuple(arm_action(True))
    ci.check(abs_layout)
    rng = np.random.default_rng(1)
    m = rotations.quat_to_matrix(rng.normal(size=(200, 4)))
    actions = np.concatenate([rng.normal(size=(200, 3)), rotations.matrix_to_rot6d_rows(m)
                              + rng.normal(scale=0.03, size=(200, 6)), rng.uniform(-1, 1, (200, 1))], axis=1)
    theirs = dp_undo_transform_action(actions)
    for a, t in zip(actions, theirs):
        msg = ci.build(a, CommandContext(NAMES, 12.5, 0.1, layout=abs_layout, frame_id="base"))
        assert msg.header.frame_id == "base" and msg.header.stamp.sec == 12
        p, o = msg.pose.position, msg.pose.orientation
        assert np.abs(np.array([p.x, p.y, p.z]) - t[:3]).max() < 1e-6
        q = np.array([o.x, o.y, o.z, o.w])
        assert abs(np.linalg.norm(q) - 1) < 1e-9
        got = rotations.REPRESENTATIONS["quat_xyzw"].to_matrix(q)
        want = rotations.REPRESENTATIONS["axis_angle"].to_matrix(t[3:6])
        assert np.abs(got - want).max() < 1e-6


def test_pose_interface_refuses_actions_it_cannot_express():
    ci = command_interface("pose")
    with pytest.raises(ConfigError, match="no position or rotation segments"):
        ci.check(layout.joints(NAMES))
    with pytest.raises(ConfigError, match="decoded against the measured end-effector pose, and the bundle observes none"):
        ci.check(tuple(arm_action(False)))  # robosuite OSC deltas
    with pytest.raises(ConfigError, match="decoded against the measured end-effector pose, and the bundle observes none"):
        ci.check(layout.parse([{"kind": "position", "axes": "xy"}], 2, "pusht"))
    ci.check(tuple(arm_action(False)), measures_pose=True)  # with a pose observation, decoded against it
    with pytest.raises(InputError, match="an end-effector command, and the action's layout has no position"):
        command_to_vector(object(), "geometry_msgs/msg/PoseStamped", NAMES)  # not read back as joints


def test_twist_is_robosuite_osc_deltas_over_one_period():
    ci = command_interface("twist")
    delta = tuple(arm_action(False))  # [dpos x 0.05 m, d-axis-angle x 0.5 rad, gripper]
    ci.check(delta)
    msg = ci.build(np.array([1.0, -0.5, 0.2, 0.0, 0.0, 0.4, -1.0]), CommandContext(NAMES, 3.0, 0.05, layout=delta,
                                                                                   frame_id="base"))
    t = msg.twist
    assert msg.header.frame_id == "base"
    assert np.allclose([t.linear.x, t.linear.y, t.linear.z], np.array([1.0, -0.5, 0.2]) * 0.05 / 0.05)
    assert np.allclose([t.angular.x, t.angular.y, t.angular.z], [0, 0, 0.4 * 0.5 / 0.05])
    with pytest.raises(ConfigError, match="command_interface twist: publishes per-step deltas .* is absolute"):
        ci.check(tuple(arm_action(True)))


@pytest.mark.parametrize("params, words", [
    ({"command_interface": "twist", "on_stale": "hold_position"},
     "on_stale hold_position holds the measured joints"),
    ({"command_interface": "pose"}, "the bundle observes none"),
])
def test_end_effector_interfaces_refuse_settings_that_would_command_wrongly(params, words):
    from dataclasses import replace

    from dp_runtime.ros.params import NodeParams
    from dp_runtime.ros.runtime import open_runtime
    from dp_runtime.spec import ActionSpec
    from test_control import SPEC, FakeEngine
    segments = tuple(arm_action(False))

    class DeltaEngine(FakeEngine):
        spec = replace(SPEC, action=ActionSpec(7, tuple(f"a{i}" for i in range(7)), 1, 5, layout=segments))
    with pytest.raises(ConfigError, match=words):
        open_runtime(NodeParams(bundle="b", **params), lambda name, default: default, engine=DeltaEngine())


def test_deltas_may_hold_on_starvation_through_twist_and_pose():
    """A delta policy's hold is a zero step (the runner's), never the last delta again: twist and pose accept
    on_starvation hold (refused before the zero step: the last velocity or delta would have been repeated)."""
    from dp_runtime.ros.params import NodeParams
    from dp_runtime.ros.runtime import open_runtime
    from test_ee_runner import engine_for
    engine = engine_for(tuple(arm_action(False)), np.zeros((8, 7)))
    for interface in ("twist", "pose"):
        runtime = open_runtime(NodeParams(bundle="b", command_interface=interface, on_starvation="hold"),
                               lambda name, default: default, engine=engine)
        assert runtime.runner.deltas and runtime.runner.hold_on_starvation


def test_command_outputs_publish_a_slice_through_a_joint_interface():
    from dp_runtime.ros.commands import command_outputs
    abs_layout = tuple(arm_action(True))
    names = [f"a{i}" for i in range(10)]
    (grip,) = command_outputs(["gripper:float64_multi_array:/gripper/commands"], abs_layout, names)
    assert grip.columns == (9,) and grip.topic == "/gripper/commands"
    action = np.arange(10, dtype=float)
    assert list(grip.build(action, CommandContext(names, 1.0, 0.1)).data) == [9.0]
    (rng,) = command_outputs(["0-3:joint_state:/xyz"], abs_layout, names)
    msg = rng.build(action, CommandContext(names, 1.0, 0.1))
    assert list(msg.name) == ["a0", "a1", "a2"] and list(msg.position) == [0.0, 1.0, 2.0]
    for bad, words in (("gripper:/x", "expected SELECTOR:INTERFACE:TOPIC"),
                       ("gripper:pose:/x", "not a per-tick joint interface"),
                       ("gripper:joint_trajectory:/x", "not a per-tick joint interface"),
                       ("joints:float64_multi_array:/x", "the action has no 'joints' segment; it has position xyz"),
                       ("8-12:float64_multi_array:/x", "range 8-12 outside the action's 10 values")):
        with pytest.raises(ConfigError, match=words):
            command_outputs([bad], abs_layout, names)


def test_pose_trajectory_times_the_remaining_chunks_poses():
    ci = command_interface("pose_trajectory")
    abs_layout = tuple(arm_action(True))
    ci.check(abs_layout)
    rng = np.random.default_rng(3)
    m = rotations.quat_to_matrix(rng.normal(size=(3, 4)))
    actions = np.concatenate([rng.normal(size=(3, 3)), rotations.matrix_to_rot6d_rows(m), np.zeros((3, 1))], axis=1)
    msg = ci.build(actions, CommandContext(NAMES, 0.0, 0.1, layout=abs_layout, frame_id="base"))
    assert ci.per_chunk and msg.header.frame_id == "base" and list(msg.joint_names) == ["end_effector"]
    for k, (point, a, rot) in enumerate(zip(msg.points, actions, m)):
        t = point.time_from_start
        assert abs(t.sec + t.nanosec * 1e-9 - 0.1 * (k + 1)) < 1e-9
        tr, q = point.transforms[0].translation, point.transforms[0].rotation
        assert np.allclose([tr.x, tr.y, tr.z], a[:3])
        assert np.abs(rotations.quat_to_matrix(np.array([q.x, q.y, q.z, q.w])) - rot).max() < 1e-9
    with pytest.raises(ConfigError, match="pose_trajectory: the action is a delta, relative or partial pose"):
        ci.check(tuple(arm_action(False)), measures_pose=True)  # a chunk at once has no pose to decode each against


def test_pose_path_stamps_each_remaining_pose_when_it_is_due():
    ci = command_interface("pose_path")
    abs_layout = tuple(arm_action(True))
    rng = np.random.default_rng(4)
    m = rotations.quat_to_matrix(rng.normal(size=(3, 4)))
    actions = np.concatenate([rng.normal(size=(3, 3)), rotations.matrix_to_rot6d_rows(m), np.zeros((3, 1))], axis=1)
    msg = ci.build(actions, CommandContext(NAMES, 100.25, 0.1, layout=abs_layout, frame_id="base"))
    assert ci.per_chunk and ci.msgtype == "nav_msgs/msg/Path" and msg.header.frame_id == "base"
    assert msg.header.stamp.sec == 100 and msg.header.stamp.nanosec == 250_000_000
    for k, (pose, a, rot) in enumerate(zip(msg.poses, actions, m)):
        stamp = pose.header.stamp.sec + pose.header.stamp.nanosec * 1e-9
        assert pose.header.frame_id == "base" and abs(stamp - (100.25 + 0.1 * (k + 1))) < 1e-6
        p, q = pose.pose.position, pose.pose.orientation
        assert np.allclose([p.x, p.y, p.z], a[:3])
        assert np.abs(rotations.quat_to_matrix(np.array([q.x, q.y, q.z, q.w])) - rot).max() < 1e-9
    with pytest.raises(ConfigError, match="pose_path: the action is a delta, relative or partial pose"):
        ci.check(tuple(arm_action(False)), measures_pose=True)


def test_recorded_pose_and_twist_commands_decode_into_the_actions_that_built_them():
    """A demonstration bag's PoseStamped targets and TwistStamped velocities back into the action (dp-dataset, replay
    reports): the pose segments in their representation, what the message does not carry (the gripper) NaN."""
    rng = np.random.default_rng(0)
    absolute, delta = tuple(arm_action(True)), tuple(arm_action(False))
    names = [f"a{i}" for i in range(10)]
    for _ in range(50):
        m = rotations.REPRESENTATIONS["axis_angle"].to_matrix(rng.normal(size=3))
        action = np.array([*rng.normal(size=3), *m[:2].reshape(-1), 1.0])
        msg = command_interface("pose").build(action, CommandContext(names, 1.0, 0.1, layout=absolute))
        got = command_to_vector(msg, "geometry_msgs/msg/PoseStamped", names, "/target", absolute)
        assert np.abs(got[:9] - action[:9]).max() < 1e-9 and np.isnan(got[9])
        step = np.array([*rng.uniform(-1, 1, 6), -1.0])
        msg = command_interface("twist").build(step, CommandContext(names[:7], 1.0, 0.1, layout=delta))
        got = command_to_vector(msg, "geometry_msgs/msg/TwistStamped", names[:7], "/twist", delta, 0.1)
        assert np.abs(got[:6] - step[:6]).max() < 1e-9 and np.isnan(got[6])
    with pytest.raises(ConfigError, match="twist commands need the control period"):
        command_to_vector(msg, "geometry_msgs/msg/TwistStamped", names[:7], "/twist", delta)
    with pytest.raises(InputError, match="/target: an end-effector command, and the action's layout has no position"):
        command_to_vector(command_interface("pose").build(action, CommandContext(names, 1.0, 0.1, layout=absolute)),
                          "geometry_msgs/msg/PoseStamped", names, "/target")
    zero = command_interface("pose").build(action, CommandContext(names, 1.0, 0.1, layout=absolute))
    zero.pose.orientation.w = zero.pose.orientation.x = zero.pose.orientation.y = zero.pose.orientation.z = 0.0
    with pytest.raises(InputError, match="orientation .* is zero or not finite"):
        command_to_vector(zero, "geometry_msgs/msg/PoseStamped", names, "/target", absolute)
