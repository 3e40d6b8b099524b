"""policy_node: the rclpy wiring around PolicyRunner (all control logic lives in dp_runtime.control).

Subscriptions convert messages and hand them to the runner; an inference worker
thread calls ``runner.infer``; a control thread sleeps on the node clock to each
tick of the grid, calls ``runner.tick`` and publishes what it returns;
/diagnostics reports ``runner.status()``. The same wiring serves the plain node
(``policy_node``) and the managed one (``policy_lifecycle_node``: configure loads,
verifies and warms up the bundle, activate starts commands, deactivate stops them).
"""
from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
import time

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.signals import SignalHandlerOptions
from rclpy.lifecycle import LifecycleNode, State, TransitionCallbackReturn
from rclpy.node import Node
from rclpy.publisher import Publisher
from rclpy.service import Service
from rclpy.subscription import Subscription
from rclpy.timer import Timer
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.time import Time
from std_srvs.srv import Trigger

from ..control import TickGrid
from ..control.discontinuity import Discontinuity
from ..control.status import ERROR, OK, WARN
from ..errors import ConfigError, DpRuntimeError
from . import convert, plan
from ..control import PolicyRunner
from ..engine import PolicyEngine
from ..settings import coerce
from .params import PARAMETERS, NodeParams, ObsTopic, declare, declare_any
from .qos_watchdog import QosWatchdog
from .latched import ROBOT_DESCRIPTION_WAIT_S, latched_string
from .runtime import Runtime, open_runtime

LEVELS = {OK: DiagnosticStatus.OK, WARN: DiagnosticStatus.WARN, ERROR: DiagnosticStatus.ERROR}
CLOCK_WAIT_WARN_S = 2.0
NO_CLOCK = "use_sim_time is true but no /clock message has arrived: no commands until one does"


def qos(kind: str, depth: int = 10) -> QoSProfile:
    rel = ReliabilityPolicy.BEST_EFFORT if kind == "best_effort" else ReliabilityPolicy.RELIABLE
    return QoSProfile(reliability=rel, history=HistoryPolicy.KEEP_LAST, depth=depth)


