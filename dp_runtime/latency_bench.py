"""Per-chunk latency on the reference DP-CNN size: eager PyTorch vs the bundle (ORT, TorchScript).

Reference size: ConditionalUnet1D down_dims 256/512/1024 (kernel 5, FiLM scale),
two 84x84 RGB cameras through the ResNet-18 GroupNorm encoder, a 10-d
low-dim state, n_obs_steps 2, horizon 16, action dim 10, 16 DDIM steps.
Random weights (timing only). One row per precision variant (exported with
dp-export's --precision) and per step count, each with its ratio to eager, its
error against eager fp32 on the same noise and the weight-streaming floor of
that precision; writes JSON (--out; bench/latency.py writes to bench/results/).

    dp-bench [--repeats 10] [--device cpu|cuda] [--precision int8,fp16,bf16] [--steps 16,8]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Callable
from pathlib import Path

import numpy as np
import torch

from .checkpoint import load_checkpoint, save_checkpoint
from .engine import load_bundle, read_manifest
from .engine.backends import BackendOptions, default_threads
from .errors import BundleError
from .export import ExportOptions, export_bundle
from .precision import PRECISIONS, cpu_flags, supported_on
from .export.bundle import example_inputs
from .model import DiffusionPolicy, EncoderConfig, ImageSpec, LowDimSpec, PolicyConfig, UnetConfig




def reference_config() -> PolicyConfig:
    return PolicyConfig(
        images=[ImageSpec("agentview", (84, 84, 3)), ImageSpec("wrist", (84, 84, 3))],
        low_dims=[LowDimSpec("state", 10)], action_dim=10, horizon=16, n_obs_steps=2, n_action_steps=8,
        num_inference_steps=16, encoder=EncoderConfig(base_width=64, pool="avg"),
        unet=UnetConfig(down_dims=(256, 512, 1024), kernel_size=5, n_groups=8, diffusion_step_embed_dim=256,
                        cond_predict_scale=True))


def read_bandwidth(threads: int, gib: float = 1.0) -> float:
    """Memory read bandwidth in bytes/s with ``threads`` reading (the threads inference uses: one thread
    reads far less than a socket delivers), best of 5 full passes over a large array."""
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a = torch.ones(int(gib * (1 << 30) / 4), dtype=torch.float32)
        best = float("inf")
        for _ in range(5):
            t = time.perf_counter()
            a.sum()
            best = min(best, time.perf_counter() - t)
    finally:
        torch.set_num_threads(saved)
    return a.numel() * 4 / best


def cpu_features() -> list[str]:
    """The vector and matrix extensions this CPU has (they decide which kernels run natively)."""
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8", "asimd",
              "sve")
    return [f for f in wanted if f in cpu_flags()]


def interleaved_median_ms(fns: list, repeats: int, before: Callable[[], None] | None = None) -> list[float]:
    """Median ms of each callable, timed round-robin so a busy spell of a shared machine hits every path.

    Each round starts one callable later: a callable that runs after one with the same weights finds them in
    the CPU's caches (0.4 ms of a 4 ms chunk here), so a fixed order would favour whichever follows its twin.
    ``before``: run untimed before each call (flushing the caches, say)."""
    for fn in fns:
        fn()  # warm-up
    times: list[list[float]] = [[] for _ in fns]
    for r in range(repeats):
        for i in range(len(fns)):
            j = (r + i) % len(fns)
            if before is not None:
                before()
            t = time.perf_counter()
            fns[j]()
            times[j].append(time.perf_counter() - t)
    return [statistics.median(t) * 1e3 for t in times]


@dataclass
class Row:
    label: str
    precision: str
    steps: int
    median_ms: float
    max_error: float  # vs eager fp32 at the bundle's step count, same noise, normalized action units
    floor_ms: float  # weight-streaming floor of this precision and step count
    batch: int = 1  # robots per call (chunks/s = batch / median)


def gpu_read_bandwidth(gib: float = 1.0) -> float:
    a = torch.ones(int(gib * (1 << 30) / 4), device="cuda")
    best = float("inf")
    for _ in range(5):
        torch.cuda.synchronize()
        t = time.perf_counter()
        a.sum().item()
        best = min(best, time.perf_counter() - t)
    return a.numel() * 4 / best


def variant_engine(bundle: Path, g, device: str, steps: int, options: BackendOptions = BackendOptions()):
    """A variant opened the way the runtime opens it, or directly (marked emulated) where the runtime
    would refuse it for lack of native kernels, so every precision gets a row."""
    from .engine import PolicyEngine
    from .engine.formats import graph_format
    fmt = graph_format(g.format)
    if g.precision in supported_on(device, g.format):
        return load_bundle(bundle, backend=fmt.backend, device=device, precision=g.precision,
                           max_action_error=1.0, num_inference_steps=steps, options=options), ""
    spec = read_manifest(bundle)
    engine = PolicyEngine(spec.policy, spec.ddim, fmt.open(bundle / g.encoder, bundle / g.step, device, options),
                          steps, bundle=spec, graphs=g)
    return engine, " emulated"


def main(argv: list[str] | None = None, results_dir: Path | None = None) -> None:
    """``results_dir``: where --out defaults to (latency_<device>.json); the current directory if None."""
    ap = argparse.ArgumentParser(prog="dp-bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--precision", default="int8,fp16,bf16", help="variants to export and time beside fp32")
    ap.add_argument("--steps", default="16,8", help="step counts to time (the first is the exported one)")
    ap.add_argument("--batches", default=None, help="robots per batched call to time (chunks/s; default: 1,8 on "
                                                    "the CPU, 1,8,64,256 on CUDA)")
    ap.add_argument("--compiled", action="store_true", help="also export and time the compiled format (AOTInductor; "
                                                            "always on CUDA): compile time cold and cached")
    ap.add_argument("--out", default=None)
    ap.add_argument("--workdir", default=None, help="keep the exported bundle here")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    if args.device == "cuda":  # the fp32 reference (TF32 would differ by ~1e-3; the bundle runs fp32 too)
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    step_counts = [int(x) for x in args.steps.split(",")]
    batches = [int(x) for x in (args.batches or ("1,8,64,256" if args.device == "cuda" else "1,8")).split(",")]
    compiled = args.compiled or args.device == "cuda"
    formats = ("onnx", "torchscript", "export") if compiled else ("onnx", "torchscript")

    cfg = reference_config()
    cfg.num_inference_steps = step_counts[0]
    torch.manual_seed(0)
    policy = DiffusionPolicy(cfg).eval()
    unet_params = sum(p.numel() for p in policy.model.parameters())
    enc_params = sum(p.numel() for p in policy.obs_encoder.parameters())
    work = Path(args.workdir or tempfile.mkdtemp(prefix="dp_bench_"))
    ck_path = save_checkpoint(work / "reference.safetensors", policy, policy, {"note": "random weights"})
    t = time.perf_counter()
    # Random weights: reduced precisions are kept with force (their error here is reported, not judged;
    # a trained policy's is, at export).
    precisions = args.precision + (",tf32" if args.device == "cuda" else "")
    bundle = export_bundle(ck_path, work / "bundle", ExportOptions(formats=formats, parity_samples=2, inpaint=False,
                                                                  precisions=precisions, force=True,
                                                                  compile_cache=work / "export_compiled"),
                           progress=print)
    export_s = time.perf_counter() - t
    spec = read_manifest(bundle)

    rng = np.random.default_rng(0)
    obs = {k: v[0] for k, v in example_inputs(policy, 1, rng).items()}
    noise = rng.standard_normal((cfg.horizon, cfg.action_dim)).astype(np.float32)
    eager_policy = load_checkpoint(ck_path).policy.to(dev)
    t_obs = {k: torch.from_numpy(v[None]).to(dev) for k, v in obs.items()}
    t_noise = torch.from_numpy(noise[None]).to(dev)
    scale = policy.normalizer.params["action"].scale.abs().numpy()

    def eager():
        with torch.inference_mode():
            out = eager_policy.sample(t_obs, t_noise)
        return out.cpu().numpy()[0]

    threads = default_threads()
    bw = gpu_read_bandwidth() if args.device == "cuda" else read_bandwidth(threads)
    film = sum(b.cond_encoder[1].weight.numel() + b.cond_encoder[1].bias.numel()
               for b in policy.model.film_blocks())
    step_enc = sum(p.numel() for p in policy.model.diffusion_step_encoder.parameters())
    per_step = unet_params - film - step_enc  # what the bundle's step graph still streams per step

    def floor_ms(precision: str, steps: int) -> float:
        """Step weights x bytes per weight x steps + the fp32 encoder and FiLM weights once."""
        return (per_step * PRECISIONS[precision].bytes_per_weight * steps + (enc_params + film) * 4) / bw * 1e3

    eager_floor = (unet_params * 4 * step_counts[0] + enc_params * 4) / bw * 1e3
    ref = eager()
    rows = [Row("eager torch + diffusers DDIM", "fp32", step_counts[0], 0.0, 0.0, eager_floor)]
    runs = [eager]
    device = "cuda" if args.device == "cuda" else "cpu"

    def add(label: str, engine, precision: str, steps: int) -> None:
        err = float((np.abs(engine.predict(obs, noise=noise).actions - ref) * scale).max())
        rows.append(Row(label, precision, steps, 0.0, err, floor_ms(precision, steps)))
        runs.append(lambda: engine.predict(obs, noise=noise))

    def add_batches(label: str, engine, precision: str) -> None:
        """The same engine serving B robots per call (per-robot noise): chunks/s is B / the call's time."""
        for b in (b for b in batches if b > 1):
            robots, seeds = [obs] * b, list(range(b))
            rows.append(Row(f"{label}, batch {b}", precision, step_counts[0], 0.0, 0.0, floor_ms(precision,
                                                                                               step_counts[0]), b))
            runs.append(lambda robots=robots, seeds=seeds: engine.predict_batch(robots, seeds))

    compile_s = {}
    options = BackendOptions(compile_cache=work / "compiled")
    if compiled:  # cold: a fresh cache; cached: the same program again
        for when in ("cold", "cached"):
            t = time.perf_counter()
            load_bundle(bundle, backend="aoti", device=device, options=options, warm_up=False)
            compile_s[when] = time.perf_counter() - t

    for g in spec.graphs:
        for steps in step_counts if g.format == "onnx" else step_counts[:1]:
            try:
                engine, note = variant_engine(bundle, g, device, steps, options)
            except BundleError as e:  # e.g. onnxruntime without the CUDA provider
                print(f"{g.name}: {e}; skipped")
                break
            label = f"bundle {engine.backend.name} {g.precision} {steps} steps ({engine.provider}{note})"
            add(label, engine, g.precision, steps)
            if steps == step_counts[0] and (g.precision == "fp32" or device == "cuda"):
                add_batches(label, engine, g.precision)
    if args.device == "cuda":  # the same bundle without CUDA graphs, to show what capture buys
        add("bundle torchscript fp32 (torch:cuda, no CUDA graph)",
            load_bundle(bundle, backend="torchscript", device="cuda", precision="fp32",
                        options=BackendOptions(cuda_graphs=False)), "fp32", step_counts[0])
    for row, ms in zip(rows, interleaved_median_ms(runs, args.repeats)):
        row.median_ms = ms
    base = rows[0].median_ms
    print(f"\nDP-CNN reference size: UNet {unet_params / 1e6:.1f} M params, encoders "
          f"{enc_params / 1e6:.1f} M params, batch 1, device {args.device}, torch threads {torch.get_num_threads()}")
    print(f"memory read bandwidth {bw / 1e9:.1f} GB/s; eager floor {eager_floor:.0f} ms (all UNet bytes x steps + "
          f"encoder once); the bundle streams {per_step / 1e6:.1f} M step weights per step (FiLM hoisted)")
    print("max|err|: vs eager fp32 at the exported step count, same noise, normalized action units (random "
          "weights: a trained policy's errors are the manifest's)")
    if compile_s:
        print(f"compiled format (AOTInductor) load: cold {compile_s['cold']:.0f} s (compile), cached "
              f"{compile_s['cached']:.1f} s")
    print(f"{'path':<86} {'median ms':>9} {'chunks/s':>9} {'vs eager':>8} {'floor ms':>8} {'lat/floor':>9} "
          f"{'max|err|':>9}")
    for r in rows:
        print(f"{r.label:<86} {r.median_ms:>9.1f} {r.batch * 1e3 / r.median_ms:>9.1f} {base / r.median_ms:>7.2f}x "
              f"{r.floor_ms:>8.1f} {r.median_ms / r.floor_ms:>9.2f} {r.max_error:>9.1e}")
    result = {"device": args.device, "machine": platform.processor() or platform.machine(),
              "torch_threads": torch.get_num_threads(), "bandwidth_threads": threads,
              "cpu_features": cpu_features(), "compile_seconds": compile_s, "unet_params": unet_params,
              "encoder_params": enc_params, "steps": step_counts, "repeats": args.repeats,
              "read_bandwidth_gbps": bw / 1e9, "film_params": film, "per_step_streamed_params": per_step,
              "export_seconds": export_s,
              "rows": [{**asdict(r), "speedup_vs_eager": base / r.median_ms,
                        "chunks_per_s": r.batch * 1e3 / r.median_ms} for r in rows],
              "export_recorded": {g.name: {"max_abs_error": g.max_abs_error, "p99_abs_error": g.p99_abs_error,
                                           "latency_ms": g.latency_ms, "forced": g.forced} for g in spec.graphs}}
    out = Path(args.out or Path(results_dir or ".") / f"latency_{args.device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"results written to {out}")
