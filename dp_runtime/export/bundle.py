"""dp-export: EMA checkpoint -> verified bundle (ONNX + TorchScript + manifest.json).

Order matters: the running-statistics guard runs while loading, before any
graph is traced; parity against the torch policy stepping diffusers'
DDIMScheduler runs before the bundle is moved into place.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import platform
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..checkpoint import Checkpoint, load_any
from ..engine.backends import OrtBackend, TorchScriptBackend
from ..engine.engine import PolicyEngine
from ..engine.manifest import FORMAT, FORMAT_VERSION, MANIFEST, sha256_file
from ..errors import ConfigError, ParityError
from ..model import DiffusionPolicy
from ..model.norms import assert_no_running_stats, norm_inventory
from .graphs import DenoiseStepGraph, EncoderGraph, ddim_schedule

log = logging.getLogger(__name__)
PARITY_TOL = 1e-4
FORMATS = ("onnx", "torchscript")
FILES = {"onnx": ("encoder.onnx", "denoise_step.onnx"), "torchscript": ("encoder.pt", "denoise_step.pt")}


def example_inputs(policy: DiffusionPolicy, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random raw observations within the normalizer's training range."""
    cfg = policy.cfg
    obs = {s.key: rng.integers(0, 256, (batch, cfg.n_obs_steps, *s.shape), dtype=np.uint8) for s in cfg.images}
    for s in cfg.low_dims:
        p = policy.normalizer.params[s.key]
        norm = rng.uniform(-1, 1, (batch, cfg.n_obs_steps, s.size))
        obs[s.key] = ((norm - p.offset.numpy()) / p.scale.numpy()).astype(np.float32)
    return obs


def _export_onnx(enc: EncoderGraph, step: DenoiseStepGraph, policy: DiffusionPolicy, out: Path,
                 opset: int) -> None:
    import onnx
    cfg = policy.cfg
    obs = {k: torch.from_numpy(v) for k, v in example_inputs(policy, 2, np.random.default_rng(0)).items()}
    args = tuple(obs[k] for k in enc.keys)
    dyn = {k: {0: "batch"} for k in enc.keys}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(enc, args, str(out / FILES["onnx"][0]), input_names=list(enc.keys),
                          output_names=["cond"], dynamic_axes={**dyn, "cond": {0: "batch"}},
                          opset_version=opset, dynamo=False)
        cond = enc(*args)
        sample = torch.randn(2, cfg.horizon, cfg.action_dim)
        t = torch.tensor([10], dtype=torch.int64)
        torch.onnx.export(step, (sample, t, t - 1, cond), str(out / FILES["onnx"][1]),
                          input_names=["sample", "timestep", "prev_timestep", "cond"],
                          output_names=["prev_sample", "action"],
                          dynamic_axes={"sample": {0: "batch"}, "cond": {0: "batch"},
                                        "prev_sample": {0: "batch"}, "action": {0: "batch"}},
                          opset_version=opset, dynamo=False)
    for name in FILES["onnx"]:
        onnx.checker.check_model(str(out / name), full_check=True)


def _export_torchscript(enc: EncoderGraph, step: DenoiseStepGraph, policy: DiffusionPolicy, out: Path) -> None:
    cfg = policy.cfg
    obs = {k: torch.from_numpy(v) for k, v in example_inputs(policy, 2, np.random.default_rng(0)).items()}
    args = tuple(obs[k] for k in enc.keys)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced_enc = torch.jit.trace(enc, args, check_trace=False)
        cond = enc(*args)
        t = torch.tensor([10], dtype=torch.int64)
        traced_step = torch.jit.trace(step, (torch.randn(2, cfg.horizon, cfg.action_dim), t, t - 1, cond),
                                      check_trace=False)
    traced_enc.save(str(out / FILES["torchscript"][0]))
    traced_step.save(str(out / FILES["torchscript"][1]))


