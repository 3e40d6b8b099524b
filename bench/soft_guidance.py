"""Soft inpainting: weighted replacement (soft_inpaint, in the bundle) against pseudo-inverse guidance.

Real-time chunking (Black, Galliker, Levine 2025) guides the new chunk toward the previous one with
PiGDM, which needs the UNet's vector-Jacobian product at every DDIM step: an ONNX or TorchScript
inference graph does not give it, so it can only run in eager torch. This bench measures what each
costs per chunk on this machine (same policy, same noise) and what it buys in closed loop: the same
soft_inpaint weights, once by replacement and once by guidance, both in eager torch, on the task's
sim at the given delays. JSON next to this file.

PiGDM here: at each step the clean-sample estimate x0(x_t) = (x_t - sqrt(1 - a) eps) / sqrt(a) is
pulled toward the known actions y where the weights W are set; the likelihood gradient
``(W * (y - x0))^T dx0/dx_t / r^2`` (r^2 = s / (1 + s), s = (1 - a) / a, the scale capped at
``max_guidance``, RTC's beta) enters the noise prediction as ``eps - sqrt(1 - a) * gradient``. The
frozen prefix (weight 1) is still held exactly, as soft_inpaint holds it.

    python bench/soft_guidance.py [--task around] [--episodes 40] [--delays 4,6]
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from dp_runtime.checkpoint import load_checkpoint
from dp_runtime.engine import load_bundle
from dp_runtime.engine.engine import Prediction
from dp_runtime.sim.evaluate import TorchPolicyEngine, boundary_jump_ratio, run_episodes
from dp_runtime.sim.record import SimTopics
from dp_runtime.sim.tasks import TASKS, sim_task

HERE = Path(__file__).resolve().parent


def sample_guided(policy, obs, noise: torch.Tensor, known: torch.Tensor, weights: torch.Tensor,
                  max_guidance: float = 5.0) -> torch.Tensor:
    """noise (B, H, A), known raw (B, H, A), weights (B, H) in [0, 1] -> raw actions (B, H, A)."""
    with torch.no_grad():
        cond = policy.encode(obs)
        y = policy.normalizer.normalize("action", known.float())
    w = weights.float()[..., None]
    frozen = w >= 1
    sched = policy.ddim_scheduler()
    x = noise
    for t in sched.timesteps:
        a = sched.alphas_cumprod[t].float()
        x = torch.where(frozen, sched.add_noise(y, noise, t.reshape(1)), x)
        with torch.enable_grad():
            xt = x.detach().requires_grad_(True)
            eps = policy.model(xt, t, global_cond=cond)
            x0 = (xt - (1 - a).sqrt() * eps) / a.sqrt()
            (grad,) = torch.autograd.grad(x0, xt, grad_outputs=w * (y - x0))
        s = (1 - a) / a
        scale = torch.clamp((1 + s) / s, max=max_guidance)
        with torch.no_grad():
            x = sched.step(eps.detach() - (1 - a).sqrt() * scale * grad, t, x).prev_sample
    with torch.no_grad():
        return policy.unnormalize_action(torch.where(frozen, y, x))


class GuidedTorchEngine(TorchPolicyEngine):
    """soft_inpaint's weights applied by PiGDM guidance instead of replacement (eager torch)."""

    def predict(self, history, seed=None, known=None, mask=None, hold=None) -> Prediction:
        if known is None:
            return super().predict(history, seed)
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        noise = torch.randn((1, self.horizon, self.action_dim), generator=gen)
        t0 = time.perf_counter()
        obs = {k: torch.from_numpy(np.ascontiguousarray(v))[None] for k, v in history.items()}
        actions = sample_guided(self.policy, obs, noise, torch.from_numpy(np.asarray(known, np.float32))[None],
                                torch.from_numpy(np.asarray(mask, np.float32))[None])[0].numpy()
        return Prediction(actions, time.perf_counter() - t0, seed)


