"""The replay report: metrics.json, actions.csv, one PNG per action dimension, and an MCAP bag."""
from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .. import layout, rotations
from ..layout import Layout
from ..ros import plan
from ..ros.convert import sec_to_stamp_fields
from ..ros.plan import plan_points
from .bag import Bag, open_bag
from .pipeline import ReplayResult, ReplaySetup

PREDICTED_TOPIC = "/dp_runtime/predicted_actions"


def aligned(result: ReplayResult) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(times, predicted, recorded) at every tick with a command; recorded is the latest command
    recorded at or before the tick (NaN before the first one)."""
    ticks = [(t, c) for t, c in result.commands if c is not None]
    if not ticks:
        return np.zeros(0), np.zeros((0, 0)), np.zeros((0, 0))
    times = np.array([t for t, _ in ticks])
    pred = np.stack([c for _, c in ticks])
    rec = np.full_like(pred, np.nan)
    if result.recorded:
        rt = np.array([t for t, _ in result.recorded])
        rv = np.stack([v for _, v in result.recorded])
        idx = np.searchsorted(rt, times, side="right") - 1
        ok = idx >= 0
        rec[ok] = rv[idx[ok]]
    return times, pred, rec


def _stats(values: list[float] | np.ndarray, scale: float = 1.0) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64) * scale
    if v.size == 0:
        return {}
    return {"mean": float(v.mean()), "p50": float(np.percentile(v, 50)), "p95": float(np.percentile(v, 95)),
            "max": float(v.max()), "count": int(v.size)}


def segment_errors(pred: np.ndarray, rec: np.ndarray, segments: Layout) -> dict[str, dict]:
    """Per segment of an end-effector action, in its own units: a position's distance (m; a delta's times its
    scale), a rotation's angle (rad, whatever its representation), other segments' mean absolute error.
    (N, A) predicted and recorded commands; empty for a joint-space action."""
    if layout.is_joint_space(segments) or not len(pred):
        return {}
    out = {}
    for i, (s, sl) in enumerate(layout.slices(segments)):
        name = f"{i}:{s.kind}" + (f" {s.representation}" if s.representation else "")
        ok = np.isfinite(rec[:, sl]).all(axis=1)  # a segment recorded on another topic is not compared
        if not ok.any():
            continue
        p, r = pred[ok, sl], rec[ok, sl]
        if s.kind == "position":
            out[name] = {"unit": "m", **_stats(np.linalg.norm((p - r) * s.scale, axis=1))}
        elif s.kind == "rotation":
            to_matrix = rotations.REPRESENTATIONS[s.representation].to_matrix
            out[name] = {"unit": "rad", **_stats(rotations.angle_between(to_matrix(p * s.scale),
                                                                         to_matrix(r * s.scale)))}
        else:
            out[name] = {"unit": "action", **_stats(np.abs(p - r).mean(axis=1))}
    return out


def metrics(result: ReplayResult, setup: ReplaySetup) -> dict:
    times, pred, rec = aligned(result)
    per_dim, per_segment = {}, {}
    if rec.size and np.isfinite(rec).any():
        for i, name in enumerate(setup.action_names):  # each value where it was recorded
            err = (pred[:, i] - rec[:, i])[np.isfinite(rec[:, i])]
            if err.size:
                per_dim[name] = {"mse": float(np.mean(err ** 2)), "mae": float(np.mean(np.abs(err)))}
        per_segment = segment_errors(pred, rec, setup.engine.spec.action.segments)
    inference = sum(c.latency_s for c in result.chunks)
    chunks = len(result.chunks) or int(result.node_diagnostics.get("chunks", 0))
    local = result.mode == "offline"  # realtime: inference ran in the node process, not here
    return {
        "bag": result.bag, "mode": result.mode, "recorded_distro": result.distro,
        "bundle": asdict(setup.engine.bundle.source) if setup.engine.bundle else {}, "provider": setup.engine.provider,
        "precision": setup.engine.precision, "recorded_action_error": setup.engine.recorded_error,
        "control_rate_hz": setup.params.control_rate_hz,
        "recorded_topic": setup.recorded_topic,
        "commands": int(len(times)), "ticks": len(result.commands),
        "compared": int(np.isfinite(rec).all(axis=1).sum()) if rec.size else 0,
        "action_error": per_dim,
        "segment_error": per_segment,
        "action_mse_mean": float(np.mean([d["mse"] for d in per_dim.values()])) if per_dim else None,
        "action_mae_mean": float(np.mean([d["mae"] for d in per_dim.values()])) if per_dim else None,
        "chunks": chunks,
        "node_diagnostics": result.node_diagnostics,
        "inference_latency_ms": _stats([c.latency_s for c in result.chunks], 1e3),
        "queue": result.queue, "stale_refusals": result.stale_refusals,
        "inference_errors": result.inference_errors, "last_error": result.last_error,
        "continuity": result.continuity,
        "messages": {"read": result.messages_read, "used": result.messages_used,
                     "invalid": result.invalid, "invalid_total": int(sum(result.invalid.values()))},
        "bag_problems": asdict(result.problems),
        "header_stamp_vs_bag_time_ms": {t: _stats(v, 1e3) for t, v in result.stamp_lag.items()},
        "throughput": {
            "wall_s": result.wall_s,
            "messages_per_s": result.messages_read / result.wall_s if result.wall_s else None,
            "chunks_per_s": chunks / result.wall_s if result.wall_s else None,
            "share_outside_inference": (1 - inference / result.wall_s) if result.wall_s and local else None,
        },
    }


def write_csv(path: Path, result: ReplayResult, names: list[str]) -> None:
    times, pred, rec = aligned(result)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["time", *[f"predicted.{n}" for n in names], *[f"recorded.{n}" for n in names]])
        for t, p, r in zip(times, pred, rec):
            w.writerow([f"{t:.6f}", *[f"{x:.6g}" for x in p], *["" if np.isnan(x) else f"{x:.6g}" for x in r]])


def write_plots(out: Path, result: ReplayResult, names: list[str]) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    times, pred, rec = aligned(result)
    paths = []
    if not len(times):
        return paths
    t = times - times[0]
    dt = float(np.median(np.diff(times))) if len(times) > 1 else 0.0
    for i, name in enumerate(names):
        fig, ax = plt.subplots(figsize=(8, 3))
        labels = {"plan": "each chunk's plan", "committed": "committed (held from the previous plan)"}
        for chunk in (c for c in result.chunks if c.queued_at is not None):
            offsets, actions, held = plan_points(chunk, dt)
            ax.plot(chunk.t_obs + offsets - times[0], actions[:, i], color="0.6", lw=0.8,
                    label=labels.pop("plan", None))
            frozen = held >= 1
            if frozen.any():
                ax.plot(chunk.t_obs + offsets[frozen] - times[0], actions[frozen, i], "x", color="0.3", ms=3,
                        label=labels.pop("committed", None))
        ax.plot(t, pred[:, i], label="executed (predicted commands)", lw=1.2)
        if np.isfinite(rec[:, i]).any():
            ax.step(t, rec[:, i], where="post", label="recorded", lw=1.0, alpha=0.8)
        ax.set_xlabel("time since first command [s]")
        ax.set_ylabel(name)
        ax.set_title(f"{name}: plans, executed and recorded commands")
        ax.legend(loc="best")
        fig.tight_layout()
        p = out / f"action_{i}_{name}.png"
        fig.savefig(p, dpi=80)
        plt.close(fig)
        paths.append(p)
    return paths


def write_bag(path: Path, result: ReplayResult, setup: ReplaySetup, distro: str, bag: Bag | None = None) -> None:
    """Input topics copied from the source bag plus the predicted commands (JointState) and each chunk's plan
    (the node's ~/plan and ~/plan/committed), MCAP, metadata v8: Foxglove opens it as it is."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore
    kilted = get_typestore(Stores.ROS2_KILTED)
    JointState = kilted.types["sensor_msgs/msg/JointState"]
    Header = kilted.types["std_msgs/msg/Header"]
    Time = kilted.types["builtin_interfaces/msg/Time"]
    inputs = {t.topic for t in setup.topics} | ({setup.recorded_topic} if setup.recorded_topic else set())
    with open_bag(bag or result.bag, distro) as src, Writer(path, version=8, storage_plugin=StoragePlugin.MCAP) as dst:
        conns = {}
        for topic, msgtype in src.topics.items():
            if topic in inputs and msgtype in src.typestore.fielddefs:
                conns[topic] = dst.add_connection(topic, msgtype, typestore=src.typestore)
        for m in src.messages(set(conns)):
            dst.write(conns[m.topic], int(round(m.time * 1e9)), m.raw)
        trajectory = "trajectory_msgs/msg/JointTrajectory"
        plans = [dst.add_connection(f"{plan.REPLAY_NODE}/{name.removeprefix('~/')}", trajectory, typestore=kilted)
                 for name in (plan.PLAN_TOPIC, plan.COMMITTED_TOPIC)]
        dt = 1.0 / setup.params.control_rate_hz
        for rec in result.chunks:  # each chunk's plan when it reached the queue, as the node publishes it
            if rec.queued_at is None:
                continue
            for conn, msg in zip(plans, plan.plan_messages(rec, setup.action_names, dt, kilted.types)):
                dst.write(conn, int(round(rec.queued_at * 1e9)), kilted.serialize_cdr(msg, trajectory))
        pred = dst.add_connection(PREDICTED_TOPIC, "sensor_msgs/msg/JointState", typestore=kilted)
        for t, cmd in result.commands:
            if cmd is None:
                continue
            sec, nsec = sec_to_stamp_fields(t)
            msg = JointState(header=Header(stamp=Time(sec=sec, nanosec=nsec), frame_id=""),
                             name=list(setup.action_names), position=np.asarray(cmd, np.float64),
                             velocity=np.zeros(0), effort=np.zeros(0))
            dst.write(pred, int(round(t * 1e9)), kilted.serialize_cdr(msg, "sensor_msgs/msg/JointState"))


def write_report(out: Path, result: ReplayResult, setup: ReplaySetup, distro: str = "kilted",
                 bag: Bag | None = None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    m = metrics(result, setup)
    write_csv(out / "actions.csv", result, setup.action_names)
    m["plots"] = [p.name for p in write_plots(out, result, setup.action_names)]
    bag_out = out / "replay_bag"
    if bag_out.exists():
        import shutil
        shutil.rmtree(bag_out)
    write_bag(bag_out, result, setup, distro, bag)
    m["bag_out"] = str(bag_out)
    (out / "metrics.json").write_text(json.dumps(m, indent=2))
    return m


def summary(m: dict, out: Path) -> str:
    lines = [f"replayed {m['bag']} ({m['mode']}, recorded with {m['recorded_distro']}): "
             f"{m['messages']['read']} messages, {m['chunks']} chunks, {m['commands']} commands "
             f"at {m['control_rate_hz']:g} Hz"]
    if m.get("segment_error"):
        lines.append(f"vs {m['recorded_topic']}: " + ", ".join(
            f"{name} {e['p50']:.4g} {e['unit']} median, {e['max']:.4g} max" for name, e in m["segment_error"].items()))
    elif m["action_error"]:
        lines.append(f"vs {m['recorded_topic']}: MSE {m['action_mse_mean']:.5f}, MAE {m['action_mae_mean']:.5f} "
                     "(mean over dims; per dim in metrics.json)")
    lat = m["inference_latency_ms"]
    if lat:
        lines.append(f"inference {lat['p50']:.1f} ms median, {lat['max']:.1f} ms max on {m['provider']} "
                     f"({m.get('precision', 'fp32')})")
    tp = m["throughput"]
    if tp["messages_per_s"] and tp["share_outside_inference"] is not None:
        lines.append(f"throughput {tp['messages_per_s']:.0f} msg/s, {tp['chunks_per_s']:.1f} chunks/s, "
                     f"{tp['share_outside_inference'] * 100:.0f}% of the time outside inference")
    elif tp["messages_per_s"]:
        lines.append(f"published {tp['messages_per_s']:.0f} msg/s in real time; the node computed "
                     f"{m['chunks']} chunks")
    if m["messages"]["invalid_total"] or m["bag_problems"].get("corrupt") or m["bag_problems"].get("truncated"):
        lines.append(f"skipped {m['messages']['invalid_total']} invalid messages, "
                     f"{len(m['bag_problems'].get('corrupt', []))} corrupt; "
                     f"{m['bag_problems'].get('truncated') or 'bag complete'}")
    lines.append(f"report: {out} (metrics.json, actions.csv, {len(m['plots'])} plots, replay_bag/)")
    return "\n".join(lines)


def verdict(m: dict, top: int = 3) -> tuple[bool, list[str]]:
    """(ok, lines for the console): a replay without a single chunk failed, with its main causes;
    one that rejected most observation messages says so loudly."""
    inv = m["messages"]["invalid"]
    causes = [f"  {n} x {msg}" for msg, n in sorted(inv.items(), key=lambda kv: -kv[1])[:top]]
    if m.get("stale_refusals"):
        causes.append(f"  {m['stale_refusals']} x inference refused: {m.get('last_error') or 'stale inputs'}")
    if m.get("inference_errors"):
        causes.append(f"  {m['inference_errors']} x inference failed: {m.get('last_error')}")
    read, rejected = m["messages"]["read"], m["messages"]["invalid_total"]
    if not m["chunks"]:
        return False, ["FAILED: the replay produced no action chunk. Main causes:",
                       *(causes or ["  no usable observation on the configured topics"])]
    if read and rejected > read / 2:
        return True, [f"WARNING: {rejected} of {read} messages ({100 * rejected / read:.0f} %) were rejected; "
                      "the actions come from the rest. Main causes:", *causes]
    return True, []
