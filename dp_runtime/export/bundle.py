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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..checkpoint import Checkpoint, load_any
from ..digest import sha256_file
from ..engine.backends import BackendOptions
from ..engine.engine import PolicyEngine
from ..engine.formats import DEFAULT_FORMATS, FORMATS, graph_format
from ..engine.schedule import ddim_config, ddim_schedule
from ..errors import ConfigError, ParityError
from ..model import DiffusionPolicy
from ..model.norms import assert_no_running_stats, norm_inventory
from ..precision import DEFAULT_TOLERANCE, PRECISIONS, parse_precisions, supported_on
from ..spec import (MANIFEST, BundleSpec, CalibrationInfo, EmaInfo, FileEntry, GraphSet, NormLayer, ParityInfo,
                    SchedulerSpec, SourceInfo)
from .calibration import calibration_observations
from .graphs import DenoiseStepGraph, EncoderGraph, InpaintStepGraph
from .precision import convs_as_matmul, quantize_int8, unet_for

log = logging.getLogger(__name__)
PARITY_TOL = 1e-4  # fp32 graphs vs the torch policy; reduced precisions use their own (precision.py)
PRECISION_SAMPLES = 16  # random observations a reduced-precision variant is measured on (at least)
FILE_STEMS = {"encoder": "encoder", "step": "denoise_step", "inpaint_step": "denoise_step_inpaint"}
STEP_INPUTS = ["sample", "timestep", "prev_timestep", "cond"]


def file_name(fmt: str, role: str, precision: str = "fp32") -> str:
    """Reduced-precision variants add only a step graph; they share the fp32 encoder."""
    tag = "" if precision == "fp32" or role == "encoder" else f".{precision}"
    return FILE_STEMS[role] + tag + graph_format(fmt).suffix


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


def graphs_to_export(policy: DiffusionPolicy, steps: int, inpaint: bool, unet: torch.nn.Module | None = None
                     ) -> list[Traced]:
    """``unet``: the UNet the step graphs trace in place of the policy's (the matmul form, compiled formats)."""
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
           Traced("step", DenoiseStepGraph(policy, sched, unet).eval(), (sample, t, t - 1, cond), STEP_INPUTS,
                  ["prev_sample", "action"])]
    if inpaint:
        mask = torch.zeros(2, cfg.horizon, 1)
        mask[:, :3] = 1.0
        out.append(Traced("inpaint_step", InpaintStepGraph(policy, sched, unet).eval(),
                          (sample, t, t - 1, cond, torch.randn_like(sample), mask, torch.randn_like(sample)),
                          STEP_INPUTS + ["known", "mask", "noise"], ["prev_sample", "action"]))
    return out


def variant_step(step: Traced, policy: DiffusionPolicy, steps: int, precision: str,
                 unet: torch.nn.Module | None = None) -> Traced:
    """The step graph of a reduced-precision variant: same inputs, the UNet (``unet`` or the policy's) in
    ``precision``."""
    module = DenoiseStepGraph(policy, policy.ddim_scheduler(steps), unet_for(unet or policy.model, precision)).eval()
    return Traced("step", module, step.args, step.inputs, step.outputs)


def open_backend(fmt: str, files: dict[str, Path], precision: str = "fp32", compile_cache: Path | None = None):
    """The exported graphs as the runtime opens them (for the parity check): on the CPU, except TF32, which
    only a CUDA device computes, and compiled formats where a GPU is (compiled where they will run)."""
    tf32 = PRECISIONS[precision].tf32
    fmt_ = graph_format(fmt)
    device = "cuda" if tf32 or (fmt_.compiled and torch.cuda.is_available()) else "cpu"
    options = BackendOptions(tf32=tf32, compile_cache=compile_cache)
    return fmt_.open(files.get("encoder"), files["step"], device, options, inpaint_step=files.get("inpaint_step"))


