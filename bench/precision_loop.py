"""Closed-loop success per precision variant and step count: same episodes, same seeds.

Exports the demo checkpoint with reduced-precision variants (measured on the
demo's own observations with --calibration), then drives the simulated arm
with each on the task's sim clock (deterministic, faster than real time): fp32 at the
exported 16 steps, every reduced variant within tolerance, and fp32 at fewer
steps. Prints a table for the README; JSON next to this file.

    python bench/precision_loop.py [--task reach|around|track] [--demo out/demo-T] [--episodes 40]
                                   [--precision int8,fp16] [--steps 8]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from dp_runtime.engine import load_bundle, read_manifest
from dp_runtime.engine.step_counts import compare_step_counts
from dp_runtime.export import ExportOptions, export_bundle
from dp_runtime.latency_bench import variant_engine
from dp_runtime.sim.evaluate import run_episodes
from dp_runtime.sim.tasks import TASKS, sim_task

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="reach", choices=tuple(TASKS))
    ap.add_argument("--demo", type=Path, default=None, help="a dp-demo output (checkpoint, dataset); default: the "
                                                           "task's")
    ap.add_argument("--episodes", type=int, default=40)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--precision", default="int8,fp16")
    ap.add_argument("--steps", default="8", help="fewer DDIM steps to run fp32 at")
    ap.add_argument("--out", type=Path, default=None, help="default: results/precision_loop_TASK.json")
    args = ap.parse_args()
    task = sim_task(args.task)
    args.demo = args.demo or Path(task.demo_dir)
    args.out = args.out or HERE / "results" / f"precision_loop_{task.name}.json"
    bundle = args.demo / "bundle-variants"
    export_bundle(args.demo / "checkpoint" / "policy.safetensors", bundle,
                  ExportOptions(formats=("onnx",), precisions=args.precision, force=True,
                                calibration=args.demo / "dataset.npz"), progress=lambda m: None)
    spec = read_manifest(bundle)
    exported = spec.ddim.num_inference_steps
    runs = [("fp32", exported)]
    runs += [(g.precision, exported) for g in spec.graphs if g.format == "onnx" and g.precision != "fp32"]
    runs += [("fp32", int(s)) for s in args.steps.split(",")]
    fp32 = load_bundle(bundle, backend="onnxruntime", device="cpu", precision="fp32")
    step_error = {r.steps: r.max_abs_error for r in compare_step_counts(fp32, [s for p, s in runs if s != exported])}
    rows = []
    for precision, steps in runs:
        g = spec.graph_set("onnx", precision)
        engine, note = variant_engine(bundle, g, "cpu", steps)
        # error vs the fp32 torch policy at the exported step count: recorded at export for variants,
        # vs the fp32 bundle at the exported steps (same noise) for fewer steps
        max_error = g.max_abs_error if steps == exported else step_error[steps]
        t0 = time.perf_counter()
        results = run_episodes(engine, args.episodes, seed=args.seed, task=task)
        error = float(np.nanmean([r.outcome[task.error] for r in results]))
        success = sum(r.success for r in results) / len(results)
        chunk_ms = sorted(engine.warm_up() for _ in range(7))[3] * 1e3
        rows.append({"precision": precision, "steps": steps, "episodes": len(results), "success_rate": success,
                     "max_error": max_error, "recorded_p99_error": g.p99_abs_error if steps == exported else None,
                     "within_tolerance": max_error <= max(g.tolerance, 0.01), "chunk_ms": chunk_ms, "note": note,
                     task.error: error,
                     "wall_s": time.perf_counter() - t0})
        print(f"{precision:<5} {steps:>3} steps: success {100 * success:5.1f} %  {task.error} {error:.3f}  "
              f"chunk {chunk_ms:5.1f} ms{note}  "
              f"max action error {max_error:.2e} ({'within' if rows[-1]['within_tolerance'] else 'ABOVE'} "
              "tolerance)", flush=True)
    print(f"\n{task.name}:")
    print(f"| variant | DDIM steps | success ({args.episodes} episodes) | {task.error} | chunk on this CPU | "
          "max action error (normalized) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['precision']}{r['note']} | {r['steps']} | {100 * r['success_rate']:.1f} % | {r[task.error]:.3f} | "
              f"{r['chunk_ms']:.1f} ms | {r['max_error']:.1e} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"task": task.name, "demo": str(args.demo), "seed": args.seed,
                                    "error_measure": task.error, "rows": rows}, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
