"""Command interfaces as a table: name -> message type, builder, per-chunk or per-tick, recorded decoder.

Adding an interface is one entry here. The node publishes what ``build``
returns; replay decodes recorded commands of any listed type with ``decode``.
Builders take ``(actions, context)``: a per-tick builder gets one action (A,),
a per-chunk builder the remaining actions (K, A); the context carries the
joint names, stamp, period, previous command and, for end-effector outputs,
the action's layout and the frame the target is in.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import ConfigError, InputError, ShapeError
from ..layout import Layout, slices
from ..pose_action import AXES, Pose, decode as decode_action, encode, needs_reference
from ..rotations import REPRESENTATIONS, matrix_to_quat, quat_to_matrix
from .convert import joint_state_to_vector, message_class, normalize_msgtype, sec_to_stamp_fields


@dataclass(frozen=True)
class CommandContext:
    """What a builder needs besides the actions."""
    names: Sequence[str]  # joint names in action order
    stamp: float
    dt: float
    previous: np.ndarray | None = None  # the last command before these (a trajectory's first velocity)
    layout: Layout = ()  # the action's segments (end-effector outputs)
    frame_id: str = ""  # the frame an end-effector target is in
    reference: Pose | None = None  # the measured pose a delta, relative or partial pose is decoded against


def float64_multi_array(action: np.ndarray, ctx: CommandContext):
    """One action as std_msgs/Float64MultiArray (ros2_control forward_command_controller)."""
    from std_msgs.msg import Float64MultiArray
    return Float64MultiArray(data=[float(x) for x in action])


def joint_state_command(action: np.ndarray, ctx: CommandContext):
    from sensor_msgs.msg import JointState
    msg = JointState(name=list(ctx.names), position=[float(x) for x in action])
    msg.header.stamp.sec, msg.header.stamp.nanosec = sec_to_stamp_fields(ctx.stamp)
    return msg


def _pose_stamped(pose: Pose, frame_id: str, stamp: float):
    from geometry_msgs.msg import PoseStamped
    msg = PoseStamped()
    msg.header.frame_id = frame_id
    msg.header.stamp.sec, msg.header.stamp.nanosec = sec_to_stamp_fields(stamp)
    msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in pose.position)
    o = msg.pose.orientation
    o.x, o.y, o.z, o.w = (float(v) for v in matrix_to_quat(pose.rotation))
    return msg


def pose_stamped(action: np.ndarray, ctx: CommandContext):
    """One action's pose as a geometry_msgs/PoseStamped target in ``ctx.frame_id`` (cartesian_controllers'
    target_frame, MoveIt Servo's pose target); decoded as the layout says (pose_action.py)."""
    return _pose_stamped(decode_action(action, ctx.layout, ctx.reference).pose, ctx.frame_id, ctx.stamp)


def twist_stamped(action: np.ndarray, ctx: CommandContext):
    """One action's per-step delta as a geometry_msgs/TwistStamped in ``ctx.frame_id``: the delta times its
    scale over one control period (robosuite OSC's step as a velocity, e.g. for MoveIt Servo)."""
    from geometry_msgs.msg import TwistStamped
    msg = TwistStamped()
    msg.header.frame_id = ctx.frame_id
    msg.header.stamp.sec, msg.header.stamp.nanosec = sec_to_stamp_fields(ctx.stamp)
    linear, angular = np.zeros(3), np.zeros(3)
    for s, sl in slices(ctx.layout):
        if s.kind == "position":
            linear[[AXES[a] for a in s.axes]] = s.scale * action[sl] / ctx.dt
        elif s.kind == "rotation":
            angular = REPRESENTATIONS["axis_angle"].from_matrix(
                REPRESENTATIONS[s.representation].to_matrix(s.scale * action[sl])) / ctx.dt
    t = msg.twist
    t.linear.x, t.linear.y, t.linear.z = (float(v) for v in linear)
    t.angular.x, t.angular.y, t.angular.z = (float(v) for v in angular)
    return msg


