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
from dataclasses import dataclass
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
from .graphs import DenoiseStepGraph, EncoderGraph, InpaintStepGraph

log = logging.getLogger(__name__)
PARITY_TOL = 1e-4
FORMATS = ("onnx", "torchscript")
FILE_STEMS = {"encoder": "encoder", "step": "denoise_step", "inpaint_step": "denoise_step_inpaint"}
EXTENSIONS = {"onnx": ".onnx", "torchscript": ".pt"}
STEP_INPUTS = ["sample", "timestep", "prev_timestep", "cond"]


def file_name(fmt: str, role: str) -> str:
    return FILE_STEMS[role] + EXTENSIONS[fmt]


def example_inputs(policy: DiffusionPolicy, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random raw observations within the normalizer's training range."""
    cfg = policy.cfg
    obs = {s.key: rng.integers(0, 256, (batch, cfg.n_obs_steps, *s.shape), dtype=np.uint8) for s in cfg.images}
    for s in cfg.low_dims:
        p = policy.normalizer.params[s.key]
        norm = rng.uniform(-1, 1, (batch, cfg.n_obs_steps, s.size))
        obs[s.key] = ((norm - p.offset.numpy()) / p.scale.numpy()).astype(np.float32)
    return obs


@dataclass
class Traced:
    """One graph to export: its role in the bundle, the module, example inputs and their names."""
    role: str
    module: torch.nn.Module
    args: tuple
    inputs: list[str]
    outputs: list[str]


def graphs_to_export(policy: DiffusionPolicy, steps: int, inpaint: bool) -> list[Traced]:
    cfg = policy.cfg
    enc = EncoderGraph(policy).eval()
    obs = {k: torch.from_numpy(v) for k, v in example_inputs(policy, 2, np.random.default_rng(0)).items()}
    args = tuple(obs[k] for k in enc.keys)
    with torch.no_grad():
        cond = enc(*args)
    sched = policy.ddim_scheduler(steps)
    sample = torch.randn(2, cfg.horizon, cfg.action_dim)
    t = torch.tensor([10], dtype=torch.int64)
    out = [Traced("encoder", enc, args, list(enc.keys), ["cond"]),
           Traced("step", DenoiseStepGraph(policy, sched).eval(), (sample, t, t - 1, cond), STEP_INPUTS,
                  ["prev_sample", "action"])]
    if inpaint:
        mask = torch.zeros(2, cfg.horizon, 1)
        mask[:, :3] = 1.0
        out.append(Traced("inpaint_step", InpaintStepGraph(policy, sched).eval(),
                          (sample, t, t - 1, cond, torch.randn_like(sample), mask, torch.randn_like(sample)),
                          STEP_INPUTS + ["known", "mask", "noise"], ["prev_sample", "action"]))
    return out


def export_graph(g: Traced, fmt: str, path: Path, opset: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fmt == "onnx":
            import onnx
            batch = {name: {0: "batch"} for name in g.inputs + g.outputs if name not in ("timestep", "prev_timestep")}
            torch.onnx.export(g.module, g.args, str(path), input_names=g.inputs, output_names=g.outputs,
                              dynamic_axes=batch, opset_version=opset, dynamo=False)
            onnx.checker.check_model(str(path), full_check=True)
        else:
            torch.jit.trace(g.module, g.args, check_trace=False).save(str(path))


def open_backend(fmt: str, files: dict[str, Path]):
    """The exported graphs on CPU, as the runtime opens them (for the parity check)."""
    cls = OrtBackend if fmt == "onnx" else TorchScriptBackend
    return cls(files["encoder"], files["step"], device="cpu", inpaint_step=files.get("inpaint_step"))


def parity(policy: DiffusionPolicy, engines: dict[str, PolicyEngine], samples: int, seed: int,
           progress: Callable[[str], None], steps: int,
           inpaint: bool = False) -> tuple[dict[str, float], dict[str, float]]:
    """Max abs error of each engine vs the torch policy stepping diffusers' DDIMScheduler.

    Returns (errors in normalized action units, errors in raw action units). The tolerance applies
    to the normalized ones: raw units can be pixels (PushT: 0..512) or radians, so only the
    normalized [-1, 1] scale makes one tolerance mean the same for every policy. ``inpaint``: the
    inpainting graphs, each sample with a committed prefix of random length (actions the policy
    itself would take) held fixed.
    """
    rng = np.random.default_rng(seed + 1 if inpaint else seed)
    scale = policy.normalizer.params["action"].scale.abs().numpy()
    cfg = policy.cfg
    errors = {name: 0.0 for name in engines}
    raw = {name: 0.0 for name in engines}
    for i in range(samples):
        obs = example_inputs(policy, 1, rng)
        tobs = {k: torch.from_numpy(v) for k, v in obs.items()}
        noise = rng.standard_normal((1, cfg.horizon, cfg.action_dim)).astype(np.float32)
        held = {}
        if inpaint:
            known = policy.sample(tobs, torch.from_numpy(rng.standard_normal(noise.shape).astype(np.float32)),
                                  num_inference_steps=steps)
            mask = np.zeros((1, cfg.horizon), bool)
            mask[:, :int(rng.integers(1, cfg.horizon))] = True
            held = {"known": known, "mask": torch.from_numpy(mask)}
        ref = policy.sample(tobs, torch.from_numpy(noise), num_inference_steps=steps, **held).numpy()
        for name, engine in engines.items():
            diff = np.abs(engine.predict(obs, noise=noise, **{k: v.numpy() for k, v in held.items()}).actions - ref)
            errors[name] = max(errors[name], float((diff * scale).max()))
            raw[name] = max(raw[name], float(diff.max()))
        progress(f"{'inpaint ' if inpaint else ''}parity {i + 1}/{samples}: "
                 + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
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
                  tolerance: float = PARITY_TOL, inpaint: bool = False) -> Path:
    """``inpaint``: also export the step graph that holds committed actions fixed (chunk_transition inpaint)."""
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
        engines = {}
        ddim = scheduler_spec(ck.config.scheduler, steps)
        io = ck.config.policy_spec()
        traced = graphs_to_export(policy, steps, inpaint)
        for fmt in formats:
            say(f"exporting {fmt} graphs")
            for g in traced:
                export_graph(g, fmt, tmp / file_name(fmt, g.role), opset)
            engines[fmt] = PolicyEngine(io, ddim, open_backend(fmt, {g.role: tmp / file_name(fmt, g.role)
                                                                     for g in traced}))
        errors, raw_errors = parity(policy, engines, parity_samples, seed, say, steps)
        inpaint_errors = parity(policy, engines, parity_samples, seed, say, steps, inpaint=True)[0] if inpaint else {}
        bad = {k: v for k, v in {**errors, **{f"{k} inpaint": v for k, v in inpaint_errors.items()}}.items()
               if not v <= tolerance}
        if bad:
            raise ParityError(f"export parity failed: max abs error {bad} (normalized action units) exceeds "
                              f"{tolerance} "
                              "(bundle graphs disagree with the torch policy)")
        files = {file_name(fmt, g.role): FileEntry(sha256_file(tmp / file_name(fmt, g.role)),
                                                   (tmp / file_name(fmt, g.role)).stat().st_size, g.role)
                 for fmt in formats for g in traced}
        graphs = [GraphSet(fmt, file_name(fmt, "encoder"), file_name(fmt, "step"), "fp32", errors[fmt], raw_errors[fmt],
                           inpaint_step=file_name(fmt, "inpaint_step") if inpaint else "",
                           inpaint_max_abs_error=inpaint_errors.get(fmt, 0.0))
                  for fmt in formats]
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
