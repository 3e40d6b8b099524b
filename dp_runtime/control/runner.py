"""PolicyRunner: the whole control loop without ROS — observations in, timed commands out.

The ROS node, the replay tool and the sim evaluation all drive this object;
only the message source and the clock differ. ``tick(now)`` is what the
control thread calls (cheap: staleness, pop, limits); ``infer(now)`` is what
the inference worker calls. The runner composes three parts: the inference
scheduler (when to start, scheduler.py), chunk delivery (at once, or on a
simulated clock, delivery.py) and metrics (metrics.py); the chunk transition
is a table entry (transitions.py). Stale transitions, hold-position and
per-chunk (trajectory) output live here, so replay reproduces them and unit
tests reach them without DDS.
"""
from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Protocol, Sequence

import numpy as np

from ..errors import ConfigError, DpRuntimeError, StaleInputError
from ..holds import every_step
from ..layout import KINDS
from ..pose_action import IDENTITY, Pose, decode, ee_poses, encode, relative_rows
from ..settings import check, setting, settings_of
from ..spec import PolicySpec
from . import chunk_noise, transitions
from .action_queue import ActionQueue
from .chunk_noise import CHUNK_NOISE, ChunkNoise, NoiseRule, noise_rule
from .delivery import IMMEDIATE, Delivery
from .discontinuity import DepartureCheck, Discontinuity, input_gap
from .ee_pose import PoseTracker, position_scale
from .limits import ActionLimits
from .metrics import RunnerMetrics
from .observation_buffer import Observation, ObservationBuffer
from .scheduler import InferenceScheduler
from .status import RunnerStatus, percentiles_ms
from .transitions import TRANSITIONS, Plan, Transition, transition

log = logging.getLogger(__name__)
# An input not yet received this long after the first one is a problem worth a warning; before, it is start-up.
STARTUP_GRACE_S = 5.0
# Measured on the three sim tasks (bench/discontinuity.py, README Discontinuities): normal motion peaks at 0.25
# departure and 2.6 /s, teleports move the arm at >= 4.2 /s (but for a few too small to see in the joints).
DEFAULT_DISCONTINUITY_THRESHOLD, DEFAULT_DISCONTINUITY_SPEED = 0.35, 3.5
NUMBER = re.compile(r"[-+]?\d[\d.e+-]*")


def cause_key(text: str) -> str:
    """One key per kind of problem: the text with its numbers (stamps, sizes, counts) blanked."""
    return NUMBER.sub("#", text)[:120]


class Engine(Protocol):
    """Everything the runner uses of a policy: its contract, whether it can inpaint, and one prediction per chunk."""
    spec: PolicySpec
    can_inpaint: bool
    masks_per_step: bool  # the inpainting mask may change between DDIM steps (soft_inpaint_early)
    takes_noise: bool  # predict(noise=) sets a chunk's initial noise (chunk_noise aligned)
    warmup_latency_s: float  # the warm-up's chunk latency: inference_lead auto's estimate before the first chunk

    def predict(self, history: dict[str, np.ndarray], seed: int | None = None, known=None, mask=None,
                hold=every_step, noise=None): ...


