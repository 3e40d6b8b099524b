"""Discontinuities: a pushed arm, a teleport, an input gap end the old plan's authority; normal motion never does."""
from __future__ import annotations

import numpy as np
import pytest

from dp_runtime.control import PolicyRunner, RunnerConfig, simulated
from dp_runtime.engine.engine import Prediction
from dp_runtime.errors import ConfigError
from dp_runtime.sim.arm import JOINTS
from dp_runtime.sim.evaluate import run_episodes
from dp_runtime.spec import ActionSpec, ObsSpec, PolicySpec

IMG = (4, 4, 3)
NAMES = ("j1", "j2")
SCALE = (0.5, 0.5)  # normalized units per raw unit: a raw 0.7 is 0.35 normalized
SPEC = PolicySpec((ObsSpec("cam", "image", IMG), ObsSpec("state", "low_dim", (2,), names=NAMES)),
                  ActionSpec(2, NAMES, 1, 5, SCALE), horizon=8, n_obs_steps=2, obs_interval_s=0.1)


class RampEngine:
    """Plans a slow ramp from the newest measured state (0.02 raw per step), keeping to the guidance it is
    given (weights as a diffusion policy's inpainting holds them); records what it was given."""
    spec = SPEC
    can_inpaint = True
    masks_per_step = True
    takes_noise = True
    warmup_latency_s = 0.0

    def __init__(self, step: float = 0.02):
        self.step = step
        self.histories: list[dict] = []
        self.calls: list[dict] = []

    def predict(self, history, seed=None, known=None, mask=None, hold=None, noise=None):
        self.histories.append(history)
        self.calls.append({"known": known, "mask": mask, "noise": noise})
        q = history["state"][-1].astype(np.float64)
        actions = np.stack([q + self.step * (i + 1) * np.array([1.0, 0.5]) for i in range(SPEC.horizon)])
        if mask is not None:
            w = np.asarray(mask, np.float64)[:, None]
            actions = w * known + (1 - w) * actions
        return Prediction(actions.astype(np.float32), 0.001, seed)


class Robot:
    """A position-controlled arm: moves toward the command at up to 2 raw units/s (joint states every 20 ms,
    commands every 100 ms); while pushed, a person moves it instead."""

    def __init__(self, runner: PolicyRunner):
        self.runner = runner
        self.q = np.zeros(2)
        self.target = np.zeros(2)
        self.t = 1.0
        self.k = 0

    def run(self, seconds: float, push_per_sample=(0.0, 0.0), camera: bool = True) -> None:
        push = np.asarray(push_per_sample, np.float64)
        for _ in range(int(round(seconds / 0.02))):
            self.q = self.q + push if push.any() else self.q + np.clip(self.target - self.q, -0.04, 0.04)
            if camera and self.k % 5 == 0:
                self.runner.add("cam", self.t, np.zeros(IMG, np.uint8))
            self.runner.add("state", self.t, self.q.astype(np.float32), joint_names=NAMES)
            if self.k % 5 == 0:
                if self.runner.needs_inference(self.t):
                    self.runner.infer(self.t)
                cmd = self.runner.tick(self.t)
                if cmd is not None:
                    self.target = np.asarray(cmd, np.float64)
            self.t = round(self.t + 0.02, 6)
            self.k += 1


def runner(**cfg) -> PolicyRunner:
    settings = dict(control_rate_hz=10, chunk_transition="soft_inpaint", chunk_noise="aligned", seed=3,
                    inference_lead=2)
    settings.update(cfg)
    return PolicyRunner(RampEngine(), RunnerConfig(**settings), delivery=simulated(0.0))


def test_normal_motion_never_triggers_and_guidance_is_used():
    r = runner()
    Robot(r).run(4.0)
    assert r.stats.discontinuities == 0 and r.stats.chunks > 10
    values = r.status(5.0).values()  # the margins the thresholds have, for tuning them on a robot
    assert 0 <= float(values["peak_departure"]) < 0.35 and 0 < float(values["peak_speed"]) < 3.5
    assert r.engine.calls[-1]["mask"] is not None and r.engine.calls[-1]["noise"] is not None  # plan guides


