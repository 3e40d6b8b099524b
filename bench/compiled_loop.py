"""The compiled format (issue 34): looped step programs vs the unrolled chunk, threads under a shared CPU, compile
and cached-start times, against ONNX Runtime, on one policy, all latencies interleaved in one process.

    python bench/compiled_loop.py [--checkpoint out/demo/checkpoint/policy.safetensors] [--unrolled-steps 4]
                                  [--repeats 30] [--out bench/results/compiled_loop.json]

Rows, idle and with one core taken by another process (a Python busy loop, as a camera driver or another
node takes one): ONNX Runtime (its default threads), the compiled programs looped with the default thread
count (one fewer than the cores) and with as many threads as cores, batch 1 and 8; and the looped programs
against the whole chunk unrolled into one program (the format before issue 34) at ``--unrolled-steps`` DDIM
steps (compiling the unrolled 16-step chunk takes ~8 minutes here; the per-step comparison is the same),
both from the same prepared inputs to numpy actions (the engine's validation and normalizing left out), as a
pair alone: back to back, and with the core's caches flushed before each call, in the bench's process and in a fresh
one that holds only the two, each loaded twice (the sums over both loads).
Compile times: each program's cold compile as the cache logs it.
Cached start: a fresh process from ``import`` to a loaded engine with every program in the compile cache.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dp_runtime.checkpoint import load_any
from dp_runtime.engine import load_bundle
from dp_runtime.engine.backends import BackendOptions, default_threads
from dp_runtime.engine.compiled import Program, compile_program, cpu_threads
from dp_runtime.engine.formats import export_program
from dp_runtime.export import ExportOptions, export_bundle
from dp_runtime.export.bundle import graphs_to_export, scheduler_spec
from dp_runtime.export.graphs import ChunkGraph
from dp_runtime.export.precision import convs_as_matmul
from dp_runtime.latency_bench import cpu_features, interleaved_median_ms


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


@contextlib.contextmanager
def loaded(load: str):
    """``one core busy``: another process keeps one core busy meanwhile (a Python busy loop)."""
    if load == "idle":
        yield
        return
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        yield
    finally:
        hog.terminate()
        hog.wait()


_FLUSH = np.ones(64 << 17)  # 64 MiB, many times a core's L2


def flush_caches() -> None:
    _FLUSH.sum()


class CompileTimes(logging.Handler):
    """Collects the compile cache's "NAME: compiled in S s" lines as {"NAME, N threads": S}."""

    def __init__(self, into: dict):
        super().__init__(logging.INFO)
        self.into, self.threads = into, 0

    def emit(self, record):
        if "compiling for" in record.msg:
            self.threads = record.args[2]
        elif "compiled in" in record.msg:
            what, seconds = record.args
            self.into[f"{what}{self.threads}"] = round(seconds, 1)