class PolicyWiring:
    """Parameters, runtime, subscriptions, publishers, services and the two threads, on an rclpy node.

    Every attribute exists from construction (None until configured), as in ros2/demos' lifecycle
    talker; ``wire`` fills them, ``_release`` (lifecycle cleanup) empties them again."""

    def __init__(self, node_name: str) -> None:
        super().__init__(node_name)
        self.p: NodeParams | None = None
        self.rt: Runtime | None = None
        self.runner: PolicyRunner | None = None
        self.engine: PolicyEngine | None = None
        self.watchdog: QosWatchdog | None = None
        self.entities: list = []
        self.pub: Publisher | None = None
        self.output_pubs: list = []  # (CommandOutput, Publisher): command_outputs
        self.plan_pubs: list[Publisher] = []
        self.diag_pub: Publisher | None = None
        self.starved_reported = 0
        self.wake = threading.Event()
        self.alive = False
        self.sim_time = False
        self.grid: TickGrid | None = None
        self.worker: threading.Thread | None = None
        self.control: threading.Thread | None = None
        self.configured = False  # parameter changes before configure are simply taken (read at configure)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        # The executor spins the node before configure (lifecycle), so its parameter is read now.
        rule, tp = PARAMETERS["executor"]
        self.executor_kind = coerce("executor", declare_any(self, "executor", NodeParams.executor, rule.doc,
                                                            rule.describe()), tp)
        if self.executor_kind not in rule.choices:
            raise ConfigError(f"executor must be {rule.describe()}, got {self.executor_kind!r}")

    def wire(self, autostart: bool | None = None) -> None:
        self.p = declare(self)
        if autostart is not None:
            self.p.autostart = autostart
        log = self.get_logger()
        self.rt = open_runtime(self.p, lambda name, default: declare_any(self, name, default),
                               warn=lambda cause, msg: log.warning(msg), info=log.info,
                               robot_description=lambda topic: latched_string(self.context, topic,
                                                                              ROBOT_DESCRIPTION_WAIT_S))
        self.runner = self.rt.runner
        self.engine = self.rt.engine
        self.watchdog = QosWatchdog({t.key: (t.topic, t.qos) for t in self.rt.topics}, self.p.qos_warn_after)
        self.entities = [self.create_subscription(convert.message_class(convert.OBS_MESSAGE_TYPES[t.type]), t.topic,
                                                  self._on_msg(t), qos(t.qos)) for t in self.rt.topics]
        self.pub = self.create_publisher(self.rt.interface.message_class, self.p.command_topic, qos(self.p.command_qos))
        self.output_pubs = [(o, self.create_publisher(o.interface.message_class, o.topic, qos(self.p.command_qos)))
                            for o in self.rt.outputs]
        self.plan_pubs = [self._plan_publisher(topic) for topic in (plan.PLAN_TOPIC, plan.COMMITTED_TOPIC)]
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.starved_reported = 0
        self.entities += [
            self.pub, self.diag_pub, *self.plan_pubs, *(pub for _, pub in self.output_pubs),
            self.create_timer(self.p.diagnostics_period, self._on_diagnostics),
            self.create_service(Trigger, "~/start", self._srv(self.start_commands)),
            self.create_service(Trigger, "~/stop", self._srv(lambda: self.runner.stop() or (True, "stopped"))),
            self.create_service(Trigger, "~/reset",
                                self._srv(lambda: self.runner.reset() or (True, "history and queue cleared")))]
        self.wake.clear()  # set by a previous configuration's shutdown
        self.alive = True
        self.sim_time = bool(self.get_parameter("use_sim_time").value)
        self.grid = TickGrid(self.now(), self.rt.dt)
        # Inference and the control loop have threads of their own: the executor only delivers messages,
        # so sensor load never delays a tick, and a tick never waits for inference.
        self.worker = threading.Thread(target=self._inference_loop, name="inference", daemon=True)
        self.control = threading.Thread(target=self._control_loop, name="control", daemon=True)
        self.worker.start()
        self.control.start()
        why = f" (auto: {self.engine.chosen_because})" if self.engine.chosen_because else ""
        log.info(f"bundle {self.p.bundle}: backend {self.engine.backend.name}{why}, provider {self.engine.provider}, "
                 f"precision {self.engine.precision} ({self.engine.recorded_error}); "
                 f"inputs {', '.join(f'{t.topic} [{t.type}]' for t in self.rt.topics)}; "
                 f"{self.p.control_rate_hz} Hz -> {self.p.command_interface} on {self.p.command_topic}; "
                 f"{self.runner.settings_line}; "
                 f"{'running' if self.runner.running else self.stopped_hint}")
        self.configured = True

    stopped_hint = "stopped (call ~/start)"
    restart_hint = "restart the node to change it"

    def _on_set_parameters(self, params) -> SetParametersResult:
        """`ros2 param set`: a live setting applies from the next tick (logged); any other is refused with the
        reason, never accepted and ignored."""
        if not self.configured:
            return SetParametersResult(successful=True)
        changes = {}
        for prm in params:
            rule, tp = PARAMETERS.get(prm.name, (None, None))
            if rule is None or not rule.live:
                live = ", ".join(n for n, (r, _) in PARAMETERS.items() if r.live)
                return SetParametersResult(successful=False, reason=f"{prm.name} is read when the node starts: "
                                           f"{self.restart_hint} (live: {live})")
            try:
                changes[prm.name] = coerce(prm.name, prm.value, tp, rule.choices)
            except DpRuntimeError as e:
                return SetParametersResult(successful=False, reason=str(e))
        try:
            new = dataclasses.replace(self.p, **changes)  # validated as at start
            self.runner.reconfigure(new.runner_config(), new.limits(self.engine.spec.action))
        except DpRuntimeError as e:
            return SetParametersResult(successful=False, reason=str(e))
        self.p = new
        self.get_logger().info("parameters set: " + ", ".join(f"{k}={v!r}" for k, v in changes.items())
                               + " (from the next tick)")
        return SetParametersResult(successful=True)

    def now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _srv(self, action):
        """A Trigger service around ``action() -> (success, message)``."""
        def handler(_req, resp):
            if self.runner is None:  # a request delivered after lifecycle cleanup
                resp.success, resp.message = False, "not configured"
                return resp
            resp.success, resp.message = action()
            return resp
        return handler

    def start_commands(self) -> tuple[bool, str]:
        self.runner.start()
        return True, "started"

    # -- inputs ----------------------------------------------------------------------
    def _on_msg(self, t: ObsTopic):
        """The subscription callback, bound to this configuration's runner: an executor may still deliver a
        message after lifecycle cleanup released it (the EventsExecutor does), and it then goes nowhere."""
        read = t.reader(self.engine.image_shapes.get(t.key), self.p.resize_images)
        joints = t.joint_names if t.type == "joint_state" and t.joint_field == "position" else None
        runner, watchdog, wake = self.runner, self.watchdog, self.wake

        def callback(msg) -> None:
            watchdog.delivered(t.key)
            try:
                stamp, value = read(msg, received=self.now())
            except DpRuntimeError as e:
                runner.reject(t.key, e, t.topic)
                return
            if runner.add(t.key, stamp, value, now=self.now() or None, joint_names=joints):  # 0: no /clock yet
                wake.set()
        return callback

    # -- inference (worker thread, never the control thread's) -----------------------
    def _inference_loop(self) -> None:
        while self.alive:
            self.wake.wait(timeout=self.rt.dt / 2)
            self.wake.clear()
            if not self.alive or not self.runner.needs_inference():
                continue
            rec = self.runner.infer(self.now())
            if rec is not None and rec.trajectory is not None:
                self._publish(rec.trajectory, self.now(), rec.previous)  # (JointTrajectory's header stays 0: now)
            if rec is not None and rec.queued_at is not None:
                self._publish_plan(rec)

    # -- the plan (inference thread: built only while somebody subscribes) -----------------
    def _plan_publisher(self, topic: str) -> Publisher:
        """Reliable, transient local (a late RViz or Foxglove gets the newest plan); a subscriber asking for what
        it cannot give (a deadline, manual liveliness) is told in the log, once, never a crash."""
        from rclpy.event_handler import PublisherEventCallbacks
        from trajectory_msgs.msg import JointTrajectory
        latched = QoSProfile(reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST, depth=1,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)

        def incompatible(event) -> None:
            policy = getattr(event.last_policy_kind, "name", event.last_policy_kind)
            self.runner.warn_once(f"qos:{topic}", f"a subscriber of {self.resolve_topic_name(topic)} asked for a QoS "
                                  f"it cannot have ({policy}): the plan is published reliable, transient local, "
                                  "keep last 1, no deadline or liveliness; subscribe with those")
        return self.create_publisher(JointTrajectory, topic, latched,
                                     event_callbacks=PublisherEventCallbacks(incompatible_qos=incompatible))

    def _publish_plan(self, rec) -> None:
        if not any(pub.get_subscription_count() for pub in self.plan_pubs):
            return
        for pub, msg in zip(self.plan_pubs, plan.plan_messages(rec, self.rt.action_names, self.rt.dt)):
            pub.publish(msg)

    # -- control loop ----------------------------------------------------------------
    def _control_loop(self) -> None:
        while self.alive and rclpy.ok():
            jumped_back = not self._wait_until(self.grid.next_target())
            if not self.alive:
                return
            now = self.now()
            if jumped_back:  # a looped bag: everything buffered is from the future now
                self.get_logger().warning(f"clock jumped back to {now:.3f} s: resetting history and queue")
                self.runner.reset(Discontinuity(now, f"clock jumped back to {now:.3f} s"))
                self.grid.restart(now)
                continue
            tick_time = self.grid.advance(now)
            try:
                cmd = self.runner.tick(tick_time)
                if self.runner.needs_inference():
                    self.wake.set()
                if cmd is not None:
                    self._publish(cmd, tick_time)
            except Exception as e:  # never let one bad tick end the control loop
                if not self.alive or not rclpy.ok():
                    return  # shutting down: the context is gone
                self.runner.warn_once(f"tick:{type(e).__name__}", f"control tick failed: {e}")

    def _wait_until(self, target: float) -> bool:
        """Sleep until the node clock reads ``target``; False when the clock jumped backwards.

        System time: one precise sleep_until. Sim time: rclpy's sleep_until does not wake on a
        backward jump, so poll the clock every millisecond instead.
        """
        clock = self.get_clock()
        if not self.sim_time:
            clock.sleep_until(Time(nanoseconds=int(target * 1e9), clock_type=clock.clock_type))
            return True
        last = self.now()
        started = time.monotonic()
        while self.alive:
            now = self.now()
            if now < last:
                return False
            if now >= target:
                return True
            if now == 0.0 and time.monotonic() - started > CLOCK_WAIT_WARN_S:
                self.runner.warn_once("no-clock", NO_CLOCK)
            last = now
            time.sleep(0.001)
        return True

    def _publish(self, actions, stamp: float, previous=None) -> None:
        ctx = self.rt.command_context(stamp, previous)
        self.pub.publish(self.rt.interface.build(actions, ctx))
        for output, pub in self.output_pubs:  # per-tick only (command_outputs refuses per-chunk interfaces)
            pub.publish(output.build(actions, ctx))

    # -- diagnostics -----------------------------------------------------------------
    def _on_diagnostics(self) -> None:
        if self.runner is None:  # a timer event delivered after lifecycle cleanup
            return
        for key, msg in self.watchdog.check(time.monotonic(), self.count_publishers):
            self.runner.warn_once(f"qos:{key}", msg)
        st = self.runner.status(self.now())
        level, message = st.health(self.starved_reported)
        if self.sim_time and self.now() == 0.0:
            level, message = WARN, "waiting for /clock (use_sim_time is true)"
        self.starved_reported = st.queue.starved
        values = {"provider": self.engine.provider, "backend": self.engine.backend.name,
                  "precision": self.engine.precision, "recorded_action_error": self.engine.recorded_error,
                  **st.values()}
        status = DiagnosticStatus(level=LEVELS[level], name="dp_runtime: policy_node", message=message,
                                  hardware_id=self.get_name(),
                                  values=[KeyValue(key=k, value=v) for k, v in values.items()])
        arr = DiagnosticArray(status=[status])
        arr.header.stamp = self.get_clock().now().to_msg()
        self.diag_pub.publish(arr)

    def shutdown(self) -> None:
        """Stop the threads (idempotent). Signals only set a flag (see run), so nothing interrupts the joins."""
        if not self.alive:
            return
        self.alive = False
        self.wake.set()
        self.worker.join(timeout=5.0)
        self.control.join(timeout=2.0)

    def hold_on_stop(self) -> None:
        """On deactivate with on_stale hold_position: one last command holding the measured joints."""
        if self.p.on_stale != "hold_position" or self.rt.interface.per_chunk:
            return
        joints = self.runner.measured_joints()
        if joints is not None:
            self._publish(joints, self.now())


