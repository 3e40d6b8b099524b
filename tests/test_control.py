"""ObservationBuffer, ActionQueue, ActionLimits and PolicyRunner without ROS."""
from __future__ import annotations

import numpy as np
import pytest

from dp_runtime.control import ActionLimits, ActionQueue, ObservationBuffer, PolicyRunner, RunnerConfig
from dp_runtime.errors import ConfigError, InputError, ShapeError, StaleInputError
from dp_runtime.spec import ActionSpec, ObsSpec, PolicySpec

IMG = (4, 4, 3)


def buffer(max_age=0.5, n_obs=2, interval=0.1):
    return ObservationBuffer({"cam": IMG}, {"state": 2}, n_obs, interval, max_age)


def img(v):
    return np.full(IMG, v, np.uint8)


def test_history_sampled_at_the_obs_interval_newest_last():
    b = buffer(n_obs=3)
    for i in range(10):  # camera at 20 Hz, state at 50 Hz-ish
        b.add("cam", 1.0 + i * 0.05, img(i))
        b.add("state", 1.0 + i * 0.05 + 0.001, np.array([i, -i], np.float32))
    obs = b.assemble(1.46)
    assert obs.stamp == pytest.approx(1.45)
    # interval 0.1 s: frames at 1.25, 1.35, 1.45 -> indices 5, 7, 9
    assert [int(f[0, 0, 0]) for f in obs.history["cam"]] == [5, 7, 9]
    assert obs.history["state"].shape == (3, 2) and obs.history["state"].dtype == np.float32
    assert obs.ages["cam"] == pytest.approx(0.01)


def test_short_history_repeats_the_oldest_frame():
    b = buffer(n_obs=3)
    b.add("cam", 1.0, img(7))
    b.add("state", 1.0, np.zeros(2))
    obs = b.assemble(1.0)
    assert [int(f[0, 0, 0]) for f in obs.history["cam"]] == [7, 7, 7]


def test_out_of_order_and_bad_samples_are_rejected_without_storing():
    b = buffer()
    b.add("state", 2.0, np.zeros(2))
    with pytest.raises(InputError, match="out-of-order"):
        b.add("state", 1.9, np.ones(2))
    with pytest.raises(InputError, match="NaN"):
        b.add("state", 2.1, np.array([np.nan, 0]))
    with pytest.raises(ShapeError, match="expected uint8"):
        b.add("cam", 2.1, np.zeros((4, 5, 3), np.uint8))
    with pytest.raises(InputError, match="unknown observation key"):
        b.add("depth", 2.1, np.zeros(2))
    assert len(b.samples["state"]) == 1


def test_stale_or_missing_input_refuses_to_assemble():
    b = buffer(max_age=0.2)
    b.add("state", 1.0, np.zeros(2))
    with pytest.raises(StaleInputError, match="cam \\(never received\\)"):
        b.assemble(1.0)
    b.add("cam", 1.0, img(0))
    b.assemble(1.19)
    with pytest.raises(StaleInputError, match="0.3.. s old"):
        b.assemble(1.3)


def test_queue_drops_due_actions_and_keeps_newest_when_all_late():
    q = ActionQueue(dt=0.1, execution_latency=0.05)
    acts = np.arange(8).reshape(4, 2).astype(float)
    # t_obs 1.0: actions due 1.0, 1.1, 1.2, 1.3; now 1.12 + latency 0.05 -> 1.2 and 1.3 kept
    assert q.push(acts, 1.0, 1.12) == 2
    assert len(q) == 2
    assert q.push(acts, 1.0, 5.0) == 3
    assert np.array_equal(q.remaining()[0][1], acts[-1])
    assert q.stats.dropped == 5


def test_queue_pop_is_timed_and_counts_starvation():
    q = ActionQueue(dt=0.1)
    q.push(np.array([[0.0], [1.0], [2.0]]), 1.0, 1.0)
    assert q.pop(1.0)[0] == 0.0
    assert q.pop(1.02) is None  # next action due at 1.1: not yet
    assert q.pop(1.21)[0] == 2.0  # 1.1 was missed: skipped, not replayed late
    assert q.stats.skipped == 1
    assert q.pop(1.3) is None and q.stats.starved == 1


def test_limits_clip_and_rate_limit():
    lim = ActionLimits.from_lists(2, [-1.0], [1.0], [0.1, 0.5])
    out = lim.apply(np.array([3.0, -3.0]), np.array([0.0, 0.0]))
    assert np.allclose(out, [0.1, -0.5])
    assert np.allclose(lim.apply(np.array([3.0, -3.0]), None), [1.0, -1.0])
    with pytest.raises(ConfigError, match="action_upper has 3 values"):
        ActionLimits.from_lists(2, [], [1, 2, 3], [])


