"""Fewer denoising steps, with numbers: actions at other DDIM step counts vs the exported one, same noise.

The step count is a runtime choice (the step graph takes any (t, t_prev) pair); this says what a
smaller one costs in action error (normalized units, the [-1, 1] training range) and buys in latency.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass

import numpy as np

from .engine import PolicyEngine


@dataclass
class StepCountReport:
    steps: int
    max_abs_error: float  # vs the exported step count, normalized action units
    mean_abs_error: float
    latency_ms: float  # median per chunk


def random_observations(engine: PolicyEngine, n: int, rng: np.random.Generator) -> list[dict[str, np.ndarray]]:
    """Observations in the training range: random pixels, low-dims uniform in the normalizer's [-1, 1]."""
    stats = engine.bundle.normalizer if engine.bundle else {}
    out = []
    for _ in range(n):
        obs = {k: rng.integers(0, 256, (engine.n_obs_steps, *s), dtype=np.uint8) for k, s in engine.image_shapes.items()}
        for k, d in engine.low_dim_sizes.items():
            scale = np.asarray(stats.get(k, {}).get("scale", [1.0] * d), np.float64)
            offset = np.asarray(stats.get(k, {}).get("offset", [0.0] * d), np.float64)
            norm = rng.uniform(-1, 1, (engine.n_obs_steps, d))
            obs[k] = ((norm - offset) / scale).astype(np.float32)
        out.append(obs)
    return out


def compare_step_counts(engine: PolicyEngine, step_counts: list[int], samples: int = 4,
                        seed: int = 0) -> list[StepCountReport]:
    spec = engine.bundle
    rng = np.random.default_rng(seed)
    observations = random_observations(engine, samples, rng)
    noises = [rng.standard_normal((engine.horizon, engine.action_dim)).astype(np.float32) for _ in observations]
    scale = np.abs(np.asarray(spec.normalizer.get("action", {}).get("scale", [1.0] * engine.action_dim)))
    exported = spec.ddim.num_inference_steps
    reference = [engine.predict(o, noise=n).actions for o, n in zip(observations, noises)]
    reports = []
    for steps in step_counts:
        variant = PolicyEngine(spec.policy, spec.ddim, engine.backend, num_inference_steps=steps, bundle=spec)
        errors, latencies = [], []
        for o, n, ref in zip(observations, noises, reference):
            pred = variant.predict(o, noise=n)
            errors.append(np.abs(pred.actions - ref) * scale)
            latencies.append(min(variant.predict(o, noise=n).latency_s, pred.latency_s))
        err = np.stack(errors)
        reports.append(StepCountReport(steps if steps else exported, float(err.max()), float(err.mean()),
                                       statistics.median(latencies) * 1e3))
    return reports