class PolicyNode(PolicyWiring, Node):
    def __init__(self) -> None:
        super().__init__("policy_node")
        try:
            self.wire()
        except BaseException:
            # a refusal: destroy the half-built node now, while its context is valid; left to garbage
            # collection after rclpy's shutdown it crashed the exit now and then (SIGSEGV, not exit 1)
            self.shutdown()
            self.destroy_node()
            raise


class LifecyclePolicyNode(PolicyWiring, LifecycleNode):
    """The managed node: configure = load, verify and warm up; activate = commands; deactivate = stop."""
    stopped_hint = "inactive (activate it: ros2 lifecycle set /policy_node activate)"
    restart_hint = "deactivate, clean up and configure the node again to change it"

    def __init__(self) -> None:
        super().__init__("policy_node")
        self.active = False

    def start_commands(self) -> tuple[bool, str]:
        if not self.active:
            return False, "not started: the node is inactive (activate it through its lifecycle)"
        return super().start_commands()

    def on_configure(self, state: State) -> TransitionCallbackReturn:
        try:
            self.wire(autostart=False)
        except DpRuntimeError as e:
            self.get_logger().fatal(f"configure failed: {type(e).__name__}: {e}")
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        self.active = True
        self.runner.start()
        self.get_logger().info("activated: commands on")
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        self.active = False
        self.runner.stop()
        self.hold_on_stop()
        self.get_logger().info("deactivated: commands off")
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _release(self) -> None:
        """Threads stopped, what configure created destroyed, the engine dropped: configure can run again."""
        self.shutdown()
        destroy = {Subscription: self.destroy_subscription, Publisher: self.destroy_publisher,
                   Service: self.destroy_service, Timer: self.destroy_timer}
        for entity in self.entities:
            destroy[type(entity)](entity)
        self.entities = []
        self.configured = False
        self.pub = self.diag_pub = self.rt = self.runner = self.engine = self.p = None
        self.output_pubs = []
        self.plan_pubs = []