def chunk_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="around", choices=tuple(TASKS))
    ap.add_argument("--episodes", type=int, default=40)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--delays", default="4,6")
    ap.add_argument("--inpaint-decay", type=float, default=0.8)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="default: results/soft_guidance_TASK.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    task = sim_task(args.task)
    demo = Path(task.demo_dir)
    policy = load_checkpoint(demo / "checkpoint" / "policy.safetensors").policy.eval()
    bundle = load_bundle(demo / "bundle", backend="onnxruntime", device="cpu")
    spec = policy.cfg.policy_spec()
    rng = np.random.default_rng(0)
    from dp_runtime.export.bundle import example_inputs
    obs_np = {k: v[0] for k, v in example_inputs(policy, 1, rng).items()}
    obs_t = {k: torch.from_numpy(v)[None] for k, v in obs_np.items()}
    h, a = spec.horizon, spec.action.dim
    noise = torch.randn(1, h, a, generator=torch.Generator().manual_seed(1))
    known = torch.from_numpy(rng.uniform(-0.5, 0.5, (1, h, a)).astype(np.float32))
    weights = torch.zeros(1, h)
    weights[0, 1:5] = 1.0
    weights[0, 5:9] = torch.tensor([args.inpaint_decay ** j for j in range(1, 5)])
    costs = {}
    # interleaved rounds, so a load change on the machine touches every row alike
    rows = {
        "bundle (ONNX Runtime), plain": lambda: bundle.predict(obs_np, noise=noise[0].numpy()),
        "bundle (ONNX Runtime), soft_inpaint (replacement)": lambda: bundle.predict(
            obs_np, noise=noise[0].numpy(), known=known[0].numpy(), mask=weights[0].numpy()),
        "eager torch, soft_inpaint (replacement)": lambda: policy.sample(obs_t, noise, known=known, mask=weights),
        "eager torch, PiGDM guidance": lambda: sample_guided(policy, obs_t, noise, known, weights),
    }
    samples: dict[str, list[float]] = {k: [] for k in rows}
    for _ in range(3):
        for name, fn in rows.items():
            samples[name].append(chunk_ms(fn, max(args.repeats // 3, 1)))
    for name in rows:
        costs[name] = float(np.median(samples[name]))
    base = costs["bundle (ONNX Runtime), plain"]
    print(f"{task.name} demo policy, {spec.horizon}-step horizon, {policy.cfg.num_inference_steps} DDIM steps, "
          f"{args.threads} threads ({platform.processor() or platform.machine()}):")
    for name, ms in costs.items():
        print(f"  {name:<52} {ms:7.1f} ms per chunk  ({ms / base:.1f}x the bundle's plain chunk)")
    dt = 1.0 / SimTopics().control_hz
    loop = []
    for delay in (int(d) for d in args.delays.split(",")):
        for label, engine in (("replacement", TorchPolicyEngine(policy)), ("PiGDM", GuidedTorchEngine(policy))):
            t0 = time.perf_counter()
            results = run_episodes(engine, args.episodes, seed=args.seed, task=task, chunk_transition="soft_inpaint",
                                   inpaint_decay=args.inpaint_decay, inference_lead="auto", delay_s=delay * dt)
            ratio, switches = boundary_jump_ratio(results)
            row = {"delay_periods": delay, "soft_mask_by": label, "episodes": len(results),
                   "success_rate": sum(r.success for r in results) / len(results), "boundary_jump_ratio": ratio,
                   task.error: float(np.nanmean([r.outcome[task.error] for r in results])),
                   "wall_s": time.perf_counter() - t0}
            loop.append(row)
            print(f"  delay {delay}: soft_inpaint by {label:<11} success {100 * row['success_rate']:5.1f} %  "
                  f"boundary_jump_ratio {ratio:.2f}  {task.error} {row[task.error]:.3f}  ({row['wall_s']:.0f} s)",
                  flush=True)
    out = args.out or HERE / "results" / f"soft_guidance_{task.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"task": task.name, "threads": args.threads, "machine": platform.machine(),
                               "inpaint_decay": args.inpaint_decay, "chunk_ms": costs, "closed_loop": loop,
                               "episodes": args.episodes, "seed": args.seed}, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
