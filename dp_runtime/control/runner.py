"""PolicyRunner: the whole control loop without ROS — observations in, timed commands out.

The ROS node, the replay tool and the sim evaluation all drive this object;
only the message source and the clock differ. ``tick(now)`` is what the
control thread calls (cheap: staleness, pop, limits); ``infer(now)`` is what
the inference worker calls. Stale transitions, hold-position, per-chunk
(trajectory) output, latency figures and starvation/overrun accounting live
here, so replay reproduces them and unit tests reach them without DDS.
"""
from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import numpy as np

from ..errors import ConfigError, DpRuntimeError, StaleInputError
from ..spec import PolicySpec
from .action_queue import ActionQueue
from .continuity import BoundaryJumps
from .limits import ActionLimits
from .observation_buffer import Observation, ObservationBuffer
from .status import RunnerStatus, percentiles_ms

log = logging.getLogger(__name__)
NUMBER = re.compile(r"[-+]?\d[\d.e+-]*")
ON_STARVATION = ("hold", "stop")
ON_STALE = ("stop", "hold_position")
TRANSITIONS = ("replace", "blend", "inpaint")


def cause_key(text: str) -> str:
    """One key per kind of problem: the text with its numbers (stamps, sizes, counts) blanked."""
    return NUMBER.sub("#", text)[:120]


class Engine(Protocol):
    """What the runner needs of a policy: its contract and one prediction per chunk."""
    spec: PolicySpec

    def predict(self, history: dict[str, np.ndarray], seed: int | None = None, known=None, mask=None): ...


@dataclass
class RunnerConfig:
    control_rate_hz: float = 10.0
    max_obs_age: float = 0.5
    max_stamp_ahead: float = 0.1  # s a stamp may lead the clock (clock skew, /clock granularity)
    execution_latency: float = 0.0
    # Start the next inference when this many actions remain; "auto": from the measured inference
    # latency (p95 of recent chunks), so the next chunk arrives just before the queue runs out.
    inference_lead: int | str = 2
    seed: int | None = None  # None: fresh noise per chunk; int: chunk k uses seed + k
    on_starvation: str = "hold"  # "hold" the last command or "stop" publishing
    # Offline replay: the inference time assumed on the bag's clock (deterministic); None: measured.
    assumed_latency_s: float | None = None
    on_stale: str = "stop"  # "stop", or "hold_position": command the measured joint positions
    per_chunk: bool = False  # output one trajectory per chunk (JointTrajectory) instead of a command per tick
    action_names: Sequence[str] = ()  # joints the actions command (for hold_position); default: the bundle's
    keep_chunks: int | None = 100  # chunk records kept (None: all, for offline replay reports)
    autostart: bool = True
    # How a new chunk meets the actions already queued: "replace" them, "blend" (cross-fade over
    # blend_actions), or "inpaint" (denoise the new chunk with the committed actions held fixed).
    chunk_transition: str = "replace"
    blend_actions: int = 4
    delivery_delay_s: float = 0.0  # evaluation only: each chunk arrives this much later

    def __post_init__(self) -> None:
        if not self.control_rate_hz > 0:
            raise ConfigError(f"control_rate_hz must be > 0, got {self.control_rate_hz}")
        if self.on_starvation not in ON_STARVATION:
            raise ConfigError(f"on_starvation must be one of {ON_STARVATION}, got {self.on_starvation!r}")
        if self.on_stale not in ON_STALE:
            raise ConfigError(f"on_stale must be one of {ON_STALE}, got {self.on_stale!r}")
        if self.max_stamp_ahead < 0:
            raise ConfigError(f"max_stamp_ahead must be >= 0, got {self.max_stamp_ahead}")
        if self.inference_lead != "auto" and (not isinstance(self.inference_lead, int) or self.inference_lead < 0):
            raise ConfigError(f"inference_lead must be an integer >= 0 or 'auto', got {self.inference_lead!r}")
        if self.chunk_transition not in TRANSITIONS:
            raise ConfigError(f"chunk_transition must be one of {TRANSITIONS}, got {self.chunk_transition!r}")
        if self.blend_actions < 0:
            raise ConfigError(f"blend_actions must be >= 0 (actions to cross-fade over), got {self.blend_actions}")
        if self.delivery_delay_s < 0:
            raise ConfigError(f"delivery_delay_s must be >= 0, got {self.delivery_delay_s}")
        if self.per_chunk and self.delivery_delay_s:
            raise ConfigError("delivery_delay_s (evaluation) is for per-tick command interfaces")