@dataclass
class Measured:
    """One engine's action error against the torch policy over the check samples."""
    errors: list[float]  # per sample, max over the chunk, normalized action units
    raw_max: float  # the same in raw action units, max over samples

    @property
    def max(self) -> float:
        return max(self.errors, default=0.0)

    @property
    def p99(self) -> float:
        return float(np.percentile(self.errors, 99)) if self.errors else 0.0


def check_observations(policy: DiffusionPolicy, samples: int, seed: int,
                       calibration: list[dict[str, np.ndarray]] = ()) -> list[dict[str, np.ndarray]]:
    """The parity inputs: ``samples`` random observations, then the calibration observations."""
    rng = np.random.default_rng(seed)
    return [example_inputs(policy, 1, rng) for _ in range(samples)] + list(calibration)


def parity(policy: DiffusionPolicy, engines: dict[str, PolicyEngine], observations: list[dict[str, np.ndarray]],
           seed: int, progress: Callable[[str], None], steps: int, inpaint: bool = False) -> dict[str, Measured]:
    """Action error of each engine vs the torch policy stepping diffusers' DDIMScheduler, per sample.

    Errors are in normalized action units: raw units can be pixels (PushT: 0..512) or radians, so only
    the normalized [-1, 1] scale makes one tolerance mean the same for every policy. ``inpaint``: the
    inpainting graphs, each sample with a committed prefix of random length (actions the policy
    itself would take) held fixed.
    """
    rng = np.random.default_rng(seed + 1 if inpaint else seed)
    scale = policy.normalizer.params["action"].scale.abs().numpy()
    cfg = policy.cfg
    out = {name: Measured([], 0.0) for name in engines}
    for i, obs in enumerate(observations):
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
            out[name].errors.append(float((diff * scale).max()))
            out[name].raw_max = max(out[name].raw_max, float(diff.max()))
        progress(f"{'inpaint ' if inpaint else ''}parity {i + 1}/{len(observations)}: "
                 + ", ".join(f"{k} {v.max:.2e}" for k, v in out.items()))
    return out


def chunk_latency_ms(engine: PolicyEngine, obs: dict[str, np.ndarray], repeats: int = 3) -> float:
    engine.predict(obs, seed=0)
    return float(np.median([engine.predict(obs, seed=0).latency_s for _ in range(repeats)]) * 1e3)


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
                   samples: int, tolerance: float, opset: int, calibration: CalibrationInfo | None) -> BundleSpec:
    return BundleSpec(
        policy=ck.config.policy_spec(), ddim=ddim, graphs=graphs, files=files,
        norm_inventory=[NormLayer(e["name"], e["type"], bool(e["running_stats"])) for e in norm_inventory(ck.policy)],
        parity=ParityInfo(samples, tolerance, calibration=calibration),
        source=SourceInfo(Path(ck.source).name, ck.sha256, ck.source_format, ck.weights, ck.extra),
        ema=EmaInfo.of(ck.ema or {}), normalizer=ck.policy.normalizer.stats(), config=ck.config.to_dict(),
        versions=library_versions(), created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        onnx_opset=opset)


@dataclass
class Variant:
    """One (format, precision) pair of graphs in the bundle; reduced precisions share the fp32 encoder."""
    fmt: str
    precision: str
    graphs: list[Traced]

    @property
    def name(self) -> str:
        return f"{self.fmt}-{self.precision}"

    def files(self, root: Path) -> dict[str, Path]:
        own = {g.role: root / file_name(self.fmt, g.role, self.precision) for g in self.graphs}
        return {"encoder": root / file_name(self.fmt, "encoder"), **own}


