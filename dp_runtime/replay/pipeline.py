"""Offline replay: a bag's messages through the node's pipeline on the bag's clock, no DDS.

Messages go in bag-time order into the same PolicyRunner the node drives;
control ticks run on the node's ``t0 + k*dt`` grid of bag time, inference
happens at a tick when the runner asks for it and is assumed to take
``assumed_latency_s`` of bag time, so a replay is deterministic for a seed.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..control import ChunkRecord, PolicyRunner, RunnerStatus, cause_key, simulated
from ..engine import PolicyEngine
from ..errors import BagError, DpRuntimeError
from ..ros import convert
from ..ros.commands import RECORDED_COMMAND_TYPES, command_to_vector
from ..ros.params import NodeParams, ObsTopic
from ..ros.runtime import open_runtime
from .bag import Bag, BagProblems, open_bag


@dataclass
class ReplaySetup:
    """What replay needs besides the bag: the bundle's engine and the node's parameters."""
    engine: PolicyEngine
    params: NodeParams
    topics: list[ObsTopic]
    action_names: list[str]
    recorded_topic: str | None  # a recorded command topic to compare with (None: no comparison)

    flat: dict = field(default_factory=dict)

    @classmethod
    def create(cls, engine: PolicyEngine, params: NodeParams, flat: dict, recorded_topic: str | None):
        rt = open_runtime(params, flat.get, engine=engine)
        return cls(engine, params, rt.topics, rt.action_names, recorded_topic, flat)

    def recorded_vector(self, msg, msgtype: str, topic: str) -> np.ndarray:
        """A recorded command -> (A,) in action order; an end-effector pose or twist fills its pose segments, the
        rest NaN (the gripper's command is on a topic of its own)."""
        return command_to_vector(msg, msgtype, self.action_names, topic, self.engine.spec.action.segments,
                                 1.0 / self.params.control_rate_hz)

    @property
    def wanted_topics(self) -> set[str]:
        """The bag topics replay reads: the observations and, if compared, the recorded commands."""
        return {t.topic for t in self.topics} | ({self.recorded_topic} if self.recorded_topic else set())

    def runner(self, seed: int, assumed_latency_s: float, keep_observations: bool = False) -> PolicyRunner:
        """A fresh control loop as the node builds it, on the bag's clock: every chunk record is kept."""
        # per_chunk off: replay compares every executed action, whatever interface would publish them.
        # The robot executed the recorded commands (fed to ``runner.executed``), not the replay's.
        return open_runtime(self.params, self.flat.get, engine=self.engine, keep_observations=keep_observations,
                            delivery=simulated(assumed_latency_s or 0.0), keep_chunks=None,
                            seed=seed, per_chunk=False, commands_executed=False).runner


@dataclass
class ReplayResult:
    bag: str
    mode: str
    commands: list[tuple[float, np.ndarray | None]]  # (tick time s, command or None) on the bag clock
    recorded: list[tuple[float, np.ndarray]]  # (bag time s, recorded command)
    chunks: list[ChunkRecord]
    messages_read: int = 0
    messages_used: int = 0
    invalid: dict[str, int] = field(default_factory=dict)  # problem (its first message, real numbers) -> count
    stamp_lag: dict[str, list[float]] = field(default_factory=dict)  # topic -> bag time - header stamp
    queue: dict[str, int] = field(default_factory=dict)
    stale_refusals: int = 0
    inference_errors: int = 0
    problems: BagProblems = field(default_factory=BagProblems)
    wall_s: float = 0.0
    distro: str = "unknown"
    node_diagnostics: dict = field(default_factory=dict)  # realtime: the node's last /diagnostics values
    first_of: dict[str, str] = field(default_factory=dict)  # cause key -> the first message of that kind
    last_error: str = ""  # the runner's last problem (stale inputs, inference failure)
    continuity: dict = field(default_factory=dict)  # boundary_jump_ratio and chunk_switches


def check_topics(bag: Bag, setup: ReplaySetup) -> None:
    for t in setup.topics:
        bag.require(t.topic, (convert.OBS_MESSAGE_TYPES[t.type],), f"observation {t.key!r}")
    if setup.recorded_topic:
        bag.require(setup.recorded_topic, RECORDED_COMMAND_TYPES, "recorded commands")


@contextlib.contextmanager
def opened(bag: str | Path | Bag, setup: ReplaySetup, distro: str = "kilted"):
    """An open Bag that has messages and the topics ``setup`` reads: the caller's (left open) or one
    opened from a path (closed after). Both replay modes open and check a bag here."""
    with open_bag(bag, distro) as b:
        if b.message_count == 0:
            raise BagError(f"bag {b.path} is empty (no messages)")
        check_topics(b, setup)
        yield b


def replay_offline(bag_path: str | Path | Bag, setup: ReplaySetup, seed: int = 0, distro: str = "kilted",
                   assumed_latency_s: float = 0.0, progress: bool = False,
                   keep_observations: bool = False) -> ReplayResult:
    started = time.perf_counter()
    runner = setup.runner(seed, assumed_latency_s, keep_observations)
    readers: dict[str, list] = {}  # topic -> (key, reader) per observation it feeds (an eef pose may feed two)
    for t in setup.topics:
        readers.setdefault(t.topic, []).append((t.key, t.reader(setup.engine.image_shapes.get(t.key),
                                                                setup.params.resize_images)))
    dt = 1.0 / setup.params.control_rate_hz
    with opened(bag_path, setup, distro) as bag:
        result = ReplayResult(str(bag.path), "offline", [], [], runner.chunks, distro=bag.distro)
        bar = _progress(bag.message_count if progress else 0)
        t0: float | None = None
        k = 0
        for raw in bag.messages(setup.wanted_topics):
            result.messages_read += 1
            bar.update(1)
            if t0 is None:
                t0 = raw.time
            while t0 + k * dt <= raw.time:  # the control ticks due before this message arrives
                _tick(runner, result, t0 + k * dt)
                k += 1
            msg = bag.deserialize(raw)
            if msg is None:
                continue
            if raw.topic == setup.recorded_topic:
                try:
                    recorded = setup.recorded_vector(msg, raw.msgtype, raw.topic)
                except DpRuntimeError as e:
                    _count(result, f"{raw.topic}: {e}")
                    continue
                result.recorded.append((raw.time, recorded))
                runner.executed(raw.time, recorded)
                continue
            for key, read in readers[raw.topic]:
                try:
                    stamp, value = read(msg, received=raw.time)
                except DpRuntimeError as e:
                    _count(result, f"{raw.topic}: {e}")
                    continue
                result.stamp_lag.setdefault(raw.topic, []).append(raw.time - stamp)
                if runner.add(key, stamp, value):
                    result.messages_used += 1
                else:
                    _count(result, runner.stats.last_error)
        bar.close()
        result.problems = bag.problems_found()
    status = runner.status(t0 + k * dt if t0 is not None else 0.0)
    result.queue = status.queue.as_dict()
    result.stale_refusals = status.stale_refusals
    result.inference_errors = status.inference_errors
    result.last_error = status.last_error
    result.continuity = continuity(status)
    result.wall_s = time.perf_counter() - started
    return result


def continuity(status: RunnerStatus) -> dict:
    return {"boundary_jump_ratio": status.boundary_jump_ratio, "chunk_switches": status.chunk_switches,
            "chunk_transition": status.chunk_transition}


def _tick(runner: PolicyRunner, result: ReplayResult, now: float) -> None:
    if runner.needs_inference(now):
        runner.infer(now)
    result.commands.append((now, runner.tick(now)))


def _count(result: ReplayResult, problem: str) -> None:
    """Counted per kind of problem, listed under its first message (with its real numbers)."""
    key = cause_key(problem)
    first = result.first_of.setdefault(key, problem)
    result.invalid[first] = result.invalid.get(first, 0) + 1


class _NoBar:
    def update(self, n: int) -> None: ...

    def close(self) -> None: ...


def _progress(total: int):
    if not total:
        return _NoBar()
    from tqdm import tqdm
    return tqdm(total=total, unit="msg", desc="replay", mininterval=0.5)