SPEC = PolicySpec((ObsSpec("cam", "image", IMG), ObsSpec("state", "low_dim", (2,), names=("j1", "j2"))),
                  ActionSpec(2, ("j1", "j2"), 1, 5), horizon=8, n_obs_steps=2, obs_interval_s=0.1)


class FakeEngine:
    """Stands in for a bundle (the runner's contract with it) so timing logic is tested exactly."""

    spec = SPEC
    can_inpaint = False
    masks_per_step = True
    takes_noise = True
    warmup_latency_s = 0.0

    def __init__(self, fail=False, latency=0.001):
        self.fail = fail
        self.latency = latency
        self.calls = []

    def predict(self, history, seed=None, noise=None):
        from dp_runtime.engine.engine import Prediction
        self.calls.append((history, seed))
        if self.fail:
            raise RuntimeError("backend exploded")
        base = float(history["state"][-1, 0])
        return Prediction(np.array([[base + i, 0.0] for i in range(8)], np.float32), self.latency, seed)


def feed(r, t, v=0.0):
    r.add("cam", t, img(0))
    r.add("state", t, np.array([v, 0.0]))


def test_runner_executes_chunk_in_time_then_reinfers_with_seeds():
    eng = FakeEngine()
    r = PolicyRunner(eng, RunnerConfig(control_rate_hz=10, inference_lead=1, seed=5))
    feed(r, 1.0, v=10.0)
    assert r.needs_inference()
    r.infer(1.0)
    assert not r.needs_inference()  # no newer observation yet and queue full
    # The action due at t_obs is already late once inference has taken any time: dropped.
    assert r.queue.stats.dropped == 1
    cmds = [r.tick(1.0 + 0.1 * k) for k in range(4)]
    assert cmds[0] is None and [c[0] for c in cmds[1:]] == [12.0, 13.0, 14.0]
    feed(r, 1.3, v=20.0)
    assert r.needs_inference()
    r.infer(1.3)
    assert [s for _, s in eng.calls] == [5, 6]


def test_runner_refuses_stale_inputs_and_survives_engine_failure():
    r = PolicyRunner(FakeEngine(fail=True), RunnerConfig(max_obs_age=0.2))
    warnings = []
    r._warn = lambda cause, msg: warnings.append(msg)
    feed(r, 1.0)
    assert r.infer(1.0) is None and r.stats.inference_errors == 1
    assert r.infer(1.05) is None and len(warnings) == 1  # logged once per cause
    assert "backend exploded" in r.stats.last_error
    r.engine = FakeEngine()
    assert r.infer(2.0) is None and r.stats.stale_refusals == 1
    assert r.tick(2.0) is None


def test_runner_starvation_hold_or_stop():
    for mode, expect_hold in (("hold", True), ("stop", False)):
        r = PolicyRunner(FakeEngine(), RunnerConfig(control_rate_hz=10, on_starvation=mode))
        feed(r, 1.0, v=1.0)
        assert r.tick(0.95) is None and r.queue.stats.starved == 0  # before the first chunk: waiting, not starving
        r.infer(1.0)
        last = [r.tick(1.0 + 0.1 * k) for k in range(4)][-1]
        out = r.tick(1.4)
        assert (out is not None and np.array_equal(out, last)) == expect_hold
        assert r.queue.stats.starved == 1


def test_inference_longer_than_a_chunk_is_counted_and_warned_once():
    r = PolicyRunner(FakeEngine(latency=0.5), RunnerConfig(control_rate_hz=10))  # a chunk lasts 0.4 s
    warnings = []
    r._warn = lambda cause, msg: warnings.append(msg)
    for k in range(3):
        feed(r, 1.0 + 0.2 * k, v=float(k))
        assert r.infer(1.0 + 0.2 * k) is not None  # the chunk is still used
    assert r.stats.overruns == 3
    assert warnings == ["inference took 500 ms, longer than the 400 ms a chunk lasts"]


def test_stamps_ahead_of_the_clock_are_refused():
    """A message from before a backward clock jump (looped bag), or from a sender whose clock runs ahead,
    must not poison the history: stored, it would make every correct stamp look out of order."""
    b = buffer(max_age=0.5)
    with pytest.raises(InputError, match="ahead of the clock"):
        b.add("state", 4.0, np.zeros(2), now=0.2)
    with pytest.raises(InputError, match="0.400 s ahead of the clock.*max_stamp_ahead"):
        b.add("state", 0.6, np.zeros(2), now=0.2)  # under max_obs_age, still refused
    b.add("state", 0.25, np.zeros(2), now=0.2)  # within max_stamp_ahead: skew tolerated
    b.add("state", 0.7, np.zeros(2))  # no clock given (offline replay): not checked
    assert len(b.samples["state"]) == 2