def plan_variants(policy: DiffusionPolicy, ddim: SchedulerSpec, formats: tuple[str, ...],
                  precisions: tuple[str, ...], inpaint: bool) -> list[Variant]:
    """Compiled formats trace the UNet in its matmul form: every Conv1d one GEMM over its unfolded input (same
    math to ~3e-7), which Inductor fuses and cuBLAS runs far faster than short cuDNN convolutions."""
    steps = ddim.num_inference_steps
    unets = {False: None}
    if any(graph_format(f).compiled for f in formats):
        unets[True] = convs_as_matmul(policy.model)
    traced = {compiled: graphs_to_export(policy, steps, inpaint, unet) for compiled, unet in unets.items()}
    variants = []
    for fmt in formats:
        compiled = graph_format(fmt).compiled
        step = next(g for g in traced[compiled] if g.role == "step")
        for prec in (p for p in precisions if fmt in PRECISIONS[p].formats):
            graphs = traced[compiled] if prec == "fp32" else [variant_step(step, policy, steps, prec, unets[compiled])]
            variants.append(Variant(fmt, prec, graphs))
    return variants


def check_variant(name: str, precision: str, m: Measured, bound: float, force: bool,
                  say: Callable[[str], None]) -> bool:
    """Raise ParityError when a variant misses its bound; True when it was kept only by ``force``.

    fp32 graphs must reproduce the torch policy: nothing forces them past their bound."""
    if m.max <= bound:
        return False
    if precision == "fp32":
        raise ParityError(f"export parity failed: {name} max abs error {m.max:.3e} (normalized action units) "
                          f"exceeds {bound} (bundle graphs disagree with the torch policy)")
    msg = (f"{name}: max action error {m.max:.4f} (p99 {m.p99:.4f}) normalized over {len(m.errors)} samples "
           f"exceeds the tolerance {bound}")
    if not force:
        raise ParityError(msg + "; leave this precision out, raise --tolerance, or --force-precision to keep it "
                                "(the runtime still refuses it unless max_action_error allows it)")
    say(f"warning: {msg}; kept because of --force-precision")
    return True


def graph_entry(v: Variant, root: Path, m: Measured, inpainted: Measured | None, bound: float, forced: bool,
                engine: PolicyEngine, obs: dict[str, np.ndarray]) -> GraphSet:
    """The manifest's record of one variant: files, measured errors, bound, and its latency here."""
    files = v.files(root)
    emulated = "" if v.precision in supported_on("cpu", v.fmt) else " (emulated: no native kernels here)"
    return GraphSet(v.fmt, files["encoder"].name if "encoder" in files else "", files["step"].name, v.precision,
                    m.max, m.raw_max,
                    inpaint_step=files["inpaint_step"].name if "inpaint_step" in files else "",
                    inpaint_max_abs_error=inpainted.max if inpainted else 0.0, p99_abs_error=m.p99,
                    samples=len(m.errors), tolerance=bound, forced=forced,
                    latency_ms=chunk_latency_ms(engine, obs),
                    latency_device=f"{engine.provider} {platform.machine()}{emulated}")


@dataclass(frozen=True)
class ExportOptions:
    """What dp-export builds and how strictly it checks it (the CLI's options, one field each)."""
    steps: int | None = None  # DDIM inference steps (None: the checkpoint's configured count)
    formats: tuple[str, ...] = DEFAULT_FORMATS
    opset: int = 17
    seed: int = 0  # parity inputs and noises
    parity_samples: int = 4
    tolerance: float = PARITY_TOL  # fp32 graphs vs the torch policy, normalized action units
    # also the step graph holding committed actions fixed (fp32): what chunk_transition auto's first choices run
    inpaint: bool = True
    precisions: tuple[str, ...] = ("fp32",)  # step-graph variants, each measured against the torch policy
    precision_tolerance: float = DEFAULT_TOLERANCE
    force: bool = False  # keep variants above precision_tolerance, marked forced
    calibration: str | Path | None = None  # dataset .npz: real observations for the variants' check
    calibration_samples: int = 16
    compile_cache: Path | None = None  # compiled formats: where the parity check's compiled packages go

    def __post_init__(self) -> None:
        unknown = set(self.formats) - set(FORMATS)
        if unknown or not self.formats:
            raise ConfigError(f"formats must be a non-empty subset of {tuple(FORMATS)}, got {self.formats}")
        object.__setattr__(self, "precisions", parse_precisions(self.precisions))
        for prec in self.precisions:
            if not set(PRECISIONS[prec].formats) & set(self.formats):
                raise ConfigError(f"precision {prec} is exported as {' or '.join(PRECISIONS[prec].formats)} only; "
                                  f"add it to --formats (got {list(self.formats)})")


