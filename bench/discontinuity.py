"""Discontinuity detection: no false trigger in normal episodes, every teleport caught, per task.

A task's demo policy drives the sim arm on the sim clock with ONE runner for all episodes, as a node
that nobody resets sees them (``run_episodes(continuous=True)``): at each episode end the arm is
teleported to a new start and commands are ignored for 0.3 s, as dp-sim does. For each threshold it
counts the discontinuities the runner reports inside episodes (false triggers: after the first control
period of an episode and outside the 0.3 s settle; those inside the settle are the sim ignoring the new
chunk, counted apart), the teleports caught within one control period, and the success rate; it also
prints the largest departure and speed a normal stretch showed (with detection on), which is the margin
the threshold has.

    python bench/discontinuity.py [--tasks reach,around,track] [--episodes 40] [--thresholds 0.35/5,default,off]
                                  [--mode soft_inpaint] [--chunk-noise fresh]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from dp_runtime.control import discontinuity as checks
from dp_runtime.control.runner import DEFAULT_DISCONTINUITY_SPEED, DEFAULT_DISCONTINUITY_THRESHOLD
from dp_runtime.engine import load_bundle
from dp_runtime.sim.evaluate import SETTLE_S, boundary_jump_ratio, run_episodes
from dp_runtime.sim.record import SimTopics
from dp_runtime.sim.tasks import sim_task

HERE = Path(__file__).resolve().parent
OFF = 1e9


class Peaks:
    """The departure and jump values the runner's check computed, with their stamps (instrumentation)."""

    def __init__(self) -> None:
        self.values: list[tuple[float, float, float]] = []
        departure, jump = checks.DepartureCheck.departure, checks.DepartureCheck.jump
        peaks = self

        def spy_jump(check, stamp, measured):
            j = jump(check, stamp, measured)
            d = departure(check, stamp, measured)
            peaks.values.append((stamp, np.nan if d is None or not check.armed else d[0],
                                 np.nan if j is None else j[0]))
            return j
        checks.DepartureCheck.jump = spy_jump

    def normal_max(self, starts: np.ndarray, dt: float) -> tuple[float, float]:
        """Largest departure and jump away from the teleports (first control period and settle excluded)."""
        v = np.array(self.values) if self.values else np.zeros((0, 3))
        keep = np.ones(len(v), bool)
        for s in starts[1:]:
            keep &= ~((v[:, 0] >= s - 1e-9) & (v[:, 0] < s + max(dt, SETTLE_S) + 1e-9))
        return float(np.nanmax(v[keep, 1], initial=0.0)), float(np.nanmax(v[keep, 2], initial=0.0))

    def at_teleports(self, starts: np.ndarray, dt: float) -> float:
        """The smallest, over the teleports, of the fastest speed seen in the period after each."""
        v = np.array(self.values) if self.values else np.zeros((0, 3))
        per = [np.nanmax(v[(v[:, 0] >= s - 1e-9) & (v[:, 0] < s + dt + 1e-9), 2], initial=0.0) for s in starts[1:]]
        return float(min(per)) if per else float("nan")


def pair(text: str) -> tuple[float, float]:
    """'0.35/5' -> (0.35, 5.0); 'default': RunnerConfig's; 'off': neither rule can trigger."""
    if text == "default":
        return DEFAULT_DISCONTINUITY_THRESHOLD, DEFAULT_DISCONTINUITY_SPEED
    if text == "off":
        return OFF, OFF
    threshold, speed = text.split("/")
    return float(threshold), float(speed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default="reach,around,track")
    ap.add_argument("--episodes", type=int, default=40)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--thresholds", default="default,off",
                    help="THRESHOLD/SPEED pairs (discontinuity_threshold/discontinuity_speed), 'default', 'off'")
    ap.add_argument("--mode", default="soft_inpaint_early", help="chunk_transition")
    ap.add_argument("--chunk-noise", default="aligned")
    ap.add_argument("--inpaint-decay", type=float, default=0.6)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "discontinuity.json")
    args = ap.parse_args()
    dt = 1.0 / SimTopics().control_hz
    rows = []
    peaks = Peaks()
    for name in args.tasks.split(","):
        task = sim_task(name)
        engine = load_bundle(f"{task.demo_dir}/bundle", backend="onnxruntime", device="cpu")
        for threshold, speed in (pair(x) for x in args.thresholds.split(",")):
            peaks.values.clear()
            t0 = time.perf_counter()
            res = run_episodes(engine, args.episodes, seed=args.seed, task=task, continuous=True,
                               chunk_transition=args.mode, chunk_noise=args.chunk_noise,
                               inpaint_decay=args.inpaint_decay, inference_lead="auto",
                               discontinuity_threshold=threshold, discontinuity_speed=speed)
            starts = np.cumsum([0.0] + [r.seconds for r in res])[:-1]
            caught = [any(b <= dt + 1e-9 for b in r.breaks) for r in res[1:]]
            latency = [min(b for b in r.breaks) for r in res[1:] if r.breaks]
            false = sum(1 for i, r in enumerate(res) for b in r.breaks
                        if not (i > 0 and (b <= dt + 1e-9 or b < SETTLE_S)))
            settle = sum(1 for i, r in enumerate(res) if i > 0 for b in r.breaks if dt + 1e-9 < b < SETTLE_S)
            dep, jump = peaks.normal_max(starts, dt)
            teleport_speed = peaks.at_teleports(starts, dt)
            ratio, switches = boundary_jump_ratio(res)
            row = {"task": name, "threshold": threshold, "speed": speed, "episodes": len(res),
                   "success_rate": float(np.mean([r.success for r in res])),
                   "teleports": len(res) - 1, "caught_within_one_period": int(sum(caught)),
                   "detection_latency_s_max": max(latency) if latency else None,
                   "false_triggers": false, "second_triggers_in_settle": settle,
                   "normal_max_departure": dep, "normal_max_speed": jump, "teleport_min_speed": teleport_speed,
                   "boundary_jump_ratio": ratio, "chunk_switches": switches,
                   task.error: float(np.nanmean([r.outcome[task.error] for r in res])),
                   "wall_s": round(time.perf_counter() - t0, 1)}
            rows.append(row)
            print(f"{name:<7} {threshold:g}/{speed:g}  success {100 * row['success_rate']:5.1f} %  caught "
                  f"{row['caught_within_one_period']}/{row['teleports']} (latency max "
                  f"{row['detection_latency_s_max']})  false {false}  in settle {settle}  normal max departure "
                  f"{dep:.3f} speed {jump:.2f} (teleports from {teleport_speed:.2f})  jump ratio "
                  f"{ratio if ratio is None else round(ratio, 2)}  "
                  f"({row['wall_s']} s)", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"episodes": args.episodes, "seed": args.seed, "mode": args.mode,
                                    "chunk_noise": args.chunk_noise, "inpaint_decay": args.inpaint_decay,
                                    "control_hz": SimTopics().control_hz, "settle_s": SETTLE_S, "rows": rows},
                                   indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