def main(argv: list[str] | None = None) -> int:
    return run(PolicyNode, argv)


def lifecycle_main(argv: list[str] | None = None) -> int:
    """policy_lifecycle_node [--autostart]: --autostart configures and activates without a manager."""
    argv = list(sys.argv if argv is None else argv)
    autostart = "--autostart" in argv
    return run(LifecyclePolicyNode, [a for a in argv if a != "--autostart"], autostart)


def run(make, argv: list[str] | None, autostart: bool = False) -> int:
    """Create the node, spin it, and end with 0 on a signal, 1 on a refusal; never a traceback.

    SIGINT and SIGTERM only set a flag (rclpy's own handlers are off): the node then stops its
    threads, destroys itself and only then shuts the context down, so no thread ever uses an
    invalidated context, and a second Ctrl-C during that cannot interrupt it.
    """
    # The control thread must get the GIL promptly when its sleep ends (default switch interval 5 ms).
    sys.setswitchinterval(0.0005)
    logger = rclpy.logging.get_logger("policy_node")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stop.set())
    argv = list(sys.argv if argv is None else argv)
    if EXIT_WITH_PARENT in argv:
        argv = [a for a in argv if a != EXIT_WITH_PARENT]
        exit_with_parent(stop, logger)
    try:
        rclpy.init(args=argv, signal_handler_options=SignalHandlerOptions.NO)
    except Exception as e:  # a broken --params-file or argument: rcl's own error, one line
        logger.fatal(f"refusing to start: cannot read the ROS arguments: {str(e).splitlines()[0]}")
        return 1
    node = None
    code = 0
    try:
        try:
            node = make()
        except DpRuntimeError as e:
            logger.fatal(f"refusing to start: {type(e).__name__}: {e}")
            return 1
        if autostart:
            if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                return 1
            node.trigger_activate()
        executor = make_executor(node.executor_kind, logger)
        executor.add_node(node)
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
    except ExternalShutdownException:
        pass
    except Exception as e:  # an executor failure while running is an error exit, said in one line
        logger.fatal(f"executor failed: {type(e).__name__}: {e}")
        code = 1
    finally:
        # Shutting down already: a further signal has nothing left to do. rclpy's context shutdown puts
        # SIGINT/SIGTERM back to their defaults (a second Ctrl-C would then kill the process), so ignore
        # them, before and after it.
        _ignore_signals()
        if node is not None:
            node.shutdown()
            node.destroy_node()
        rclpy.try_shutdown()
        _ignore_signals()
    return code


