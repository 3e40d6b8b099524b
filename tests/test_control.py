"""ObservationBuffer, ActionQueue, ActionLimits and PolicyRunner without ROS."""
from __future__ import annotations

import numpy as np
import pytest

from dp_runtime.control import ActionLimits, ActionQueue, ObservationBuffer, PolicyRunner, RunnerConfig
from dp_runtime.errors import InputError, ShapeError, StaleInputError

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
    with pytest.raises(ValueError, match="action_upper has 3 values"):
        ActionLimits.from_lists(2, [], [1, 2, 3], [])


class FakeEngine:
    """Stands in for a bundle (the runner's contract with it) so timing logic is tested exactly."""

    manifest = {"policy": {"obs_interval_s": 0.1}}
    image_shapes = {"cam": IMG}
    low_dim_sizes = {"state": 2}
    n_obs_steps = 2
    n_action_steps = 4

    def __init__(self, fail=False, latency=0.001):
        self.fail = fail
        self.latency = latency
        self.calls = []

    def predict(self, history, seed=None):
        from dp_runtime.engine.engine import Prediction
        self.calls.append((history, seed))
        if self.fail:
            raise RuntimeError("backend exploded")
        base = float(history["state"][-1, 0])
        return Prediction(np.array([[base + i, 0.0] for i in range(8)], np.float32), self.latency, seed)

    def executed_slice(self, actions):
        return actions[1:5]


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
        feed(r, 1.0 + k, v=float(k))
        assert r.infer(1.0 + k) is not None  # the chunk is still used
    assert r.stats.overruns == 3
    assert warnings == ["inference took 500 ms, longer than the 400 ms a chunk lasts"]


def test_stamps_ahead_of_the_clock_are_refused():
    """A message from before a backward clock jump (looped bag) must not poison the fresh history."""
    b = buffer(max_age=0.5)
    with pytest.raises(InputError, match="ahead of the clock"):
        b.add("state", 4.0, np.zeros(2), now=0.2)
    b.add("state", 0.6, np.zeros(2), now=0.2)  # within max_obs_age: clock skew tolerated
    b.add("state", 0.7, np.zeros(2))  # no clock given (offline replay): not checked
    assert len(b.samples["state"]) == 2


def test_chunk_inferred_across_a_reset_is_discarded():
    class ResetDuringPredict(FakeEngine):
        def predict(self, history, seed=None):
            runner.reset()  # the clock jumped back while this chunk was being computed
            return super().predict(history, seed)

    runner = PolicyRunner(ResetDuringPredict(), RunnerConfig(control_rate_hz=10))
    feed(runner, 4.0, v=1.0)
    assert runner.infer(4.0) is None
    assert len(runner.queue) == 0 and runner.stats.chunks == 0
