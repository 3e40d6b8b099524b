"""The policy node in its own process on real DDS, fed by a publisher process."""
from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest

pytest.importorskip("rclpy")

from dp_runtime.engine import load_bundle  # noqa: E402
from helpers.synthetic import render_dot  # noqa: E402
from helpers.ros_harness import (Collector, domain_id, ros_env, start_node, start_publisher, wait_for,  # noqa: E402
                                 write_params)
from helpers.sensor_publisher import JOINTS, SCENE_TARGET  # noqa: E402

RATE = 50.0


@pytest.fixture(scope="module")
def domain():
    return domain_id()


def node_params(bundle, **over):
    """Plain chunks (commands comparable with the engine's predictions for a seed); the sensor publisher's
    joints do not follow the commands, so nothing executes them (commands_executed: false)."""
    p = {"bundle": str(bundle), "control_rate_hz": RATE, "command_topic": "/test/commands", "seed": 0,
         "max_obs_age": 0.5, "obs": {"state": {"joint_names": ["joint1", "joint2"]}},
         "diagnostics_period": 0.25, "chunk_transition": "replace", "chunk_noise": "fresh",
         "commands_executed": False}
    p.update(over)
    return p


def commanded(rel: np.ndarray, start: float, end: float = np.inf, rate: float = RATE) -> None:
    """Commands flowed at the control rate in (start, end) s after the publisher started, measured over the
    commands actually sent: a loaded machine may start them late, never slower. At least half a second of
    them, at >= 80 % of the rate."""
    t = np.sort(rel[(rel > start) & (rel < end)])
    assert t.size > 1 and t[-1] - t[0] >= 0.5, (start, end, t)
    assert (t.size - 1) / (t[-1] - t[0]) >= 0.8 * rate, (start, end, (t.size - 1) / (t[-1] - t[0]))


def candidate_actions(bundle, chunks: int, **load) -> np.ndarray:
    """Every action the node may publish for the publisher's constant scene: chunk k uses seed k."""
    engine = load_bundle(bundle, **load)
    obs = {"camera": np.stack([render_dot(SCENE_TARGET, 24)] * 2),
           "state": np.array([[JOINTS["joint1"], JOINTS["joint2"]]] * 2, np.float32)}
    return np.concatenate([engine.executed_slice(engine.predict(obs, seed=k).actions) for k in range(chunks)])


def run(tmp_path, bundle, domain, params, pub_args, duration, command_type=None, topic="/test/commands",
        during=None):
    from std_msgs.msg import Float64MultiArray
    env = ros_env(domain)
    pf = write_params(tmp_path / "params.yaml", node_params(bundle, **params))
    col = Collector(domain, command_type or Float64MultiArray, topic)
    node = start_node(pf, env, tmp_path / "node.log")
    try:
        assert wait_for(lambda: "provider" in node.text() or node.p.poll() is not None, 60), node.text()
        assert node.p.poll() is None, node.text()
        pub = start_publisher(env, tmp_path / "pub.log", "--duration", str(duration), *pub_args)
        assert wait_for(lambda: "publishing from" in pub.text(), 30), pub.text()
        t0 = float(pub.text().split("publishing from ")[1].split()[0])
        if during:
            during(col, t0)
        pub.p.wait(duration + 30)
        alive = node.p.poll() is None
    finally:
        rc = node.stop()
        col.close()
    return col, node.text(), alive, t0, rc