EXIT_WITH_PARENT = "--exit-with-parent"  # the launch file passes it


def exit_with_parent(stop: threading.Event, logger) -> None:
    """Get SIGTERM (a clean shutdown, as from a supervisor) when the parent process dies.

    `ros2 launch` killed by SIGTERM or SIGKILL exits without signalling its children; upstream launch
    behaves so for any process. Linux's parent-death signal is the clean way out (no polling)."""
    import ctypes
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(1, signal.SIGTERM, 0, 0, 0) != 0:  # PR_SET_PDEATHSIG
            raise OSError(ctypes.get_errno(), "prctl failed")
    except (OSError, AttributeError) as e:
        logger.warning(f"{EXIT_WITH_PARENT}: not available here ({e}); stop the node with SIGINT/SIGTERM")
        return
    if os.getppid() != parent:  # the parent died before the signal was armed
        stop.set()


def make_executor(kind: str, logger):
    """The executor delivering messages and services (control and inference have their own threads)."""
    if kind == "events":
        try:
            from rclpy.experimental import EventsExecutor
            return EventsExecutor()
        except ImportError:
            logger.warning("executor: events is not in this rclpy; using single")
    if kind == "multi":
        return MultiThreadedExecutor(num_threads=2)
    return SingleThreadedExecutor()


def _ignore_signals() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


if __name__ == "__main__":
    sys.exit(main())
