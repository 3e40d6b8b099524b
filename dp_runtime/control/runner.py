"""PolicyRunner: the control loop's logic without ROS — observations in, timed commands out.

The ROS node and the replay tool both drive this object; only the message
source and the clock differ. ``tick(now)`` is what the control timer calls
(cheap: pop and limit); ``infer(now)`` is what the inference worker calls.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..engine import PolicyEngine
from ..errors import DpRuntimeError, StaleInputError
from .action_queue import ActionQueue
from .limits import ActionLimits
from .observation_buffer import Observation, ObservationBuffer

log = logging.getLogger(__name__)
NUMBER = re.compile(r"[-+]?\d[\d.e+-]*")


@dataclass
class RunnerConfig:
    control_rate_hz: float = 10.0
    max_obs_age: float = 0.5
    execution_latency: float = 0.0
    inference_lead: int = 2  # start the next inference when this many actions remain
    seed: int | None = None  # None: fresh noise per chunk; int: chunk k uses seed + k
    on_starvation: str = "hold"  # "hold" the last command or "stop" publishing
    # Offline replay: the inference time assumed on the bag's clock (deterministic); None: measured.
    assumed_latency_s: float | None = None


@dataclass
class ChunkRecord:
    t_obs: float
    started: float
    finished: float
    latency_s: float
    actions: np.ndarray  # executed slice (n_action_steps, A) before limits
    dropped: int
    observation: Observation | None = None


@dataclass
class RunnerStats:
    chunks: int = 0
    inference_errors: int = 0
    stale_refusals: int = 0
    invalid_inputs: int = 0
    overruns: int = 0  # inferences that took longer than a chunk lasts
    latencies: list[float] = field(default_factory=list)
    last_error: str = ""


class PolicyRunner:
    def __init__(self, engine: PolicyEngine, cfg: RunnerConfig, limits: ActionLimits | None = None,
                 keep_observations: bool = False, warn: Callable[[str, str], None] | None = None):
        m = engine.manifest
        self.engine = engine
        self.cfg = cfg
        self.dt = 1.0 / cfg.control_rate_hz
        self.buffer = ObservationBuffer(engine.image_shapes, engine.low_dim_sizes, engine.n_obs_steps,
                                        float(m["policy"].get("obs_interval_s", self.dt)), cfg.max_obs_age)
        self.queue = ActionQueue(self.dt, cfg.execution_latency)
        self.limits = limits or ActionLimits()
        self.stats = RunnerStats()
        self.chunks: list[ChunkRecord] = []
        self.keep_observations = keep_observations
        self.last_command: np.ndarray | None = None
        self.last_t_obs: float | None = None
        self.generation = 0  # bumped by reset(): a chunk inferred before a reset is discarded
        self.lock = threading.Lock()
        self._warned: set[str] = set()
        self._warn = warn or (lambda cause, msg: log.warning(msg))

    # -- inputs ----------------------------------------------------------------------
    @staticmethod
    def cause_of(key: str, error: Exception) -> str:
        """One cause per kind of problem: the message with numbers (stamps, sizes) blanked."""
        kind = NUMBER.sub("#", str(error))[:80]
        return f"input:{key}:{type(error).__name__}:{kind}"

    def warn_once(self, cause: str, msg: str) -> None:
        """Log once per cause, not per message; the stats still count every occurrence."""
        self.stats.last_error = msg
        if cause not in self._warned:
            self._warned.add(cause)
            self._warn(cause, msg)

    def reject(self, key: str, error: Exception, what: str | None = None) -> None:
        """Count an unusable input and log its kind of problem once."""
        self.stats.invalid_inputs += 1
        self.warn_once(self.cause_of(key, error), f"dropped {what or key} message: {error}")

    def add(self, key: str, stamp: float, value: np.ndarray, now: float | None = None) -> bool:
        try:
            with self.lock:
                self.buffer.add(key, stamp, value, now)
            return True
        except DpRuntimeError as e:
            self.reject(key, e)
            return False

    def reset(self) -> None:
        with self.lock:
            self.buffer.reset()
            self.queue.clear()
            self.last_command = None
            self.last_t_obs = None
            self.generation += 1

    # -- inference -------------------------------------------------------------------
    def needs_inference(self) -> bool:
        """Queue at or below the lead, and an observation newer than the last chunk's."""
        with self.lock:
            if len(self.queue) > self.cfg.inference_lead:
                return False
            newest = self.buffer.newest_stamp()
            return newest is not None and (self.last_t_obs is None or newest > self.last_t_obs)

    def infer(self, now: float) -> ChunkRecord | None:
        """Assemble the observation at ``now``, predict, and queue the executed slice."""
        with self.lock:
            try:
                obs = self.buffer.assemble(now)
            except StaleInputError as e:
                self.stats.stale_refusals += 1
                self.queue.clear()  # never act on a chunk computed before inputs went stale
                self.warn_once("stale", str(e))
                return None
            self.last_t_obs = obs.stamp
            generation = self.generation
        seed = None if self.cfg.seed is None else self.cfg.seed + self.stats.chunks
        started = time.perf_counter()
        try:
            pred = self.engine.predict(obs.history, seed=seed)
        except DpRuntimeError as e:
            self.stats.inference_errors += 1
            self.warn_once(f"inference:{type(e).__name__}", f"inference failed: {e}")
            return None
        except Exception as e:  # a backend failure must not kill the node; counted and reported
            self.stats.inference_errors += 1
            self.warn_once(f"inference:{type(e).__name__}", f"inference raised {type(e).__name__}: {e}")
            return None
        finished = time.perf_counter()
        lasts = self.dt * self.engine.n_action_steps
        if pred.latency_s > lasts:  # the queue ran dry before this chunk arrived: worth knowing, not fatal
            self.stats.overruns += 1
            self.warn_once("overrun", f"inference took {pred.latency_s * 1e3:.0f} ms, longer than the "
                           f"{lasts * 1e3:.0f} ms a chunk lasts")
        executed = self.engine.executed_slice(pred.actions)
        with self.lock:
            if self.generation != generation:  # reset while inferring: these actions belong to the old timeline
                return None
            took = self.cfg.assumed_latency_s if self.cfg.assumed_latency_s is not None else finished - started
            dropped = self.queue.push(executed, obs.stamp, now + took)
            self.stats.chunks += 1
            self.stats.latencies.append(pred.latency_s)
        rec = ChunkRecord(obs.stamp, started, finished, pred.latency_s, executed, dropped,
                          obs if self.keep_observations else None)
        self.chunks.append(rec)
        return rec

    def inputs_stale(self, now: float) -> dict[str, float]:
        """The stale inputs at ``now`` (empty: all fresh)."""
        with self.lock:
            return self.buffer.stale(now)

    # -- control tick ----------------------------------------------------------------
    def tick(self, now: float) -> np.ndarray | None:
        """The command to publish at ``now`` (None: publish nothing this tick)."""
        if self.inputs_stale(now):
            with self.lock:
                self.queue.clear()
            return None
        with self.lock:
            action = self.queue.pop(now)
        if action is None:
            starved = len(self.queue) == 0
            if starved and self.cfg.on_starvation == "stop":
                return None
            return self.last_command  # next action not due yet, or starved with "hold"
        cmd = self.limits.apply(action, self.last_command)
        self.last_command = cmd
        return cmd
