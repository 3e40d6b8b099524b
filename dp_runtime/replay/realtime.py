"""Realtime replay: publish a bag over DDS (with /clock) into a policy node and record its commands.

The node runs as its own process with use_sim_time, exactly as on a robot;
its commands go to a private topic so they never mix with recorded ones.
Messages are published as the bag's raw CDR bytes (no re-encoding).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from ..errors import BagError, DpRuntimeError
from ..ros import convert
from ..ros.commands import command_to_vector
from ..ros.process import stop_process
from ..ros.side_node import SideNode
from .bag import Bag
from .pipeline import ReplayResult, ReplaySetup, check_topics, opened

REPLAY_COMMAND_TOPIC = "/dp_replay/commands"
CLOCK_PERIOD = 0.005  # bag seconds between /clock messages


def start_policy_node(setup: ReplaySetup, config: str | None, seed: int, log_path: Path) -> subprocess.Popen:
    args = [sys.executable, "-m", "dp_runtime.ros.node", "--ros-args"]
    if config:
        args += ["--params-file", str(config)]
    args += ["-p", f"bundle:={setup.params.bundle}", "-p", f"seed:={seed}", "-p", "use_sim_time:=true",
             "-p", f"command_topic:={REPLAY_COMMAND_TOPIC}", "-p", "command_interface:=joint_state",
             "-p", f"backend:={setup.params.backend}", "-p", f"device:={setup.params.device}",
             "-p", f"precision:={setup.params.precision}"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(args, env=env, stdout=open(log_path, "w"), stderr=subprocess.STDOUT)


def replay_realtime(bag_path: str | Path | Bag, setup: ReplaySetup, config: str | None, seed: int = 0,
                    rate: float = 1.0, distro: str = "kilted", ready_timeout: float = 90.0) -> ReplayResult:
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import JointState

    if rate <= 0:
        raise DpRuntimeError(f"--rate must be > 0, got {rate}")
    started = time.perf_counter()
    with opened(bag_path, distro) as bag:
        bag_path = bag.path
        if bag.message_count == 0:
            raise BagError(f"bag {bag_path} is empty (no messages)")
        check_topics(bag, setup)
        obs_topics = {t.topic for t in setup.topics}
        wanted = obs_topics | ({setup.recorded_topic} if setup.recorded_topic else set())
        messages = list(bag.messages(wanted))
        recorded = []
        for m in messages:
            if m.topic == setup.recorded_topic and (msg := bag.deserialize(m)) is not None:
                try:
                    recorded.append((m.time, command_to_vector(msg, m.msgtype, setup.action_names)))
                except DpRuntimeError:
                    pass
        types = bag.topics
        recorded_distro = bag.distro
        problems = {"corrupt": bag.problems.corrupt, "truncated": bag.problems.truncated,
                    "unknown_types": dict(bag.unknown_types)}
    if not messages:
        raise BagError(f"bag {bag_path} has no messages on {sorted(wanted)}")

    result = ReplayResult(str(bag_path), "realtime", [], recorded, [], distro=recorded_distro, problems=problems)
    log_path = Path(tempfile.mkdtemp(prefix="dp_replay_")) / "policy_node.log"
    node_proc = start_policy_node(setup, config, seed, log_path)
    side = SideNode("dp_replay")
    node = side.node
    diagnostics: list = []
    lock = threading.Lock()

    def on_command(msg) -> None:
        with lock:
            vec = convert.joint_state_to_vector(msg, setup.action_names, "position").astype(np.float64)
            result.commands.append((convert.stamp_to_sec(msg.header.stamp), vec))

    node.create_subscription(JointState, REPLAY_COMMAND_TOPIC, on_command, 100)
    node.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 10)
    reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
    pubs = {t: node.create_publisher(convert.message_class(types[t]), t, reliable) for t in obs_topics}
    clock_pub = node.create_publisher(Clock, "/clock", 10)

    def publish_clock(t: float) -> None:
        sec, nsec = convert.sec_to_stamp_fields(t)
        msg = Clock()
        msg.clock.sec, msg.clock.nanosec = sec, nsec
        clock_pub.publish(msg)

    try:
        deadline = time.time() + ready_timeout
        while not (all(p.get_subscription_count() > 0 for p in pubs.values())
                   and node.count_publishers(REPLAY_COMMAND_TOPIC) > 0):
            if node_proc.poll() is not None:
                raise DpRuntimeError(f"policy node exited with {node_proc.returncode}: "
                                     f"{log_path.read_text()[-2000:]}")
            if time.time() > deadline:
                raise DpRuntimeError(f"policy node did not subscribe within {ready_timeout:.0f} s "
                                     f"(log: {log_path})")
            publish_clock(messages[0].time)
            time.sleep(0.05)
        time.sleep(1.0)  # let the matched endpoints settle before the first message
        t_bag0, wall0 = messages[0].time, time.perf_counter()
        next_clock = t_bag0
        end = messages[-1].time + 0.5
        i = 0
        while next_clock <= end:
            t_next = min(next_clock, messages[i].time) if i < len(messages) else next_clock
            delay = wall0 + (t_next - t_bag0) / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            if i < len(messages) and messages[i].time <= next_clock:
                m = messages[i]
                i += 1
                result.messages_read += 1
                if m.topic in pubs:
                    pubs[m.topic].publish(m.raw)
                    result.messages_used += 1
            else:
                publish_clock(next_clock)
                next_clock += CLOCK_PERIOD
        time.sleep(0.5)
    finally:
        stop_process(node_proc)
        side.close()
    if diagnostics:
        values = {kv.key: kv.value for kv in diagnostics[-1].status[0].values}
        result.node_diagnostics = values
        ratio = values.get("boundary_jump_ratio", "n/a")
        result.continuity = {"boundary_jump_ratio": None if ratio == "n/a" else float(ratio),
                             "chunk_switches": int(values.get("chunk_switches", 0)),
                             "chunk_transition": values.get("chunk_transition")}
        result.queue = {k: int(values[v]) for k, v in (("dropped", "dropped_actions"),
                                                         ("starved", "starvation_count"),
                                                         ("skipped", "skipped_actions")) if v in values}
    result.commands.sort(key=lambda c: c[0])
    result.wall_s = time.perf_counter() - started
    return result