def test_pushed_arm_drops_plan_queue_noise_and_history_and_is_logged():
    engine, at_break = RampEngine(), []
    r = PolicyRunner(engine, RunnerConfig(control_rate_hz=10, chunk_transition="soft_inpaint", chunk_noise="aligned",
                                          seed=3, inference_lead=2), delivery=simulated(0.0),
                     warn=lambda cause, msg: at_break.append((msg, len(engine.histories), r.last_command.copy(),
                                                              r._plan, r._noise, len(r.queue))))
    robot = Robot(r)
    robot.run(2.0)
    assert r._plan is not None and r._noise is not None and len(r.queue) > 0
    # pushed at 2.5 raw units/s (1.25 normalized/s: slower than discontinuity_speed, as a person pushes)
    robot.run(0.6, push_per_sample=(0.05, 0.0))
    assert r.stats.discontinuities == 1, at_break
    msg, n, measured, plan, noise, queued = at_break[0]
    assert msg.startswith("discontinuity at") and "j1 is" in msg and "from every command" in msg
    assert "plan, queue and history before it dropped" in msg
    assert plan is None and noise is None and queued == 0
    values = r.status(robot.t).values()
    assert values["discontinuities"] == "1" and "from every command" in values["last_discontinuity"]
    robot.run(2.0)  # released: the robot follows the plan made after the break; armed again, no second trigger
    assert r.stats.discontinuities == 1
    # the first chunk after the break: no guidance from the old plan, and a history from after the break only
    assert engine.calls[n]["mask"] is None
    assert engine.histories[n]["state"][0, 0] >= measured[0] - 1e-6


def test_hold_after_a_break_is_where_the_robot_is_measured():
    r = runner(on_starvation="hold")
    robot = Robot(r)
    robot.run(2.0)
    r.add("state", robot.t, np.array([5.0, 5.0], np.float32), joint_names=NAMES)  # teleported
    assert r.stats.discontinuities == 1 and "moved at" in r.stats.last_discontinuity
    assert np.allclose(r.last_command, [5.0, 5.0])
    assert len(r.queue) == 0 and r._plan is None and r._noise is None
    assert not r.needs_inference(robot.t)  # no camera frame since the break yet: waits, not stale
    starved = r.queue.stats.starved
    assert r.tick(robot.t + 0.01) is not None and np.allclose(r.tick(robot.t + 0.02), [5.0, 5.0])
    assert r.queue.stats.starved == starved  # holding for the first chunk after a break is no starvation
    assert r.inputs_stale(robot.t + 0.1) == {}


def test_a_break_is_no_chunk_switch_for_the_jump_ratio():
    """dp-demo's boundary_jump_ratio counts switches inside episodes: the first action after a break (and after
    ~/reset) starts a new sequence, however far it is from the last one before."""
    r = runner(chunk_transition="replace", chunk_noise="fresh")
    robot = Robot(r)
    robot.run(2.0)
    switches, steps = r.jumps.switches, r.jumps.steps_inside
    assert switches > 3
    robot.q = robot.q + 5.0  # teleported: the next chunk starts 5 raw units from the last command
    robot.target = robot.q.copy()
    robot.run(0.3)
    assert r.stats.discontinuities == 1 and r.jumps.steps_inside > steps
    assert r.jumps.boundary_sum.max() < 1.0  # the 5-unit jump was not counted as a switch
    r.reset()
    robot.q = robot.q - 5.0
    robot.target = robot.q.copy()
    robot.run(0.5)
    assert r.jumps.boundary_sum.max() < 1.0


