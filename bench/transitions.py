"""Chunk transitions in closed loop: each mode x injected delivery delay, same episodes and seeds, per task.

A task's demo policy (dp-demo --task T) drives the simulated arm on the sim clock (deterministic,
faster than real time); each chunk arrives ``delay`` control periods after its inference starts
while the queue runs on, and ``inference_lead: auto`` starts inference early enough for that.
Prints success rate, boundary_jump_ratio and the task's own error measure per cell (reach: final
distance to the target, around: collision rate, track: mean tracking error); JSON next to this file.

    python bench/transitions.py [--task reach|around|track] [--bundle out/demo-T/bundle] [--episodes 40]
                                [--delays 0,2,4,6] [--modes replace,blend,inpaint,soft_inpaint,...] [--seeds 7,8,9]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from dp_runtime.engine import load_bundle
from dp_runtime.sim.evaluate import boundary_jump_ratio, run_episodes
from dp_runtime.sim.record import SimTopics
from dp_runtime.sim.tasks import TASKS, sim_task

HERE = Path(__file__).resolve().parent


def task_error(task, results) -> float:
    """The task's own error measure over the episodes (mean of its outcome key)."""
    return float(np.nanmean([r.outcome[task.error] for r in results]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="reach", choices=tuple(TASKS))
    ap.add_argument("--bundle", default=None, help="default: the task's dp-demo bundle")
    ap.add_argument("--episodes", type=int, default=40)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--seeds", default=None, help="comma list of seeds, each --episodes episodes, pooled (a success "
                                                   "rate from one seed of 40 moves by 10 points between seeds)")
    ap.add_argument("--delays", default="0,2,4,6", help="control periods of injected delivery delay")
    ap.add_argument("--modes", default="replace,blend,inpaint,soft_inpaint,soft_inpaint_early")
    ap.add_argument("--blend-actions", type=int, default=4)
    ap.add_argument("--inpaint-decay", type=lambda v: v if v == "auto" else float(v), default=0.8,
                    help="a number, or auto (each transition's measured value)")
    ap.add_argument("--chunk-noise", default="fresh", help="fresh or aligned (RunnerConfig.chunk_noise)")
    ap.add_argument("--out", type=Path, default=None, help="default: results/transitions_TASK.json")
    args = ap.parse_args()
    task = sim_task(args.task)
    bundle = args.bundle or f"{task.demo_dir}/bundle"
    suffix = "" if args.chunk_noise == "fresh" else f"_{args.chunk_noise}_noise"
    out = args.out or HERE / "results" / f"transitions_{task.name}{suffix}.json"
    seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else [args.seed]
    engine = load_bundle(bundle, backend="onnxruntime", device="cpu")
    dt = 1.0 / SimTopics().control_hz
    delays = [int(d) for d in args.delays.split(",")]
    modes = args.modes.split(",")
    cells = []
    for delay in delays:
        for mode in modes:
            t0 = time.perf_counter()
            per_seed = [run_episodes(engine, args.episodes, seed=seed, task=task, chunk_transition=mode,
                                     blend_actions=args.blend_actions, inpaint_decay=args.inpaint_decay,
                                     chunk_noise=args.chunk_noise, inference_lead="auto", delay_s=delay * dt)
                        for seed in seeds]
            results = [r for rs in per_seed for r in rs]
            ratio, switches = boundary_jump_ratio(results)
            success = sum(r.success for r in results) / len(results)
            cells.append({"mode": mode, "delay_periods": delay, "episodes": len(results), "success_rate": success,
                          "seeds": seeds, "success_per_seed": [sum(r.success for r in rs) / len(rs) for rs in per_seed],
                          "boundary_jump_ratio": ratio, "chunk_switches": switches, task.error: task_error(task, results),
                          "mean_episode_s": sum(r.seconds for r in results) / len(results),
                          "wall_s": time.perf_counter() - t0})
            print(f"{task.name} delay {delay} periods  {mode:<12} success {100 * success:5.1f} %  boundary_jump_ratio "
                  f"{'n/a' if ratio is None else f'{ratio:.2f}':>5} over {switches} switches  {task.error} "
                  f"{cells[-1][task.error]:.3f}  ({cells[-1]['wall_s']:.0f} s)", flush=True)
    print(f"\n{task.name}: success / boundary_jump_ratio / {task.error}")
    print("| mode | " + " | ".join(f"delay {d}" for d in delays) + " |")
    print("|---|" + "---:|" * len(delays))
    for mode in modes:
        row = [c for c in cells if c["mode"] == mode]
        print(f"| {mode} | " + " | ".join(
            f"{100 * c['success_rate']:.1f} % / {c['boundary_jump_ratio']:.2f} / {c[task.error]:.3f}" for c in row) + " |")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"task": task.name, "bundle": str(bundle), "episodes": args.episodes, "seeds": seeds,
                               "blend_actions": args.blend_actions, "inpaint_decay": args.inpaint_decay,
                               "chunk_noise": args.chunk_noise,
                               "control_hz": SimTopics().control_hz, "error_measure": task.error, "cells": cells},
                              indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
