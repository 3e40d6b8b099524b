"""A separate process publishing a camera and joint states with header stamps, for node tests.

    python sensor_publisher.py --rate 30 --duration 10 [--camera-stop-at 3 --camera-resume-at 6]
        [--bad] [--compressed] [--seed 0]

Publishes a constant scene (the same image and joint positions every time) so the
node's observations are known exactly; --bad interleaves malformed messages.
"""
import argparse
import time

import numpy as np
import rclpy
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image, JointState

from helpers.synthetic import render_dot

SCENE_TARGET = np.array([0.4, -0.3])
JOINTS = {"joint1": 0.1, "joint2": -0.2, "gripper": 0.0}
EEF_POSE = (0.45, -0.1, 0.3), (0.0, 0.7071067811865476, 0.0, 0.7071067811865476)  # position, quaternion xyzw


def stamp(msg, t):
    msg.header.stamp.sec = int(t)
    msg.header.stamp.nanosec = int((t - int(t)) * 1e9)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=30.0)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--size", type=int, default=24)
    ap.add_argument("--camera-stop-at", type=float, default=-1)
    ap.add_argument("--camera-resume-at", type=float, default=-1)
    ap.add_argument("--bad", action="store_true")
    ap.add_argument("--camera-qos", default="best_effort")
    ap.add_argument("--clock", action="store_true", help="publish /clock (sim time from 1000 s) and stamp with it")
    ap.add_argument("--loop-at", type=float, default=-1, help="with --clock: jump sim time back to 1000 s here")
    ap.add_argument("--pose", action="store_true", help="also publish the end-effector pose EEF_POSE on /eef_pose")
    args = ap.parse_args()
    rclpy.init()
    node = rclpy.create_node("test_sensor_publisher")
    rel = ReliabilityPolicy.BEST_EFFORT if args.camera_qos == "best_effort" else ReliabilityPolicy.RELIABLE
    cam = node.create_publisher(Image, "/camera/image_raw", QoSProfile(reliability=rel, history=HistoryPolicy.KEEP_LAST, depth=5))
    js = node.create_publisher(JointState, "/joint_states", 10)
    img = render_dot(SCENE_TARGET, args.size)
    pose_pub = None
    if args.pose:
        from geometry_msgs.msg import PoseStamped
        pose_pub = node.create_publisher(PoseStamped, "/eef_pose", 10)
    clock_pub = None
    if args.clock:
        from rosgraph_msgs.msg import Clock
        clock_pub = node.create_publisher(Clock, "/clock", 10)
    start = time.time()
    print(f"publishing from {start:.6f}", flush=True)
    i = 0
    while time.time() - start < args.duration:
        wall = time.time()
        el = wall - start
        now = wall
        if clock_pub is not None:  # a bag played with --clock, looping once at --loop-at
            now = 1000.0 + (el - args.loop_at if 0 <= args.loop_at <= el else el)
            c = Clock()
            c.clock.sec, c.clock.nanosec = int(now), int((now - int(now)) * 1e9)
            clock_pub.publish(c)
        camera_on = not (args.camera_stop_at >= 0 and args.camera_stop_at <= el and
                         (args.camera_resume_at < 0 or el < args.camera_resume_at))
        if camera_on:
            m = Image(height=args.size, width=args.size, encoding="rgb8", step=args.size * 3, data=img.tobytes())
            stamp(m, now)
            cam.publish(m)
        j = JointState(name=list(JOINTS), position=list(JOINTS.values()))
        stamp(j, now)
        js.publish(j)
        if pose_pub is not None:
            p = PoseStamped()
            p.header.frame_id = "base_link"
            stamp(p, now)
            p.pose.position.x, p.pose.position.y, p.pose.position.z = EEF_POSE[0]
            o = p.pose.orientation
            o.x, o.y, o.z, o.w = EEF_POSE[1]
            pose_pub.publish(p)
        if args.bad and i % 5 == 0:
            wrong = Image(height=args.size, width=args.size, encoding="32FC1", step=args.size * 4,
                          data=bytes(args.size * args.size * 4))
            stamp(wrong, now + 0.0001)
            cam.publish(wrong)
            short = Image(height=args.size, width=args.size, encoding="rgb8", step=args.size * 3, data=b"\x00" * 7)
            stamp(short, now + 0.0002)
            cam.publish(short)
            nan = JointState(name=list(JOINTS), position=[float("nan"), 0.0, 0.0])
            stamp(nan, now + 0.0001)
            js.publish(nan)
            missing = JointState(name=["joint1"], position=[0.0])
            stamp(missing, now + 0.0002)
            js.publish(missing)
            old = JointState(name=list(JOINTS), position=list(JOINTS.values()))
            stamp(old, now - 5.0)
            js.publish(old)
        i += 1
        time.sleep(max(0.0, 1.0 / args.rate - (time.time() - wall)))
    node.destroy_node()
    rclpy.shutdown()


if __name__ == "__main__":
    main()