def test_input_gap_after_running_is_a_discontinuity_but_not_at_start_up():
    r = runner()
    r.add("cam", 0.0, np.zeros(IMG, np.uint8))
    r.add("cam", 3.0, np.zeros(IMG, np.uint8))  # start-up: nothing planned yet, the old frame is just dropped
    assert r.stats.discontinuities == 0 and [t for t, _ in r.buffer.samples["cam"]] == [3.0]
    robot = Robot(r)
    robot.t = 3.0
    robot.run(1.0)
    robot.run(1.0, camera=False)  # the camera goes silent for a second, then comes back
    robot.run(0.5)
    assert r.stats.discontinuities == 1 and "input gap: 'cam' was silent" in r.stats.last_discontinuity


def test_replay_compares_with_the_recorded_commands():
    # the policy's own commands run far ahead of the recorded robot, which followed the recorded commands
    r = PolicyRunner(RampEngine(step=0.3), RunnerConfig(control_rate_hz=10, inference_lead=2, commands_executed=False),
                     delivery=simulated(0.0))
    for k in range(100):
        t = 1.0 + 0.02 * k
        q = np.array([0.01 * k, 0.0])
        if k % 5 == 0:
            r.add("cam", t, np.zeros(IMG, np.uint8))
            r.executed(t, q)  # what the recorded robot was commanded
            if r.needs_inference(t):
                r.infer(t)
            r.tick(t)
        r.add("state", t, q.astype(np.float32), joint_names=NAMES)
    assert r.stats.discontinuities == 0 and r.stats.chunks > 5
    for k in range(100, 140):  # the recorded robot drifts away from its recorded command (pushed)
        t = 1.0 + 0.02 * k
        if k % 5 == 0:
            r.executed(t, np.array([0.99, 0.0]))
        r.add("state", t, np.array([0.99 + 0.03 * (k - 99), 0.0], np.float32), joint_names=NAMES)
    assert r.stats.discontinuities == 1 and "from every command" in r.stats.last_discontinuity


@pytest.mark.parametrize("name", ["discontinuity_threshold", "discontinuity_speed"])
@pytest.mark.parametrize("bad", [0, -0.5])
def test_thresholds_must_be_positive(name, bad):
    with pytest.raises(ConfigError, match=f"{name} must be > 0, got {bad}"):
        RunnerConfig(**{name: bad})


class DriftEngine:
    """Drives the sim arm's shoulder steadily (0.2 rad/s) from where it is measured: far from the next start."""

    def __init__(self) -> None:
        observations = (ObsSpec("camera", "image", (96, 96, 3)), ObsSpec("state", "low_dim", (2,), names=JOINTS))
        self.spec = PolicySpec(observations, ActionSpec(2, JOINTS, 1, 9, (0.4, 0.7)), horizon=16, n_obs_steps=2,
                               obs_interval_s=0.1)
        self.image_shapes, self.low_dim_sizes = self.spec.image_shapes, self.spec.low_dim_sizes

    can_inpaint = True
    masks_per_step = True
    takes_noise = True
    warmup_latency_s = 0.0

    def predict(self, history, seed=None, known=None, mask=None, hold=None, noise=None):
        q = history["state"][-1].astype(np.float64)
        actions = np.stack([q + 0.02 * i * np.array([1.0, 0.0]) for i in range(16)])
        return Prediction(actions.astype(np.float32), 0.0, seed)


def test_a_teleport_in_the_sim_is_caught_within_one_period_and_normal_episodes_never_trigger():
    episodes = run_episodes(DriftEngine(), 4, seed=3, continuous=True, chunk_transition="soft_inpaint")
    assert episodes[0].breaks == []
    for e in episodes[1:]:
        assert e.breaks and e.breaks[0] <= 0.1 and len(e.breaks) == 1, [x.breaks for x in episodes]
    fresh = run_episodes(DriftEngine(), 2, seed=3, chunk_transition="soft_inpaint")  # reset per episode
    assert all(e.breaks == [] for e in fresh)