@dataclass
class RunnerConfig:
    """The control loop's deployed settings (each a node parameter of the same name)."""
    control_rate_hz: float = setting(10.0, "command rate; action i of a chunk is due at t_obs + i / rate", gt=0)
    action_joint_names: list[str] = setting([], "joint names of the command (for hold_position too)",
                                            shown="the bundle's action names")
    inference_lead: int | str = setting(
        "auto", "start the next inference when this many actions remain; auto: ceil((p95 of recent inference "
           "latencies + execution_latency) / dt) + 1, so the next chunk arrives just before the queue runs out",
        choices=("auto",), ge=0)
    chunk_transition: str = setting(
        "auto", "how a new chunk meets the actions already queued: auto (the first the bundle and backend run of "
                "soft_inpaint_early, soft_inpaint, blend; replace for per-step delta actions; logged), replace, "
                "blend (cross-fade), inpaint "
                "(denoised with the committed actions held fixed; needs a bundle exported with --inpaint), "
                "soft_inpaint (inpaint, and the previous chunk's plan guides the rest with decaying weights), "
                "soft_inpaint_early (as soft_inpaint, the weights holding through the noisiest DDIM steps only)",
        choices=(transitions.AUTO, *TRANSITIONS))
    blend_actions: int = setting(4, "blend: actions over which a new chunk cross-fades in", ge=0, live=True)
    chunk_noise: str = setting(
        "auto", "each chunk's initial noise: auto (aligned where the backend takes it, fresh on remote and for "
                "per-step delta actions), fresh "
                "(drawn per chunk), or aligned (the previous chunk's on the due times both cover, fresh beyond: a "
                "multimodal policy keeps its choice from chunk to chunk)",
        choices=(chunk_noise.AUTO, *CHUNK_NOISE))
    inpaint_decay: float | str = setting(
        "auto", "soft_inpaint: weight of the j-th action of the previous chunk's plan after the frozen prefix is "
                "inpaint_decay ** j (soft_inpaint_early: the share of the DDIM steps it is held); auto: the value "
                "measured best for the transition (soft_inpaint_early 0.9, soft_inpaint 0.6)",
        choices=("auto",), gt=0, lt=1, live=True)
    max_obs_age: float = setting(0.5, "s; older inputs stop the policy (never act on stale data); an input silent "
                                      "for longer is a discontinuity", gt=0)
    discontinuity_threshold: float = setting(
        DEFAULT_DISCONTINUITY_THRESHOLD,
        "normalized action units (the training range is [-1, 1]): a measured commanded joint further than this from "
        "every command of the last chunk's time is a discontinuity (pushed arm, scene reset, e-stop): the queue, "
        "the plan's guidance, the aligned noise and the history before it are dropped, and it is logged and counted",
        gt=0)
    discontinuity_speed: float = setting(
        DEFAULT_DISCONTINUITY_SPEED,
        "normalized action units per second: a measured commanded joint moving faster than this between two samples "
        "(a teleport, a re-homed encoder) is a discontinuity", gt=0)
    max_stamp_ahead: float = setting(0.1, "s an observation stamp may lead the node clock (clock skew, /clock "
                                          "granularity); a message stamped further ahead is refused and logged", ge=0)
    execution_latency: float = setting(0.0, "s; actions due sooner than this after a chunk arrives are dropped",
                                       ge=0)
    on_starvation: str = setting("hold", "when the queue runs dry: hold the last command (per-step deltas: a zero "
                                         "step), or stop publishing",
                                 choices=("hold", "stop"), live=True)
    on_stale: str = setting("stop", "on stale inputs: stop publishing, or hold_position (publish the measured "
                                    "joint positions)", choices=("stop", "hold_position"), live=True)
    commands_executed: bool = setting(
        True, "the robot executes this node's commands; false where the measured joints follow other commands (a "
              "dry run, real-time replay of a bag): the departure rule then has nothing to compare with")
    seed: int = setting(-1, ">= 0: chunk k uses noise seed + k (reproducible); -1: random")
    autostart: bool = setting(True, "start running; false: wait for the ~/start service")
    per_chunk: bool = False  # one trajectory per chunk (JointTrajectory) instead of a command per tick
    transition: Transition | None = field(init=False, repr=False)  # chunk_transition, resolved once (None: auto)
    noise: NoiseRule | None = field(init=False, repr=False)  # chunk_noise, resolved once (None: auto)

    def __post_init__(self) -> None:
        check(self)
        self.transition = transition(self.chunk_transition)
        self.noise = noise_rule(self.chunk_noise)

    def runner_fields(self) -> dict:
        """These settings as RunnerConfig keywords (a subclass adds its own settings)."""
        return {name: getattr(self, name) for name, f in RunnerConfig.__dataclass_fields__.items() if f.init}


LIVE = {f.name for f, rule, _ in settings_of(RunnerConfig) if rule.live}


class InFlight(NamedTuple):
    """A chunk computed but not yet delivered (simulated delivery delay)."""
    plan: Plan
    arrival: float
    generation: int  # the runner's generation when it was inferred (a reset discards it)


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
    committed: int = 0  # inpaint, soft_inpaint: actions of the previous chunk frozen while denoising this one
    held: np.ndarray | None = None  # (n_action_steps,) weights the previous plan held the executed slice with:
    #                                 1 committed, (0, 1) guided, 0 free (None: nothing held)
    queued_at: float | None = None  # clock time the chunk reached the queue (None: still in flight)


