"""The sim's harder tasks: each expert succeeds on its own task, and each task fails what it should."""
from __future__ import annotations

import numpy as np
import pytest

from dp_runtime.errors import ConfigError
from dp_runtime.sim.arm import ScriptedExpert
from dp_runtime.sim.tasks import TASKS, AroundArm, AroundExpert, TrackingArm, sim_task


def run(arm, expert) -> None:
    """One episode on the sim's schedule: a command every 0.1 s, physics at 100 Hz."""
    k = 0
    while not arm.done():
        if k % 10 == 0:
            arm.command(expert.action(0.1))
        arm.step(0.01)
        k += 1


@pytest.mark.parametrize("name", list(TASKS))
def test_every_expert_succeeds_on_its_own_task(name):
    task = TASKS[name]
    arm = task.arm(11)
    expert = task.expert(arm, 11)
    outcomes = []
    for _ in range(25):
        arm.reset()
        expert.reset()
        run(arm, expert)
        assert arm.succeeded(), (name, arm.outcome())
        outcomes.append(arm.outcome())
    assert all(task.error in o for o in outcomes)


def test_around_goes_both_ways_and_a_straight_move_or_a_late_change_of_side_hits_the_obstacle():
    arm = AroundArm(seed=3)
    expert = AroundExpert(arm, seed=3)
    sides = []
    for _ in range(30):
        arm.reset()
        expert.reset()
        sides.append(expert.side)
        run(arm, expert)
        assert arm.succeeded() and not arm.collided
    assert 8 <= sum(sides) <= 22  # both sides, at random (bimodal demonstrations)
    hits = 0
    for _ in range(20):  # the straight joint-space move (what averaging the two ways gives) goes through it
        arm.reset()
        run(arm, ScriptedExpert(arm))
        hits += arm.collided
        assert arm.done() and not arm.succeeded() if arm.collided else True
    assert hits == 20
    img = arm.render()
    green = (img[..., 1] > 150) & (img[..., 0] < 100)
    assert green.sum() > 50  # the obstacle is in the camera image
    assert arm.outcome()["collision"] == 1


def test_track_targets_part_and_meet_and_the_expert_goes_on_with_either():
    arm = TrackingArm(seed=4)
    half = float(np.linalg.norm(arm.ends[1] - arm.centre))
    gaps, meetings = [], set()
    for _ in range(600):  # the two targets part, turn at the marked ends and meet again in the middle
        arm.advance(0.01)
        a, b = arm.targets(arm.phase)
        gaps.append(float(np.linalg.norm(a - b)))
        meetings.add(arm.meeting(arm.phase))
    assert min(gaps) < 0.02 * half and max(gaps) > 1.9 * half and len(meetings) >= 3
    assert np.allclose(sum(arm.targets(arm.phase)) / 2, arm.centre)  # mirror images about the middle

    arm, choices = TrackingArm(seed=9), []
    expert = TASKS["track"].expert(arm, 9)
    for _ in range(10):
        arm.reset()
        expert.reset()
        seen, k = expert.meeting, 0
        while not arm.done():
            if k % 10 == 0:
                arm.command(expert.action(0.1))
                if expert.meeting != seen:  # a meeting: the expert drew again
                    seen = expert.meeting
                    choices.append(expert.which)
            arm.step(0.01)
            k += 1
    assert len(choices) >= 30 and 0.3 < np.mean(choices) < 0.7  # both targets, at random (bimodal)


def test_track_charges_a_late_change_of_mind_and_lateness():
    """What a policy does wrong here shows in the share of time on a target: changing its mind 0.4 s
    after the targets parted (a late chunk that went the other way), or following 0.5 s late."""
    from dp_runtime.sim.tasks import TrackingExpert

    class Fickle(TrackingExpert):
        def action(self, dt):
            ahead = self.arm.phase_in(dt)
            if self.arm.meeting(ahead) != self.meeting:
                self.meeting, self.which, self.switch_at = self.arm.meeting(ahead), int(self.rng.integers(2)), \
                    self.arm.state.t + 0.4
            if getattr(self, "switch_at", None) is not None and self.arm.state.t >= self.switch_at:
                self.which, self.switch_at = 1 - self.which, None
            return self.arm.ik(self.arm.targets(ahead)[self.which])

    class Late(TrackingExpert):
        def reset(self):
            super().reset()
            self.queue = []

        def action(self, dt):
            self.queue.append(super().action(dt))
            return self.queue[max(len(self.queue) - 6, 0)]

    results = {}
    for label, make in (("expert", TrackingExpert), ("fickle", Fickle), ("late", Late)):
        arm = TrackingArm(seed=5)
        expert = make(arm, 3)
        shares, wins = [], []
        for _ in range(20):
            arm.reset()
            expert.reset()
            run(arm, expert)
            shares.append(arm.outcome()["share_within"])
            wins.append(arm.succeeded())
        results[label] = (np.mean(shares), np.mean(wins))
    assert results["expert"] == (1.0, 1.0)
    assert results["fickle"][0] < 0.85 and results["fickle"][1] < 0.9
    assert results["late"][0] < 0.7 and results["late"][1] < 0.5


def test_an_unknown_task_is_named_with_the_choices():
    with pytest.raises(ConfigError, match="unknown sim task 'stack': expected one of reach, around, track"):
        sim_task("stack")


def _bag_series(bag_path, topic: str) -> np.ndarray:
    from dp_runtime.replay.bag import Bag
    with Bag(bag_path, "kilted") as bag:
        msgs = [bag.deserialize(raw) for raw in bag.messages({topic})]
    return np.array([np.asarray(m.data if hasattr(m, "data") else m.position, float) for m in msgs])


def test_track_demonstrations_execute_perturbed_commands_and_record_the_experts(tmp_path):
    """DART: with the same seed, the bag of the perturbed demonstrations has exactly the clean bag's
    commands (the expert's labels), but the arm went elsewhere (its joint states differ by about the
    configured noise), so the data show the way back to the target from off its path."""
    from dataclasses import replace

    from dp_runtime.sim.record import SimTopics, record_demonstrations
    task = TASKS["track"]
    assert task.demo_noise > 0
    clean, noisy = tmp_path / "clean", tmp_path / "noisy"
    record_demonstrations(clean, 2, seed=5, task=replace(task, demo_noise=0.0))
    info = record_demonstrations(noisy, 2, seed=5, task=task)
    topics = SimTopics()
    np.testing.assert_array_equal(_bag_series(noisy, topics.commands), _bag_series(clean, topics.commands))
    off = np.abs(_bag_series(noisy, topics.joints) - _bag_series(clean, topics.joints))
    assert 0.3 * task.demo_noise < off.mean() < 3 * task.demo_noise, off.mean()
    assert info["expert_success_rate"] >= 0.5  # perturbed, still mostly following


def test_a_task_network_overrides_the_dataset_config_field_by_field():
    base = {"num_inference_steps": 16, "encoder": {"base_width": 8, "pool": "spatial_softmax"},
            "unet": {"down_dims": [32, 64, 128], "kernel_size": 5}}
    merged = TASKS["track"].policy_overrides(base)
    assert merged["encoder"] == {"base_width": 16, "pool": "spatial_softmax", "feature_dim": 128}
    assert merged["unet"] == {"down_dims": [64, 128, 256], "kernel_size": 5}
    assert merged["num_inference_steps"] == 16 and TASKS["reach"].policy_overrides(base) == base
