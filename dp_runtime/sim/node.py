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
from ..rotations import quat_to_matrix
from ..ros.convert import sec_to_stamp_fields
from .grasp import BASE_FRAME, EeCommand, matrix_yaw
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
        self.cam_pub = self.create_publisher(Image, self.topics.camera, camera_qos)
        self.wrist_pub = (self.create_publisher(Image, self.topics.wrist_camera, camera_qos)
                          if self.arm.wrist_view() is not None else None)
        self.js_pub = self.create_publisher(JointState, self.topics.joints, 10)
        self.ep_pub = self.create_publisher(String, self.topics.episodes, 10)
        self.ee = self.arm.ee_pose() is not None
        if not self.ee:  # a joint-space arm: position commands (the end-effector arm's controller is Cartesian)
            self.create_subscription(Float64MultiArray, self.topics.commands, self.on_command, 10)
        else:
            self.pose_pub = self.create_publisher(PoseStamped, self.topics.eef_pose, 10)
            self.create_subscription(PoseStamped, self.topics.target_pose, self.on_target_pose, 10)
            self.create_subscription(TwistStamped, self.topics.twist, self.on_twist, 10)
            self.create_subscription(Float64MultiArray, self.topics.gripper, self.on_gripper, 10)
            latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                                 reliability=ReliabilityPolicy.RELIABLE)
            self.create_publisher(String, self.topics.robot_description, latched).publish(
                String(data=self.arm.urdf()))
        self.dt = 1.0 / self.cfg.physics_hz
        self.k = 0
        self.every = self.topics.every(self.cfg.physics_hz)
        self.last = time.monotonic()
        self.create_timer(self.dt, self.on_step)
        inputs = (f"{self.topics.target_pose} (PoseStamped), {self.topics.twist} (TwistStamped), {self.topics.gripper}"
                  if self.ee else self.topics.commands)
        self.get_logger().info(f"sim arm ready ({args.task}): commands on {inputs}, "
                               f"{self.episodes_wanted or 'unlimited'} episodes")

    def on_command(self, msg: Float64MultiArray) -> None:
        self.apply(np.asarray(msg.data), self.topics.commands)

    def apply(self, command, topic: str) -> None:
        if time.monotonic() - self.episode_start < self.settle_s:
            return  # the previous episode's chunk is still in flight after a reset
        try:
            self.arm.command(command)
        except ValueError as e:
            self.refuse(topic, str(e))

    def refuse(self, topic: str, why: str) -> None:
        """A bad command: counted, logged (the first, then every 2 s), never applied."""
        self.bad_commands += 1
        self.get_logger().warning(f"ignoring bad command on {topic}: {why}", throttle_duration_sec=2.0)

    def in_base(self, msg, topic: str) -> bool:
        """A Cartesian command in another frame than base_link is refused, as cartesian_controllers do."""
        if msg.header.frame_id != BASE_FRAME:
            self.refuse(topic, f"frame {msg.header.frame_id!r}, expected {BASE_FRAME!r}")
        return msg.header.frame_id == BASE_FRAME

    def on_target_pose(self, msg: PoseStamped) -> None:
        if self.in_base(msg, self.topics.target_pose):
            p, o = msg.pose.position, msg.pose.orientation
            try:
                yaw = matrix_yaw(quat_to_matrix(np.array([o.x, o.y, o.z, o.w])))
            except InputError as e:
                return self.refuse(self.topics.target_pose, str(e))
            self.apply(EeCommand(None, pose=np.array([p.x, p.y, yaw])), self.topics.target_pose)

    def on_twist(self, msg: TwistStamped) -> None:
        if self.in_base(msg, self.topics.twist):
            t = msg.twist
            self.apply(EeCommand(None, twist=np.array([t.linear.x, t.linear.y, t.angular.z])), self.topics.twist)

    def on_gripper(self, msg: Float64MultiArray) -> None:
        if len(msg.data) != 1:
            return self.refuse(self.topics.gripper, f"{len(msg.data)} values, expected 1 (-1 open .. +1 closed)")
        self.apply(EeCommand(float(msg.data[0])), self.topics.gripper)

    def stamp(self, header) -> None:
        header.stamp.sec, header.stamp.nanosec = sec_to_stamp_fields(self.get_clock().now().nanoseconds * 1e-9)

    def publish_image(self, pub, img: np.ndarray, frame_id: str) -> None:
        msg = Image(height=img.shape[0], width=img.shape[1], encoding="rgb8", step=img.shape[1] * 3, data=img.tobytes())
        msg.header.frame_id = frame_id
        self.stamp(msg.header)
        pub.publish(msg)

    def on_step(self) -> None:
        if self.done:
            return
        now = time.monotonic()
        self.arm.step(min(now - self.last, 5 * self.dt))  # real elapsed time, capped after a stall
        self.last = now
        if self.k % self.every["camera"] == 0:
            self.publish_image(self.cam_pub, self.arm.render(), "camera")
            if self.wrist_pub is not None:
                self.publish_image(self.wrist_pub, self.arm.wrist_view(), "wrist_camera")
        if self.k % self.every["joints"] == 0:
            js = JointState(name=list(self.arm.joint_names), position=[float(x) for x in self.arm.joint_positions()])
            self.stamp(js.header)
            self.js_pub.publish(js)
            if self.ee:
                position, quat = self.arm.ee_pose()
                pose = PoseStamped()
                pose.header.frame_id = BASE_FRAME
                pose.header.stamp = js.header.stamp
                p, o = pose.pose.position, pose.pose.orientation
                p.x, p.y, p.z = (float(v) for v in position)
                o.x, o.y, o.z, o.w = (float(v) for v in quat)
                self.pose_pub.publish(pose)
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
