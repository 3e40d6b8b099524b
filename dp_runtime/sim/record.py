"""Record scripted-expert episodes of the sim as a standard rosbag2 (MCAP), in simulated time.

The bag has the topics a real arm publishes (camera, joint states) plus the
commands sent to it, with header stamps, so the demonstrations go through
``dp-dataset`` exactly like a teleoperation bag from a robot would.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from .grasp import BASE_FRAME, EeCommand, yaw_quat
from .tasks import TASKS, SimTask


class ExecutionNoise:
    """DART (Laskey et al., 2017): the command recorded is the expert's, the one executed is perturbed by
    a slowly varying offset (Ornstein-Uhlenbeck, ``std`` rad per joint, time constant ``tau_s``). The
    demonstrations then visit states off the expert's path and label the way back, so a policy cannot
    succeed by extrapolating its own joint history (the copycat shortcut) and has to look at the task."""

    def __init__(self, std: float, rng: np.random.Generator, tau_s: float = 0.5):
        self.std, self.rng, self.tau_s = std, rng, tau_s
        self.offset = np.zeros(2)

    def reset(self) -> None:
        self.offset = self.rng.normal(0.0, self.std, 2)

    def __call__(self, dt: float) -> np.ndarray:
        a = dt / self.tau_s
        self.offset += -a * self.offset + self.std * np.sqrt(2 * a) * self.rng.normal(size=2)
        return self.offset


class PoseNoise:
    """DART for a Cartesian command: the executed target is the expert's plus a slowly varying offset
    (Ornstein-Uhlenbeck in x, y and yaw, ``std`` = (m, rad)), the recorded command stays the expert's. The offset
    fades within ``fade_m`` of the target (the expert's own closing needs the hand there), so the demonstrations
    show the hand off its path and beside the grasp, the way back, and the gripper kept open until the hand is
    there: without them the policy closed wherever its pose was a little off, as the expert never showed it."""

    def __init__(self, std: tuple[float, float], rng: np.random.Generator, tau_s: float = 0.5,
                 fade_m: tuple[float, float] = (0.015, 0.1)):
        self.std = np.array([std[0], std[0], std[1]], np.float64)
        self.rng, self.tau_s, self.fade_m = rng, tau_s, fade_m
        self.offset = np.zeros(3)

    def reset(self) -> None:
        self.offset = self.rng.normal(0.0, 1.0, 3) * self.std

    def __call__(self, cmd: EeCommand, dt: float, distance: float) -> EeCommand:
        if not self.std.any():
            return cmd
        lo, hi = self.fade_m
        std = self.std * float(np.clip((distance - lo) / (hi - lo), 0.0, 1.0))
        a = dt / self.tau_s
        was = self.offset.copy()
        self.offset += -a * self.offset + std * np.sqrt(2 * a) * self.rng.normal(size=3)
        if cmd.pose is not None:
            return replace(cmd, pose=cmd.pose + self.offset)
        # a velocity (a step from the measured pose): the offset's change over one period, so the executed path is the
        # expert's plus the offset where the expert did not react (the whole offset in every step would be a random
        # walk the expert's steps cannot outrun)
        return replace(cmd, twist=cmd.twist + (self.offset - was) / dt)


class GripperSlips:
    """DART for a gripper: now and then (``rate_hz``) while the hand approaches its target (``zone_m`` from it, down
    to beside the grasp, where a policy's early closing happens),
    the executed command closes the gripper for ``hold_s`` while the recorded one stays the expert's (open): the
    learner's own mistake, closing too early. The demonstrations then show fingers closed beside the
    target and the expert's way back, opening again: without them a policy that closed too early never saw a
    recovery and stayed closed for the rest of the episode."""

    def __init__(self, rate_hz: float, rng: np.random.Generator, zone_m: tuple[float, float] = (0.02, 0.35),
                 hold_s: float = 0.6):
        self.rate_hz, self.rng, self.zone_m, self.hold_s = rate_hz, rng, zone_m, hold_s
        self.until = -1.0

    def reset(self) -> None:
        self.until = -1.0

    def __call__(self, cmd: EeCommand, t: float, dt: float, distance: float) -> EeCommand:
        if cmd.gripper is None or cmd.gripper > 0:
            return cmd  # the expert closes: nothing to perturb
        if t >= self.until and self.zone_m[0] < distance < self.zone_m[1] and self.rng.random() < self.rate_hz * dt:
            self.until = t + self.hold_s
        return replace(cmd, gripper=1.0) if t < self.until else cmd


@dataclass
class SimTopics:
    camera: str = "/camera/image_raw"
    wrist_camera: str = "/wrist_camera/image_raw"  # arms with a camera on the hand (the grasp tasks)
    joints: str = "/joint_states"
    commands: str = "/arm/commands"
    episodes: str = "/sim/episode"
    eef_pose: str = "/eef_pose"  # end-effector tasks: the measured pose (PoseStamped, base_link)
    target_pose: str = "/arm/target_pose"  # ... the Cartesian controller's absolute target (PoseStamped)
    twist: str = "/arm/twist"  # ... its velocity command (TwistStamped)
    gripper: str = "/gripper/command"  # ... the gripper's command (Float64MultiArray, -1 open .. +1 closed)
    robot_description: str = "/robot_description"
    camera_hz: float = 20.0
    joints_hz: float = 50.0
    control_hz: float = 10.0

    def every(self, physics_hz: float) -> dict[str, int]:
        """Physics steps between camera frames, joint states and control ticks."""
        return {name: int(round(physics_hz / hz)) for name, hz in
                (("camera", self.camera_hz), ("joints", self.joints_hz), ("control", self.control_hz))}


T0 = 1_750_000_000.0  # the recording's clock starts here (an epoch-like time, as on a robot)


class BagRecorder:
    """Messages from the sim -> rosbag2 with rosbags' Kilted types (bag time = stamp + transport delay)."""

    def __init__(self, path: Path, topics: SimTopics):
        self.ts = get_typestore(Stores.ROS2_KILTED)
        self.T = self.ts.types
        self.topics = topics
        self.writer = Writer(path, version=8, storage_plugin=StoragePlugin.MCAP)
        self.writer.open()
        self.conns = {}
        for topic, msgtype in ((topics.camera, "sensor_msgs/msg/Image"), (topics.joints, "sensor_msgs/msg/JointState"),
                               (topics.commands, "std_msgs/msg/Float64MultiArray"),
                               (topics.episodes, "std_msgs/msg/String")):
            self.conns[topic] = (self.writer.add_connection(topic, msgtype, typestore=self.ts), msgtype)

    def _header(self, t: float, frame_id: str = "camera"):
        sec = int(t)
        return self.T["std_msgs/msg/Header"](
            stamp=self.T["builtin_interfaces/msg/Time"](sec=sec, nanosec=int(round((t - sec) * 1e9)) % 10**9),
            frame_id=frame_id)

    def _write(self, topic: str, msg, t: float, msgtype: str = "") -> None:
        if topic not in self.conns:  # the end-effector topics: only in the bags of tasks that have them
            self.conns[topic] = (self.writer.add_connection(topic, msgtype, typestore=self.ts), msgtype)
        conn, msgtype = self.conns[topic]
        self.writer.write(conn, int(round(t * 1e9)), self.ts.serialize_cdr(msg, msgtype))

    def _vector3(self, v):
        return self.T["geometry_msgs/msg/Vector3"](x=float(v[0]), y=float(v[1]), z=float(v[2]))

    def _pose(self, position, quat):
        return self.T["geometry_msgs/msg/Pose"](
            position=self.T["geometry_msgs/msg/Point"](x=float(position[0]), y=float(position[1]), z=float(position[2])),
            orientation=self.T["geometry_msgs/msg/Quaternion"](x=float(quat[0]), y=float(quat[1]), z=float(quat[2]),
                                                               w=float(quat[3])))

    def pose(self, position: np.ndarray, quat: np.ndarray, stamp: float) -> None:
        """The measured end-effector pose (PoseStamped in base_link)."""
        self._write(self.topics.eef_pose, self.T["geometry_msgs/msg/PoseStamped"](
            header=self._header(stamp, BASE_FRAME), pose=self._pose(position, quat)), stamp + 0.001,
            "geometry_msgs/msg/PoseStamped")

    def ee_command(self, cmd: EeCommand, t: float) -> None:
        """A Cartesian command as the policy node publishes it: the pose target or the twist, and the gripper's."""
        if cmd.pose is not None:
            x, y, yaw = cmd.pose
            self._write(self.topics.target_pose, self.T["geometry_msgs/msg/PoseStamped"](
                header=self._header(t, BASE_FRAME),
                pose=self._pose((x, y, 0.0), yaw_quat(yaw))), t,
                "geometry_msgs/msg/PoseStamped")
        if cmd.twist is not None:
            vx, vy, wz = cmd.twist
            self._write(self.topics.twist, self.T["geometry_msgs/msg/TwistStamped"](
                header=self._header(t, BASE_FRAME), twist=self.T["geometry_msgs/msg/Twist"](
                    linear=self._vector3((vx, vy, 0.0)), angular=self._vector3((0.0, 0.0, wz)))), t,
                "geometry_msgs/msg/TwistStamped")
        self._write(self.topics.gripper, self.T["std_msgs/msg/Float64MultiArray"](
            layout=self.T["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0),
            data=np.array([cmd.gripper], np.float64)), t + 0.001, "std_msgs/msg/Float64MultiArray")

    def image(self, img: np.ndarray, stamp: float, topic: str | None = None) -> None:
        h, w, _ = img.shape
        self._write(topic or self.topics.camera, self.T["sensor_msgs/msg/Image"](
            header=self._header(stamp), height=h, width=w, encoding="rgb8", is_bigendian=0, step=w * 3,
            data=img.reshape(-1)), stamp + 0.004, "sensor_msgs/msg/Image")

    def joints(self, names: tuple[str, ...], q: np.ndarray, stamp: float) -> None:
        self._write(self.topics.joints, self.T["sensor_msgs/msg/JointState"](
            header=self._header(stamp), name=list(names), position=np.asarray(q, np.float64),
            velocity=np.zeros(0), effort=np.zeros(0)), stamp + 0.001)

    def command(self, q: np.ndarray, t: float) -> None:
        self._write(self.topics.commands, self.T["std_msgs/msg/Float64MultiArray"](
            layout=self.T["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0),
            data=np.asarray(q, np.float64)), t)

    def episode(self, result: dict, t: float) -> None:
        self._write(self.topics.episodes, self.T["std_msgs/msg/String"](data=json.dumps(result)), t)

    def close(self) -> None:
        self.writer.close()


def record_demonstrations(out: Path, episodes: int, seed: int = 0, task: SimTask = TASKS["reach"],
                          topics: SimTopics = SimTopics(), gap_s: float = 1.0, hold_s: float = 0.0) -> dict:
    """Write ``out`` (a bag directory) of ``task``'s scripted expert atomically: recorded to a temp name,
    renamed when complete.

    Episodes end when the task says so (reach: at the target), after ``hold_s`` more seconds of the
    expert (within the episode's time limit).
    """
    out = Path(out)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    arm = task.arm(seed)
    expert = task.expert(arm, seed)
    rec = BagRecorder(tmp, topics)
    dt_phys = 1.0 / arm.cfg.physics_hz
    period = 1.0 / topics.control_hz  # between commands
    every = topics.every(arm.cfg.physics_hz)
    t_start = T0
    noise = ExecutionNoise(task.demo_noise, np.random.default_rng(seed + 104_729))  # std 0: exactly the expert's
    slips = GripperSlips(task.gripper_slips, np.random.default_rng(seed + 7_919))
    pose_noise = PoseNoise(task.pose_noise, np.random.default_rng(seed + 15_485_863))
    successes, durations = 0, []
    try:
        for ep in range(episodes):
            arm.reset()
            expert.reset()
            noise.reset()
            slips.reset()
            pose_noise.reset()
            k, ended = 0, None
            while True:
                t = t_start + k * dt_phys
                if k % every["camera"] == 0:
                    rec.image(arm.render(), t)
                    if (wrist := arm.wrist_view()) is not None:
                        rec.image(wrist, t, topics.wrist_camera)
                if k % every["joints"] == 0:
                    rec.joints(arm.joint_names, arm.joint_positions(), t)
                    if (pose := arm.ee_pose()) is not None:
                        rec.pose(*pose, t)
                if k % every["control"] == 0:
                    cmd = expert.action(period)
                    if isinstance(cmd, EeCommand):
                        arm.command(slips(pose_noise(cmd, period, arm.distance()), arm.state.t, period,
                                          arm.distance()))
                        rec.ee_command(cmd, t + 0.003)
                    else:
                        arm.command(cmd + noise(period))
                        rec.command(cmd, t + 0.003)
                arm.step(dt_phys)
                k += 1
                if ended is None and arm.done():
                    ended = arm.state.t
                if ended is not None and (arm.state.t >= ended + hold_s or arm.state.t >= arm.cfg.episode_seconds):
                    break
            success = arm.succeeded()
            successes += int(success)
            durations.append(arm.state.t)
            rec.episode({"episode": ep, "success": bool(success), "time": round(ended, 3), **arm.outcome()},
                        t + 0.01)
            t_start = t + gap_s  # a pause between episodes: dp-dataset splits episodes there
        rec.close()
    except BaseException:
        rec.writer.abort()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    # rosbags names the storage file after the directory; keep the name valid after the rename
    (out / f"{tmp.name}.mcap").rename(out / f"{out.name}.mcap")
    meta = out / "metadata.yaml"
    meta.write_text(meta.read_text().replace(f"{tmp.name}.mcap", f"{out.name}.mcap"))
    return {"task": task.name, "episodes": episodes, "expert_success_rate": successes / episodes,
            "mean_episode_s": float(np.mean(durations))}
