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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BagError, DpRuntimeError
from ..ros import convert
from ..ros.process import stop_process
from ..control import RunnerStatus
from ..ros.side_node import SideNode
from .bag import Bag, BagMessage, BagProblems
from .pipeline import ReplayResult, ReplaySetup, continuity, opened

REPLAY_COMMAND_TOPIC = "/dp_replay/commands"
CLOCK_PERIOD = 0.005  # bag seconds between /clock messages


def start_policy_node(setup: ReplaySetup, config: str | None, seed: int, log_path: Path) -> subprocess.Popen:
    args = [sys.executable, "-m", "dp_runtime.ros.node", "--ros-args"]
    if config:
        args += ["--params-file", str(config)]
    args += ["-p", f"bundle:={setup.params.bundle}", "-p", f"seed:={seed}", "-p", "use_sim_time:=true",
             "-p", f"command_topic:={REPLAY_COMMAND_TOPIC}", "-p", "command_interface:=joint_state",
             "-p", f"backend:={setup.params.backend}", "-p", f"device:={setup.params.device}",
             "-p", f"precision:={setup.params.precision}",
             "-p", "commands_executed:=false"]  # the bag's joints follow the recorded commands, not these
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(args, env=env, stdout=open(log_path, "w"), stderr=subprocess.STDOUT)


@dataclass
class Recording:
    """What real-time replay publishes, read from the bag once."""
    path: str
    messages: list[BagMessage]  # observation (and recorded command) messages in bag-time order
    recorded: list[tuple[float, np.ndarray]]  # (bag time s, recorded command)
    types: dict[str, str]  # topic -> message type
    distro: str
    problems: BagProblems


def read_recording(bag_path: str | Path | Bag, setup: ReplaySetup, distro: str) -> Recording:
    with opened(bag_path, setup, distro) as bag:
        messages = list(bag.messages(setup.wanted_topics))
        if not messages:
            raise BagError(f"bag {bag.path} has no messages on {sorted(setup.wanted_topics)}")
        recorded = []
        for m in messages:
            if m.topic == setup.recorded_topic and (msg := bag.deserialize(m)) is not None:
                try:
                    recorded.append((m.time, setup.recorded_vector(msg, m.msgtype, m.topic)))
                except DpRuntimeError:
                    pass
        return Recording(str(bag.path), messages, recorded, bag.topics, bag.distro, bag.problems_found())


class ReplayPeer:
    """The replay's own DDS node: publishes the bag and /clock, records the policy node's commands and
    /diagnostics."""

    def __init__(self, setup: ReplaySetup, rec: Recording, result: ReplayResult):
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from rosgraph_msgs.msg import Clock
        from sensor_msgs.msg import JointState
        self.side = SideNode("dp_replay")
        node = self.side.node
        self.diagnostics: list = []
        self.lock = threading.Lock()
        self.clock_class = Clock

        def on_command(msg) -> None:
            with self.lock:
                vec = convert.joint_state_to_vector(msg, setup.action_names, "position").astype(np.float64)
                result.commands.append((convert.stamp_to_sec(msg.header.stamp), vec))

        node.create_subscription(JointState, REPLAY_COMMAND_TOPIC, on_command, 100)
        node.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, 10)
        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self.pubs = {t.topic: node.create_publisher(convert.message_class(rec.types[t.topic]), t.topic, reliable)
                     for t in setup.topics}
        self.clock_pub = node.create_publisher(Clock, "/clock", 10)
        self.node = node

    def publish_clock(self, t: float) -> None:
        sec, nsec = convert.sec_to_stamp_fields(t)
        msg = self.clock_class()
        msg.clock.sec, msg.clock.nanosec = sec, nsec
        self.clock_pub.publish(msg)

    def matched(self) -> bool:
        return (all(p.get_subscription_count() > 0 for p in self.pubs.values())
                and self.node.count_publishers(REPLAY_COMMAND_TOPIC) > 0)

    def last_diagnostics(self) -> dict[str, str] | None:
        return {kv.key: kv.value for kv in self.diagnostics[-1].status[0].values} if self.diagnostics else None

    def close(self) -> None:
        self.side.close()


def wait_for_node(peer: ReplayPeer, node_proc: subprocess.Popen, log_path: Path, t0: float,
                  timeout: float) -> None:
    """Until the node subscribes to every topic and publishes commands (its clock held at the bag's start)."""
    deadline = time.time() + timeout
    while not peer.matched():
        if node_proc.poll() is not None:
            raise DpRuntimeError(f"policy node exited with {node_proc.returncode}: {log_path.read_text()[-2000:]}")
        if time.time() > deadline:
            raise DpRuntimeError(f"policy node did not subscribe within {timeout:.0f} s (log: {log_path})")
        peer.publish_clock(t0)
        time.sleep(0.05)
    time.sleep(1.0)  # let the matched endpoints settle before the first message


def play(peer: ReplayPeer, messages: list[BagMessage], rate: float, result: ReplayResult) -> None:
    """The messages at their bag times (scaled by ``rate``), /clock every CLOCK_PERIOD of bag time between."""
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
            if m.topic in peer.pubs:
                peer.pubs[m.topic].publish(m.raw)
                result.messages_used += 1
        else:
            peer.publish_clock(next_clock)
            next_clock += CLOCK_PERIOD


def take_node_status(result: ReplayResult, values: dict[str, str]) -> None:
    """The node's own figures, from its last /diagnostics."""
    status = RunnerStatus.from_values(values)
    result.node_diagnostics = values
    result.continuity = continuity(status)
    result.queue = {k: getattr(status.queue, k) for k in ("dropped", "starved", "skipped")}
    # The node's own rejection causes, as offline replay names them: the verdict and report say why.
    result.invalid = dict(status.input_problems)
    result.stale_refusals, result.inference_errors = status.stale_refusals, status.inference_errors
    result.last_error = status.last_error


def replay_realtime(bag_path: str | Path | Bag, setup: ReplaySetup, config: str | None, seed: int = 0,
                    rate: float = 1.0, distro: str = "kilted", ready_timeout: float = 90.0) -> ReplayResult:
    if rate <= 0:
        raise DpRuntimeError(f"--rate must be > 0, got {rate}")
    started = time.perf_counter()
    rec = read_recording(bag_path, setup, distro)
    result = ReplayResult(rec.path, "realtime", [], rec.recorded, [], distro=rec.distro, problems=rec.problems)
    log_path = Path(tempfile.mkdtemp(prefix="dp_replay_")) / "policy_node.log"
    node_proc = start_policy_node(setup, config, seed, log_path)
    peer = ReplayPeer(setup, rec, result)
    try:
        wait_for_node(peer, node_proc, log_path, rec.messages[0].time, ready_timeout)
        play(peer, rec.messages, rate, result)
        time.sleep(0.5)
    finally:
        stop_process(node_proc)
        peer.close()
    values = peer.last_diagnostics()
    if values is not None:
        take_node_status(result, values)
    result.commands.sort(key=lambda c: c[0])
    result.wall_s = time.perf_counter() - started
    return result