def export_bundle(checkpoint: str | Path | Checkpoint, out: str | Path, options: ExportOptions = ExportOptions(),
                  progress: Callable[[str], None] | None = None) -> Path:
    """Export a checkpoint (path or already-loaded Checkpoint) to a bundle directory ``out``.

    Reduced-precision variants are measured against the torch policy on random (and calibration)
    observations and refused above ``options.precision_tolerance`` unless ``options.force``."""
    o = options
    say = progress or (lambda msg: log.info(msg))
    ck = checkpoint if isinstance(checkpoint, Checkpoint) else load_any(checkpoint)
    policy = ck.policy.eval()
    assert_no_running_stats(policy, where=f"policy from {Path(ck.source).name}")
    if any(PRECISIONS[p].tf32 for p in o.precisions) and not torch.cuda.is_available():
        raise ConfigError("--precision tf32 is measured where it runs: export it on a machine with a CUDA GPU "
                          "(sm80+); CPUs have no TF32, so its error cannot be measured here")
    steps = o.steps or ck.config.num_inference_steps
    if not 1 <= steps <= ck.config.num_train_timesteps:
        raise ConfigError(f"--steps {steps} must be in [1, {ck.config.num_train_timesteps}]")
    io = ck.config.policy_spec()
    calib = calibration_observations(o.calibration, io, o.calibration_samples, o.seed) if o.calibration else []
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        ddim = scheduler_spec(ck.config.scheduler, steps)
        variants = plan_variants(policy, ddim, o.formats, o.precisions, o.inpaint)
        engines = {}
        for v in variants:
            say(f"exporting {v.name} graphs")
            for g in v.graphs:
                graph_format(v.fmt).export(g.module, g.args, g.inputs, g.outputs, v.files(tmp)[g.role], o.opset)
                if v.precision == "int8":
                    quantize_int8(v.files(tmp)[g.role])
            engines[v.name] = PolicyEngine(io, ddim, open_backend(v.fmt, v.files(tmp), v.precision, o.compile_cache))
        samples = o.parity_samples if o.precisions == ("fp32",) else max(o.parity_samples, PRECISION_SAMPLES)
        obs = check_observations(policy, samples, o.seed, calib)
        measured = parity(policy, engines, obs, o.seed, say, steps)
        fp32 = {v.name: engines[v.name] for v in variants if v.precision == "fp32"}
        inpainted = parity(policy, fp32, obs[:o.parity_samples], o.seed, say, steps, inpaint=True) if o.inpaint else {}
        for name, m in inpainted.items():
            check_variant(f"{name} inpaint", "fp32", m, o.tolerance, o.force, say)
        graphs = []
        for v in variants:
            bound = o.tolerance if v.precision == "fp32" else o.precision_tolerance
            forced = check_variant(v.name, v.precision, measured[v.name], bound, o.force, say)
            graphs.append(graph_entry(v, tmp, measured[v.name], inpainted.get(v.name), bound, forced,
                                      engines[v.name], obs[0]))
        files = {p.name: FileEntry(sha256_file(p), p.stat().st_size, role)
                 for v in variants for role, p in v.files(tmp).items()}
        calibrated = CalibrationInfo(Path(o.calibration).name, len(calib)) if calib else None
        spec = build_manifest(ck, ddim, files, graphs, len(obs), o.tolerance, o.opset, calibrated)
        (tmp / MANIFEST).write_text(json.dumps(spec.to_json(), indent=2))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    say(f"bundle written to {out} (max action error " + ", ".join(f"{g.name} {g.max_abs_error:.2e}"
                                                                for g in graphs) + ")")
    return out