def pose_trajectory(actions: np.ndarray, ctx: CommandContext):
    """The remaining actions' poses (K, A) as a trajectory_msgs/MultiDOFJointTrajectory in ``ctx.frame_id``: point
    k the pose due (k + 1) * dt from now, for Cartesian controllers that interpolate between timed targets (the
    real UR5 tasks' waypoints); one joint, named ``end_effector``."""
    from builtin_interfaces.msg import Duration
    from geometry_msgs.msg import Transform
    from trajectory_msgs.msg import MultiDOFJointTrajectory, MultiDOFJointTrajectoryPoint
    msg = MultiDOFJointTrajectory(joint_names=["end_effector"])
    msg.header.frame_id = ctx.frame_id
    points = []
    for k, a in enumerate(actions):
        pose = decode_action(a, ctx.layout, None).pose
        tf = Transform()
        tf.translation.x, tf.translation.y, tf.translation.z = (float(v) for v in pose.position)
        r = tf.rotation
        r.x, r.y, r.z, r.w = (float(v) for v in matrix_to_quat(pose.rotation))
        sec, nanosec = sec_to_stamp_fields((k + 1) * ctx.dt)
        points.append(MultiDOFJointTrajectoryPoint(transforms=[tf], time_from_start=Duration(sec=sec, nanosec=nanosec)))
    msg.points = points
    return msg


def pose_path(actions: np.ndarray, ctx: CommandContext):
    """The remaining actions' poses (K, A) as a nav_msgs/Path in ``ctx.frame_id``, pose k stamped when it is due
    (``ctx.stamp`` + (k + 1) * dt): for controllers and planners that follow a timed Cartesian path, and RViz."""
    from nav_msgs.msg import Path
    msg = Path()
    msg.header.frame_id = ctx.frame_id
    msg.header.stamp.sec, msg.header.stamp.nanosec = sec_to_stamp_fields(ctx.stamp)
    msg.poses = [_pose_stamped(decode_action(a, ctx.layout, None).pose, ctx.frame_id, ctx.stamp + (k + 1) * ctx.dt)
                 for k, a in enumerate(actions)]
    return msg


def absolute_pose(name: str, layout: Layout, measures_pose: bool) -> None:
    """A trajectory's check: absolute poses with x, y, z and a rotation (a chunk published at once has no
    measured pose per point to decode against)."""
    target_pose(name, layout, False)


def target_pose(name: str, layout: Layout, measures_pose: bool) -> None:
    """The pose interface's check: a pose, and a measured one where the action is relative to it."""
    if not {s.kind for s in layout} & {"position", "rotation"}:
        raise ConfigError(f"command_interface {name}: the bundle's action has no position or rotation segments "
                          "(dp-inspect shows them; dp-export --layout gives them)")
    if needs_reference(layout) and not measures_pose:
        raise ConfigError(f"command_interface {name}: the action is a delta, relative or partial pose, which is "
                          "decoded against the measured end-effector pose, and the bundle observes none (a pose or "
                          "fk observation; dp-export --layout can say which observation is one)")


def delta_pose(name: str, layout: Layout, measures_pose: bool) -> None:
    """The twist interface's check: per-step deltas (robosuite OSC), whose velocity needs no measured pose."""
    posed = [s for s in layout if s.kind in ("position", "rotation")]
    if not posed or posed[0].mode != "delta":
        raise ConfigError(f"command_interface {name}: publishes per-step deltas as velocities; the bundle's action "
                          f"is {'not a pose' if not posed else posed[0].mode} (use pose for absolute poses)")


def joint_trajectory(actions: np.ndarray, ctx: CommandContext):
    """Remaining actions (K, A) as a JointTrajectory starting now (stamp zero).

    Point k has time_from_start (k + 1) * dt and finite-difference velocities;
    joint_trajectory_controller replaces the running trajectory with each one.
    """
    from builtin_interfaces.msg import Duration
    from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint
    msg = JointTrajectory(joint_names=list(ctx.names))
    dt = ctx.dt
    prev = ctx.previous if ctx.previous is not None else actions[0]
    points = []
    for k, a in enumerate(actions):
        vel = (a - prev) / dt
        prev = a
        sec, nanosec = sec_to_stamp_fields((k + 1) * dt)
        points.append(JointTrajectoryPoint(positions=[float(x) for x in a], velocities=[float(x) for x in vel],
                                           time_from_start=Duration(sec=sec, nanosec=nanosec)))
    msg.points = points
    return msg


@dataclass(frozen=True)
class DecodeContext:
    """What a recorded command's decoder needs besides the message."""
    names: Sequence[str]  # the action's names, in order
    what: str = "command"  # the topic, for messages
    layout: Layout = ()  # end-effector commands: the action's segments they fill
    dt: float = 0.0  # twist: the control period a velocity was held for (its delta = velocity * dt)


