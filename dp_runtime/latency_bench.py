"""Per-chunk latency on the reference DP-CNN size: eager PyTorch vs the bundle (ORT, TorchScript).

Reference size: ConditionalUnet1D down_dims 256/512/1024 (kernel 5, FiLM scale),
two 84x84 RGB cameras through the ResNet-18 GroupNorm encoder, a 10-d
low-dim state, n_obs_steps 2, horizon 16, action dim 10, 16 DDIM steps.
Random weights (timing only). Prints a table with ratios to eager and the
weight-streaming floor, and writes JSON (--out; bench/latency.py writes to bench/results/).

    dp-bench [--repeats 10] [--device cpu|cuda] [--out latency_cpu.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .checkpoint import load_checkpoint, save_checkpoint
from .engine import load_bundle, read_manifest
from .errors import BundleError
from .export import export_bundle
from .export.bundle import example_inputs
from .model import DiffusionPolicy, EncoderConfig, ImageSpec, LowDimSpec, PolicyConfig, UnetConfig


def reference_config() -> PolicyConfig:
    return PolicyConfig(
        images=[ImageSpec("agentview", (84, 84, 3)), ImageSpec("wrist", (84, 84, 3))],
        low_dims=[LowDimSpec("state", 10)], action_dim=10, horizon=16, n_obs_steps=2, n_action_steps=8,
        num_inference_steps=16, encoder=EncoderConfig(base_width=64, pool="avg"),
        unet=UnetConfig(down_dims=(256, 512, 1024), kernel_size=5, n_groups=8, diffusion_step_embed_dim=256,
                        cond_predict_scale=True))


def read_bandwidth(gib: float = 1.0) -> float:
    """Measured memory read bandwidth in bytes/s (best of 5 full passes over a large array)."""
    a = np.ones(int(gib * (1 << 30) / 4), dtype=np.float32)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        a.sum()
        best = min(best, time.perf_counter() - t)
    return a.nbytes / best


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main(argv: list[str] | None = None, results_dir: Path | None = None) -> None:
    """``results_dir``: where --out defaults to (latency_<device>.json); the current directory if None."""
    ap = argparse.ArgumentParser(prog="dp-bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--out", default=None)
    ap.add_argument("--workdir", default=None, help="keep the exported bundle here")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    if args.device == "cuda":  # the fp32 reference (TF32 would differ by ~1e-3; the bundle runs fp32 too)
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False

    cfg = reference_config()
    torch.manual_seed(0)
    policy = DiffusionPolicy(cfg).eval()
    unet_params = sum(p.numel() for p in policy.model.parameters())
    enc_params = sum(p.numel() for p in policy.obs_encoder.parameters())
    work = Path(args.workdir or tempfile.mkdtemp(prefix="dp_bench_"))
    ck_path = save_checkpoint(work / "reference.safetensors", policy, policy, {"note": "random weights"})
    t = time.perf_counter()
    bundle = export_bundle(ck_path, work / "bundle", parity_samples=2, progress=print)
    export_s = time.perf_counter() - t
    spec = read_manifest(bundle)

    rng = np.random.default_rng(0)
    obs = {k: v[0] for k, v in example_inputs(policy, 1, rng).items()}
    noise = rng.standard_normal((cfg.horizon, cfg.action_dim)).astype(np.float32)
    eager_policy = load_checkpoint(ck_path).policy.to(dev)
    t_obs = {k: torch.from_numpy(v[None]).to(dev) for k, v in obs.items()}
    t_noise = torch.from_numpy(noise[None]).to(dev)

    def eager():
        with torch.inference_mode():
            out = eager_policy.sample(t_obs, t_noise)
        return out.cpu().numpy()[0]

    rows = {"eager torch + diffusers DDIM": median_ms(eager, args.repeats)}
    ref = eager()
    errors = {}
    device = "cuda" if args.device == "cuda" else "cpu"
    for backend in ("onnxruntime", "torchscript"):
        try:
            engine = load_bundle(bundle, backend=backend, device=device)
        except BundleError as e:  # e.g. onnxruntime without the CUDA provider: measure what it falls back to
            print(f"{backend}: {e}; measuring device=auto instead")
            engine = load_bundle(bundle, backend=backend, device="auto")
        label = f"bundle {backend} ({engine.provider})"
        rows[label] = median_ms(lambda: engine.predict(obs, noise=noise), args.repeats)
        errors[label] = float(np.abs(engine.predict(obs, noise=noise).actions - ref).max())

    if args.device == "cuda":  # the same bundle without CUDA graphs, to show what capture buys
        import os
        os.environ["DP_RUNTIME_CUDA_GRAPHS"] = "0"
        engine = load_bundle(bundle, backend="torchscript", device="cuda")
        label = "bundle torchscript (torch:cuda, no CUDA graph)"
        rows[label] = median_ms(lambda: engine.predict(obs, noise=noise), args.repeats)
        errors[label] = float(np.abs(engine.predict(obs, noise=noise).actions - ref).max())
    bw = read_bandwidth()
    steps = cfg.num_inference_steps
    film = sum(b.cond_encoder[1].weight.numel() + b.cond_encoder[1].bias.numel()
               for b in policy.model.film_blocks())
    step_enc = sum(p.numel() for p in policy.model.diffusion_step_encoder.parameters())
    per_step = unet_params - film - step_enc  # what the bundle's step graph still streams per step
    floor_ms = (unet_params * 4 * steps + enc_params * 4) / bw * 1e3
    split_floor_ms = (per_step * 4 * steps + (enc_params + film) * 4) / bw * 1e3
    base = rows["eager torch + diffusers DDIM"]
    print(f"\nDP-CNN reference size: UNet {unet_params / 1e6:.1f} M params, encoders "
          f"{enc_params / 1e6:.1f} M params, {steps} DDIM steps, batch 1, device {args.device}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"memory read bandwidth {bw / 1e9:.1f} GB/s -> weight-streaming floor {floor_ms:.0f} ms "
          "(all UNet bytes x steps + encoder bytes once)")
    print(f"FiLM layers hold {film / 1e6:.1f} M of the UNet's params; the bundle streams "
          f"{per_step / 1e6:.1f} M per step -> its floor {split_floor_ms:.0f} ms")
    print(f"{'path':<52} {'median ms':>10} {'speed-up':>9} {'floor/lat':>9} {'max|err|':>9}")
    for label, ms in rows.items():
        err = errors.get(label, 0.0)
        print(f"{label:<52} {ms:>10.1f} {base / ms:>8.2f}x {floor_ms / ms:>9.2f} {err:>9.1e}")
    result = {"device": args.device, "machine": platform.processor() or platform.machine(),
              "torch_threads": torch.get_num_threads(), "unet_params": unet_params,
              "encoder_params": enc_params, "steps": steps, "repeats": args.repeats,
              "median_ms": rows, "speedup_vs_eager": {k: base / v for k, v in rows.items()},
              "max_abs_error_vs_eager": errors, "read_bandwidth_gbps": bw / 1e9,
              "weight_streaming_floor_ms": floor_ms,
              "bundle_weight_streaming_floor_ms": split_floor_ms, "film_params": film,
              "per_step_streamed_params": per_step, "export_seconds": export_s,
              "export_parity": {g.format: g.max_abs_error for g in spec.graphs}}
    out = Path(args.out or Path(results_dir or ".") / f"latency_{args.device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"results written to {out}")
