"""PolicyEngine: a verified bundle plus a backend; one ``predict`` per action chunk.

The engine does no policy math: it validates inputs against the bundle's
PolicySpec, feeds the encoder graph once, then loops the DDIM step graph over
the timesteps recorded in the manifest (or a runtime step count's walk).
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..errors import BundleError, ConfigError, DpRuntimeError, ShapeError
from ..holds import Hold, every_step
from ..obs_spec import validate_obs
from ..precision import PRECISIONS, check_runs_on
from ..spec import BundleSpec, GraphSet, PolicySpec, SchedulerSpec
from .backends import Backend, BackendOptions, device_kind, resolve_device
from .formats import FORMATS, by_backend, graph_format
from .manifest import read_manifest, verify_hashes, verify_norm_inventory
from .schedule import ddim_schedule
from .variants import choose_graphs

log = logging.getLogger(__name__)


def _weights(mask) -> np.ndarray:
    """An inpainting mask as float32 weights: bool (held or free), or floats in [0, 1] (soft)."""
    m = np.asarray(mask)
    if m.dtype == bool:
        return m.astype(np.float32)
    m = m.astype(np.float32)
    if not np.all((m >= 0) & (m <= 1)):
        raise ShapeError(f"inpainting: mask weights must be in [0, 1], got {m.min():g} .. {m.max():g}")
    return m


@dataclass
class Prediction:
    actions: np.ndarray  # (horizon, A) float32, or (B, horizon, A) for batched input
    latency_s: float
    noise_seed: int | None


class PolicyEngine:
    takes_noise = True  # predict(noise=): chunk_noise aligned

    def __init__(self, spec: PolicySpec, ddim: SchedulerSpec, backend: Backend, num_inference_steps: int | None = None,
                 bundle: BundleSpec | None = None, graphs: GraphSet | None = None):
        self.spec = spec
        self.bundle = bundle  # the whole manifest when loaded from a bundle directory
        self.graphs = graphs  # the variant running (precision, recorded error), when loaded from a bundle
        self.backend = backend
        self.chosen_because = ""  # backend auto between the compiled programs and ONNX Runtime: the figures
        self.image_shapes = spec.image_shapes
        self.low_dim_sizes = spec.low_dim_sizes
        self.keys = spec.keys
        self.n_obs_steps = spec.n_obs_steps
        self.horizon = spec.horizon
        self.action_dim = spec.action.dim
        self.n_action_steps = spec.n_action_steps
        if num_inference_steps and num_inference_steps != ddim.num_inference_steps:
            train = ddim.config.num_train_timesteps
            if not 1 <= num_inference_steps <= train:
                raise ConfigError(f"num_inference_steps {num_inference_steps} must be in [1, {train}] (the policy "
                                  f"was trained with {train} diffusion timesteps; 0 = as exported)")
            ts, prev = ddim_schedule(ddim.config.to_dict(), num_inference_steps)
        else:
            ts, prev = ddim.timesteps, ddim.prev_timesteps
        self.warmup_latency_s = 0.0  # the last warm-up's latency: inference_lead auto's first estimate
        self.schedule = [(np.array([t], np.int64), np.array([p], np.int64)) for t, p in zip(ts, prev)]
        self._rng = np.random.default_rng()

    @property
    def provider(self) -> str:
        return self.backend.provider

    @property
    def precision(self) -> str:
        return self.graphs.precision if self.graphs else "fp32"

    @property
    def recorded_error(self) -> str:
        """The running variant's action error measured at export, for logs and diagnostics."""
        g = self.graphs
        if g is None:
            return "not measured"
        return (f"max {g.max_abs_error:.2e} p99 {g.p99_abs_error:.2e} normalized over {g.samples} samples"
                f"{', forced above tolerance' if g.forced else ''}")

    def make_noise(self, batch: int, seed: int | None) -> np.ndarray:
        rng = np.random.default_rng(seed) if seed is not None else self._rng
        return rng.standard_normal((batch, self.horizon, self.action_dim)).astype(np.float32)

    @property
    def can_inpaint(self) -> bool:
        return self.backend.can_inpaint

    @property
    def masks_per_step(self) -> bool:
        """Whether a mask can change between DDIM steps (holds.early_steps); a compiled chunk program cannot."""
        return self.backend.masks_per_step

    def predict(self, obs_history: Mapping[str, np.ndarray], noise: np.ndarray | None = None,
                seed: int | None = None, known: np.ndarray | None = None,
                mask: np.ndarray | None = None, hold: Hold = every_step) -> Prediction:
        """obs_history: images (To, H, W, C) uint8 and low-dim (To, D) float32, or batched with a
        leading B. Returns the unnormalized trajectory (horizon, A) (or (B, horizon, A)).

        ``known`` raw actions (horizon, A) and ``mask`` (horizon,) bool (or batched): denoise with the
        masked actions held fixed (inpainting; needs a bundle exported with --inpaint). A float ``mask``
        of weights in [0, 1] holds each action that much (soft inpainting, the same graph), at each step
        as ``hold`` (holds.py) says: mixed at every step, or fully for the noisiest share of the steps."""
        first = next(iter(self.image_shapes), None)
        probe_key, unbatched_ndim = (first, 4) if first else (next(iter(self.low_dim_sizes)), 2)
        if probe_key not in obs_history:
            raise ShapeError(f"observation is missing key(s) [{probe_key!r}]; expected {self.keys}")
        batched = np.asarray(obs_history[probe_key]).ndim != unbatched_ndim
        obs = {k: np.asarray(v) if batched else np.asarray(v)[None] for k, v in obs_history.items()}
        obs = {k: (v.astype(np.float32) if k in self.low_dim_sizes and v.dtype == np.float64 else v)
               for k, v in obs.items()}
        batch = validate_obs(obs, self.image_shapes, self.low_dim_sizes, self.n_obs_steps)
        if noise is None:
            noise = self.make_noise(batch, seed)
        noise = np.asarray(noise, dtype=np.float32)
        if not batched and noise.ndim == 2:
            noise = noise[None]
        if noise.shape != (batch, self.horizon, self.action_dim):
            raise ShapeError(f"noise: expected float32 ({batch}, {self.horizon}, {self.action_dim}), "
                             f"got {noise.shape}")
        masks = None
        if known is not None:
            known, mask = self._inpaint_inputs(known, mask, batch, batched)
            masks = hold(mask, len(self.schedule))
            if not self.backend.masks_per_step and any(m is not masks[0] for m in masks):
                raise BundleError(f"{self.backend.name}: its chunk program holds one mask for every DDIM step; "
                                  "chunk_transition: soft_inpaint_early needs backend onnxruntime or torchscript")
        t0 = time.perf_counter()
        actions = self.backend.denoise([np.ascontiguousarray(obs[k]) for k in self.keys], noise, self.schedule,
                                       known, masks)
        latency = time.perf_counter() - t0
        actions = np.asarray(actions, dtype=np.float32)
        if not np.all(np.isfinite(actions)):
            raise ShapeError("policy produced non-finite actions")
        return Prediction(actions if batched else actions[0], latency, seed)

    def predict_batch(self, observations: Sequence[Mapping[str, np.ndarray]], seeds: Sequence[int | None],
                      known: Sequence[np.ndarray | None] | None = None,
                      mask: Sequence[np.ndarray | None] | None = None, hold: Hold = every_step) -> list[Prediction]:
        """Several robots' chunks in one backend call (a GPU host serving a fleet).

        ``observations[i]``: robot i's history (unbatched, as ``predict`` takes it); ``seeds[i]``: its noise
        seed (None: fresh noise), so each robot gets exactly the actions a single ``predict`` with that seed
        gives. ``known``/``mask``: per robot, None where it commits nothing; if any robot inpaints, the
        inpainting graph runs for all (an empty mask leaves a chunk exactly as the plain step computes it).
        A robot whose observation does not fit the bundle is named by its index."""
        if len(seeds) != len(observations) or not observations:
            raise ShapeError(f"predict_batch: {len(observations)} observations and {len(seeds)} seeds; expected "
                             "one seed per observation, at least one")
        robots = [{k: np.asarray(v, np.float32) if k in self.low_dim_sizes else np.asarray(v) for k, v in o.items()}
                  for o in observations]
        for i, obs in enumerate(robots):
            try:
                validate_obs({k: v[None] for k, v in obs.items()}, self.image_shapes, self.low_dim_sizes,
                             self.n_obs_steps)
            except DpRuntimeError as e:
                raise type(e)(f"robot {i} of the batch: {e}") from e
        stacked = {k: np.stack([o[k] for o in robots]) for k in self.keys}
        noise = np.concatenate([self.make_noise(1, s) for s in seeds])
        held = {}
        if known is not None and any(k is not None for k in known):
            zeros = np.zeros((self.horizon, self.action_dim), np.float32)
            held = {"known": np.stack([zeros if k is None else np.asarray(k, np.float32) for k in known]),
                    "mask": np.stack([np.zeros(self.horizon, np.float32) if m is None else _weights(m)
                                      for m in mask])}
        pred = self.predict(stacked, noise=noise, hold=hold, **held)
        return [Prediction(a, pred.latency_s, s) for a, s in zip(pred.actions, seeds)]

    def _inpaint_inputs(self, known, mask, batch: int, batched: bool) -> tuple[np.ndarray, np.ndarray]:
        if not self.can_inpaint:
            raise BundleError("this bundle has no inpainting step graph; re-export it with dp-export --inpaint "
                              "to use chunk_transition: inpaint")
        known = np.asarray(known, dtype=np.float32)
        mask = _weights(mask)
        if not batched:
            known, mask = known[None], mask[None]
        if known.shape != (batch, self.horizon, self.action_dim) or mask.shape != (batch, self.horizon):
            raise ShapeError(f"inpainting: known must be ({self.horizon}, {self.action_dim}) and mask "
                             f"({self.horizon},), got {known.shape} and {mask.shape}")
        if not np.all(np.isfinite(known)):
            raise ShapeError("inpainting: known actions must be finite")
        return np.ascontiguousarray(known), np.ascontiguousarray(mask[..., None])

    def executed_slice(self, actions: np.ndarray) -> np.ndarray:
        """The actions to execute: the manifest's [execute_start, execute_end) of the horizon."""
        return self.spec.executed(actions)

    def zero_observation(self) -> dict[str, np.ndarray]:
        """An observation history of zeros (warm-up and timing: the cost does not depend on the values)."""
        obs = {k: np.zeros((self.n_obs_steps, *s), np.uint8) for k, s in self.image_shapes.items()}
        obs.update({k: np.zeros((self.n_obs_steps, n), np.float32) for k, n in self.low_dim_sizes.items()})
        return obs

    def warm_up(self) -> float:
        self.warmup_latency_s = self.predict(self.zero_observation(), seed=0).latency_s
        return self.warmup_latency_s