def test_one_message_stamped_ahead_does_not_freeze_the_runner():
    warned = []
    r = PolicyRunner(FakeEngine(), RunnerConfig(control_rate_hz=10, max_obs_age=0.5),
                     warn=lambda cause, msg: warned.append(msg))
    assert not r.add("state", 10.4, np.zeros(2), now=10.0)  # 0.4 s ahead: refused, and said
    assert "ahead of the clock" in warned[-1]
    for k in range(5):  # the real messages that follow are all used
        t = 10.0 + 0.02 * k
        assert r.add("cam", t, img(0), now=t) and r.add("state", t, np.zeros(2), now=t)


def test_chunk_inferred_across_a_reset_is_discarded():
    class ResetDuringPredict(FakeEngine):
        def predict(self, history, seed=None, noise=None):
            runner.reset()  # the clock jumped back while this chunk was being computed
            return super().predict(history, seed)

    runner = PolicyRunner(ResetDuringPredict(), RunnerConfig(control_rate_hz=10))
    feed(runner, 4.0, v=1.0)
    assert runner.infer(4.0) is None
    assert len(runner.queue) == 0 and runner.stats.chunks == 0


# -- the control loop the node used to own: now in the runner, tested without DDS ------------------

def test_stale_inputs_stop_commands_and_log_each_transition_once():
    warned, infos = [], []
    r = PolicyRunner(FakeEngine(), RunnerConfig(control_rate_hz=10, max_obs_age=0.2),
                     warn=lambda cause, msg: warned.append(msg), info=infos.append)
    feed(r, 1.0, v=1.0)
    r.infer(1.0)
    assert r.tick(1.1) is not None
    assert r.tick(1.35) is None and r.tick(1.45) is None  # camera and state 0.35 s old > 0.2
    assert len(r.queue) == 0
    assert len(warned) == 1 and "stale inputs" in warned[0] and "commands stopped (stop)" in warned[0]
    assert r.status(1.45).health(0) == ("ERROR", "stale inputs: policy stopped")
    feed(r, 1.5, v=2.0)
    r.tick(1.5)
    assert infos == ["inputs fresh again: resuming"]


def test_stale_warning_names_the_last_rejected_input():
    """A cause already logged once must be said again when it is what stops the policy."""
    warned = []
    r = PolicyRunner(FakeEngine(), RunnerConfig(control_rate_hz=10, max_obs_age=0.2),
                     warn=lambda cause, msg: warned.append(msg))
    feed(r, 1.0)
    r.tick(1.0)
    r.add("cam", 1.05, np.zeros((5, 5, 3), np.uint8))  # logged once here ...
    assert r.tick(1.4) is None
    assert "last rejected input" in warned[-1] and "expected uint8" in warned[-1]  # ... and again here


def test_waiting_for_first_inputs_is_not_a_stale_transition():
    warned = []
    r = PolicyRunner(FakeEngine(), RunnerConfig(control_rate_hz=10, max_obs_age=0.2),
                     warn=lambda cause, msg: warned.append(msg))
    assert r.tick(1.0) is None and warned == []  # nothing received yet: nothing went stale
    feed(r, 1.1)
    r.tick(1.1)
    r.reset()
    assert r.tick(1.2) is None and warned == []  # after a reset: waiting again


def test_hold_position_commands_the_measured_joints_when_stale():
    r = PolicyRunner(FakeEngine(), RunnerConfig(control_rate_hz=10, max_obs_age=0.2, on_stale="hold_position"))
    r.add("cam", 1.0, img(0))
    assert r.add("state", 1.0, np.array([0.3, -0.7]), joint_names=["j1", "j2"])
    out = r.tick(1.5)
    assert out is not None and np.allclose(out, [0.3, -0.7])
    per_chunk = PolicyRunner(FakeEngine(), RunnerConfig(control_rate_hz=10, max_obs_age=0.2,
                                                        on_stale="hold_position", per_chunk=True))
    per_chunk.add("state", 1.0, np.array([0.3, -0.7]), joint_names=["j1", "j2"])
    assert per_chunk.tick(1.5) is None  # a trajectory interface holds by not sending a new trajectory
    unknown = PolicyRunner(FakeEngine(), RunnerConfig(control_rate_hz=10, max_obs_age=0.2, on_stale="hold_position",
                                                      action_joint_names=["a", "b"]))
    unknown.add("state", 1.0, np.array([0.3, -0.7]), joint_names=["j1", "j2"])
    assert unknown.tick(1.5) is None  # the commanded joints were never measured: nothing to hold