def parity(policy: DiffusionPolicy, engines: dict[str, PolicyEngine], samples: int, seed: int,
           progress: Callable[[str], None], steps: int) -> tuple[dict[str, float], dict[str, float]]:
    """Max abs error of each engine vs the torch policy stepping diffusers' DDIMScheduler.

    Returns (errors in normalized action units, errors in raw action units). The tolerance applies
    to the normalized ones: raw units can be pixels (PushT: 0..512) or radians, so only the
    normalized [-1, 1] scale makes one tolerance mean the same for every policy.
    """
    rng = np.random.default_rng(seed)
    scale = policy.normalizer.params["action"].scale.abs().numpy()
    errors = {name: 0.0 for name in engines}
    raw = {name: 0.0 for name in engines}
    for i in range(samples):
        obs = example_inputs(policy, 1, rng)
        noise = rng.standard_normal((1, policy.cfg.horizon, policy.cfg.action_dim)).astype(np.float32)
        ref = policy.sample({k: torch.from_numpy(v) for k, v in obs.items()}, torch.from_numpy(noise),
                            num_inference_steps=steps).numpy()
        for name, engine in engines.items():
            diff = np.abs(engine.predict(obs, noise=noise).actions - ref)
            errors[name] = max(errors[name], float((diff * scale).max()))
            raw[name] = max(raw[name], float(diff.max()))
        progress(f"parity {i + 1}/{samples}: " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
    return errors, raw


def library_versions() -> dict[str, str]:
    import diffusers
    import onnx
    import onnxruntime
    return {"python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "numpy": np.__version__}


def build_manifest(ck: Checkpoint, steps: int, files: dict[str, dict], graphs: dict[str, dict],
                   parity_err: tuple[dict[str, float], dict[str, float]], samples: int,
                   opset: int) -> dict[str, Any]:
    cfg = ck.config
    ts, prev = ddim_schedule(cfg.scheduler, steps)
    from diffusers import DDIMScheduler
    sched_cfg = dict(DDIMScheduler.from_config(cfg.scheduler).config)
    observations = [{"key": s.key, "kind": "image", "shape": list(s.shape), "dtype": "uint8", "layout": "HWC",
                     "topic": s.topic} for s in cfg.images]
    observations += [{"key": s.key, "kind": "low_dim", "shape": [s.size], "dtype": "float32",
                      "topic": s.topic, "names": s.names} for s in cfg.low_dims]
    start, end = cfg.action_slice
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "policy": cfg.to_dict(),
        "observations": observations,
        "action": {"dim": cfg.action_dim, "names": cfg.action_names, "execute_start": start,
                   "execute_end": end},
        "horizon": cfg.horizon, "n_obs_steps": cfg.n_obs_steps, "n_action_steps": cfg.n_action_steps,
        "ddim": {"scheduler_class": "DDIMScheduler", "config": {k: v for k, v in sched_cfg.items()
                                                                  if not k.startswith("_")},
                 "num_inference_steps": steps, "timesteps": ts, "prev_timesteps": prev, "eta": 0.0},
        "normalizer": ck.policy.normalizer.stats(),
        "norm_inventory": norm_inventory(ck.policy),
        "running_stats_layers": [],
        "source": {"path": Path(ck.source).name, "sha256": ck.sha256, "format": ck.source_format,
                   "weights": ck.weights, "details": ck.extra},
        "ema": ck.ema,
        "files": files, "graphs": graphs,
        "parity": {"max_abs_error": parity_err[0], "units": "normalized action ([-1, 1] training range)",
                   "max_abs_error_raw_units": parity_err[1], "samples": samples, "tolerance": PARITY_TOL,
                   "reference": "torch policy + diffusers DDIMScheduler.step"},
        "onnx_opset": opset,
        "versions": library_versions(),
    }


def export_bundle(checkpoint: str | Path | Checkpoint, out: str | Path, steps: int | None = None,
                  formats: tuple[str, ...] = FORMATS, opset: int = 17, seed: int = 0,
                  parity_samples: int = 4, progress: Callable[[str], None] | None = None,
                  tolerance: float = PARITY_TOL) -> Path:
    """Export a checkpoint (path or already-loaded Checkpoint) to a bundle directory ``out``."""
    say = progress or (lambda msg: log.info(msg))
    ck = checkpoint if isinstance(checkpoint, Checkpoint) else load_any(checkpoint)
    policy = ck.policy.eval()
    assert_no_running_stats(policy, where=f"policy from {Path(ck.source).name}")
    unknown = set(formats) - set(FORMATS)
    if unknown or not formats:
        raise ConfigError(f"formats must be a non-empty subset of {FORMATS}, got {formats}")
    steps = steps or ck.config.num_inference_steps
    if not 1 <= steps <= ck.config.num_train_timesteps:
        raise ConfigError(f"--steps {steps} must be in [1, {ck.config.num_train_timesteps}]")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        enc = EncoderGraph(policy).eval()
        step = DenoiseStepGraph(policy, policy.ddim_scheduler(steps)).eval()
        graphs, engines = {}, {}
        manifest_stub = {"policy": ck.config.to_dict(), "ddim": {}}
        ts, prev = ddim_schedule(ck.config.scheduler, steps)
        manifest_stub["ddim"] = {"num_inference_steps": steps, "timesteps": ts, "prev_timesteps": prev}
        for fmt in formats:
            say(f"exporting {fmt} graphs")
            if fmt == "onnx":
                _export_onnx(enc, step, policy, tmp, opset)
                impl = OrtBackend(tmp / FILES[fmt][0], tmp / FILES[fmt][1], device="cpu")
            else:
                _export_torchscript(enc, step, policy, tmp)
                impl = TorchScriptBackend(tmp / FILES[fmt][0], tmp / FILES[fmt][1], device="cpu")
            graphs[fmt] = {"encoder": FILES[fmt][0], "step": FILES[fmt][1]}
            engines[fmt] = PolicyEngine(manifest_stub, impl)
        errors, raw_errors = parity(policy, engines, parity_samples, seed, say, steps)
        bad = {k: v for k, v in errors.items() if not v <= tolerance}
        if bad:
            raise ParityError(f"export parity failed: max abs error {bad} (normalized action units) exceeds "
                              f"{tolerance} "
                              "(bundle graphs disagree with the torch policy)")
        files = {name: {"sha256": sha256_file(tmp / name), "bytes": (tmp / name).stat().st_size,
                        "format": fmt, "role": role}
                 for fmt in formats for name, role in zip(FILES[fmt], ("encoder", "step"))}
        manifest = build_manifest(ck, steps, files, graphs, (errors, raw_errors), parity_samples, opset)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    say(f"bundle written to {out} (parity {', '.join(f'{k} {v:.2e}' for k, v in errors.items())})")
    return out
