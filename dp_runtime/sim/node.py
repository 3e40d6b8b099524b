"""dp-sim: the planar arm as a ROS 2 node (camera, joint states in; position commands out).

    dp-sim [--task reach|around|track|grasp|grasp_delta] [--episodes N] [--seed S] [--command-topic /arm/commands]
           [--ros-args ...]

Publishes sensor_msgs/Image (rgb8, 96x96; the grasp tasks also a 64x64 wrist
camera) and sensor_msgs/JointState with header stamps, takes std_msgs/Float64MultiArray joint position commands (as a
ros2_control forward position controller does); the end-effector tasks (grasp)
publish the hand's geometry_msgs/PoseStamped (base_link) and the URDF on
/robot_description (transient local) and take PoseStamped targets, TwistStamped
velocities and a gripper command (grasp.py), and reports each episode as
JSON on /sim/episode (std_msgs/String) and, with --results FILE, as one JSON
line per episode in FILE (the record to count from: a late subscriber misses
topic messages, the file misses nothing). Exits 0 after N episodes (0: never).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from geometry_msgs.msg import PoseStamped, TwistStamped
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64MultiArray, String

from ..errors import InputError
from . import messages
from .record import SimTopics
from .tasks import TASKS, sim_task


class SimNode(Node):
    def __init__(self, args: argparse.Namespace):
        super().__init__("dp_sim")
        self.topics = SimTopics(commands=args.command_topic)
        self.arm = sim_task(args.task).arm(args.seed)
        self.cfg = self.arm.cfg
        if args.episode_seconds is not None:
            self.cfg.episode_seconds = args.episode_seconds
        self.episodes_wanted = args.episodes
        self.results = open(args.results, "a", buffering=1) if args.results else None
        self.settle_s = args.settle
        self.episode = 0
        self.episode_start = time.monotonic()
        self.bad_commands = 0
        self.done = False
        camera_qos = QoSProfile(reliability=ReliabilityPolicy.BEST_EFFORT, history=HistoryPolicy.KEEP_LAST, depth=5)
        t = self.topics
        self.pubs = {t.camera: self.create_publisher(Image, t.camera, camera_qos),
                     t.joints: self.create_publisher(JointState, t.joints, 10)}
        if self.arm.wrist_view() is not None:
            self.pubs[t.wrist_camera] = self.create_publisher(Image, t.wrist_camera, camera_qos)
        self.ep_pub = self.create_publisher(String, t.episodes, 10)
        self.ee = self.arm.ee_pose() is not None
        if not self.ee:  # a joint-space arm: position commands (the end-effector arm's controller is Cartesian)
            inputs = {t.commands: Float64MultiArray}
        else:
            self.pubs[t.eef_pose] = self.create_publisher(PoseStamped, t.eef_pose, 10)
            inputs = {t.target_pose: PoseStamped, t.twist: TwistStamped, t.gripper: Float64MultiArray}
            latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                                 reliability=ReliabilityPolicy.RELIABLE)
            self.create_publisher(String, t.robot_description, latched).publish(String(data=self.arm.urdf()))
        for topic, msgtype in inputs.items():
            self.create_subscription(msgtype, topic, lambda msg, topic=topic: self.on_command(topic, msg), 10)
        self.dt = 1.0 / self.cfg.physics_hz
        self.k = 0
        self.every = self.topics.every(self.cfg.physics_hz)
        self.last = time.monotonic()
        self.create_timer(self.dt, self.on_step)
        self.get_logger().info(f"sim arm ready ({args.task}): commands on {', '.join(inputs)}, "
                               f"{self.episodes_wanted or 'unlimited'} episodes")

    def on_command(self, topic: str, msg) -> None:
        """A command (messages.command); a bad one is counted, logged (the first, then every 2 s), never applied."""
        if time.monotonic() - self.episode_start < self.settle_s:
            return  # the previous episode's chunk is still in flight after a reset
        try:
            self.arm.command(messages.command(self.topics, topic, msg))
        except (ValueError, InputError) as e:
            self.bad_commands += 1
            self.get_logger().warning(f"ignoring bad command on {topic}: {e}", throttle_duration_sec=2.0)

    def on_step(self) -> None:
        if self.done:
            return
        now = time.monotonic()
        self.arm.step(min(now - self.last, 5 * self.dt))  # real elapsed time, capped after a stall
        self.last = now
        stamp = self.get_clock().now().nanoseconds * 1e-9
        for topic, msg in messages.observations(self.arm, self.topics, self.every, self.k, stamp):
            self.pubs[topic].publish(msg)
        self.k += 1
        if self.arm.done():
            success = self.arm.succeeded()
            result = {"episode": self.episode, "success": bool(success), "time": round(self.arm.state.t, 3),
                      **self.arm.outcome()}
            self.ep_pub.publish(String(data=json.dumps(result)))
            if self.results is not None:
                self.results.write(json.dumps(result) + "\n")
            self.get_logger().info(f"episode {self.episode}: {'success' if success else 'fail'} "
                                   f"in {self.arm.state.t:.2f} s")
            self.episode += 1
            if self.episodes_wanted and self.episode >= self.episodes_wanted:
                self.done = True
                return
            self.arm.reset()
            self.episode_start = time.monotonic()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ros_args = argv[argv.index("--ros-args"):] if "--ros-args" in argv else []
    own = argv[:len(argv) - len(ros_args)]
    p = argparse.ArgumentParser(prog="dp-sim", description=__doc__.split("\n\n")[0])
    p.add_argument("--episodes", type=int, default=0, help="exit after this many episodes (0: run forever)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--task", default="reach", choices=tuple(TASKS), help="what the arm has to do")
    p.add_argument("--episode-seconds", type=float, default=None, help="episode time limit (default: the task's)")
    p.add_argument("--settle", type=float, default=0.3, help="s after a reset during which commands are ignored")
    p.add_argument("--command-topic", default=SimTopics.commands)
    p.add_argument("--results", default=None, help="append each episode's result to this file (JSON lines)")
    args = p.parse_args(own)
    rclpy.init(args=["dp_sim", *ros_args])
    node = SimNode(args)
    try:
        while rclpy.ok() and not node.done:
            rclpy.spin_once(node, timeout_sec=0.1)
        time.sleep(0.3)  # let the last episode report go out
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node.results is not None:
            node.results.close()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