AUTO_ROUNDS = 5  # backend auto: chunks timed per backend, interleaved, before choosing


def _auto_compiled(path: Path, spec: BundleSpec, device: str, num_inference_steps: int | None,
                   options: BackendOptions, precision: str, max_action_error: float | None,
                   need_inpaint: bool) -> PolicyEngine | None:
    """``backend: auto`` with compiled graphs in the bundle: where a compile for this machine is cached, the faster
    here of the compiled programs and ONNX Runtime (both timed now on the same observation, interleaved); None:
    no cached compile, the table's first format. The choice and its reason are logged."""
    from .compiled import cached
    fmt = next((f for f in FORMATS.values() if f.compiled and f.name in spec.formats), None)
    if fmt is None or device not in fmt.devices or "onnx" not in spec.formats:
        return None
    try:
        graphs = choose_graphs(spec, fmt.name, precision, resolve_device(fmt.backend, device), max_action_error,
                               need_inpaint)
    except BundleError:
        return None
    if not cached([spec.files[name] for name in graphs.files], device, options):
        log.info("backend auto: no compile of the %s graphs cached for this machine (start once with backend: %s "
                 "to compile them, minutes): onnxruntime", fmt.name, fmt.backend)
        return None
    engines = {b: _open(path, spec, by_backend(b), device, num_inference_steps, options, precision,
                        max_action_error, need_inpaint) for b in ("onnxruntime", fmt.backend)}
    obs = engines["onnxruntime"].zero_observation()
    times: dict[str, list[float]] = {b: [] for b in engines}
    for _ in range(AUTO_ROUNDS + 1):  # the first round warms up
        for b, e in engines.items():
            times[b].append(e.predict(obs, seed=0).latency_s)
    ms = {b: float(np.median(t[1:])) * 1e3 for b, t in times.items()}
    best = min(ms, key=ms.get)
    engines[best].chosen_because = (f"{', '.join(f'{b} {v:.1f} ms' for b, v in ms.items())}; measured here, median "
                                    f"of {AUTO_ROUNDS} chunks")
    log.info("backend auto: %s (%s)", best, engines[best].chosen_because)
    return engines[best]


