"""Command-line entry points: dp-export, dp-inspect, dp-train, dp-replay, dp-dataset, dp-demo, dp-bench."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path

from .errors import ConfigError, DpRuntimeError


def _run(fn) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return fn() or 0
    except DpRuntimeError as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2


def export_main(argv: list[str] | None = None) -> int:
    from .checkpoint import FORMATS, IMPORTERS
    from .precision import DEFAULT_TOLERANCE, PRECISIONS
    p = argparse.ArgumentParser(prog="dp-export", description="Export an EMA checkpoint to a bundle.")
    p.add_argument("checkpoint", help="dp_runtime .safetensors, diffusion_policy .ckpt, robomimic .pth or a "
                                      "LeRobot pretrained_model/ directory (format told from the content)")
    p.add_argument("--format", default=None, choices=FORMATS, help="override format detection: " +
                   "; ".join(f"{i.name}: {i.what}" for i in IMPORTERS.values()))
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow loading pickle checkpoints (.ckpt/.pth), which can run code: trusted files only")
    p.add_argument("--allow-non-ema", action="store_true",
                   help="export the live weights of a checkpoint that has no EMA weights (with a warning)")
    p.add_argument("--obs-interval", type=float, default=None,
                   help="seconds between observation-history frames (default: from the checkpoint, else 0.1)")
    p.add_argument("-o", "--out", required=True, help="bundle directory to write")
    p.add_argument("--steps", type=int, default=None, help="DDIM inference steps (default: from config)")
    p.add_argument("--formats", default="onnx,torchscript",
                   help="comma list of onnx, torchscript, export (the compiled whole-chunk format, backend aoti; "
                        "compiled for the parity check, where a GPU is if there is one)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset")
    p.add_argument("--seed", type=int, default=0, help="seed for the parity check inputs")
    p.add_argument("--parity-samples", type=int, default=4)
    p.add_argument("--precision", default="fp32",
                   help="comma list of step-graph precisions to export beside fp32: " + "; ".join(
                       f"{n}: {pr.how} (" + ", ".join(f"{fmt} on {'/'.join(d)}" for fmt, d in pr.native.items()) + ")"
                       for n, pr in PRECISIONS.items() if n != "fp32"))
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help="max action error (normalized units) a reduced-precision variant may show against the fp32 "
                        "torch policy; above it the export is refused")
    p.add_argument("--force-precision", action="store_true",
                   help="keep variants above --tolerance (marked forced; the runtime runs one only when "
                        "max_action_error allows its recorded error)")
    p.add_argument("--calibration", default=None,
                   help="dataset .npz (dp-dataset output: one (N, n_obs_steps, ...) array per observation key): "
                        "variants are also measured on real observations from it")
    p.add_argument("--calibration-samples", type=int, default=16)
    p.add_argument("--layout", default=None, metavar="FILE",
                   help="YAML {action: [segments], observations: {key: [segments]}}, or a LeRobot dataset's "
                        "meta/info.json (its ee.* feature names): what the action and low-dim vectors are "
                        "(position, rotation with its representation, gripper, joints, values; absolute, delta or "
                        "relative) where the checkpoint does not say (README, End-effector)")
    p.add_argument("--inpaint", action=argparse.BooleanOptionalAction, default=True,
                   help="export the inpainting step graph too (default; the node's chunk_transition auto runs "
                        "soft_inpaint_early with it, blend without); it holds a second copy of the UNet weights")
    args = p.parse_args(argv)

    def go():
        from .checkpoint import load_any
        from .export import ExportOptions, export_bundle
        formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
        options = ExportOptions(steps=args.steps, formats=formats,
                                opset=args.opset, seed=args.seed, parity_samples=args.parity_samples,
                                inpaint=args.inpaint, precisions=args.precision, precision_tolerance=args.tolerance,
                                force=args.force_precision, calibration=args.calibration,
                                calibration_samples=args.calibration_samples)
        ck = load_any(args.checkpoint, format=args.format, trust_pickle=args.trust_pickle,
                      allow_non_ema=args.allow_non_ema)
        if ck.weights != "ema":
            print(f"warning: exporting the LIVE weights of {args.checkpoint} (no EMA weights in it)",
                  file=sys.stderr)
        if args.obs_interval is not None:
            ck.config.obs_interval_s = args.obs_interval
        if args.layout:
            _apply_layout(ck.config, args.layout)
        print(f"loaded {ck.source_format} checkpoint {args.checkpoint} ({ck.weights} weights)")
        export_bundle(ck, args.out, options, progress=print)
    return _run(go)


def _read_layout(path: str) -> tuple[list | None, dict[str, list], list[str]]:
    """dp-export --layout's file: our YAML, or a LeRobot dataset's meta/info.json (the layout from its feature
    names; its action names too)."""
    from .checkpoint.lerobot import info_layout
    from .layout import read_file
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        data = None
    if isinstance(data, dict) and "features" in data:
        action, observations, names = info_layout(data)
        if action is None and not observations:
            raise ConfigError(f"--layout {path}: a LeRobot dataset info whose feature names hold no end-effector "
                              "pose (ee.x ee.y ee.z, ee.wx ee.wy ee.wz): joint values need no layout")
        return action, observations, names
    return (*read_file(path), [])


def _apply_layout(config, path: str) -> None:
    """dp-export --layout onto the imported config (checked with the policy's sizes)."""
    action, observations, names = _read_layout(path)
    if names and len(names) != config.action_dim:
        raise ConfigError(f"--layout {path}: {len(names)} action names, the policy's action has {config.action_dim}")
    if names:
        config.action_names = names
    low = {s.key: s for s in config.low_dims}
    unknown = set(observations) - set(low)
    if unknown:
        raise ConfigError(f"--layout {path}: observations {sorted(unknown)} are not low-dim inputs of this policy "
                          f"(it has {sorted(low) or 'none'})")
    if action is not None:
        config.action_layout = action
    for key, segments in observations.items():
        low[key].layout = segments
    config.validate()


def inspect_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dp-inspect", description="Verify a bundle and run a timed self-test.")
    p.add_argument("bundle")
    p.add_argument("--backend", default="auto", choices=["auto", "onnxruntime", "torchscript"])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "tensorrt"])
    p.add_argument("--precision", default="auto", help="variant to self-test: auto, fp32, int8, fp16, bf16")
    p.add_argument("--steps", default=None,
                   help="comma list of DDIM step counts to compare with the exported one (e.g. 16,8,4): action "
                        "difference on the same noise and chunk latency")
    args = p.parse_args(argv)

    def go():
        import onnxruntime as ort
        from .engine import load_bundle, read_manifest
        from .layout import describe
        m = read_manifest(Path(args.bundle))
        pol = m.policy
        print(f"bundle      {args.bundle} (created {m.created or 'unknown'})")
        for o in pol.observations:
            extra = f" joints={list(o.names)}" if o.names and not o.layout else ""
            print(f"obs         {o.key:<12} {o.kind:<8} {o.dtype} {list(o.shape)} topic={o.topic or None}{extra}")
            for line in describe(o.layout):
                print(f"              {line}")
        a = pol.action
        print(f"action      dim {a.dim} names {list(a.names)}; executes [{a.execute_start}, {a.execute_end}) of "
              f"the horizon")
        for line in describe(a.layout):
            print(f"              {line}")
        print(f"horizon     {pol.horizon}  n_obs_steps {pol.n_obs_steps} every {pol.obs_interval_s:g} s  "
              f"n_action_steps {pol.n_action_steps}  DDIM steps {m.ddim.num_inference_steps}")
        src = m.source
        ema = {k: v for k, v in asdict(m.ema).items() if v is not None} or None
        print(f"source      {src.path} sha256 {src.sha256[:16]}... weights {src.weights} ({src.format})  EMA {ema}")
        renamed = src.details.get("lerobot_features") or {}
        if renamed:
            print("renamed     " + ", ".join(f"{ours} <- {theirs}" for ours, theirs in renamed.items()))
        norms = sorted({n.type for n in m.norm_inventory})
        print(f"norm layers {len(m.norm_inventory)} ({', '.join(norms)}); running-stats layers: "
              f"{len(m.running_stats_layers) or 'none'}")
        print(f"graphs      action error vs the fp32 torch policy (normalized units) over {m.parity.samples} "
              f"samples{'' if not m.parity.calibration else ' incl. calibration data'}; latency at export")
        for g in m.graphs:
            flag = " FORCED above tolerance" if g.forced else ""
            print(f"  {g.name:<18} {g.step:<26} max {g.max_abs_error:.2e} p99 {g.p99_abs_error:.2e} "
                  f"(tolerance {g.tolerance:g}){flag}; {g.latency_ms:.1f} ms on {g.latency_device or '?'}")
            if g.inpaint_step:
                print(f"            {'':<16} {g.inpaint_step} (chunk_transition inpaint): parity "
                      f"{g.inpaint_max_abs_error:.2e}")
        sizes: dict[str, set[str]] = {}
        for g in m.graphs:
            sizes.setdefault(g.format, set()).update(g.files)
        print("size        " + ", ".join(f"{fmt} {sum(m.files[f].bytes for f in files if f in m.files) / 1e6:.1f} MB"
                                      for fmt, files in sizes.items()) + " (each format's graph files)")
        print(f"providers   {ort.get_available_providers()}")
        engine = load_bundle(args.bundle, backend=args.backend, device=args.device, precision=args.precision)
        lat = sorted(engine.warm_up() for _ in range(5))
        print("verified    hashes, norm inventory, graph scan: OK")
        print(f"self-test   backend {engine.backend.name} provider {engine.provider} precision {engine.precision} "
              f"(recorded {engine.recorded_error}): median {lat[2] * 1e3:.1f} ms per chunk")
        if args.steps:
            from .engine.step_counts import compare_step_counts
            counts = [int(x) for x in args.steps.split(",") if x.strip()]
            print(f"step counts vs the exported {m.ddim.num_inference_steps} (same observations and noise; "
                  "normalized action units):")
            for r in compare_step_counts(engine, counts):
                print(f"  {r.steps:>4} steps: max |diff| {r.max_abs_error:.4f}, mean {r.mean_abs_error:.4f}, "
                      f"{r.latency_ms:.1f} ms per chunk")
    return _run(go)


def train_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dp-train", description="Train a small GroupNorm policy with EMA.")
    p.add_argument("dataset", help="dataset .npz written by dp-dataset")
    p.add_argument("-o", "--out", required=True, help="checkpoint .safetensors to write")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    def go():
        from .dataset import load_dataset
        from .train import TrainConfig, train
        cfg, data = load_dataset(args.dataset)
        train(cfg, data, args.out, TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                               seed=args.seed),
              progress=lambda s, l: print(f"step {s}: loss {l:.4f}"))
        print(f"checkpoint written to {args.out}")
    return _run(go)


def replay_main(argv: list[str] | None = None) -> int:
    from .replay.cli import main
    return _run(lambda: main(argv))


def dataset_main(argv: list[str] | None = None) -> int:
    from .dataset import main
    return _run(lambda: main(argv))


def demo_main(argv: list[str] | None = None) -> int:
    from .sim.demo import main
    return _run(lambda: main(argv))


def bench_main(argv: list[str] | None = None) -> int:
    from .latency_bench import main
    return _run(lambda: main(argv))