def test_commands_at_rate_and_equal_to_engine(tmp_path, tiny_bundle, domain):
    col, log, alive, t0, rc = run(tmp_path, tiny_bundle, domain, {}, ["--rate", "30"], 6.0)
    assert alive and rc == 0, log
    times = np.array([t for t, _ in col.commands])
    data = np.array([list(m.data) for _, m in col.commands])
    steady = times > t0 + 2.0  # after DDS discovery and warm-up
    periods = np.diff(times[steady])
    assert len(periods) > 80
    assert abs(np.median(periods) - 1 / RATE) < 0.003, np.median(periods)
    cands = candidate_actions(tiny_bundle, 600)
    dist = np.abs(data[:, None, :] - cands[None]).max(-1).min(-1)
    assert dist.max() < 1e-5, dist.max()
    diag = col.last_diag()
    assert diag["provider"] == "CPUExecutionProvider"
    print(f"\ncommand period at 50 Hz: p50 {np.percentile(periods, 50) * 1e3:.2f} ms, "
          f"p99 {np.percentile(periods, 99) * 1e3:.2f} ms; node-side p99 {diag.get('command_period_ms_p99')} ms;"
          f" starvation {diag['starvation_count']}, chunks {diag['chunks']}, dropped {diag['dropped_actions']};"
          f" observation stamp -> first command of its chunk p50 {diag['obs_to_first_command_ms_p50']} ms,"
          f" max {diag['obs_to_first_command_ms_max']} ms; inference median {diag['inference_latency_ms_median']} ms")
    assert float(diag["obs_to_first_command_ms_max"]) < 1000 * (1 / RATE) * 4


def test_stopped_camera_stops_commands_and_raises_error(tmp_path, tiny_bundle, domain):
    levels = []

    def watch(col, t0):
        while time.time() < t0 + 10.5:
            d = col.last_diag()
            if d:
                levels.append((time.time() - t0, d["level"], d["message"]))
            time.sleep(0.1)

    col, log, alive, t0, rc = run(tmp_path, tiny_bundle, domain, {},
                                  ["--camera-stop-at", "5", "--camera-resume-at", "7.5"], 11.0, during=watch)
    assert alive, log
    rel = np.array([t - t0 for t, _ in col.commands])
    # Commands flowed before the stop, none from max_obs_age (+ one control period + delivery) after
    # the last frame until the camera returned, and they resumed.
    commanded(rel, 4.0, 5.0)
    gap = (rel > 5.0 + 0.5 + 0.15) & (rel < 7.5)
    assert gap.sum() == 0, rel[gap]
    commanded(rel, 8.5)
    assert any(lvl == 2 and 5.7 < t < 7.5 for t, lvl, _ in levels), levels
    assert any(lvl == 0 and t > 9.0 for t, lvl, _ in levels), [x for x in levels if x[0] > 7]
    assert "stale inputs" in log


def test_bad_messages_do_not_crash_the_node(tmp_path, tiny_bundle, domain):
    col, log, alive, t0, rc = run(tmp_path, tiny_bundle, domain, {}, ["--bad"], 5.0)
    assert alive and rc == 0, log
    d = col.last_diag()
    assert int(d["invalid_inputs"]) > 10
    # Logged once per cause, not per message.
    assert log.count("unsupported encoding") == 1
    assert log.count("non-finite position") == 1
    assert log.count("missing joint") == 1
    assert log.count("out-of-order stamp") == 1
    data = np.array([list(m.data) for _, m in col.commands])
    assert len(data) > 50
    cands = candidate_actions(tiny_bundle, 400)
    assert np.abs(data[:, None, :] - cands[None]).max(-1).min(-1).max() < 1e-5


def test_joint_trajectory_interface(tmp_path, tiny_bundle, domain):
    from trajectory_msgs.msg import JointTrajectory
    col, log, alive, t0, rc = run(tmp_path, tiny_bundle, domain,
                                  {"command_interface": "joint_trajectory", "action_joint_names": ["j1", "j2"]},
                                  [], 4.0, command_type=JointTrajectory)
    assert alive, log
    msgs = [m for _, m in col.commands]
    assert len(msgs) > 10
    m = msgs[-1]
    assert list(m.joint_names) == ["j1", "j2"]
    assert m.header.stamp.sec == 0 and m.header.stamp.nanosec == 0
    tfs = [p.time_from_start.sec + p.time_from_start.nanosec * 1e-9 for p in m.points]
    assert np.allclose(tfs, (np.arange(len(tfs)) + 1) / RATE, atol=1e-6)
    assert all(len(p.velocities) == 2 for p in m.points)


