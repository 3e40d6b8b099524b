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
from ..digest import sha256_file
from ..engine.backends import OrtBackend, TorchScriptBackend
from ..engine.engine import PolicyEngine
from ..engine.schedule import ddim_config, ddim_schedule
from ..errors import ConfigError, ParityError
from ..model import DiffusionPolicy
from ..model.norms import assert_no_running_stats, norm_inventory
from ..spec import MANIFEST, BundleSpec, FileEntry, GraphSet, NormLayer, SchedulerSpec
from .graphs import DenoiseStepGraph, EncoderGraph

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


def scheduler_spec(scheduler: dict[str, Any], steps: int) -> SchedulerSpec:
    ts, prev = ddim_schedule(scheduler, steps)
    return SchedulerSpec(ddim_config(scheduler), steps, tuple(ts), tuple(prev))


def build_manifest(ck: Checkpoint, ddim: SchedulerSpec, files: dict[str, FileEntry], graphs: list[GraphSet],
                   samples: int, tolerance: float, opset: int) -> BundleSpec:
    return BundleSpec(
        policy=ck.config.policy_spec(), ddim=ddim, graphs=graphs, files=files,
        norm_inventory=[NormLayer(e["name"], e["type"], bool(e["running_stats"])) for e in norm_inventory(ck.policy)],
        parity={"units": "normalized action ([-1, 1] training range)", "samples": samples, "tolerance": tolerance,
                "reference": "torch policy + diffusers DDIMScheduler.step"},
        source={"path": Path(ck.source).name, "sha256": ck.sha256, "format": ck.source_format,
                "weights": ck.weights, "details": ck.extra},
        ema=ck.ema or {}, normalizer=ck.policy.normalizer.stats(), config=ck.config.to_dict(),
        versions=library_versions(), created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        onnx_opset=opset)


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
        engines = {}
        ddim = scheduler_spec(ck.config.scheduler, steps)
        io = ck.config.policy_spec()
        for fmt in formats:
            say(f"exporting {fmt} graphs")
            if fmt == "onnx":
                _export_onnx(enc, step, policy, tmp, opset)
                impl = OrtBackend(tmp / FILES[fmt][0], tmp / FILES[fmt][1], device="cpu")
            else:
                _export_torchscript(enc, step, policy, tmp)
                impl = TorchScriptBackend(tmp / FILES[fmt][0], tmp / FILES[fmt][1], device="cpu")
            engines[fmt] = PolicyEngine(io, ddim, impl)
        errors, raw_errors = parity(policy, engines, parity_samples, seed, say, steps)
        bad = {k: v for k, v in errors.items() if not v <= tolerance}
        if bad:
            raise ParityError(f"export parity failed: max abs error {bad} (normalized action units) exceeds "
                              f"{tolerance} "
                              "(bundle graphs disagree with the torch policy)")
        files = {name: FileEntry(sha256_file(tmp / name), (tmp / name).stat().st_size, role)
                 for fmt in formats for name, role in zip(FILES[fmt], ("encoder", "step"))}
        graphs = [GraphSet(fmt, FILES[fmt][0], FILES[fmt][1], "fp32", errors[fmt], raw_errors[fmt]) for fmt in formats]
        spec = build_manifest(ck, ddim, files, graphs, parity_samples, tolerance, opset)
        (tmp / MANIFEST).write_text(json.dumps(spec.to_json(), indent=2))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    say(f"bundle written to {out} (parity {', '.join(f'{k} {v:.2e}' for k, v in errors.items())})")
    return out
