"""Chunk transitions in closed loop: each mode x injected delivery delay, same episodes and seeds.

The demo policy drives the simulated arm on the sim clock (deterministic, faster than real time);
each chunk arrives ``delay`` control periods after its inference starts while the queue runs on,
and ``inference_lead: auto`` starts inference early enough for that. Prints success rate and
boundary_jump_ratio per cell; JSON next to this file.

    python bench/transitions.py --bundle out/demo/bundle [--episodes 40] [--delays 0,2,4]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from dp_runtime.engine import load_bundle
from dp_runtime.sim.arm import ArmConfig
from dp_runtime.sim.evaluate import boundary_jump_ratio, run_episodes
from dp_runtime.sim.record import SimTopics

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", default="out/demo/bundle")
    ap.add_argument("--episodes", type=int, default=40)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--delays", default="0,2,4", help="control periods of injected delivery delay")
    ap.add_argument("--modes", default="replace,blend,inpaint")
    ap.add_argument("--blend-actions", type=int, default=4)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "transitions.json")
    args = ap.parse_args()
    engine = load_bundle(args.bundle, backend="onnxruntime", device="cpu")
    dt = 1.0 / SimTopics().control_hz
    cells = []
    for delay in (int(d) for d in args.delays.split(",")):
        for mode in args.modes.split(","):
            t0 = time.perf_counter()
            results = run_episodes(engine, args.episodes, seed=args.seed, arm_cfg=ArmConfig(),
                                   chunk_transition=mode, blend_actions=args.blend_actions, inference_lead="auto",
                                   delay_s=delay * dt)
            ratio, switches = boundary_jump_ratio(results)
            success = sum(r.success for r in results) / len(results)
            cells.append({"mode": mode, "delay_periods": delay, "episodes": len(results), "success_rate": success,
                          "boundary_jump_ratio": ratio, "chunk_switches": switches,
                          "mean_episode_s": sum(r.seconds for r in results) / len(results),
                          "wall_s": time.perf_counter() - t0})
            print(f"delay {delay} periods  {mode:<8} success {100 * success:5.1f} %  boundary_jump_ratio "
                  f"{'n/a' if ratio is None else f'{ratio:.2f}':>5} over {switches} switches  "
                  f"({cells[-1]['wall_s']:.0f} s)", flush=True)
    print("\n| mode | " + " | ".join(f"delay {d} periods" for d in args.delays.split(",")) + " |")
    print("|---|" + "---:|" * len(args.delays.split(",")))
    for mode in args.modes.split(","):
        row = [c for c in cells if c["mode"] == mode]
        print(f"| {mode} | " + " | ".join(
            f"{100 * c['success_rate']:.1f} % / {c['boundary_jump_ratio']:.2f}" for c in row) + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"bundle": str(args.bundle), "episodes": args.episodes, "seed": args.seed,
                                    "blend_actions": args.blend_actions, "control_hz": SimTopics().control_hz,
                                    "cells": cells}, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