def decode_float64_multi_array(msg: Any, ctx: DecodeContext) -> np.ndarray:
    vec = np.asarray(msg.data, dtype=np.float64)
    if vec.shape != (len(ctx.names),):
        raise ShapeError(f"{ctx.what}: {vec.size} values, expected {len(ctx.names)} ({list(ctx.names)})")
    return vec


def decode_joint_state(msg: Any, ctx: DecodeContext) -> np.ndarray:
    return joint_state_to_vector(msg, ctx.names, "position", ctx.what).astype(np.float64)


def decode_joint_trajectory(msg: Any, ctx: DecodeContext) -> np.ndarray:
    """A recorded trajectory's first point, in action order."""
    if not len(msg.points):
        raise ShapeError(f"{ctx.what}: trajectory without points")
    index = {n: i for i, n in enumerate(msg.joint_names)}
    missing = [n for n in ctx.names if n not in index]
    if missing:
        raise InputError(f"{ctx.what}: missing joint(s) {missing}; message has {list(msg.joint_names)}")
    return np.array([msg.points[0].positions[index[n]] for n in ctx.names], dtype=np.float64)


def _posed(ctx: DecodeContext) -> np.ndarray:
    """An action vector of NaN (the parts a pose command does not carry: the gripper's comes on its own topic)."""
    if not any(s.kind in ("position", "rotation") for s in ctx.layout):
        raise InputError(f"{ctx.what}: an end-effector command, and the action's layout has no position or "
                         "rotation segments (dataset action_layout)")
    return np.full(sum(s.size for s in ctx.layout), np.nan)


def decode_pose_stamped(msg: Any, ctx: DecodeContext) -> np.ndarray:
    """A recorded PoseStamped target -> the action's absolute pose segments (the others NaN)."""
    out = _posed(ctx)
    p, o = msg.pose.position, msg.pose.orientation
    try:
        rotation = quat_to_matrix(np.array([o.x, o.y, o.z, o.w], np.float64))
    except InputError as e:
        raise InputError(f"{ctx.what}: orientation {e}") from None
    return encode(Pose(np.array([p.x, p.y, p.z], np.float64), rotation), ctx.layout, out)


def decode_twist_stamped(msg: Any, ctx: DecodeContext) -> np.ndarray:
    """A recorded TwistStamped -> the action's per-step delta segments: velocity * dt / scale (the inverse of
    ``twist_stamped``); the others NaN."""
    if not ctx.dt > 0:
        raise ConfigError(f"{ctx.what}: twist commands need the control period they were held for "
                          "(dataset command_period_s)")
    out = _posed(ctx)
    t = msg.twist
    linear = np.array([t.linear.x, t.linear.y, t.linear.z], np.float64) * ctx.dt
    angular = np.array([t.angular.x, t.angular.y, t.angular.z], np.float64) * ctx.dt
    for s, sl in slices(ctx.layout):
        if s.kind == "position":
            out[sl] = linear[[AXES[a] for a in s.axes]] / s.scale
        elif s.kind == "rotation":
            out[sl] = REPRESENTATIONS[s.representation].from_matrix(
                REPRESENTATIONS["axis_angle"].to_matrix(angular)) / s.scale
    return out


@dataclass(frozen=True)
class CommandInterface:
    name: str  # the node parameter command_interface
    msgtype: str
    per_chunk: bool  # one message per chunk (a trajectory) instead of one per control tick
    build: Callable[[np.ndarray, CommandContext], Any]
    decode: Callable[[Any, DecodeContext], np.ndarray] | None  # a recorded command -> (A,); None: not read
    accepts: Callable[[str, Layout, bool], None] | None = None  # end-effector: refuses what it cannot express

    @property
    def message_class(self):
        return message_class(self.msgtype)

    @property
    def pose(self) -> bool:
        """An end-effector interface (it publishes the pose part of the action only)."""
        return self.accepts is not None

    def check(self, layout: Layout, measures_pose: bool = False) -> None:
        """Refuse an action this interface cannot express (before the first command, never a wrong one);
        ``measures_pose``: the bundle observes the end-effector pose (relative actions can be decoded)."""
        if self.accepts is not None:
            self.accepts(self.name, layout, measures_pose)


