"""policy_node: the rclpy wiring around PolicyRunner (all logic lives in dp_runtime.control).

Subscriptions feed the ObservationBuffer with header stamps; an inference
worker thread runs the engine; the control timer (its own callback group)
only pops the due action and publishes it.
"""
from __future__ import annotations

import sys
import threading
import time
from collections import deque

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.time import Time
from std_srvs.srv import Trigger

from ..control import ActionLimits, PolicyRunner, RunnerConfig
from ..engine import load_bundle
from ..errors import DpRuntimeError
from . import convert
from .params import NodeParams, ObsTopic, declare, declare_obs_topics


def qos(kind: str, depth: int = 10) -> QoSProfile:
    rel = ReliabilityPolicy.BEST_EFFORT if kind == "best_effort" else ReliabilityPolicy.RELIABLE
    return QoSProfile(reliability=rel, history=HistoryPolicy.KEEP_LAST, depth=depth)


class PolicyNode(Node):
    def __init__(self) -> None:
        super().__init__("policy_node")
        self.p: NodeParams = declare(self)
        self.engine = load_bundle(self.p.bundle, backend=self.p.backend, device=self.p.device,
                                  num_inference_steps=self.p.num_inference_steps or None)
        m = self.engine.manifest
        self.topics = declare_obs_topics(self, m["observations"])
        self.action_names = self.p.action_joint_names or m["action"]["names"]
        if len(self.action_names) != self.engine.action_dim:
            raise DpRuntimeError(f"action_joint_names has {len(self.action_names)} names, the bundle's "
                                 f"action has {self.engine.action_dim} dims")
        self.runner = PolicyRunner(
            self.engine,
            RunnerConfig(self.p.control_rate_hz, self.p.max_obs_age, self.p.execution_latency,
                         self.p.inference_lead, self.p.seed if self.p.seed >= 0 else None, self.p.on_starvation),
            ActionLimits.from_lists(self.engine.action_dim, self.p.action_lower, self.p.action_upper,
                                    self.p.action_max_delta),
            warn=lambda cause, msg: self.get_logger().warning(msg))
        self.dt = 1.0 / self.p.control_rate_hz
        self.running = self.p.autostart
        self.latest_joints: dict[str, float] = {}
        self.received: dict[str, int] = {t.key: 0 for t in self.topics}
        self.publishers_seen: dict[str, float] = {}
        self.starved_reported = 0
        self.stale = False
        self.pending_t_obs: float | None = None
        self.obs_to_command: deque[float] = deque(maxlen=200)
        self.qos_warned: set[str] = set()
        self.published = 0

        sensors = MutuallyExclusiveCallbackGroup()
        for t in self.topics:
            self.create_subscription(convert.message_class(convert.OBS_MESSAGE_TYPES[t.type]), t.topic, self._on_msg(t), qos(t.qos),
                                     callback_group=sensors)
        self.pub = self.create_publisher(convert.command_message_type(self.p.command_interface),
                                         self.p.command_topic, qos(self.p.command_qos))
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.t0 = self.now()
        self.k = 0
        self.tick_times: deque[float] = deque(maxlen=500)
        self.create_timer(self.p.diagnostics_period, self._on_diagnostics,
                          callback_group=MutuallyExclusiveCallbackGroup())
        services = MutuallyExclusiveCallbackGroup()
        self.create_service(Trigger, "~/start", self._srv(self._start), callback_group=services)
        self.create_service(Trigger, "~/stop", self._srv(self._stop), callback_group=services)
        self.create_service(Trigger, "~/reset", self._srv(self._reset), callback_group=services)
        self.wake = threading.Event()
        self.alive = True
        self.worker = threading.Thread(target=self._inference_loop, name="inference", daemon=True)
        self.worker.start()
        # The control loop has its own thread sleeping on the node clock (sim time aware) until
        # t0 + k*dt, so executor load and timer jitter never delay or accumulate into commands.
        self.sim_time = bool(self.get_parameter("use_sim_time").value)
        self.control = threading.Thread(target=self._control_loop, name="control", daemon=True)
        self.control.start()
        self.get_logger().info(
            f"bundle {self.p.bundle}: backend {self.engine.backend.name}, provider {self.engine.provider}; "
            f"{self.p.control_rate_hz} Hz -> {self.p.command_interface} on {self.p.command_topic}; "
            f"{'running' if self.running else 'stopped (call ~/start)'}")

    # -- helpers ---------------------------------------------------------------------
    def now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _srv(self, fn):
        def handler(_req, resp):
            resp.success, resp.message = True, fn()
            return resp
        return handler

    def _start(self) -> str:
        self.running = True
        return "started"

    def _stop(self) -> str:
        self.running = False
        self.runner.queue.clear()
        return "stopped"

    def _reset(self) -> str:
        self.runner.reset()
        return "history and queue cleared"

    # -- inputs ----------------------------------------------------------------------
    def _on_msg(self, t: ObsTopic):
        shape = self.engine.image_shapes.get(t.key)

        def callback(msg) -> None:
            self.received[t.key] += 1
            try:
                stamp, value = convert.to_observation(t.type, msg, shape, t.joint_names, t.joint_field,
                                                      self.p.resize_images, what=t.topic)
            except DpRuntimeError as e:
                self.runner.reject(t.key, e, t.topic)
                return
            if t.type == "joint_state":
                self.latest_joints.update(zip(t.joint_names, value.tolist()))
            if self.runner.add(t.key, stamp, value, now=self.now() or None):  # 0: no /clock yet
                self.wake.set()
        return callback

    # -- inference (worker thread, never the timer's) --------------------------------
    def _inference_loop(self) -> None:
        while self.alive:
            self.wake.wait(timeout=self.dt / 2)
            self.wake.clear()
            if not (self.running and self.alive and self.runner.needs_inference()):
                continue
            before = self.runner.stats.chunks
            rec = self.runner.infer(self.now())
            if rec is None or self.runner.stats.chunks == before:
                continue
            self.pending_t_obs = rec.t_obs
            if self.p.command_interface == "joint_trajectory":
                remaining = self.runner.queue.remaining()
                if remaining:
                    acts = np.stack([self.runner.limits.apply(a, None) for _, a in remaining])
                    self.pub.publish(convert.joint_trajectory(acts, self.action_names, self.dt,
                                                              self.runner.last_command))
                    self.published += 1

    # -- control loop ----------------------------------------------------------------
    def _control_loop(self) -> None:
        while self.alive and rclpy.ok():
            target = self.t0 + (self.k + 1) * self.dt
            jumped_back = not self._wait_until(target)
            if not self.alive:
                return
            now = self.now()
            if jumped_back:  # a looped bag: everything buffered is from the future now
                self.get_logger().warning(f"clock jumped back to {now:.3f} s: resetting history and queue")
                self.runner.reset()
                self.t0, self.k = now, 0
                continue
            # Next slot on the t0 + k*dt grid; slots missed while paused are skipped, not replayed.
            self.k = max(self.k + 1, int((now - self.t0) / self.dt))
            try:
                self._on_tick(self.t0 + self.k * self.dt)
            except Exception as e:  # never let one bad tick end the control loop
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
        while self.alive:
            now = self.now()
            if now < last:
                return False
            if now >= target:
                return True
            last = now
            time.sleep(0.001)
        return True

    def _on_tick(self, tick_time: float) -> None:
        if not self.running:
            return
        stale = self.runner.inputs_stale(tick_time)
        if stale:
            if not self.stale:
                self.stale = True
                desc = self.runner.buffer.describe(stale)
                self.runner.stats.last_error = f"stale inputs: {desc}"
                self.get_logger().warning(f"stale inputs (max_obs_age {self.p.max_obs_age} s): {desc}; "
                                          f"commands stopped ({self.p.on_stale})")
            self.runner.queue.clear()
            if self.p.on_stale == "hold_position" and self.p.command_interface != "joint_trajectory":
                hold = [self.latest_joints.get(n) for n in self.action_names]
                if all(v is not None for v in hold):
                    self._publish(np.asarray(hold), tick_time)
            self.wake.set()
            return
        if self.stale:
            self.stale = False
            self.get_logger().info("inputs fresh again: resuming")
        cmd = self.runner.tick(tick_time)
        if self.runner.needs_inference():
            self.wake.set()
        if cmd is not None and self.p.command_interface != "joint_trajectory":
            self._publish(cmd, tick_time)

    def _publish(self, cmd: np.ndarray, stamp: float) -> None:
        self.tick_times.append(time.perf_counter())
        t_obs, self.pending_t_obs = self.pending_t_obs, None
        if t_obs is not None:  # the first command since a new chunk: how old its observation is now
            self.obs_to_command.append(self.now() - t_obs)
        if self.p.command_interface == "float64_multi_array":
            self.pub.publish(convert.float64_multi_array(cmd))
        else:
            self.pub.publish(convert.joint_state_command(cmd, self.action_names, stamp))
        self.published += 1

    # -- diagnostics -----------------------------------------------------------------
    def _on_diagnostics(self) -> None:
        now = self.now()
        ages = self.runner.buffer.ages(now)
        stale = self.runner.inputs_stale(now)
        self._check_qos()
        st = self.runner.stats
        q = self.runner.queue.stats
        lat = st.latencies[-50:]
        level, message = DiagnosticStatus.OK, "running" if self.running else "stopped"
        if self.running and stale:
            level, message = DiagnosticStatus.ERROR, "stale inputs: policy stopped"
        elif self.running and st.inference_errors and st.last_error.startswith("inference"):
            level, message = DiagnosticStatus.ERROR, "inference failing"
        elif self.running and q.starved > self.starved_reported:
            level, message = DiagnosticStatus.WARN, "action queue starved since the last report"
        self.starved_reported = q.starved
        values = {
            "provider": self.engine.provider, "backend": self.engine.backend.name,
            "inference_latency_ms_median": f"{np.median(lat) * 1e3:.1f}" if lat else "n/a",
            "inference_latency_ms_max": f"{np.max(lat) * 1e3:.1f}" if lat else "n/a",
            "chunks": str(st.chunks), "queue_depth": str(len(self.runner.queue)),
            "dropped_actions": str(q.dropped), "skipped_actions": str(q.skipped),
            "starvation_count": str(q.starved), "stale_refusals": str(st.stale_refusals),
            "invalid_inputs": str(st.invalid_inputs), "inference_errors": str(st.inference_errors),
            "inference_overruns": str(st.overruns), "commands_published": str(self.published),
            "last_error": st.last_error,
        }
        periods = np.diff(np.asarray(self.tick_times)) * 1e3
        if periods.size > 10:
            values["command_period_ms_p50"] = f"{np.percentile(periods, 50):.2f}"
            values["command_period_ms_p99"] = f"{np.percentile(periods, 99):.2f}"
        if self.obs_to_command:
            o2c = np.asarray(self.obs_to_command) * 1e3
            values["obs_to_first_command_ms_p50"] = f"{np.percentile(o2c, 50):.1f}"
            values["obs_to_first_command_ms_max"] = f"{o2c.max():.1f}"
        values.update({f"age.{k}": ("never" if a == float("inf") else f"{a:.3f}") for k, a in ages.items()})
        status = DiagnosticStatus(level=level, name="dp_runtime: policy_node", message=message,
                                  hardware_id=self.get_name(),
                                  values=[KeyValue(key=k, value=v) for k, v in values.items()])
        arr = DiagnosticArray(status=[status])
        arr.header.stamp = self.get_clock().now().to_msg()
        self.diag_pub.publish(arr)

    def _check_qos(self) -> None:
        """A QoS mismatch is silent in ROS 2: warn when a topic has had publishers for a while but
        nothing arrived."""
        now = time.monotonic()
        for t in self.topics:
            if self.received[t.key] or t.key in self.qos_warned:
                continue
            publishers = self.count_publishers(t.topic)
            if not publishers:
                self.publishers_seen.pop(t.key, None)
                continue
            first = self.publishers_seen.setdefault(t.key, now)
            if now - first >= self.p.qos_warn_after:
                self.qos_warned.add(t.key)
                self.runner.warn_once(f"qos:{t.key}", f"{t.topic} has {publishers} publisher(s) but no message "
                                      f"arrived in {self.p.qos_warn_after:.0f} s: QoS mismatch? (this "
                                      f"subscription is {t.qos}; a best_effort publisher cannot reach a "
                                      "reliable subscription)")

    def shutdown(self) -> None:
        self.alive = False
        self.wake.set()
        self.worker.join(timeout=5)
        self.control.join(timeout=2)


def main(argv: list[str] | None = None) -> int:
    # The control thread must get the GIL promptly when its sleep ends (default switch interval 5 ms).
    sys.setswitchinterval(0.0005)
    rclpy.init(args=argv if argv is not None else sys.argv)
    node = None
    try:
        try:
            node = PolicyNode()
        except DpRuntimeError as e:
            rclpy.logging.get_logger("policy_node").fatal(f"refusing to start: {type(e).__name__}: {e}")
            return 1
        executor = MultiThreadedExecutor(num_threads=3)
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.shutdown()
            node.destroy_node()
        if rclpy.ok():
            rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
