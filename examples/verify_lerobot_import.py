"""Check dp-export's LeRobot import against LeRobot itself (manual; LeRobot is not a dependency).

1. In an environment with lerobot installed (0.4.4 was used):
     python examples/verify_lerobot_import.py write /tmp/lr_ckpt
   builds a random 2-camera DiffusionPolicy, saves it with save_pretrained plus its
   pre/post-processors, and stores LeRobot's own actions for fixed observations and noise.
2. In dp_runtime's environment:
     python examples/verify_lerobot_import.py check /tmp/lr_ckpt [--bundle /tmp/lr_bundle]
   imports the directory, samples with the same noise, and prints the difference (and the
   bundle's, when given one exported with `dp-export /tmp/lr_ckpt -o /tmp/lr_bundle --allow-non-ema`).
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import torch

CAMERAS = ["observation.images.top", "observation.images.wrist"]


def write(out: Path) -> None:
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy
    from lerobot.policies.diffusion.processor_diffusion import make_diffusion_pre_post_processors
    torch.manual_seed(0)
    shutil.rmtree(out, ignore_errors=True)
    feats = {c: PolicyFeature(type=FeatureType.VISUAL, shape=(3, 96, 96)) for c in CAMERAS}
    feats["observation.state"] = PolicyFeature(type=FeatureType.STATE, shape=(2,))
    cfg = DiffusionConfig(input_features=feats,
                          output_features={"action": PolicyFeature(type=FeatureType.ACTION, shape=(2,))},
                          crop_shape=(83, 83), pretrained_backbone_weights=None, use_group_norm=True,
                          down_dims=(64, 128, 256), horizon=16, n_action_steps=8, noise_scheduler_type="DDIM",
                          num_inference_steps=10, device="cpu", use_separate_rgb_encoder_per_camera=True)
    policy = DiffusionPolicy(cfg).eval()
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    stats = {"observation.state": {"min": np.array([10.0, -50.0]), "max": np.array([510.0, 450.0])},
             "action": {"min": np.array([0.0, -1.0]), "max": np.array([400.0, 3.0])}}
    for i, c in enumerate(CAMERAS):
        stats[c] = {"mean": np.array([0.4, 0.5, 0.6]).reshape(3, 1, 1) + 0.05 * i,
                    "std": np.array([0.2, 0.25, 0.3]).reshape(3, 1, 1)}
    pre, post = make_diffusion_pre_post_processors(cfg, dataset_stats=stats)
    for thing in (policy, pre, post):
        thing.save_pretrained(out)
    rng = np.random.default_rng(1)
    obs = {c: rng.integers(0, 256, (2, 2, 96, 96, 3), dtype=np.uint8) for c in CAMERAS}
    obs["observation.state"] = rng.uniform(0, 400, (2, 2, 2)).astype(np.float32)
    noise = torch.from_numpy(rng.standard_normal((2, 16, 2)).astype(np.float32))
    batch = {c: torch.from_numpy(obs[c]).permute(0, 1, 4, 2, 3).float() / 255.0 for c in CAMERAS}
    batch["observation.state"] = torch.from_numpy(obs["observation.state"])
    norm = next(s for s in pre.steps if type(s).__name__ == "NormalizerProcessorStep")
    nbatch = norm._normalize_observation(batch, inverse=False)
    nbatch["observation.images"] = torch.stack([nbatch[c] for c in CAMERAS], dim=-4)
    with torch.no_grad():
        naction = policy.diffusion.generate_actions(nbatch, noise=noise)
    unnorm = next(s for s in post.steps if type(s).__name__ == "UnnormalizerProcessorStep")
    np.save(out / "ref_actions.npy", unnorm._normalize_action(naction, inverse=True).numpy())
    np.savez(out / "ref_obs.npz", **{k.replace(".", "_"): v for k, v in obs.items()}, noise=noise.numpy())
    print(f"wrote {out}")


def check(directory: Path, bundle: Path | None) -> None:
    from dp_runtime.checkpoint import load_any
    from dp_runtime.engine import load_bundle
    ck = load_any(directory, allow_non_ema=True)
    z = np.load(directory / "ref_obs.npz")
    obs = {"images_top": z["observation_images_top"], "images_wrist": z["observation_images_wrist"],
           "state": z["observation_state"]}
    ref = np.load(directory / "ref_actions.npy")
    start, end = ck.config.action_slice
    scale = ck.policy.normalizer.params["action"].scale.numpy()
    ours = ck.policy.sample({k: torch.from_numpy(v) for k, v in obs.items()}, torch.from_numpy(z["noise"])).numpy()
    results = {"torch policy": ours}
    if bundle:
        results["bundle (ORT CPU)"] = load_bundle(bundle, backend="onnxruntime", device="cpu").predict(
            obs, noise=z["noise"]).actions
    for name, actions in results.items():
        diff = np.abs(actions[:, start:end] - ref)
        print(f"{name:>16} vs LeRobot: max |diff| {diff.max():.2e} raw ({(diff * scale).max():.2e} normalized); "
              f"max |action| {np.abs(ref).max():.1f}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["write", "check"])
    p.add_argument("directory", type=Path)
    p.add_argument("--bundle", type=Path, default=None)
    a = p.parse_args()
    write(a.directory) if a.mode == "write" else check(a.directory, a.bundle)