@dataclass
class ChunkRecord:
    t_obs: float
    started: float
    finished: float
    latency_s: float
    actions: np.ndarray  # executed slice (n_action_steps, A) before limits
    dropped: int
    observation: Observation | None = None
    trajectory: np.ndarray | None = None  # per-chunk output: the queued actions (K, A) after limits
    previous: np.ndarray | None = None  # the last command before this trajectory (velocity of its first point)
    committed: int = 0  # inpaint: actions of the previous chunk held fixed while denoising this one


@dataclass
class RunnerStats:
    chunks: int = 0
    inference_errors: int = 0
    stale_refusals: int = 0
    invalid_inputs: int = 0
    overruns: int = 0  # inferences that took longer than a chunk lasts
    commands: int = 0
    last_error: str = ""


class PolicyRunner:
    def __init__(self, engine: Engine, cfg: RunnerConfig, limits: ActionLimits | None = None,
                 keep_observations: bool = False, warn: Callable[[str, str], None] | None = None,
                 info: Callable[[str], None] | None = None):
        self.engine = engine
        self.spec: PolicySpec = engine.spec
        self.cfg = cfg
        self.dt = 1.0 / cfg.control_rate_hz
        self.action_names = list(cfg.action_names) or list(self.spec.action.names)
        if len(self.action_names) != self.spec.action.dim:
            raise ConfigError(f"action_joint_names has {len(self.action_names)} names, the bundle's action has "
                              f"{self.spec.action.dim} dims")
        if cfg.chunk_transition == "inpaint" and not getattr(engine, "can_inpaint", False):
            raise ConfigError("chunk_transition: inpaint needs a bundle with the inpainting step graph; re-export "
                              "it with dp-export --inpaint (or use replace or blend)")
        self.buffer = ObservationBuffer(self.spec.image_shapes, self.spec.low_dim_sizes, self.spec.n_obs_steps,
                                        self.spec.obs_interval_s, cfg.max_obs_age,
                                        max_ahead=cfg.max_stamp_ahead)
        self.queue = ActionQueue(self.dt, cfg.execution_latency)
        self.limits = limits or ActionLimits()
        self.stats = RunnerStats()
        self.chunks: deque[ChunkRecord] = deque(maxlen=cfg.keep_chunks)
        self.keep_observations = keep_observations
        self.running = cfg.autostart
        self.last_command: np.ndarray | None = None
        self.last_t_obs: float | None = None
        self.latest_joints: dict[str, float] = {}
        self.generation = 0  # bumped by reset(): a chunk inferred before a reset is discarded
        self.lock = threading.Lock()
        self._stale: bool | None = None  # None: waiting for the first fresh inputs (nothing to report yet)
        self._last_reject = ""  # the newest input problem, named again when inputs go stale
        self._pending_t_obs: float | None = None  # a new chunk's observation stamp until its first command
        self._latencies: deque[float] = deque(maxlen=200)
        self._latency_p95: float | None = None  # of _latencies, updated per chunk (read every tick by auto lead)
        self._obs_to_command: deque[float] = deque(maxlen=200)
        self._command_times: deque[float] = deque(maxlen=500)
        self._pending: tuple[np.ndarray, float, float, int] | None = None  # (actions, t_obs, arrival, generation)
        self.jumps = BoundaryJumps()
        self._warned: set[str] = set()
        self._warn = warn or (lambda cause, msg: log.warning(msg))
        self._info = info or log.info

    # -- logging ---------------------------------------------------------------------
    def warn_once(self, cause: str, msg: str) -> None:
        """Log once per cause, not per message; the stats still count every occurrence."""
        self.stats.last_error = msg
        if cause not in self._warned:
            self._warned.add(cause)
            self._warn(cause, msg)

    # -- start / stop / reset ----------------------------------------------------------
    def start(self) -> None:
        self.running = True

    def stop(self) -> None:
        with self.lock:
            self.running = False
            self._drop_queue()

    def reset(self) -> None:
        with self.lock:
            self.buffer.reset()
            self._drop_queue()
            self.last_command = None
            self.last_t_obs = None
            self._pending_t_obs = None
            self._stale = None
            self.generation += 1

    def _drop_queue(self) -> None:
        """Execution stops (under the lock): nothing queued or in flight, and the next action is no switch."""
        self.queue.clear()
        self._pending = None
        self.jumps.break_sequence()

    # -- inputs ----------------------------------------------------------------------
    def reject(self, key: str, error: Exception, what: str | None = None) -> None:
        """Count an unusable input and log its kind of problem once."""
        self.stats.invalid_inputs += 1
        msg = f"dropped {what or key} message: {error}"
        self._last_reject = msg
        self.warn_once(f"input:{key}:{type(error).__name__}:{cause_key(str(error))}", msg)

    def add(self, key: str, stamp: float, value: np.ndarray, now: float | None = None,
            joint_names: Sequence[str] | None = None) -> bool:
        """Store one observation sample; False (counted, logged once per cause) when it is unusable.

        ``joint_names``: the sample is joint positions in this order (kept for on_stale hold_position).
        """
        try:
            with self.lock:
                self.buffer.add(key, stamp, value, now)
        except DpRuntimeError as e:
            self.reject(key, e)
            return False
        if joint_names:
            self.latest_joints.update(zip(joint_names, np.asarray(value, dtype=np.float64).tolist()))
        return True

    def inputs_stale(self, now: float) -> dict[str, float]:
        """The stale inputs at ``now`` (empty: all fresh)."""
        with self.lock:
            return self.buffer.stale(now)

    # -- inference -------------------------------------------------------------------
    def expected_latency(self) -> float:
        """Seconds from starting an inference to its chunk arriving: assumed (replay, sim), else the p95 of
        recent chunks (the warm-up's before the first), plus any evaluation delay."""
        if self.cfg.assumed_latency_s is not None:
            lat = self.cfg.assumed_latency_s
        elif self._latency_p95 is not None:
            lat = self._latency_p95
        else:
            lat = float(getattr(self.engine, "warmup_latency_s", 0.0) or 0.0)
        return lat + self.cfg.delivery_delay_s

    def inference_lead(self) -> int:
        """Actions left in the queue when the next inference starts."""
        if self.cfg.inference_lead != "auto":
            return int(self.cfg.inference_lead)
        ahead = math.ceil((self.expected_latency() + self.cfg.execution_latency) / self.dt - 1e-9) + 1
        return int(min(max(ahead, 1), self.spec.n_action_steps - 1))

    def needs_inference(self, now: float | None = None) -> bool:
        """Running, queue at or below the lead, no chunk in flight, and an observation newer than the last
        chunk's. With ``now`` (simulated clocks), a chunk whose arrival time has come is delivered first, so
        the next inference can start in the same tick."""
        lead = self.inference_lead()
        with self.lock:
            if now is not None:
                self._deliver(now)
            if not self.running or self._pending is not None or len(self.queue) > lead:
                return False
            newest = self.buffer.newest_stamp()
            return newest is not None and (self.last_t_obs is None or newest > self.last_t_obs)

    def infer(self, now: float) -> ChunkRecord | None:
        """Assemble the observation at ``now``, predict, and queue the executed slice.

        Per-chunk output: the returned record's ``trajectory`` is what to publish.
        """
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
            known, mask = self._committed(obs.stamp, now) if self.cfg.chunk_transition == "inpaint" else (None, None)
        seed = None if self.cfg.seed is None else self.cfg.seed + self.stats.chunks
        started = time.perf_counter()
        try:
            pred = (self.engine.predict(obs.history, seed=seed, known=known, mask=mask) if known is not None
                    else self.engine.predict(obs.history, seed=seed))
        except DpRuntimeError as e:
            self.stats.inference_errors += 1
            self.warn_once(f"inference:{type(e).__name__}", f"inference failed: {e}")
            return None
        except Exception as e:  # a backend failure must not kill the node; counted and reported
            self.stats.inference_errors += 1
            self.warn_once(f"inference:{type(e).__name__}", f"inference raised {type(e).__name__}: {e}")
            return None
        finished = time.perf_counter()
        lasts = self.dt * self.spec.n_action_steps
        if pred.latency_s > lasts:  # the queue ran dry before this chunk arrived: worth knowing, not fatal
            self.stats.overruns += 1
            self.warn_once("overrun", f"inference took {pred.latency_s * 1e3:.0f} ms, longer than the "
                           f"{lasts * 1e3:.0f} ms a chunk lasts")
        executed = self.spec.executed(pred.actions)
        trajectory = previous = None
        with self.lock:
            if self.generation != generation:  # reset while inferring: these actions belong to the old timeline
                return None
            took = self.cfg.assumed_latency_s if self.cfg.assumed_latency_s is not None else finished - started
            self.stats.chunks += 1
            self._latencies.append(pred.latency_s)
            self._latency_p95 = float(np.percentile(np.asarray(self._latencies), 95))
            dropped = 0
            if self.cfg.assumed_latency_s is not None or self.cfg.delivery_delay_s:
                # On a simulated clock the chunk is in flight until it arrives; the queue runs on meanwhile.
                self._pending = (executed, obs.stamp, now + took + self.cfg.delivery_delay_s, generation)
            else:
                dropped = self._push(executed, obs.stamp, now + took)
                if self.cfg.per_chunk:
                    previous = self.last_command
                    trajectory = np.stack([self.limits.apply(a, None) for _, a in self.queue.remaining()])
                    self._issued(obs.stamp, now)
                else:
                    self._pending_t_obs = obs.stamp
            rec = ChunkRecord(obs.stamp, started, finished, pred.latency_s, executed, dropped,
                              obs if self.keep_observations else None, trajectory, previous,
                              0 if mask is None else int(mask.sum()))
            self.chunks.append(rec)  # under the lock: _deliver updates the newest record
        return rec

    def _push(self, executed: np.ndarray, t_obs: float, arrival: float) -> int:
        """Queue a chunk as it arrives (under the lock): replace, or blend with what was queued."""
        blend = self.cfg.blend_actions if self.cfg.chunk_transition == "blend" else 0
        return self.queue.push(executed, t_obs, arrival, blend=blend)

    def _deliver(self, now: float) -> None:
        """Hand over the chunk in flight once its arrival time has come (under the lock)."""
        if self._pending is None or self._pending[2] > now + 1e-9:
            return
        executed, t_obs, arrival, generation = self._pending
        self._pending = None
        if generation == self.generation:
            self.chunks[-1].dropped = self._push(executed, t_obs, arrival) if self.chunks else 0
            self._pending_t_obs = t_obs

    def _committed(self, t_obs: float, now: float) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Inpainting input (under the lock): the queued actions that execute before the new chunk can
        arrive, placed on the new chunk's horizon (raw actions (H, A), mask (H,))."""
        arrive = now + self.expected_latency() + self.cfg.execution_latency
        h, start = self.spec.horizon, self.spec.action.execute_start
        known = np.zeros((h, self.spec.action.dim), np.float32)
        mask = np.zeros(h, bool)
        for due, action in self.queue.items:
            if due > arrive + 1e-9:
                break
            # Half up, never Python's half-to-even: the old chunk's grid is offset from the new one by the camera
            # phase, and at half a period round() would put two committed actions on one slot and skip the next.
            k = start + math.floor((due - t_obs) / self.dt + 0.5)
            if 0 <= k < h:
                known[k], mask[k] = action, True
        return (known, mask) if mask.any() else (None, None)

    # -- control tick ----------------------------------------------------------------
    def tick(self, now: float) -> np.ndarray | None:
        """The per-tick command to publish at ``now`` (None: publish nothing this tick).

        Stale inputs stop the policy (queue cleared; with on_stale hold_position the measured
        joint positions are commanded); the transitions are logged once each way.
        """
        if not self.running:
            return None
        stale = self.inputs_stale(now)
        if stale:
            with self.lock:
                self._drop_queue()
            if self._stale is False:
                self._stale = True
                desc = self.buffer.describe(stale)
                self.stats.last_error = f"stale inputs: {desc}"
                why = f"; last rejected input: {self._last_reject}" if self._last_reject else ""
                self._warn("stale", f"stale inputs (max_obs_age {self.cfg.max_obs_age} s): {desc}; "
                                    f"commands stopped ({self.cfg.on_stale}){why}")
            if self.cfg.on_stale == "hold_position" and not self.cfg.per_chunk:
                return self._hold_position(now)
            return None
        if self._stale:
            self._last_reject = ""
            self._info("inputs fresh again: resuming")
        self._stale = False
        with self.lock:
            self._deliver(now)
            action = self.queue.pop(now)
            chunk = self.queue.popped_chunk
        if action is None:
            starved = len(self.queue) == 0
            if starved and self.cfg.on_starvation == "stop":
                return None
            cmd = self.last_command  # next action not due yet, or starved with "hold"
        else:
            cmd = self.limits.apply(action, self.last_command)
            self.last_command = cmd
            self.jumps.add(cmd, chunk)
        if cmd is None or self.cfg.per_chunk:
            return None
        self._issued(self._pending_t_obs, now)
        self._pending_t_obs = None
        return cmd

    def measured_joints(self) -> np.ndarray | None:
        """The latest measured positions of the commanded joints (None until all were measured)."""
        hold = [self.latest_joints.get(n) for n in self.action_names]
        return None if any(v is None for v in hold) else np.asarray(hold, dtype=np.float64)

    def _hold_position(self, now: float) -> np.ndarray | None:
        hold = self.measured_joints()
        if hold is not None:
            self._issued(None, now)
        return hold

    def _issued(self, t_obs: float | None, now: float) -> None:
        """Account one published command (or trajectory)."""
        self.stats.commands += 1
        self._command_times.append(time.perf_counter())
        if t_obs is not None:  # the first command since a new chunk: how old its observation is now
            self._obs_to_command.append(now - t_obs)

    # -- status ----------------------------------------------------------------------
    def status(self, now: float) -> RunnerStatus:
        with self.lock:
            ages, stale = self.buffer.ages(now), self.buffer.stale(now)
            depth = len(self.queue)
            queue = type(self.queue.stats)(**self.queue.stats.as_dict())
        lat = percentiles_ms(self._latencies, 50, 100)
        times = np.asarray(self._command_times)
        periods = np.diff(times) if times.size > 11 else np.zeros(0)
        o2c = percentiles_ms(self._obs_to_command, 50, 100)
        s = self.stats
        ratio = self.jumps.ratio()
        extra = {"inference_lead": str(self.inference_lead()), "chunk_transition": self.cfg.chunk_transition,
                 "chunk_switches": str(self.jumps.switches),
                 "boundary_jump_ratio": "n/a" if ratio is None else f"{ratio:.3f}"}
        return RunnerStatus(self.running, stale, ages, queue, depth, s.chunks, s.inference_errors,
                            s.stale_refusals, s.invalid_inputs, s.overruns, s.commands, s.last_error,
                            lat, percentiles_ms(periods, 50, 99), o2c, extra)
