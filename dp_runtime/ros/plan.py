"""The plan a chunk follows, as standard messages RViz, Foxglove and rqt_plot draw.

``~/plan`` (trajectory_msgs/JointTrajectory) is a chunk's executed slice as it is queued: stamped with
the chunk's observation time, point i due ``i * dt`` after it. ``~/plan/committed`` holds the points of
that slice the previous chunk's plan held fixed while it was denoised (inpaint, soft_inpaint*: the
committed prefix); the guided ones are named by their weight in the plan's header frame_id
(``guided:w1,w2,...``), so a viewer shows what was the new observation's choice and what was kept.
Both are transient-local (a late subscriber gets the newest plan) and reliable; the node builds them
only while somebody subscribes. dp-replay writes the same topics, built here, to its replay bag.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..control import ChunkRecord
from .convert import sec_to_stamp_fields

PLAN_TOPIC = "~/plan"
COMMITTED_TOPIC = "~/plan/committed"
REPLAY_NODE = "/policy_node"  # dp-replay writes the topics under the node's default name


def plan_points(rec: ChunkRecord, dt: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(offsets s from the observation (K,), actions (K, A), held weights (K,)) of a chunk's executed slice."""
    k = len(rec.actions)
    held = np.zeros(k, np.float32) if rec.held is None else np.asarray(rec.held, np.float32)
    return np.arange(k) * dt, np.asarray(rec.actions, np.float64), held


def frame_id(held: np.ndarray) -> str:
    """The guided points' weights, in point order ("" when nothing was guided)."""
    guided = held[(held > 0) & (held < 1)]
    return "guided:" + ",".join(f"{w:.3g}" for w in guided) if guided.size else ""


def plan_messages(rec: ChunkRecord, names: Sequence[str], dt: float, types=None):
    """(plan, committed) as trajectory_msgs/JointTrajectory; ``types``: a rosbags typestore's types (replay
    writes bags with it), default rclpy's message classes."""
    if types is None:
        from builtin_interfaces.msg import Duration, Time
        from std_msgs.msg import Header
        from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint
    else:
        Duration, Time = types["builtin_interfaces/msg/Duration"], types["builtin_interfaces/msg/Time"]
        Header = types["std_msgs/msg/Header"]
        JointTrajectory = types["trajectory_msgs/msg/JointTrajectory"]
        JointTrajectoryPoint = types["trajectory_msgs/msg/JointTrajectoryPoint"]
    offsets, actions, held = plan_points(rec, dt)
    empty = np.zeros(0) if types is not None else []

    def point(i: int):
        sec, nanosec = sec_to_stamp_fields(float(offsets[i]))
        positions = actions[i] if types is not None else [float(x) for x in actions[i]]
        return JointTrajectoryPoint(positions=positions, velocities=empty, accelerations=empty, effort=empty,
                                    time_from_start=Duration(sec=sec, nanosec=nanosec))

    sec, nanosec = sec_to_stamp_fields(rec.t_obs)

    def trajectory(indices, frame: str):
        return JointTrajectory(header=Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id=frame),
                               joint_names=list(names), points=[point(i) for i in indices])
    return (trajectory(range(len(offsets)), frame_id(held)),
            trajectory([i for i in range(len(offsets)) if held[i] >= 1], ""))
