"""The demo arm, the demonstration bag, dp-dataset and the demo's cache."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from dp_runtime.dataset import DatasetConfig, bag_to_dataset, load_dataset, main as dataset_main
from dp_runtime.errors import BagError
from dp_runtime.replay.bag import Bag
from dp_runtime.sim.arm import ReachingArm, ScriptedExpert
from dp_runtime.sim.demo import config_path, step
from dp_runtime.sim.record import record_demonstrations


@pytest.fixture(scope="module")
def demo_bag(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "demos"
    info = record_demonstrations(out, 6, seed=3)
    assert info["expert_success_rate"] == 1.0
    return out


def test_expert_reaches_every_target_and_the_camera_shows_it():
    arm = ReachingArm(seed=5)
    expert = ScriptedExpert(arm)
    for _ in range(30):
        arm.reset()
        while not arm.success() and arm.state.t < arm.cfg.episode_seconds:
            arm.command(expert.action(0.1))
            for _ in range(10):
                arm.step(0.01)
        assert arm.success()
    img = arm.render()
    assert img.shape == (96, 96, 3) and img.dtype == np.uint8
    red = np.argwhere((img[..., 0] > 200) & (img[..., 1] < 80))
    # the target's pixels sit where the target is (x right, y up)
    cx, cy = red[:, 1].mean(), red[:, 0].mean()
    x = (cx + 0.5) / 96 * 2 * arm.cfg.extent - arm.cfg.extent
    y = arm.cfg.extent - (cy + 0.5) / 96 * 2 * arm.cfg.extent
    assert np.allclose([x, y], arm.state.target, atol=0.03)


def test_arm_rejects_bad_commands_and_respects_limits():
    arm = ReachingArm(seed=0)
    with pytest.raises(ValueError, match="2 finite"):
        arm.command(np.array([np.nan, 0.0]))
    arm.command(np.array([0.0, 10.0]))  # beyond the elbow limit
    for _ in range(500):
        arm.step(0.01)
    assert arm.state.q[1] == pytest.approx(arm.cfg.upper[1])
    q0 = arm.state.q.copy()
    arm.command(q0 + np.array([1.0, -1.0]))
    arm.step(0.1)
    assert np.all(np.abs(arm.state.q - q0) <= arm.cfg.max_velocity * 0.1 + 1e-9)


def test_demonstration_bag_is_a_standard_rosbag(demo_bag):
    assert not demo_bag.with_name("demos.partial").exists()
    meta = yaml.safe_load((demo_bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["version"] == 8 and meta["storage_identifier"] == "mcap"
    with Bag(demo_bag) as bag:
        assert bag.topics == {"/camera/image_raw": "sensor_msgs/msg/Image",
                              "/joint_states": "sensor_msgs/msg/JointState",
                              "/arm/commands": "std_msgs/msg/Float64MultiArray",
                              "/sim/episode": "std_msgs/msg/String"}
        results = [json.loads(bag.deserialize(m).data) for m in bag.messages({"/sim/episode"})]
    assert [r["episode"] for r in results] == list(range(6)) and all(r["success"] for r in results)


def test_dataset_aligns_histories_and_chunks_with_the_commands(demo_bag, tmp_path):
    cfg = DatasetConfig.load(config_path("sim_dataset.yaml"))
    arrays, info = bag_to_dataset(demo_bag, cfg)
    assert info["episodes"] == 6
    n = info["samples"]
    assert arrays["camera"].shape == (n, 2, 96, 96, 3) and arrays["state"].shape == (n, 2, 2)
    assert arrays["action"].shape == (n, 16, 2)
    with Bag(demo_bag) as bag:
        commands = [np.asarray(bag.deserialize(m).data) for m in bag.messages({"/arm/commands"})]
    # The first command comes before the first camera frame: no sample, but its action is in the chunks.
    # Sample j of episode 0 is command j + 1; its executed slice starts there, the step before is command j.
    a = arrays["action"][arrays["episode"] == 0]
    assert np.allclose(a[0, 1], commands[1]) and np.allclose(a[0, 0], commands[0])
    assert np.allclose(a[3, 1:9], np.stack(commands[4:12]))
    assert np.allclose(a[-1, -1], a[-1, -2])  # padded with the episode's last command
    out = tmp_path / "ds.npz"
    assert dataset_main([str(demo_bag), "--config", str(config_path("sim_dataset.yaml")), "-o", str(out)]) == 0
    pcfg, data = load_dataset(out)
    assert pcfg.images[0].shape == (96, 96, 3) and pcfg.low_dims[0].names == ["shoulder", "elbow"]
    assert pcfg.images[0].topic == "/camera/image_raw"
    assert set(data) == {"camera", "state", "action"}


def test_dataset_on_a_bag_without_a_needed_topic_names_it(demo_bag, tmp_path):
    cfg = DatasetConfig.load(config_path("sim_dataset.yaml"))
    cfg.obs[0].topic = "/wrist/image_raw"
    with pytest.raises(BagError, match="'/wrist/image_raw' is not in bag"):
        bag_to_dataset(demo_bag, cfg)


def test_interrupted_builds_leave_no_cache_entry(tmp_path):
    def broken(target):
        target.with_name(target.name + ".partial").write_text("half")
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        step("broken", tmp_path / "thing", broken)
    assert not (tmp_path / "thing").exists()
    calls = []
    step("ok", tmp_path / "done", lambda t: (calls.append(1), t.write_text("x")))
    step("ok", tmp_path / "done", lambda t: calls.append(2))
    assert calls == [1]  # the second run reuses the complete artifact


def test_sim_records_every_episode_it_runs(tmp_path):
    """dp-demo counts episodes from the sim's own record: none is lost to DDS discovery or shutdown."""
    pytest.importorskip("rclpy")
    import subprocess
    import sys
    from dp_runtime.sim.demo import read_episodes
    from helpers.ros_harness import domain_id, ros_env
    results = tmp_path / "episodes.jsonl"
    r = subprocess.run([sys.executable, "-m", "dp_runtime.sim.node", "--episodes", "3", "--episode-seconds", "0.3",
                        "--results", str(results)], env=ros_env(domain_id() + 7), timeout=120,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    episodes = read_episodes(results)
    assert [e["episode"] for e in episodes] == [0, 1, 2]  # nobody subscribed, yet all three are there
    assert all(e["success"] is False for e in episodes)  # no policy drove the arm
    r = subprocess.run([sys.executable, "-m", "dp_runtime.sim.node", "--task", "around", "--episodes", "2",
                        "--episode-seconds", "0.3", "--results", str(results)], env=ros_env(domain_id() + 7),
                       timeout=120, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    around = read_episodes(results)[3:]
    assert len(around) == 2 and all(e["collision"] == 0 and not e["success"] for e in around)  # its own measure
    r = subprocess.run([sys.executable, "-m", "dp_runtime.sim.node", "--task", "grasp", "--episodes", "1",
                        "--episode-seconds", "0.3", "--results", str(results)], env=ros_env(domain_id() + 7),
                       timeout=120, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "commands on /arm/target_pose, /arm/twist, /gripper/command" in r.stderr + r.stdout
    (grasp,) = read_episodes(results)[5:]
    assert not grasp["success"] and grasp["misses"] == 0 and "yaw_error" in grasp


def test_demonstrations_of_a_harder_task_carry_its_measures(tmp_path):
    from dp_runtime.sim.tasks import TASKS
    info = record_demonstrations(tmp_path / "track", 2, seed=1, task=TASKS["track"])
    assert info["task"] == "track" and info["expert_success_rate"] >= 0.5  # executed with DART noise
    assert info["mean_episode_s"] == pytest.approx(TASKS["track"].episode_seconds(), abs=0.02)
    with Bag(tmp_path / "track") as bag:
        results = [json.loads(bag.deserialize(m).data) for m in bag.messages({"/sim/episode"})]
    assert [r["episode"] for r in results] == [0, 1] and all(0 < r["tracking_error"] < 0.1 for r in results)
