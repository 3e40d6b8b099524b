"""dp-replay on real rosbag2 files (MCAP and sqlite3) written by the tests themselves."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import yaml
from rosbags.typesys import Stores

from dp_runtime.engine import load_bundle
from dp_runtime.errors import BagError
from dp_runtime.replay.bag import Bag
from dp_runtime.replay.cli import main as replay_cli
from dp_runtime.replay.pipeline import ReplaySetup, replay_offline
from dp_runtime.replay.report import PREDICTED_TOPIC
from dp_runtime.ros.params import load_params_file
from helpers.bags import write_test_bag

RATE = 10.0


def config_file(tmp_path, **over):
    params = {"control_rate_hz": RATE, "command_topic": "/commands", "max_obs_age": 0.5,
              "obs": {"state": {"joint_names": ["joint1", "joint2"]}}}
    params.update(over)
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump({"policy_node": {"ros__parameters": params}}))
    return path


def make_setup(bundle, cfg, recorded="/commands"):
    params, flat = load_params_file(cfg, bundle=str(bundle))
    return ReplaySetup.create(load_bundle(bundle), params, flat, recorded)


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_offline_replay_is_deterministic_and_equals_the_engine(tmp_path, tiny_bundle, storage):
    bag = write_test_bag(tmp_path / "bag", storage)
    setup = make_setup(tiny_bundle, config_file(tmp_path))
    a = replay_offline(bag, setup, seed=3, keep_observations=True)
    b = replay_offline(bag, setup, seed=3)
    assert len(a.commands) == len(b.commands) > 30
    for (ta, ca), (tb, cb) in zip(a.commands, b.commands):
        assert ta == tb and (ca is None) == (cb is None)
        assert ca is None or np.array_equal(ca, cb)
    assert len(a.chunks) >= 8
    engine = setup.engine
    for k, chunk in enumerate(a.chunks):
        direct = engine.executed_slice(engine.predict(chunk.observation.history, seed=3 + k).actions)
        assert np.array_equal(direct, chunk.actions)
    # Header stamps are 10 ms before the receive times in this bag; the result says so.
    lag = np.median(a.stamp_lag["/camera/image_raw"])
    assert lag == pytest.approx(0.01, abs=1e-6)


def test_report_files_hold_the_right_numbers(tmp_path, tiny_bundle):
    bag = write_test_bag(tmp_path / "bag", "mcap", seconds=3.0)
    out = tmp_path / "report"
    assert replay_cli([str(bag), "--bundle", str(tiny_bundle), "--config", str(config_file(tmp_path)),
                       "--out", str(out), "--seed", "1", "--no-progress"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    rows = list(csv.DictReader(open(out / "actions.csv")))
    assert len(rows) == m["commands"] > 20
    pred = np.array([[float(r["predicted.joint1"]), float(r["predicted.joint2"])] for r in rows])
    rec = np.array([[float(r["recorded.joint1"] or "nan"), float(r["recorded.joint2"] or "nan")] for r in rows])
    ok = np.isfinite(rec).all(1)
    assert m["compared"] == ok.sum() > 20
    mse = ((pred[ok] - rec[ok]) ** 2).mean(0)
    assert m["action_error"]["joint1"]["mse"] == pytest.approx(mse[0], rel=1e-4)
    assert m["action_error"]["joint2"]["mse"] == pytest.approx(mse[1], rel=1e-4)
    assert m["inference_latency_ms"]["count"] == m["chunks"] > 0
    assert m["messages"]["read"] == 3 * 20 + 3 * 50 + 3 * 10
    assert sorted(m["plots"]) == ["action_0_joint1.png", "action_1_joint2.png"]
    assert all((out / p).stat().st_size > 1000 for p in m["plots"])
    assert yaml.safe_load((out / "replay_bag" / "metadata.yaml").read_text())["rosbag2_bagfile_information"][
        "version"] == 8
    with Bag(out / "replay_bag") as rb:
        assert rb.counts[PREDICTED_TOPIC] == m["commands"]
        assert rb.counts["/camera/image_raw"] == 60
    assert 0 < m["throughput"]["share_outside_inference"] < 1


def test_compressed_images_and_a_humble_bag(tmp_path, tiny_bundle):
    bag = write_test_bag(tmp_path / "bag", "sqlite3", compressed=True, store=Stores.ROS2_HUMBLE)
    cfg = config_file(tmp_path, obs={"state": {"joint_names": ["joint1", "joint2"]},
                                     "camera": {"topic": "/camera/image_raw/compressed",
                                                "type": "compressed_image"}})
    setup = make_setup(tiny_bundle, cfg)
    compressed = replay_offline(bag, setup, seed=0, distro="humble")
    raw = replay_offline(write_test_bag(tmp_path / "raw", "sqlite3"), make_setup(tiny_bundle, config_file(tmp_path)),
                         seed=0)
    assert compressed.invalid == {}
    # PNG is lossless: the same pixels give the same actions as the raw-image bag.
    assert len(compressed.commands) == len(raw.commands)
    for (_, a), (_, b) in zip(compressed.commands, raw.commands):
        assert (a is None and b is None) or np.allclose(a, b, atol=1e-6)


def test_missing_topic_lists_the_bags_topics(tmp_path, tiny_bundle):
    bag = write_test_bag(tmp_path / "bag", "mcap", seconds=1.0)
    cfg = config_file(tmp_path, obs={"state": {"joint_names": ["joint1", "joint2"], "topic": "/robot/joints"}})
    with pytest.raises(BagError, match=r"'/robot/joints' is not in bag .*/joint_states \[sensor_msgs/msg/JointState\]"):
        replay_offline(bag, make_setup(tiny_bundle, cfg))


def test_empty_bag_and_not_a_bag(tmp_path, tiny_bundle):
    from rosbags.rosbag2 import StoragePlugin, Writer
    empty = tmp_path / "empty"
    with Writer(empty, version=8, storage_plugin=StoragePlugin.MCAP):
        pass
    with pytest.raises(BagError, match="empty"):
        replay_offline(empty, make_setup(tiny_bundle, config_file(tmp_path)))
    junk = tmp_path / "junk.mcap"
    junk.write_bytes(b"not a bag at all")
    with pytest.raises(BagError, match="cannot open bag"):
        replay_offline(junk, make_setup(tiny_bundle, config_file(tmp_path)))


def test_unknown_types_out_of_order_and_corrupt_messages_are_counted(tmp_path, tiny_bundle):
    bag = write_test_bag(tmp_path / "bag", "mcap", extra_unknown=True, shuffle_stamps=True, corrupt_every=17)
    r = replay_offline(bag, make_setup(tiny_bundle, config_file(tmp_path)), seed=0)
    assert r.problems["unknown_types"] == {"/vendor/status": {"type": "vendor_msgs/msg/Status", "skipped": 1}}
    assert any("out-of-order stamp" in k for k in r.invalid), r.invalid
    assert len(r.problems["corrupt"]) > 3
    assert "/joint_states message" in r.problems["corrupt"][0]
    assert sum(c is not None for _, c in r.commands) > 20  # the rest of the bag was still used


def test_truncated_bag_keeps_what_can_be_read(tmp_path, tiny_bundle):
    bag = write_test_bag(tmp_path / "bag", "mcap", seconds=4.0, filler=True)
    full = replay_offline(bag, make_setup(tiny_bundle, config_file(tmp_path)), seed=0)
    cut = tmp_path / "cut"
    shutil.copytree(bag, cut)
    f = next(cut.glob("*.mcap"))
    f.write_bytes(f.read_bytes()[: int(f.stat().st_size * 0.6)])
    r = replay_offline(cut, make_setup(tiny_bundle, config_file(tmp_path)), seed=0)
    assert "is truncated" in r.problems["truncated"]
    assert 0 < r.messages_read < full.messages_read
    n = len(r.commands)
    assert n > 10
    for (ta, ca), (tb, cb) in zip(r.commands, full.commands[:n]):
        assert ta == tb and ((ca is None and cb is None) or np.array_equal(ca, cb))


def test_realtime_replay_through_the_node_matches_offline(tmp_path, tiny_bundle, monkeypatch):
    """The bag published over DDS (with /clock) into a policy node process gives offline's actions."""
    pytest.importorskip("rclpy")
    from helpers.ros_harness import domain_id, ros_env
    for k, v in ros_env(domain_id() + 1).items():
        monkeypatch.setenv(k, v)
    from dp_runtime.replay.realtime import replay_realtime
    bag = write_test_bag(tmp_path / "bag", "mcap", seconds=5.0, constant=True)
    cfg = config_file(tmp_path)
    setup = make_setup(tiny_bundle, cfg)
    offline = replay_offline(bag, setup, seed=7)
    live = replay_realtime(bag, setup, str(cfg), seed=7, rate=1.0)
    got = np.stack([c for _, c in live.commands])
    want = np.stack([c for _, c in offline.commands if c is not None])
    assert len(got) > 0.7 * len(want), (len(got), len(want))
    # Constant observations: chunk k depends only on its seed (7 + k), so every command the node
    # published must be one of the actions those chunks hold, as offline's are.
    history = replay_offline(bag, setup, seed=7, keep_observations=True).chunks[-1].observation.history
    engine = setup.engine
    cands = np.concatenate([engine.executed_slice(engine.predict(history, seed=7 + k).actions)
                            for k in range(120)])
    for commands in (got, want):
        assert np.abs(commands[:, None, :] - cands[None]).max(-1).min(-1).max() < 1e-5
    assert "starvation_count" in live.node_diagnostics
