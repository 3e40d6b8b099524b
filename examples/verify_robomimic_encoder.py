"""Check dp-export's robomimic encoder import against robomimic itself (manual; robomimic is not a dependency).

robomimic's PyPI release (0.3.0) predates its diffusion-policy algo, but its observation encoder
(ObservationGroupEncoder -> VisualCore ResNet18Conv + SpatialSoftmax + Linear, CropRandomizer,
feature ReLU) is the one robomimic's DiffusionPolicyUNet and diffusion_policy's hybrid policy use.
1. Where robomimic is installed:   python examples/verify_robomimic_encoder.py write /tmp/rm_enc.pt
2. In dp_runtime's environment:    python examples/verify_robomimic_encoder.py check /tmp/rm_enc.pt
"""
from __future__ import annotations

import argparse
import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn

CAMERAS = ["agentview_image", "robot0_eye_in_hand_image"]
# robomimic's shape_metadata sorts keys, so the low-dim key sits between the cameras.
SHAPES = OrderedDict([("agentview_image", [3, 84, 84]), ("robot0_eef_pos", [3]),
                      ("robot0_eye_in_hand_image", [3, 84, 84])])
CROP = 75


def write(out: Path) -> None:
    import robomimic.utils.obs_utils as ObsUtils
    from robomimic.config import config_factory
    from robomimic.models.obs_nets import ObservationGroupEncoder
    torch.manual_seed(0)
    config = config_factory("bc")
    with config.unlocked():
        config.observation.modalities.obs.rgb = CAMERAS
        config.observation.modalities.obs.low_dim = ["robot0_eef_pos"]
        rgb = config.observation.encoder.rgb
        rgb.core_kwargs = {"feature_dimension": 64, "backbone_class": "ResNet18Conv",
                           "backbone_kwargs": {"pretrained": False, "input_coord_conv": False},
                           "pool_class": "SpatialSoftmax", "pool_kwargs": {"num_kp": 32, "temperature": 1.0}}
        rgb.obs_randomizer_class = "CropRandomizer"
        rgb.obs_randomizer_kwargs = {"crop_height": CROP, "crop_width": CROP, "num_crops": 1, "pos_enc": False}
    ObsUtils.initialize_obs_utils_with_config(config)
    enc = ObservationGroupEncoder(observation_group_shapes=OrderedDict(obs=SHAPES),
                                  encoder_kwargs=ObsUtils.obs_encoder_kwargs_from_config(config.observation.encoder))

    def bn_to_gn(m: nn.Module) -> None:  # what DiffusionPolicyUNet does before training
        for name, child in m.named_children():
            if isinstance(child, nn.BatchNorm2d):
                setattr(m, name, nn.GroupNorm(child.num_features // 16, child.num_features))
            else:
                bn_to_gn(child)
    bn_to_gn(enc)
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(0.05 * torch.randn_like(p))
    enc.eval()
    rng = np.random.default_rng(2)
    obs = {k: rng.integers(0, 256, (2, 2, 84, 84, 3), dtype=np.uint8) for k in CAMERAS}
    obs["robot0_eef_pos"] = rng.uniform(-1, 1, (2, 2, 3)).astype(np.float32)
    inp = {k: (torch.from_numpy(v).float().permute(0, 1, 4, 2, 3) / 255.0 if v.dtype == np.uint8
               else torch.from_numpy(v)).flatten(0, 1) for k, v in obs.items()}
    with torch.no_grad():
        feats = enc(obs=inp).reshape(2, -1)
    torch.save({"state": {"policy.obs_encoder." + k: v for k, v in enc.state_dict().items()}, "obs": obs,
                "features": feats}, out)
    print(f"wrote {out}")


def check(ref_path: Path) -> None:
    import tempfile
    from dp_runtime.checkpoint import load_any
    from dp_runtime.model import ConditionalUnet1D
    ref = torch.load(ref_path, weights_only=False)
    unet = ConditionalUnet1D(input_dim=2, global_cond_dim=ref["features"].shape[1], diffusion_step_embed_dim=32,
                             down_dims=(32, 64), kernel_size=3, n_groups=8, cond_predict_scale=True)
    state = dict(ref["state"], **{"policy.noise_pred_net." + k: v for k, v in unet.state_dict().items()})
    config = {"algo_name": "diffusion_policy", "algo": {
        "horizon": {"observation_horizon": 2, "action_horizon": 4, "prediction_horizon": 8},
        "ddim": {"enabled": True, "num_train_timesteps": 100, "num_inference_timesteps": 8}},
        "observation": {"modalities": {"obs": {"low_dim": ["robot0_eef_pos"], "rgb": CAMERAS}},
                        "encoder": {"rgb": {"obs_randomizer_class": "CropRandomizer",
                                            "obs_randomizer_kwargs": {"crop_height": CROP, "crop_width": CROP}}}}}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pth"
        torch.save({"model": {"nets": state, "ema": state}, "config": json.dumps(config),
                    "algo_name": "diffusion_policy", "shape_metadata": {"ac_dim": 2, "all_shapes": SHAPES}}, path)
        ck = load_any(path, trust_pickle=True)
    with torch.no_grad():
        ours = ck.policy.encode({k: torch.from_numpy(v) for k, v in ref["obs"].items()})
    print(f"max |ours - robomimic ObservationEncoder| = {float((ours - ref['features']).abs().max()):.2e} "
          f"(features up to {float(ref['features'].abs().max()):.2f})")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["write", "check"])
    p.add_argument("path", type=Path)
    a = p.parse_args()
    write(a.path) if a.mode == "write" else check(a.path)