COMMAND_INTERFACES: dict[str, CommandInterface] = {i.name: i for i in (
    CommandInterface("float64_multi_array", "std_msgs/msg/Float64MultiArray", False, float64_multi_array,
                     decode_float64_multi_array),
    CommandInterface("joint_trajectory", "trajectory_msgs/msg/JointTrajectory", True, joint_trajectory,
                     decode_joint_trajectory),
    CommandInterface("joint_state", "sensor_msgs/msg/JointState", False, joint_state_command, decode_joint_state),
    CommandInterface("pose", "geometry_msgs/msg/PoseStamped", False, pose_stamped, decode_pose_stamped, target_pose),
    CommandInterface("twist", "geometry_msgs/msg/TwistStamped", False, twist_stamped, decode_twist_stamped,
                     delta_pose),
    CommandInterface("pose_trajectory", "trajectory_msgs/msg/MultiDOFJointTrajectory", True, pose_trajectory, None,
                     absolute_pose),
    CommandInterface("pose_path", "nav_msgs/msg/Path", True, pose_path, None, absolute_pose),
)}
RECORDED_COMMAND_TYPES = tuple(i.msgtype for i in COMMAND_INTERFACES.values() if i.decode is not None)


def command_interface(name: str) -> CommandInterface:
    try:
        return COMMAND_INTERFACES[name]
    except KeyError:
        raise ConfigError(f"command_interface must be one of {tuple(COMMAND_INTERFACES)}, got {name!r}") from None


def command_to_vector(msg: Any, msgtype: str, names: Sequence[str], what: str = "command", layout: Layout = (),
                      dt: float = 0.0) -> np.ndarray:
    """A recorded command message of any interface's type -> (A,) float64 in action order (an end-effector
    command: its pose segments, the rest NaN)."""
    for interface in COMMAND_INTERFACES.values():
        if interface.decode is not None and interface.msgtype == normalize_msgtype(msgtype):
            return interface.decode(msg, DecodeContext(names, what, layout, dt))
    raise InputError(f"{what}: unsupported command type {msgtype}; expected one of {RECORDED_COMMAND_TYPES}")


@dataclass(frozen=True)
class CommandOutput:
    """One more output beside the main command: a slice of the action published through a per-tick joint
    interface (the gripper joint of an end-effector policy, to its own controller)."""
    spec: str  # as configured: SELECTOR:INTERFACE:TOPIC
    columns: tuple[int, ...]  # the action's indices it publishes
    names: tuple[str, ...]  # joint names of those columns
    interface: CommandInterface
    topic: str

    def build(self, action: np.ndarray, ctx: CommandContext):
        previous = None if ctx.previous is None else np.asarray(ctx.previous)[list(self.columns)]
        return self.interface.build(np.asarray(action)[list(self.columns)],
                                    CommandContext(self.names, ctx.stamp, ctx.dt, previous))


def command_outputs(specs: Sequence[str], layout: Layout, action_names: Sequence[str]) -> list[CommandOutput]:
    """``command_outputs`` entries, each SELECTOR:INTERFACE:TOPIC; SELECTOR a segment kind (every segment of it)
    or an index range i-j of the action (j exclusive)."""
    out = []
    for spec in specs:
        parts = spec.split(":", 2)
        if len(parts) != 3 or not all(parts):
            raise ConfigError(f"command_outputs entry {spec!r}: expected SELECTOR:INTERFACE:TOPIC, e.g. "
                              "gripper:float64_multi_array:/gripper_controller/commands")
        selector, name, topic = parts
        interface = command_interface(name)
        if interface.per_chunk or interface.pose:
            raise ConfigError(f"command_outputs entry {spec!r}: {name} is not a per-tick joint interface "
                              "(float64_multi_array or joint_state)")
        if "-" in selector and selector.replace("-", "").isdigit():
            a, b = (int(x) for x in selector.split("-"))
            columns = tuple(range(a, b))
            if not 0 <= a < b <= len(action_names):
                raise ConfigError(f"command_outputs entry {spec!r}: range {a}-{b} outside the action's "
                                  f"{len(action_names)} values")
            names = tuple(action_names[i] for i in columns)
        else:
            picked = [(s, sl) for s, sl in slices(layout) if s.kind == selector]
            if not picked:
                raise ConfigError(f"command_outputs entry {spec!r}: the action has no {selector!r} segment; it has "
                                  f"{', '.join(s.describe() for s in layout)} (or give an index range i-j)")
            columns = tuple(i for _, sl in picked for i in range(sl.start, sl.stop))
            names = tuple(n for s, sl in picked for n in (s.names or [action_names[i] for i in range(sl.start, sl.stop)]))
        out.append(CommandOutput(spec, columns, names, interface, topic))
    return out