def test_per_chunk_output_is_the_limited_remaining_trajectory():
    limits = ActionLimits.from_lists(2, [-100.0], [12.5], [])
    r = PolicyRunner(FakeEngine(), RunnerConfig(control_rate_hz=10, per_chunk=True), limits)
    feed(r, 1.0, v=10.0)
    rec = r.infer(1.0)
    # FakeEngine: action i = base + i; executed slice 1..4 -> 11..14; the one due at t_obs is late.
    assert np.allclose(rec.trajectory[:, 0], [12.0, 12.5, 12.5])
    assert rec.previous is None
    assert all(r.tick(1.0 + 0.1 * k) is None for k in range(4))  # nothing per tick
    assert r.status(1.3).commands == 1 and r.last_command is not None
    feed(r, 1.3, v=20.0)
    assert np.array_equal(r.infer(1.3).previous, r.last_command)


def test_stop_start_and_status_snapshot():
    r = PolicyRunner(FakeEngine(), RunnerConfig(control_rate_hz=10, autostart=False))
    feed(r, 1.0)
    assert not r.needs_inference() and r.tick(1.0) is None
    assert r.status(1.0).health(0) == ("OK", "stopped")
    r.start()
    assert r.needs_inference()
    r.infer(1.0)
    cmd = r.tick(1.1)
    st = r.status(1.1)
    assert cmd is not None and st.chunks == 1 and st.commands == 1 and st.queue_depth == 2
    assert st.obs_to_command_ms == pytest.approx([100.0, 100.0])
    values = st.values()
    assert values["chunks"] == "1" and values["age.cam"] == "0.100" and values["commands_published"] == "1"
    r.stop()
    assert len(r.queue) == 0 and r.tick(1.2) is None


def test_histories_are_bounded():
    r = PolicyRunner(FakeEngine(), RunnerConfig(control_rate_hz=10, inference_lead=10), keep_chunks=5)
    for k in range(300):
        feed(r, 1.0 + k * 0.1, v=float(k))
        r.infer(1.0 + k * 0.1)
        r.tick(1.0 + k * 0.1)
    assert len(r.chunks) == 5 and len(r.scheduler.latencies) <= 200 and len(r.metrics.command_times) <= 500


def test_runner_config_refuses_bad_values():
    with pytest.raises(ConfigError, match="control_rate_hz"):
        RunnerConfig(control_rate_hz=0)
    with pytest.raises(ConfigError, match="on_stale"):
        RunnerConfig(on_stale="freeze")
    with pytest.raises(ConfigError, match="action_joint_names has 3 names"):
        PolicyRunner(FakeEngine(), RunnerConfig(action_joint_names=["a", "b", "c"]))


def test_tick_grid_skips_missed_slots_and_restarts():
    from dp_runtime.control import TickGrid
    g = TickGrid(10.0, 0.1)
    assert g.next_target() == pytest.approx(10.1)
    assert g.advance(10.1) == pytest.approx(10.1)
    assert g.advance(10.55) == pytest.approx(10.5)  # paused: 10.2..10.4 skipped, not replayed
    g.restart(3.0)
    assert g.next_target() == pytest.approx(3.1)


def test_qos_watchdog_warns_once_after_publishers_deliver_nothing():
    from dp_runtime.ros.qos_watchdog import QosWatchdog
    w = QosWatchdog({"cam": ("/camera", "reliable"), "state": ("/joint_states", "reliable")}, warn_after=3.0)
    pubs = {"/camera": 1, "/joint_states": 1}
    w.delivered("state")
    assert w.check(0.0, pubs.get) == []
    assert w.check(2.9, pubs.get) == []
    out = w.check(3.0, pubs.get)
    assert [k for k, _ in out] == ["cam"] and "QoS mismatch" in out[0][1] and "reliable" in out[0][1]
    assert w.check(10.0, pubs.get) == []  # once
    w2 = QosWatchdog({"cam": ("/camera", "reliable")}, warn_after=3.0)
    w2.check(0.0, pubs.get)
    w2.check(2.0, lambda t: 0)  # the publisher left: the clock starts again
    assert w2.check(4.0, pubs.get) == []


def test_waiting_for_the_first_inputs_is_information_then_a_warning_after_the_grace_period():
    from dp_runtime.control.runner import STARTUP_GRACE_S
    warned, infos = [], []
    r = PolicyRunner(FakeEngine(), RunnerConfig(control_rate_hz=10, max_obs_age=0.5),
                     warn=lambda cause, msg: warned.append(msg), info=infos.append)
    r.add("cam", 1.0, img(0))  # the camera is up, the joint states are not yet
    assert r.infer(1.0) is None and r.infer(1.1) is None
    assert warned == [] and infos == ["waiting for the first state message (a warning if still missing "
                                      f"{STARTUP_GRACE_S:g} s after the first input)"]
    r.add("cam", 1.0 + STARTUP_GRACE_S, img(0))
    assert r.infer(1.0 + STARTUP_GRACE_S) is None
    assert len(warned) == 1 and "state (never received)" in warned[0]
