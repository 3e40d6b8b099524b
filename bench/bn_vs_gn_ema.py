"""The seed's experiment: why an EMA policy must not have BatchNorm.

    python bench/bn_vs_gn_ema.py [--demos 400] [--steps 1000] [--episodes 20] [--out bench/results]

Same demonstrations, same seeds, three trainings of the demo policy:
  (a) GroupNorm + EMA            (what dp_runtime exports)
  (b) BatchNorm + EMA            (as the reference EMA implementations do it: parameters are
                                  averaged, running statistics are not, so the EMA copy keeps its
                                  initial running_mean 0 / running_var 1)
  (c) BatchNorm, live weights    (no EMA: running statistics match the weights)
Each is evaluated closed loop in the sim in torch (the exporter rightly refuses (b) and (c)) and
on held-out demonstrations (action MSE of the executed chunk). Prints a table, writes JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dp_runtime.dataset import DatasetConfig, bag_to_dataset, policy_config  # noqa: E402
from dp_runtime.model import DiffusionPolicy  # noqa: E402
from dp_runtime.model.norms import running_stats_layers  # noqa: E402
from dp_runtime.sim.demo import config_path  # noqa: E402
from dp_runtime.sim.evaluate import TorchPolicyEngine, run_episodes  # noqa: E402
from dp_runtime.sim.record import record_demonstrations  # noqa: E402
from dp_runtime.train import TrainConfig, fit  # noqa: E402


def groupnorm_to_batchnorm(module: nn.Module) -> nn.Module:
    """The unconverted encoder: every GroupNorm of the image encoder back to BatchNorm2d."""
    for name, child in module.named_children():
        if isinstance(child, nn.GroupNorm):
            setattr(module, name, nn.BatchNorm2d(child.num_channels))
        else:
            groupnorm_to_batchnorm(child)
    return module


def batchnorm_policy(cfg, stats) -> DiffusionPolicy:
    policy = DiffusionPolicy(cfg, stats)
    groupnorm_to_batchnorm(policy.obs_encoder)
    return policy


def dataset_from(bag: Path, cfg: DatasetConfig):
    arrays, info = bag_to_dataset(bag, cfg)
    return policy_config(cfg, info), {k: v for k, v in arrays.items() if k != "episode"}


def action_mse(policy, data, n: int = 200, seed: int = 0) -> float:
    engine = TorchPolicyEngine(policy)
    errs = []
    for i in range(min(n, len(data["action"]))):
        hist = {k: data[k][i] for k in data if k != "action"}
        pred = engine.executed_slice(engine.predict(hist, seed=seed + i).actions)
        errs.append(np.mean((pred - engine.executed_slice(data["action"][i])) ** 2))
    return float(np.mean(errs))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--demos", type=int, default=400)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default="out/bn_vs_gn")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = p.parse_args()
    torch.set_num_threads(2)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    dcfg = DatasetConfig.load(config_path("sim_dataset.yaml"))
    for name, n, seed in (("demos", args.demos, args.seed), ("heldout", 30, args.seed + 777)):
        if not (work / name).exists():
            record_demonstrations(work / name, n, seed=seed)
    cfg, data = dataset_from(work / "demos", dcfg)
    _, heldout = dataset_from(work / "heldout", dcfg)
    tcfg = TrainConfig(steps=args.steps, batch_size=64, lr=1e-3, seed=args.seed, log_every=args.steps // 5)
    variants = [("(a) GroupNorm + EMA", DiffusionPolicy, True, "ema"),
                ("(b) BatchNorm + EMA", batchnorm_policy, True, "ema"),
                ("(c) BatchNorm, no EMA", batchnorm_policy, False, "live")]
    rows = []
    for label, factory, use_ema, which in variants:
        t0 = time.time()
        print(f"training {label} ...", flush=True)
        r = fit(cfg, data, TrainConfig(**{**tcfg.__dict__, "use_ema": use_ema}),
                progress=lambda s, loss: print(f"  step {s}: loss {loss:.4f}", flush=True), policy_factory=factory)
        policy = r.ema_policy if which == "ema" else r.policy
        policy.eval()
        bn = running_stats_layers(policy)
        results = run_episodes(TorchPolicyEngine(policy), args.episodes, seed=args.seed + 4242)
        row = {"variant": label, "weights": which, "running_stats_layers": len(bn),
               "success_rate": float(np.mean([x.success for x in results])),
               "mean_final_distance_m": float(np.mean([x.final_distance for x in results])),
               "heldout_action_mse": action_mse(policy, heldout), "train_s": round(time.time() - t0, 1)}
        rows.append(row)
        print(f"  -> success {row['success_rate']:.0%}, held-out action MSE {row['heldout_action_mse']:.4f}",
              flush=True)
    print(f"\n{'variant':28s} {'success':>8s} {'final dist':>11s} {'held-out MSE':>13s}")
    for r in rows:
        print(f"{r['variant']:28s} {r['success_rate']:8.0%} {r['mean_final_distance_m']:10.3f}m "
              f"{r['heldout_action_mse']:13.4f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bn_vs_gn_ema.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
