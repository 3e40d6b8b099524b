"""dp-replay on real rosbag2 files (MCAP and sqlite3) written by the tests themselves."""
from __future__ import annotations

import csv
import json
import shutil
from dataclasses import asdict

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
    # plain chunks (no guidance, noise from the seed): replay is compared with the engine's own predictions
    params = {"control_rate_hz": RATE, "command_topic": "/commands", "max_obs_age": 0.5,
              "chunk_transition": "replace", "chunk_noise": "fresh",
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
    # Each chunk here runs one action before the next replaces it: switches, but no step inside a chunk
    # to compare with, so the ratio is undefined rather than made up.
    assert m["continuity"]["chunk_switches"] > 0 and m["continuity"]["chunk_transition"] == "replace"
    assert m["continuity"]["boundary_jump_ratio"] is None or m["continuity"]["boundary_jump_ratio"] > 0
    assert m["messages"]["read"] == 3 * 20 + 3 * 50 + 3 * 10
    assert sorted(m["plots"]) == ["action_0_joint1.png", "action_1_joint2.png"]
    assert all((out / p).stat().st_size > 1000 for p in m["plots"])
    assert yaml.safe_load((out / "replay_bag" / "metadata.yaml").read_text())["rosbag2_bagfile_information"][
        "version"] == 8
    with Bag(out / "replay_bag") as rb:
        assert rb.counts[PREDICTED_TOPIC] == m["commands"]
        assert rb.counts["/camera/image_raw"] == 60
    assert 0 < m["throughput"]["share_outside_inference"] < 1


def test_replay_bag_carries_each_chunks_plan_with_the_default_transition(tmp_path, tiny_bundle):
    """With the documented defaults (soft_inpaint_early, aligned noise on an --inpaint bundle) the replay bag
    has the node's ~/plan and ~/plan/committed for every queued chunk, stamped as the node stamps them, and
    the report's plots draw the plans against the executed commands."""
    bag = write_test_bag(tmp_path / "bag", "mcap", seconds=3.0)
    out = tmp_path / "report"
    cfg = config_file(tmp_path, chunk_transition="auto", chunk_noise="auto")
    assert replay_cli([str(bag), "--bundle", str(tiny_bundle), "--config", str(cfg), "--out", str(out),
                       "--seed", "1", "--no-progress", "--assumed-latency", "0.05"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["continuity"]["chunk_transition"] == "soft_inpaint_early"
    with Bag(out / "replay_bag") as rb:
        assert rb.topics["/policy_node/plan"] == "trajectory_msgs/msg/JointTrajectory"
        plans = [rb.deserialize(x) for x in rb.messages({"/policy_node/plan"})]
        committed = [rb.deserialize(x) for x in rb.messages({"/policy_node/plan/committed"})]
    assert len(plans) == len(committed) >= m["chunks"] - 1 > 5  # the last may still be in flight at the end
    assert all(list(p.joint_names) == ["joint1", "joint2"] for p in plans)
    assert all(len(p.points) == len(plans[0].points) > 1 for p in plans)
    assert sum(len(c.points) for c in committed) > 0  # the prefix the previous plan held
    assert any(p.header.frame_id.startswith("guided:") for p in plans)
    for p, c in zip(plans, committed):
        assert (p.header.stamp.sec, p.header.stamp.nanosec) == (c.header.stamp.sec, c.header.stamp.nanosec)
    assert m["plots"] and all((out / name).stat().st_size > 0 for name in m["plots"])


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
    assert asdict(r.problems)["unknown_types"] == {"/vendor/status": {"type": "vendor_msgs/msg/Status", "skipped": 1}}
    assert any("out-of-order stamp" in k for k in r.invalid), r.invalid
    assert len(r.problems.corrupt) > 3
    assert "/joint_states message" in r.problems.corrupt[0]
    assert sum(c is not None for _, c in r.commands) > 20  # the rest of the bag was still used


def test_truncated_bag_keeps_what_can_be_read(tmp_path, tiny_bundle):
    bag = write_test_bag(tmp_path / "bag", "mcap", seconds=4.0, filler=True)
    full = replay_offline(bag, make_setup(tiny_bundle, config_file(tmp_path)), seed=0)
    cut = tmp_path / "cut"
    shutil.copytree(bag, cut)
    f = next(cut.glob("*.mcap"))
    f.write_bytes(f.read_bytes()[: int(f.stat().st_size * 0.6)])
    r = replay_offline(cut, make_setup(tiny_bundle, config_file(tmp_path)), seed=0)
    assert "is truncated" in r.problems.truncated
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


# -- bags as other tools write them: each opens, or is refused with what is wrong ------------------------

def _meta(bag):
    return yaml.safe_load((bag / "metadata.yaml").read_text())


def _write_meta(bag, meta):
    (bag / "metadata.yaml").write_text(yaml.safe_dump(meta))


def test_complete_bags_with_odd_metadata_replay_and_are_not_called_truncated(tmp_path, tiny_bundle, caplog):
    setup = make_setup(tiny_bundle, config_file(tmp_path))
    reference = replay_offline(write_test_bag(tmp_path / "ref", "mcap", seconds=2.0), setup, seed=0)
    # rosbag2 itself sometimes writes an empty storage_identifier.
    empty = write_test_bag(tmp_path / "empty_sid", "mcap", seconds=2.0)
    meta = _meta(empty)
    meta["rosbag2_bagfile_information"]["storage_identifier"] = ""
    _write_meta(empty, meta)
    # metadata version 1: an older layout rosbags cannot read (its topic entries differ).
    v1 = write_test_bag(tmp_path / "v1", "sqlite3", seconds=2.0)
    meta = _meta(v1)
    info = meta["rosbag2_bagfile_information"]
    info["version"] = 1
    for k in ("files", "custom_data", "ros_distro", "compression_format", "compression_mode"):
        info.pop(k, None)
    info["topics_with_message_count"] = [{"topic_and_type": t["topic_metadata"], "message_count": t["message_count"]}
                                         for t in info["topics_with_message_count"]]
    _write_meta(v1, meta)
    # A directory without metadata.yaml (one storage file).
    nometa = write_test_bag(tmp_path / "nometa", "mcap", seconds=2.0)
    (nometa / "metadata.yaml").unlink()
    for bag in (empty, v1, nometa):
        caplog.clear()
        r = replay_offline(bag, setup, seed=0)
        assert r.problems.truncated == "", bag
        assert [c is None for _, c in r.commands] == [c is None for _, c in reference.commands]
        warnings = [rec.getMessage() for rec in caplog.records if rec.levelname == "WARNING"]
        assert len(warnings) == 1 and "reading" in warnings[0] and "truncated" not in warnings[0], warnings


def test_unreadable_bags_are_refused_with_the_reason(tmp_path):
    bag = write_test_bag(tmp_path / "bag", "mcap", seconds=1.0)
    mcap = next(bag.glob("*.mcap"))
    split = tmp_path / "split"
    split.mkdir()
    for i in range(2):
        shutil.copy(mcap, split / f"rec_{i}.mcap")
    with pytest.raises(BagError, match="2 storage files but no metadata.yaml.*ros2 bag reindex"):
        Bag(split)
    cut = tmp_path / "cut.mcap"
    cut.write_bytes(mcap.read_bytes()[:300])
    with pytest.raises(BagError, match="cut.mcap is truncated before its first complete chunk"):
        Bag(cut)
    json_bag = tmp_path / "json"
    shutil.copytree(bag, json_bag)
    meta = _meta(json_bag)
    for t in meta["rosbag2_bagfile_information"]["topics_with_message_count"]:
        t["topic_metadata"]["serialization_format"] = "json"
    _write_meta(json_bag, meta)
    with pytest.raises(BagError, match="json.*CDR"):
        Bag(json_bag)


def test_old_type_names_are_the_same_types(tmp_path, tiny_bundle):
    """Bags from early rosbag2 and converters name types 'sensor_msgs/Image', not 'sensor_msgs/msg/Image'."""
    import sqlite3
    bag = write_test_bag(tmp_path / "old", "sqlite3", seconds=2.0)
    db = sqlite3.connect(next(bag.glob("*.db3")))
    db.execute("UPDATE topics SET type = replace(type, '/msg/', '/')")
    db.commit()
    db.close()
    meta = _meta(bag)
    for t in meta["rosbag2_bagfile_information"]["topics_with_message_count"]:
        t["topic_metadata"]["type"] = t["topic_metadata"]["type"].replace("/msg/", "/")
    _write_meta(bag, meta)
    with Bag(bag) as b:
        assert b.topics["/camera/image_raw"] == "sensor_msgs/msg/Image"
    r = replay_offline(bag, make_setup(tiny_bundle, config_file(tmp_path)), seed=0)
    assert len(r.chunks) > 3 and len(r.recorded) > 10 and r.invalid == {}


def test_a_replay_without_chunks_fails_and_says_why(tmp_path, tiny_bundle, capsys):
    wrong_size = tmp_path / "policy_wrong.yaml"
    bag = write_test_bag(tmp_path / "bag", "mcap", seconds=2.0)
    # The tiny policy expects 24x24 images; make the bundle expect 32x32 by asking replay with a 32x32 bag.
    big = write_test_bag(tmp_path / "big", "mcap", seconds=2.0, size=32)
    config_file(tmp_path)
    shutil.move(tmp_path / "policy.yaml", wrong_size)
    rc = replay_cli([str(big), "--bundle", str(tiny_bundle), "--config", str(wrong_size), "--out",
                     str(tmp_path / "r1"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "FAILED: the replay produced no action chunk" in err
    assert "/camera/image_raw: image is 32x32, policy expects 24x24" in err and "resize_images" in err
    m = json.loads((tmp_path / "r1" / "metrics.json").read_text())
    assert any("image is 32x32" in k for k in m["messages"]["invalid"])  # real numbers, not '#'
    zero = write_test_bag(tmp_path / "zero", "mcap", seconds=2.0, zero_stamps=True)
    rc = replay_cli([str(zero), "--bundle", str(tiny_bundle), "--config", str(wrong_size), "--out",
                     str(tmp_path / "r2"), "--no-progress"])
    assert rc == 1 and "header stamp is zero" in capsys.readouterr().err
    assert replay_cli([str(bag), "--bundle", str(tiny_bundle), "--config", str(wrong_size), "--out",
                       str(tmp_path / "r3"), "--no-progress"]) == 0


def test_an_unparseable_definition_is_one_short_log_line(tmp_path, caplog):
    """Service event types and .idl schemas that rosbags cannot parse: one line each, not the whole schema."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    bag = tmp_path / "odd_defs"
    schema = "\n".join(["this is not a message definition {"] + [f"  garbage line {i}" for i in range(200)])
    with Writer(bag, version=8, storage_plugin=StoragePlugin.MCAP) as w:
        c = w.add_connection("/odd", "odd_msgs/msg/Thing", msgdef=schema, rihs01="RIHS01_" + "0" * 64)
        w.write(c, 1, b"\x00\x01\x00\x00")
    caplog.clear()
    with Bag(bag) as b:
        assert b.unknown_types == {"/odd": "odd_msgs/msg/Thing"}
    lines = [rec.getMessage() for rec in caplog.records if rec.levelname == "WARNING"]
    assert len(lines) == 1 and "\n" not in lines[0] and len(lines[0]) < 400 and "garbage line 5" not in lines[0], lines


def test_both_replay_modes_report_bag_problems_in_one_shape(tmp_path, tiny_bundle):
    """Real-time replay reads the bag through the same check and the same BagProblems as offline replay, so
    the two report.json files agree (unknown types: topic -> {type, skipped} in both)."""
    from dp_runtime.replay.realtime import read_recording
    bag = write_test_bag(tmp_path / "bag", "mcap", extra_unknown=True, corrupt_every=17)
    setup = make_setup(tiny_bundle, config_file(tmp_path))
    offline = replay_offline(bag, setup, seed=0)
    realtime = read_recording(bag, setup, "kilted")
    assert asdict(realtime.problems)["unknown_types"] == asdict(offline.problems)["unknown_types"] == {
        "/vendor/status": {"type": "vendor_msgs/msg/Status", "skipped": 1}}
    assert set(asdict(realtime.problems)) == set(asdict(offline.problems)) == {"corrupt", "truncated", "unknown_types"}


def test_realtime_verdict_names_the_nodes_own_rejection_causes(tmp_path, tiny_bundle, monkeypatch):
    """Every camera frame unusable (wrong size): real-time replay fails naming the node's cause, as offline does,
    not only "no usable observation"."""
    pytest.importorskip("rclpy")
    from helpers.ros_harness import domain_id, ros_env
    for k, v in ros_env(domain_id() + 2).items():
        monkeypatch.setenv(k, v)
    from dp_runtime.replay.realtime import replay_realtime
    from dp_runtime.replay.report import verdict, write_report
    bag = write_test_bag(tmp_path / "bag", "mcap", seconds=3.0, size=32)
    cfg = config_file(tmp_path)
    setup = make_setup(tiny_bundle, cfg)
    offline = write_report(tmp_path / "off", replay_offline(bag, setup, seed=0), setup)
    live = write_report(tmp_path / "rt", replay_realtime(bag, setup, str(cfg), seed=0), setup)
    for m in (offline, live):
        ok, lines = verdict(m)
        assert not ok and any("image is 32x32" in line and "policy expects" in line for line in lines), lines
        assert m["messages"]["invalid_total"] > 10