def test_batchnorm_bundle_makes_node_exit_nonzero(tmp_path, tiny_bundle, domain):
    bad = tmp_path / "bn_bundle"
    shutil.copytree(tiny_bundle, bad)
    m = json.loads((bad / "manifest.json").read_text())
    m["norm_inventory"].append({"name": "obs_encoder.key_model_map.camera.bn1", "type": "BatchNorm2d",
                                "running_stats": True})
    (bad / "manifest.json").write_text(json.dumps(m))
    env = ros_env(domain)
    node = start_node(write_params(tmp_path / "p.yaml", node_params(bad)), env, tmp_path / "node.log")
    node.p.wait(60)
    rc = node.stop()
    assert rc != 0
    assert "BatchNormError" in node.text() and "running statistics" in node.text()


def test_services_start_stop_and_reset(tmp_path, tiny_bundle, domain):
    """autostart false: silent until ~/start; ~/stop silences it; ~/reset clears history and queue."""
    phases = {}

    def drive(col, t0):
        time.sleep(2.5)
        phases["before_start"] = len(col.commands)
        assert col.call("/policy_node/start") == "started"
        time.sleep(2.0)
        phases["running"] = len(col.commands)
        assert col.call("/policy_node/reset") == "history and queue cleared"
        assert col.call("/policy_node/stop") == "stopped"
        time.sleep(0.3)
        phases["stopped_at"] = len(col.commands)
        time.sleep(1.5)
        phases["after_stop"] = len(col.commands)

    col, log, alive, t0, rc = run(tmp_path, tiny_bundle, domain, {"autostart": False}, [], 7.0, during=drive)
    assert alive, log
    assert phases["before_start"] == 0
    assert phases["running"] > 30
    assert phases["after_stop"] == phases["stopped_at"]


def test_sim_time_loop_resets_history_and_keeps_commanding(tmp_path, tiny_bundle, domain):
    """use_sim_time with a clock that jumps back (a looped bag): reset once, then commands go on."""
    col, log, alive, t0, rc = run(tmp_path, tiny_bundle, domain, {"use_sim_time": True},
                                  ["--rate", "100", "--clock", "--loop-at", "4"], 7.0)
    assert alive and rc == 0, log
    assert log.count("clock jumped back to") == 1, log  # the reset; a dropped-message advice also says "clock jumped back"
    rel = np.array([t - t0 for t, _ in col.commands])
    commanded(rel, 2.0, 4.0)  # 50 Hz on the sim clock before the loop
    commanded(rel, 4.8)  # and again after it
    data = np.array([list(m.data) for _, m in col.commands])
    cands = candidate_actions(tiny_bundle, 800)
    assert np.abs(data[:, None, :] - cands[None]).max(-1).min(-1).max() < 1e-5


def test_inpaint_transition_over_dds(tmp_path, tiny_bundle, domain):
    """chunk_transition inpaint with inference_lead auto, over DDS: commands at rate, continuity reported."""
    col, log, alive, t0, rc = run(tmp_path, tiny_bundle, domain,
                                  {"chunk_transition": "inpaint", "inference_lead": "auto", "seed": -1},
                                  ["--rate", "30"], 5.0)
    assert alive and rc == 0, log
    commanded(np.array([t - t0 for t, _ in col.commands]), 2.0)  # ~50 Hz after warm-up
    diag = col.last_diag()
    assert diag["chunk_transition"] == "inpaint" and int(diag["inference_lead"]) >= 1
    assert int(diag["chunk_switches"]) > 10 and diag["boundary_jump_ratio"] != "n/a"
    assert int(diag["inference_errors"]) == 0


