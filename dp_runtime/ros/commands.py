"""Command interfaces as a table: name -> message type, builder, per-chunk or per-tick, recorded decoder.

Adding an interface is one entry here. The node publishes what ``build``
returns; replay decodes recorded commands of any listed type with ``decode``.
Builders take ``(actions, names, stamp, dt, previous)``: a per-tick builder
gets one action (A,), a per-chunk builder the remaining actions (K, A).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import ConfigError, InputError, ShapeError
from .convert import joint_state_to_vector, message_class, normalize_msgtype, sec_to_stamp_fields


def float64_multi_array(action: np.ndarray, names: Sequence[str], stamp: float, dt: float, previous=None):
    """One action as std_msgs/Float64MultiArray (ros2_control forward_command_controller)."""
    from std_msgs.msg import Float64MultiArray
    return Float64MultiArray(data=[float(x) for x in action])


def joint_state_command(action: np.ndarray, names: Sequence[str], stamp: float, dt: float, previous=None):
    from sensor_msgs.msg import JointState
    msg = JointState(name=list(names), position=[float(x) for x in action])
    msg.header.stamp.sec, msg.header.stamp.nanosec = sec_to_stamp_fields(stamp)
    return msg


def joint_trajectory(actions: np.ndarray, names: Sequence[str], stamp: float, dt: float,
                     previous: np.ndarray | None = None):
    """Remaining actions (K, A) as a JointTrajectory starting now (stamp zero).

    Point k has time_from_start (k + 1) * dt and finite-difference velocities;
    joint_trajectory_controller replaces the running trajectory with each one.
    """
    from builtin_interfaces.msg import Duration
    from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint
    msg = JointTrajectory(joint_names=list(names))
    prev = previous if previous is not None else actions[0]
    points = []
    for k, a in enumerate(actions):
        vel = (a - prev) / dt
        prev = a
        sec, nanosec = sec_to_stamp_fields((k + 1) * dt)
        points.append(JointTrajectoryPoint(positions=[float(x) for x in a], velocities=[float(x) for x in vel],
                                           time_from_start=Duration(sec=sec, nanosec=nanosec)))
    msg.points = points
    return msg


def decode_float64_multi_array(msg: Any, names: Sequence[str], what: str) -> np.ndarray:
    vec = np.asarray(msg.data, dtype=np.float64)
    if vec.shape != (len(names),):
        raise ShapeError(f"{what}: {vec.size} values, expected {len(names)} ({list(names)})")
    return vec


def decode_joint_state(msg: Any, names: Sequence[str], what: str) -> np.ndarray:
    return joint_state_to_vector(msg, names, "position", what).astype(np.float64)


def decode_joint_trajectory(msg: Any, names: Sequence[str], what: str) -> np.ndarray:
    """A recorded trajectory's first point, in action order."""
    if not len(msg.points):
        raise ShapeError(f"{what}: trajectory without points")
    index = {n: i for i, n in enumerate(msg.joint_names)}
    missing = [n for n in names if n not in index]
    if missing:
        raise InputError(f"{what}: missing joint(s) {missing}; message has {list(msg.joint_names)}")
    return np.array([msg.points[0].positions[index[n]] for n in names], dtype=np.float64)


@dataclass(frozen=True)
class CommandInterface:
    name: str  # the node parameter command_interface
    msgtype: str
    per_chunk: bool  # one message per chunk (a trajectory) instead of one per control tick
    build: Callable[..., Any]
    decode: Callable[[Any, Sequence[str], str], np.ndarray]

    @property
    def message_class(self):
        return message_class(self.msgtype)


COMMAND_INTERFACES: dict[str, CommandInterface] = {i.name: i for i in (
    CommandInterface("float64_multi_array", "std_msgs/msg/Float64MultiArray", False, float64_multi_array,
                     decode_float64_multi_array),
    CommandInterface("joint_trajectory", "trajectory_msgs/msg/JointTrajectory", True, joint_trajectory,
                     decode_joint_trajectory),
    CommandInterface("joint_state", "sensor_msgs/msg/JointState", False, joint_state_command, decode_joint_state),
)}
RECORDED_COMMAND_TYPES = tuple(i.msgtype for i in COMMAND_INTERFACES.values())


def command_interface(name: str) -> CommandInterface:
    try:
        return COMMAND_INTERFACES[name]
    except KeyError:
        raise ConfigError(f"command_interface must be one of {tuple(COMMAND_INTERFACES)}, got {name!r}") from None


def command_to_vector(msg: Any, msgtype: str, names: Sequence[str], what: str = "command") -> np.ndarray:
    """A recorded command message of any interface's type -> (A,) float64 in action order."""
    for interface in COMMAND_INTERFACES.values():
        if interface.msgtype == normalize_msgtype(msgtype):
            return interface.decode(msg, names, what)
    raise InputError(f"{what}: unsupported command type {msgtype}; expected one of {RECORDED_COMMAND_TYPES}")
