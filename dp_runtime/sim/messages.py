"""The sim arm's ROS messages, for the dp-sim node and the in-process twin of its loop (evaluate.py) alike.

``observations``: what the arm publishes at a physics step (camera frames, joint states, the hand's pose);
``command``: a command message on one of its input topics -> what the arm is told (a ValueError or InputError
names what is wrong with it, which the node counts and logs and never applies).
"""
from __future__ import annotations

from typing import Any

import numpy as np
from geometry_msgs.msg import PoseStamped, TwistStamped
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64MultiArray

from ..rotations import quat_to_matrix
from ..ros.convert import sec_to_stamp_fields
from .arm import ReachingArm
from .grasp import BASE_FRAME, EeCommand, matrix_yaw
from .record import SimTopics


def _stamped(msg, stamp: float, frame_id: str = ""):
    msg.header.frame_id = frame_id
    msg.header.stamp.sec, msg.header.stamp.nanosec = sec_to_stamp_fields(stamp)
    return msg


def _image(img: np.ndarray, stamp: float, frame_id: str) -> Image:
    return _stamped(Image(height=img.shape[0], width=img.shape[1], encoding="rgb8", step=img.shape[1] * 3,
                          data=img.tobytes()), stamp, frame_id)


def observations(arm: ReachingArm, topics: SimTopics, every: dict[str, int], k: int,
                 stamp: float) -> list[tuple[str, Any]]:
    """(topic, message) the arm publishes at physics step ``k`` (stamped ``stamp``): camera frames (and the
    wrist camera's) every ``every["camera"]`` steps, joint states (and an end-effector arm's pose) every
    ``every["joints"]``."""
    out: list[tuple[str, Any]] = []
    if k % every["camera"] == 0:
        out.append((topics.camera, _image(arm.render(), stamp, "camera")))
        if (wrist := arm.wrist_view()) is not None:
            out.append((topics.wrist_camera, _image(wrist, stamp, "wrist_camera")))
    if k % every["joints"] == 0:
        out.append((topics.joints, _stamped(JointState(name=list(arm.joint_names),
                                                       position=[float(x) for x in arm.joint_positions()]), stamp)))
        if (pose := arm.ee_pose()) is not None:
            msg = _stamped(PoseStamped(), stamp, BASE_FRAME)
            p, o = msg.pose.position, msg.pose.orientation
            p.x, p.y, p.z = (float(v) for v in pose[0])
            o.x, o.y, o.z, o.w = (float(v) for v in pose[1])
            out.append((topics.eef_pose, msg))
    return out


def command(topics: SimTopics, topic: str, msg: Any) -> np.ndarray | EeCommand:
    """A command message -> the arm's command: joint positions (Float64MultiArray on the joint arm's topic), an
    absolute target (PoseStamped in base_link, as cartesian_controllers take it), a velocity (TwistStamped) or the
    gripper's (Float64MultiArray, one value, -1 open .. +1 closed)."""
    if isinstance(msg, (PoseStamped, TwistStamped)) and msg.header.frame_id != BASE_FRAME:
        raise ValueError(f"frame {msg.header.frame_id!r}, expected {BASE_FRAME!r}")  # cartesian_controllers drop it
    if topic == topics.target_pose:
        p, o = msg.pose.position, msg.pose.orientation
        yaw = matrix_yaw(quat_to_matrix(np.array([o.x, o.y, o.z, o.w])))  # an InputError for a zero quaternion
        return EeCommand(None, pose=np.array([p.x, p.y, yaw]))
    if topic == topics.twist:
        t = msg.twist
        return EeCommand(None, twist=np.array([t.linear.x, t.linear.y, t.angular.z]))
    if topic == topics.gripper:
        if len(msg.data) != 1:
            raise ValueError(f"{len(msg.data)} values, expected 1 (-1 open .. +1 closed)")
        return EeCommand(float(msg.data[0]))
    if topic == topics.commands:  # last: dp-demo names the end-effector arm's command topic after the node's
        return np.asarray(msg.data)
    raise ValueError(f"no command topic {topic!r}")