def load_bundle(path: str | Path, backend: str = "auto", device: str = "auto",
                num_inference_steps: int | None = None, options: BackendOptions = BackendOptions(),
                warm_up: bool = True, precision: str = "auto", max_action_error: float | None = None,
                need_inpaint: bool = False) -> PolicyEngine:
    """Verify a bundle (hashes, norm inventory, graph scans) and open one variant of it on a backend.

    ``backend``: auto (the first format of the table the bundle has) or a GraphFormat's backend name;
    ``precision``: fp32 | int8 | fp16 | bf16, or auto (the fastest variant within its recorded error
    bound that runs natively on the device); ``max_action_error`` replaces the recorded bounds;
    ``options``: threads, CUDA graphs, TF32."""
    path = Path(path)
    spec = read_manifest(path)
    verify_norm_inventory(spec)
    verify_hashes(path, spec)  # every file of the bundle, once (backend auto opens two variants)
    engine = None
    if backend == "auto":
        engine = _auto_compiled(path, spec, device, num_inference_steps, options, precision, max_action_error,
                                need_inpaint)
        fmt = next((f for f in FORMATS.values() if f.name in spec.formats), None) or graph_format(spec.formats[0])
    else:
        fmt = by_backend(backend)
    if engine is None:
        engine = _open(path, spec, fmt, device, num_inference_steps, options, precision, max_action_error,
                       need_inpaint)
    if warm_up:
        engine.warm_up()
    return engine