def cached_start_s(bundle: Path, cache: Path, threads: int) -> float:
    """A fresh process: import, verify the bundle, load the cached programs (what a node's start costs)."""
    code = ("import time; t = time.perf_counter(); from dp_runtime.engine import load_bundle; "
            "from dp_runtime.engine.backends import BackendOptions; "
            f"load_bundle({str(bundle)!r}, backend='aoti', device='cpu', warm_up=False, "
            f"options=BackendOptions(threads={threads}, compile_cache={str(cache)!r})); "
            "print(time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def pair_calls(looped, unrolled, inputs: Path, threads: int):
    """The looped engine's backend and the unrolled program, each from the same prepared inputs (``inputs``: the
    observations in the engine's order and the noise) to numpy actions."""
    saved = np.load(inputs)
    prepared = [saved[f"obs{i}"] for i in range(len(looped.keys))]
    noise = saved["noise"]

    def looped_call():
        torch.set_num_threads(threads)
        return looped.backend.denoise(prepared, noise, looped.schedule)

    def unrolled_call():
        torch.set_num_threads(threads)
        with torch.inference_mode():
            return unrolled(*(torch.from_numpy(o) for o in prepared), torch.from_numpy(noise)).numpy()
    return looped_call, unrolled_call


def pair_ratios(calls: list, rounds: int) -> dict:
    """Median ms of each, interleaved, back to back and with the core's caches flushed before each call. ``calls``:
    (looped, unrolled) pairs, each pair its own load of the programs: the figures are the sums over the pairs, so
    a load's placement in memory averages out."""
    out = {}
    for flush in (False, True):
        ms = interleaved_median_ms([c for pair in calls for c in pair], rounds,
                                   before=flush_caches if flush else None)
        looped_ms, unrolled_ms = sum(ms[0::2]) / len(calls), sum(ms[1::2]) / len(calls)
        out["caches flushed" if flush else "back to back"] = {"looped": round(looped_ms, 3),
                                                              "unrolled": round(unrolled_ms, 3),
                                                              "ratio": round(looped_ms / unrolled_ms, 3)}
    return out


def pair_in_fresh_process(bundle: str, cache: str, unrolled: str, inputs: str, steps: str, threads: str,
                          rounds: str) -> None:
    """``--pair``: the looped-vs-unrolled pair in a process that holds only those (every compile cached), each
    loaded twice."""
    logging.disable(logging.WARNING)
    calls = []
    for _ in range(2):
        looped = load_bundle(bundle, backend="aoti", device="cpu", num_inference_steps=int(steps),
                             options=BackendOptions(threads=int(threads), compile_cache=cache))
        program = Program(torch._inductor.aoti_load_package(unrolled))
        calls.append(pair_calls(looped, program, Path(inputs), int(threads)))
    print(json.dumps(pair_ratios(calls, int(rounds))))


def main() -> None:
    if sys.argv[1:2] == ["--pair"]:
        return pair_in_fresh_process(*sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default="out/demo/checkpoint/policy.safetensors")
    ap.add_argument("--unrolled-steps", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "compiled_loop.json"))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="compiled_loop."))
    cache = work / "cache"
    cores = os.cpu_count() or 1
    fewer = cpu_threads(None)
    print(f"{platform.processor() or platform.machine()}, {cores} cores ({', '.join(cpu_features())}); "
          f"compiled threads: default {fewer}, all cores {cores}", flush=True)

    per_program_s = {}  # each cold compile, as the cache logs it (the export's and the all-cores load's)
    compile_log = logging.getLogger("dp_runtime.engine.compiled")
    compile_log.setLevel(logging.INFO)
    compile_log.addHandler(CompileTimes(per_program_s))
    bundle, export_s = timed(lambda: export_bundle(args.checkpoint, work / "bundle", ExportOptions(
        formats=("onnx", "export"), inpaint=True, compile_cache=cache), progress=lambda m: print(f"  {m}", flush=True)))
    print(f"dp-export --formats onnx,export --inpaint: {export_s:.0f} s (compiles the looped programs with "
          f"{fewer} threads)", flush=True)
    start_s = [cached_start_s(bundle, cache, fewer) for _ in range(3)]
    print(f"cached start (fresh process, import to loaded engine): {min(start_s):.1f} s best of 3", flush=True)

    engines = {"onnxruntime": load_bundle(bundle, backend="onnxruntime", device="cpu")}
    compile_s = {}
    for threads in dict.fromkeys((fewer, cores)):
        engine, s = timed(lambda: load_bundle(bundle, backend="aoti", device="cpu",
                                              options=BackendOptions(threads=threads, compile_cache=cache)))
        engines[f"aoti looped, {threads} threads"] = engine
        compile_s[f"looped, {threads} threads (3 programs)"] = s
        print(f"aoti looped {threads} threads: loaded in {s:.0f} s", flush=True)

    # the unrolled chunk at --unrolled-steps, against the looped programs at the same step count
    n = args.unrolled_steps
    ck = load_any(args.checkpoint)
    policy = ck.policy.eval()
    ddim = scheduler_spec(ck.config.scheduler, n)
    traced = {g.role: g for g in graphs_to_export(policy, n, False, convs_as_matmul(policy.model))}
    chunk = ChunkGraph(traced["encoder"].module, traced["step"].module, ddim.timesteps, ddim.prev_timesteps).eval()
    rng = np.random.default_rng(0)
    obs = {s.key: rng.integers(0, 256, (1, 2, *s.shape), dtype=np.uint8) for s in ck.config.images}
    obs.update({s.key: rng.uniform(-1, 1, (1, 2, s.size)).astype(np.float32) for s in ck.config.low_dims})
    keys = traced["encoder"].inputs
    noise = rng.standard_normal((1, ck.config.horizon, ck.config.action_dim)).astype(np.float32)
    example = tuple(torch.from_numpy(obs[k]).repeat(2, *([1] * (obs[k].ndim - 1))) for k in keys) + (
        torch.from_numpy(noise).repeat(2, 1, 1),)
    export_program(chunk, example, [], [], work / "unrolled.pt2", 17)
    torch.set_num_threads(fewer)
    _, s = timed(lambda: compile_program(work / "unrolled.pt2", torch.device("cpu"), work / "unrolled.package.pt2",
                                         fewer))
    compile_s[f"unrolled, {n} steps, {fewer} threads (1 program)"] = s
    unrolled = Program(torch._inductor.aoti_load_package(str(work / "unrolled.package.pt2")))
    looped_n = load_bundle(bundle, backend="aoti", device="cpu", num_inference_steps=n,
                           options=BackendOptions(threads=fewer, compile_cache=cache))
    one = {k: v[0] for k, v in obs.items()}
    ref = unrolled(*(torch.from_numpy(obs[k]) for k in keys), torch.from_numpy(noise)).numpy()[0]
    assert keys == looped_n.keys, (keys, looped_n.keys)
    diff = float(np.abs(looped_n.predict(one, noise=noise[0]).actions - ref).max())
    print(f"unrolled {n}-step chunk compiled in {s:.0f} s; looped vs unrolled max diff {diff:.2e}", flush=True)

    def call(engine, batch, threads):
        many = [one] * batch
        seeds = list(range(batch))

        def go():
            torch.set_num_threads(threads)  # extern GEMMs follow torch's pool; the compiled regions are fixed
            return engine.predict(one, seed=0) if batch == 1 else engine.predict_batch(many, seeds)
        return go

    # looped against unrolled through the same path: the prepared inputs in, the actions out as numpy (the
    # engine's validation, noise and normalizing around both are the same and are left out)
    inputs = work / "pair_inputs.npz"
    np.savez(inputs, noise=noise, **{f"obs{i}": np.ascontiguousarray(obs[k]) for i, k in enumerate(looped_n.keys)})
    pair_args = [str(bundle), str(cache), str(work / "unrolled.package.pt2"), str(inputs), str(n), str(fewer),
                 str(10 * args.repeats)]
    looped_call, unrolled_call = pair_calls(looped_n, unrolled, inputs, fewer)

    rows = []
    for label, engine in engines.items():
        threads = default_threads() if label == "onnxruntime" else int(label.split(", ")[1].split()[0])
        for batch in (1, 8):
            rows.append((f"{label}, batch {batch}", call(engine, batch, threads)))
    table, pair = {}, {}
    for load in ("idle", "one core busy"):
        with loaded(load):
            ms = interleaved_median_ms([fn for _, fn in rows], args.repeats)
            table[load] = {label: round(v, 2) for (label, _), v in zip(rows, ms)}
            print(f"\n{load} (median ms, interleaved, {args.repeats} rounds):")
            for label, v in table[load].items():
                print(f"  {label:45s} {v:8.2f}")
            # the pair alone, back to back (warm caches) and with the core's caches flushed before each call (a
            # robot's other work between two chunks), in this process (beside the engines above: whichever ran
            # after a batch-8 row paid for that row's cache misses) and in a fresh one holding only the two
            pair[f"{load}, this process"] = pair_ratios([(looped_call, unrolled_call)], 10 * args.repeats)
            fresh = subprocess.run([sys.executable, __file__, "--pair", *pair_args], capture_output=True, text=True,
                                   check=True)
            pair[f"{load}, fresh process"] = json.loads(fresh.stdout.strip().splitlines()[-1])
            for where in ("this process", "fresh process"):
                for label, r in pair[f"{load}, {where}"].items():
                    print(f"  looped / unrolled, {n} steps, {where}, {label}: {r['looped']:.2f} / "
                          f"{r['unrolled']:.2f} ms = {r['ratio']:.3f}")
    result = {"checkpoint": args.checkpoint, "cpu": platform.processor() or platform.machine(), "cores": cores,
              "cpu_features": cpu_features(), "torch": torch.__version__, "compiled_threads_default": fewer,
              "export_s": round(export_s, 1), "cached_start_s": [round(x, 2) for x in start_s],
              "compile_s": {k: round(v, 1) for k, v in compile_s.items()},
              "per_program_compile_s": per_program_s, "looped_vs_unrolled_max_diff": diff,
              "latency_ms": table, f"looped_vs_unrolled_{n}_steps_ms": pair}
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