def test_plan_over_dds_with_the_default_transition(tmp_path, tiny_bundle, domain):
    """The documented defaults (chunk_transition and chunk_noise auto) run soft_inpaint_early with aligned
    noise on a bundle exported with --inpaint; ~/plan carries each queued chunk (stamped with its observation,
    points dt apart, guided weights in frame_id) and ~/plan/committed the prefix the previous plan held; a late
    subscriber still gets the newest (transient local); a subscriber with a QoS the plan cannot offer is told
    in the node's log, and the node runs on."""
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from trajectory_msgs.msg import JointTrajectory
    plans, committed, late = [], [], []
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)

    def during(col, t0):
        col.node.create_subscription(JointTrajectory, "/policy_node/plan", plans.append, latched)
        col.node.create_subscription(JointTrajectory, "/policy_node/plan/committed", committed.append, latched)
        from rclpy.duration import Duration
        col.node.create_subscription(JointTrajectory, "/policy_node/plan", lambda m: None,
                                     QoSProfile(depth=1, deadline=Duration(seconds=0.001)))
        time.sleep(3.0)
        col.node.create_subscription(JointTrajectory, "/policy_node/plan", late.append, latched)

    # execution_latency: actions due within 50 ms of the expected arrival are committed (2-3 at 50 Hz), so every
    # switch has a committed prefix whatever the timing between ticks and inference
    params = {"chunk_transition": "auto", "chunk_noise": "auto", "seed": -1, "execution_latency": 0.05}
    col, log, alive, t0, rc = run(tmp_path, tiny_bundle, domain, params, ["--rate", "30"], 5.0, during=during)
    assert alive and rc == 0, log
    assert "chunk_transition auto: soft_inpaint_early; chunk_noise auto: aligned" in log
    assert col.last_diag()["chunk_transition"] == "soft_inpaint_early"
    assert len(plans) > 20 and late, (len(plans), len(late))
    dt = 1.0 / RATE
    n_steps = load_bundle(tiny_bundle).spec.n_action_steps
    for msg in plans:
        assert list(msg.joint_names) == ["joint1", "joint2"] and len(msg.points) == n_steps
        offsets = [p.time_from_start.sec + p.time_from_start.nanosec * 1e-9 for p in msg.points]
        assert np.allclose(offsets, np.arange(n_steps) * dt, atol=1e-6)
    assert any(m.header.frame_id.startswith("guided:") for m in plans)
    assert sum(len(m.points) > 0 for m in committed) > len(committed) / 2  # the committed prefix
    by_stamp = {(m.header.stamp.sec, m.header.stamp.nanosec): m for m in plans}
    for m in committed:  # the committed points are the plan's own, at their due times
        whole = by_stamp.get((m.header.stamp.sec, m.header.stamp.nanosec))
        assert whole is not None and len(m.points) < n_steps
        due = {(p.time_from_start.sec, p.time_from_start.nanosec): list(p.positions) for p in whole.points}
        for p in m.points:
            assert due[(p.time_from_start.sec, p.time_from_start.nanosec)] == list(p.positions)
    assert "asked for a QoS it cannot have" in log and "DEADLINE" in log, log


def test_reduced_precision_bundle_over_dds(tmp_path, variant_bundle, domain):
    """The node runs the int8 variant it is asked for (its recorded error allowed by max_action_error):
    commands at rate, equal to the int8 engine's, precision and recorded error in /diagnostics."""
    allow = {"precision": "int8", "max_action_error": 0.05}
    col, log, alive, t0, rc = run(tmp_path, variant_bundle, domain, allow, ["--rate", "30"], 5.0)
    assert alive and rc == 0, log
    assert "precision int8" in log
    commanded(np.array([t - t0 for t, _ in col.commands]), 2.0)
    data = np.array([list(m.data) for _, m in col.commands])
    cands = candidate_actions(variant_bundle, 400, **allow)
    dist = np.abs(data[:, None, :] - cands[None]).max(-1).min(-1)
    assert dist.max() < 1e-5, dist.max()
    fp32 = candidate_actions(variant_bundle, 400, precision="fp32")
    assert np.abs(data[:, None, :] - fp32[None]).max(-1).min(-1).max() > 1e-4  # not the fp32 actions
    diag = col.last_diag()
    assert diag["precision"] == "int8" and "normalized over 24 samples" in diag["recorded_action_error"]


def test_precision_the_device_cannot_run_makes_node_exit_with_reason(tmp_path, variant_bundle, domain):
    env = ros_env(domain)
    params = node_params(variant_bundle, backend="torchscript", precision="fp16", device="cpu")
    node = start_node(write_params(tmp_path / "p.yaml", params), env, tmp_path / "node.log")
    node.p.wait(60)
    rc = node.stop()
    assert rc != 0
    assert ("'fp16' does not run natively on cpu with torchscript graphs (it needs cuda); torchscript on this "
            "device runs ['fp32'") in node.text()