def _open(path: Path, spec: BundleSpec, fmt, device: str, num_inference_steps: int | None, options: BackendOptions,
          precision: str, max_action_error: float | None, need_inpaint: bool) -> PolicyEngine:
    """One variant of a verified bundle (its hashes checked) on ``fmt``'s backend: chosen, its graphs scanned for
    BatchNorm by the format's scanner, opened."""
    fmt.check_device(device)
    try:
        graphs = choose_graphs(spec, fmt.name, precision, resolve_device(fmt.backend, device), max_action_error,
                               need_inpaint)
    except BundleError as e:
        raise BundleError(f"{path}: {e}") from e
    for name in graphs.files:
        fmt.scan(path / name)
    if PRECISIONS[graphs.precision].tf32:
        options = dataclasses.replace(options, tf32=True)
    impl = fmt.open(path / graphs.encoder if graphs.encoder else None, path / graphs.step, device, options,
                    inpaint_step=path / graphs.inpaint_step if graphs.inpaint_step else None)
    check_runs_on(graphs.precision, device_kind(impl.provider), fmt.name)  # device=auto may have fallen back to CPU
    engine = PolicyEngine(spec.policy, spec.ddim, impl, num_inference_steps, bundle=spec, graphs=graphs)
    log.info("loaded bundle %s: backend=%s provider=%s precision=%s (recorded max action error %.2e)",
             path, fmt.backend, engine.provider, graphs.precision, graphs.max_abs_error)
    return engine