class PolicyRunner:
    def __init__(self, engine: Engine, cfg: RunnerConfig, limits: ActionLimits | None = None,
                 keep_observations: bool = False, warn: Callable[[str, str], None] | None = None,
                 info: Callable[[str], None] | None = None, delivery: Delivery = IMMEDIATE,
                 keep_chunks: int | None = 100):
        """``delivery``: IMMEDIATE on a robot, ``delivery.simulated(...)`` for replay and the sim;
        ``keep_chunks``: chunk records kept (None: all, for offline replay reports)."""
        self.engine = engine
        self.spec: PolicySpec = engine.spec
        self.cfg = cfg
        self.delivery = delivery
        self.dt = 1.0 / cfg.control_rate_hz
        self.action_names = list(cfg.action_joint_names) or list(self.spec.action.names)
        if len(self.action_names) != self.spec.action.dim:
            raise ConfigError(f"action_joint_names has {len(self.action_names)} names, the bundle's action has "
                              f"{self.spec.action.dim} dims")
        tracker = PoseTracker(self.spec)
        self.deltas = tracker.mode == "delta"  # per-step deltas: a repeated one would move the arm on
        self.transition, how = transitions.for_engine(cfg.transition, engine, self.deltas)
        self.noise, noise_how = chunk_noise.for_engine(cfg.noise, engine, self.deltas)
        decay = f"; inpaint_decay auto: {self.transition.decay:g}" if self.transition.decay and \
            cfg.inpaint_decay == transitions.AUTO else ""
        self.settings_line = f"{how}; {noise_how}{decay}"  # how the auto settings resolved, for the start-up log
        if cfg.per_chunk and delivery.delay_s:
            raise ConfigError("a delivery delay (evaluation) is for per-tick command interfaces")
        self._resolve(cfg)
        self.buffer = ObservationBuffer(self.spec.image_shapes, self.spec.low_dim_sizes, self.spec.n_obs_steps,
                                        self.spec.obs_interval_s, cfg.max_obs_age, max_ahead=cfg.max_stamp_ahead,
                                        layouts={o.key: o.segments for o in self.spec.observations})
        self.queue = ActionQueue(self.dt, cfg.execution_latency)
        self.scheduler = InferenceScheduler(cfg.inference_lead, self.dt, self.spec.n_action_steps,
                                            cfg.execution_latency, delivery, lambda: engine.warmup_latency_s)
        self.metrics = RunnerMetrics()
        self.stats = self.metrics.stats
        self.jumps = self.metrics.jumps
        self.limits = limits or ActionLimits()
        scale = np.asarray(self.spec.action.scale or np.ones(self.spec.action.dim), np.float64)
        self.departures = DepartureCheck(cfg.discontinuity_threshold, cfg.discontinuity_speed, scale,
                                         self.dt * self.spec.n_action_steps, self.action_names)
        # the measured end-effector pose, where the action is a pose and the bundle observes one
        self.ee = tracker if tracker.posed and tracker.keys else None
        self.command_reference: Pose | None = None  # the pose the last command is decoded against
        self.posed = tracker.posed  # the action holds an end-effector pose (checked decodable before commanding)
        self.pose_obs = {o.key: o.segments for o in self.spec.observations if o.kind == "low_dim"
                         and any(KINDS[s.kind].posed for s in o.segments)}  # the keys the end effector's pose is in
        # key -> relative | start: seen relative to the newest or to the start pose (UMI's obs_pose_repr relative,
        # *_wrt_start), converted when a history is assembled, the whole pose merged over pose_obs
        self.seen_as = {k: mode for k, segments in self.pose_obs.items()
                        if (mode := next(s.mode for s in segments if KINDS[s.kind].posed)) != "absolute"}
        self._start_pose: Pose | None = None  # the pose when the first history after a start, reset or discontinuity
        # was assembled (UMI's episode_start_pose)
        # the departure and jump rules on the measured end-effector position against the commanded one
        self.pose_departures = DepartureCheck(cfg.discontinuity_threshold, cfg.discontinuity_speed,
                                              position_scale(self.spec, self.dt), self.dt * self.spec.n_action_steps,
                                              ["end-effector x", "end-effector y", "end-effector z"])
        self.chunks: deque[ChunkRecord] = deque(maxlen=keep_chunks)
        self.keep_observations = keep_observations
        self.running = cfg.autostart
        self.last_command: np.ndarray | None = None
        self.last_t_obs: float | None = None
        self.latest_joints: dict[str, float] = {}
        self.generation = 0  # bumped by reset(): a chunk inferred before a reset is discarded
        self.lock = threading.Lock()
        self._stale: bool | None = None  # None: waiting for the first fresh inputs (nothing to report yet)
        self._last_reject = ""  # the newest input problem, named again when inputs go stale
        self._first_input: float | None = None  # stamp of the first usable sample since start or reset
        self._pending_t_obs: float | None = None  # a new chunk's observation stamp until its first command
        self._in_flight: InFlight | None = None
        # until the first chunk since start, reset or a discontinuity arrives: waiting (after a discontinuity
        # holding), not starving (a tick before the first chunk is no starvation)
        self._awaiting_chunk = True
        self._plan: Plan | None = None  # the chunk the queue was last filled from (soft_inpaint's guide)
        self._noise: ChunkNoise | None = None  # the last chunk's initial noise (chunk_noise aligned)
        self._warned: set[str] = set()
        self._warn = warn or (lambda cause, msg: log.warning(msg))
        self._info = info or log.info

    def _resolve(self, cfg: RunnerConfig) -> None:
        self.hold_on_stale = cfg.on_stale == "hold_position"
        self.hold_on_starvation = cfg.on_starvation == "hold"
        self.decay = self.transition.decay if cfg.inpaint_decay == transitions.AUTO else cfg.inpaint_decay

    def reconfigure(self, cfg: RunnerConfig, limits: ActionLimits) -> None:
        """New live settings (on_stale, on_starvation, blend_actions) and limits, from the next tick on.

        Only settings marked live may differ: the rest shape the queue, buffer and schedule built at start."""
        fixed = [f for f, v in cfg.runner_fields().items() if f not in LIVE and v != getattr(self.cfg, f)]
        if fixed:
            raise ConfigError(f"{', '.join(fixed)} cannot change while running")
        with self.lock:
            self.cfg = cfg
            self._resolve(cfg)
            self.limits = limits

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
            self._start_pose = None

    def reset(self, broke: Discontinuity | None = None) -> None:
        """Clear history, queue and plan (~/reset); ``broke``: a discontinuity found outside the runner (a
        backward clock jump), counted as one."""
        with self.lock:
            if broke is not None:
                self.metrics.discontinuity(broke)
            self.buffer.reset()
            self._drop_queue()
            self.last_command = None
            self.last_t_obs = None
            self._pending_t_obs = None
            self._stale = None
            self._first_input = None
            self.departures.clear()
            self.pose_departures.clear()
            self._start_pose = None
            self._awaiting_chunk = True
            self.generation += 1

    def discontinuity(self, d: Discontinuity) -> None:
        """The robot is no longer where the plan put it: drop the queue, the plan's guidance, the aligned noise
        and the history before ``d.stamp``; hold where the robot is measured (not where the old plan was
        going) until a chunk from observations after the break arrives. Logged and counted."""
        with self.lock:
            self._break(d)
        self._warn("discontinuity", f"discontinuity at {d.stamp:.3f}: {d.reason}; plan, queue and history before "
                                    "it dropped, next chunk from fresh observations")

    def _break(self, d: Discontinuity) -> None:
        """(under the lock)"""
        self.buffer.drop_before(d.stamp)
        self._drop_queue()
        self.departures.clear()
        self.pose_departures.clear()
        self.last_t_obs = None
        self._pending_t_obs = None
        self.last_command = self._measured_hold()
        self._start_pose = None
        self._awaiting_chunk = True
        self.generation += 1  # a chunk being inferred from the old history is discarded
        self.metrics.discontinuity(d)

    def _drop_queue(self) -> None:
        """Execution stops (under the lock): nothing queued or in flight, and the next action is no switch."""
        self.queue.clear()
        self._in_flight = None
        self._plan = None
        self._noise = None
        self.jumps.break_sequence()
        if self.ee is not None:
            self.ee.clear()

    # -- inputs ----------------------------------------------------------------------
    def reject(self, key: str, error: Exception, what: str | None = None) -> None:
        """Count an unusable input and log its kind of problem once."""
        msg = f"dropped {what or key} message: {error}"
        cause = f"input:{key}:{type(error).__name__}:{cause_key(str(error))}"
        self.metrics.rejected(cause, msg)
        self._last_reject = msg
        self.warn_once(cause, msg)

    def add(self, key: str, stamp: float, value: np.ndarray, now: float | None = None,
            joint_names: Sequence[str] | None = None) -> bool:
        """Store one observation sample; False (counted, logged once per cause) when it is unusable.

        ``joint_names``: the sample is joint positions in this order (kept for on_stale hold_position).
        """
        broke = None
        try:
            with self.lock:
                previous = self.buffer.newest(key)
                self.buffer.add(key, stamp, value, now)
                pose = None
                if self.ee is not None and key in self.ee.keys:
                    self.ee.add(key, stamp, value)
                    pose = self.ee.measured() if key in self.ee.position_keys else None
                if self._first_input is None:
                    self._first_input = stamp
                if joint_names:
                    self.latest_joints.update(zip(joint_names, np.asarray(value, dtype=np.float64).tolist()))
                broke = input_gap(key, previous, stamp, self.cfg.max_obs_age)
                if broke is not None and self.last_t_obs is None:  # no chunk since start or reset: no plan to end
                    self.buffer.drop_before(stamp, key)
                    broke = None
                elif broke is None and joint_names and self.running:
                    measured = self.measured_joints()
                    broke = None if measured is None else self.departures.check(stamp, measured)
                elif broke is None and pose is not None and self.running:
                    broke = self.pose_departures.check(stamp, pose.position)
        except DpRuntimeError as e:
            self.reject(key, e)
            return False
        if broke is not None:
            self.discontinuity(broke)
        return True

    def executed(self, t: float, command: np.ndarray, pose: Pose | None = None) -> None:
        """A command the robot executed at ``t`` (replay: the recorded ones), for the departure check (an
        end-effector command by its position: ``pose``, as the tick decoded it, or decoded here)."""
        with self.lock:
            self.departures.executed(t, command)
            if self.ee is not None and pose is None and (self.command_reference is not None or not self.ee.needed):
                try:
                    pose = decode(command, self.spec.action.segments, self.command_reference).pose
                except DpRuntimeError:  # a recorded command that is no pose: nothing to compare with
                    return
            if self.ee is not None and pose is not None:
                self.pose_departures.executed(t, pose.position)

    def inputs_stale(self, now: float) -> dict[str, float]:
        """The stale inputs at ``now`` (empty: all fresh)."""
        with self.lock:
            return self.buffer.stale(now)

    # -- inference -------------------------------------------------------------------
    def expected_latency(self) -> float:
        return self.scheduler.expected_latency()

    def inference_lead(self) -> int:
        return self.scheduler.lead()

    def needs_inference(self, now: float | None = None) -> bool:
        """Running, queue at or below the lead, no chunk in flight, and an observation newer than the last
        chunk's. With ``now`` (simulated clocks), a chunk whose arrival time has come is delivered first, so
        the next inference can start in the same tick."""
        lead = self.scheduler.lead()
        with self.lock:
            if now is not None:
                self._deliver(now)
            if not self.running or self._in_flight is not None or len(self.queue) > lead or not self.buffer.ready():
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
                never = [k for k, a in self.buffer.ages(now).items() if math.isinf(a)]
                if never and self._first_input is not None and now - self._first_input < STARTUP_GRACE_S:
                    self._waiting_for(never)
                else:
                    self.warn_once("stale", str(e))
                return None
            self.last_t_obs = obs.stamp
            generation = self.generation
            poses = ee_poses({k: obs.history[k] for k in self.pose_obs}, self.pose_obs) if self.seen_as else []
            if poses and self._start_pose is None:
                self._start_pose = poses[-1]
            bases = {"relative": poses[-1], "start": self._start_pose} if poses else {}
            arrive = now + self.scheduler.expected_latency() + self.cfg.execution_latency
            committed = self.transition.commits(self.queue, self.spec, obs.stamp, arrive, self._plan, self.decay)
            seed = None if self.cfg.seed < 0 else self.cfg.seed + self.stats.chunks
            self._noise = noise = self.noise(self._noise, obs.stamp, self.dt, seed,
                                                 (self.spec.horizon, self.spec.action.dim))
        started = time.perf_counter()
        history = dict(obs.history)
        history.update({k: relative_rows(history[k], self.pose_obs[k], poses, bases[mode])
                        for k, mode in self.seen_as.items()})
        pred = self._predict(history, seed, committed, noise)
        if pred is None:
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
            arrival = now + self.delivery.took(finished - started)
            self.stats.chunks += 1
            self.scheduler.record(pred.latency_s)
            dropped = 0
            plan = Plan(obs.stamp, pred.actions, self._held_until(obs.stamp, committed))
            if self.delivery.simulated:  # in flight until it arrives; the queue runs on meanwhile
                self._in_flight = InFlight(plan, arrival + self.delivery.delay_s, generation)
            else:
                dropped = self._merge(plan, arrival)
                if self.cfg.per_chunk:
                    previous = self.last_command
                    trajectory = np.stack([self.limits.apply(a, None) for _, a in self.queue.remaining()])
                    self.metrics.issued(obs.stamp, now)
                else:
                    self._pending_t_obs = obs.stamp
            a = self.spec.action
            held = None if committed is None else np.asarray(committed[1], np.float32)[a.execute_start:a.execute_end]
            rec = ChunkRecord(obs.stamp, started, finished, pred.latency_s, executed, dropped,
                              obs if self.keep_observations else None, trajectory, previous,
                              0 if committed is None else int((committed[1] >= 1).sum()), held,
                              None if self.delivery.simulated else arrival)
            self.chunks.append(rec)  # under the lock: _deliver updates the newest record
        return rec

    def _waiting_for(self, keys: list[str]) -> None:
        """Start-up: some inputs have not arrived yet. Said once per set of inputs, as information."""
        cause = "waiting:" + ",".join(keys)
        if cause not in self._warned:
            self._warned.add(cause)
            self._info(f"waiting for the first {', '.join(keys)} message{'s' if len(keys) > 1 else ''} "
                       f"(a warning if still missing {STARTUP_GRACE_S:g} s after the first input)")

    def _predict(self, history: dict[str, np.ndarray], seed: int | None, committed, noise: ChunkNoise | None):
        """The engine's prediction, or None (counted, logged once per cause) when it fails."""
        given = {} if noise is None else {"noise": noise.noise}
        try:
            if committed is None:
                return self.engine.predict(history, seed=seed, **given)
            known, mask = committed
            return self.engine.predict(history, seed=seed, known=known, mask=mask, hold=self.transition.hold,
                                       **given)
        except DpRuntimeError as e:
            self.stats.inference_errors += 1
            self.warn_once(f"inference:{type(e).__name__}", f"inference failed: {e}")
        except Exception as e:  # a backend failure must not kill the node; counted and reported
            self.stats.inference_errors += 1
            self.warn_once(f"inference:{type(e).__name__}", f"inference raised {type(e).__name__}: {e}")
        return None

    def _held_until(self, t_obs: float, committed) -> float:
        """Due time of the last executed action held fixed (weight 1) to the previous plan's (-inf: none)."""
        if committed is None:
            return -math.inf
        a = self.spec.action
        fixed = np.flatnonzero(np.asarray(committed[1])[a.execute_start:a.execute_end] >= 1)
        return t_obs + float(fixed[-1]) * self.dt if fixed.size else -math.inf

    def _merge(self, plan: Plan, arrival: float) -> int:
        """Queue a chunk's executed slice as it arrives (under the lock), as the transition merges it."""
        self._plan = plan
        self._awaiting_chunk = False
        dropped = self.transition.merge(self.queue, self.spec.executed(plan.actions), plan.t_obs, arrival,
                                        self.cfg.blend_actions, plan.held_until)
        if self.ee is not None:
            self.ee.chunk_planned(self.queue.chunk, plan.t_obs)
        return dropped

    def _deliver(self, now: float) -> None:
        """Hand over the chunk in flight once its arrival time has come (under the lock)."""
        if self._in_flight is None or self._in_flight.arrival > now + 1e-9:
            return
        plan, arrival, generation = self._in_flight
        self._in_flight = None
        if generation == self.generation:
            dropped = self._merge(plan, arrival)
            if self.chunks:
                self.chunks[-1].dropped, self.chunks[-1].queued_at = dropped, arrival
            self._pending_t_obs = plan.t_obs

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
            if self.hold_on_stale and not self.cfg.per_chunk:
                return self._hold_position(now)
            return None
        if self._stale:
            self._last_reject = ""
            self._info("inputs fresh again: resuming")
        self._stale = False
        with self.lock:
            self._deliver(now)
            action = None if self._awaiting_chunk and not self.queue else self.queue.pop(now)
            chunk = self.queue.popped_chunk
        if (action is not None or self.deltas) and self.ee is not None and self.ee.needed:  # a delta's hold too
            with self.lock:
                self.command_reference = self.ee.reference(chunk)
            if self.command_reference is None:  # never a guess: nothing is commanded until a pose is measured
                self.warn_once("ee-reference", "an end-effector action relative to the measured pose is due but no "
                               f"pose was measured yet (observations {', '.join(self.ee.keys) or 'none'}): "
                               "not commanded")
                return None
        pose = None
        if action is None:
            if not self.queue and not self.hold_on_starvation and not self._awaiting_chunk:
                return None
            # next action not due yet, starved with "hold", or holding after a discontinuity: the last command, a
            # delta's without its motion (a repeated delta would move the arm on; nothing published left a
            # velocity controller following the last one until its timeout, and the command period at 200 ms)
            cmd = self._still(self.last_command) if self.deltas else self.last_command
        else:
            cmd = self.limits.apply(action, self.last_command)
            if self.posed:
                pose = self._commanded_pose(cmd)
                if pose is None:
                    return None
            self.last_command = cmd
            self.jumps.add(cmd, chunk)
        if cmd is not None and self.cfg.commands_executed:
            self.executed(now, cmd, pose)
        if cmd is None or self.cfg.per_chunk:
            return None
        self.metrics.issued(self._pending_t_obs, now)
        self._pending_t_obs = None
        return cmd

    def _commanded_pose(self, cmd: np.ndarray) -> Pose | None:
        """The pose an end-effector command targets, decoded once per tick (the departure rule compares it);
        None when the action is no pose (a zero quaternion): never a wrong command, counted as an inference
        error and logged once. Without a pose observation to decode against (deltas published as velocities)
        only the action's own rotation is checked, against the identity."""
        try:
            return decode(cmd, self.spec.action.segments, self.command_reference or IDENTITY).pose
        except DpRuntimeError as e:
            self.stats.inference_errors += 1
            self.warn_once("ee-decode", f"end-effector action not commanded: {e}")
            return None

    def _measured_hold(self) -> np.ndarray | None:
        """What is held after a discontinuity until a chunk from fresh observations arrives (under the lock): the
        measured joints, the measured end-effector pose written into the last command, or for deltas the last
        command without its motion (each with its gripper as it was commanded); None, nothing commanded:
        relative poses, nothing measured or commanded yet."""
        if not self.posed:
            return self.measured_joints()
        if self.deltas:
            return self._still(self.last_command)
        pose = self.ee.measured() if self.ee is not None and self.ee.mode == "absolute" else None
        if pose is None or self.last_command is None:
            return None
        return encode(pose, self.spec.action.segments, self.last_command)

    def _still(self, cmd: np.ndarray | None) -> np.ndarray | None:
        """A per-step delta command with its motion zeroed (no translation, the identity rotation, in each
        segment's representation), its gripper and joints as they were: a delta policy's hold."""
        return None if cmd is None else encode(IDENTITY, self.spec.action.segments, cmd)

    def measured_joints(self) -> np.ndarray | None:
        """The latest measured positions of the commanded joints (None until all were measured)."""
        hold = [self.latest_joints.get(n) for n in self.action_names]
        return None if any(v is None for v in hold) else np.asarray(hold, dtype=np.float64)

    def _hold_position(self, now: float) -> np.ndarray | None:
        hold = self.measured_joints()
        if hold is not None:
            self.metrics.issued(None, now)
            if self.cfg.commands_executed:
                self.executed(now, hold)
        return hold

    # -- status ----------------------------------------------------------------------
    def status(self, now: float) -> RunnerStatus:
        with self.lock:
            ages, stale = self.buffer.ages(now), self.buffer.stale(now)
            depth = len(self.queue)
            queue = type(self.queue.stats)(**self.queue.stats.as_dict())
        return self.metrics.snapshot(running=self.running, stale=stale, ages=ages, queue=queue, queue_depth=depth,
                                     latency_ms=percentiles_ms(self.scheduler.latencies, 50, 100),
                                     inference_lead=self.scheduler.lead(),
                                     peak_departure=max(self.departures.peak_departure,
                                                        self.pose_departures.peak_departure),
                                     peak_speed=max(self.departures.peak_speed, self.pose_departures.peak_speed),
                                     limited=self.limits.limited,
                                     chunk_transition=self.transition.name)
