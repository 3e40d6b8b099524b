"""Checkpoints in the layouts diffusion_policy, robomimic and LeRobot write, made from one of our policies.

Each writer takes a *source* policy (ours, random weights, built with the
config the foreign framework's run would imply) and writes its weights under
the framework's own parameter names, file structure and normalization
conventions. Loading the file back must give a policy with the same actions.
Where each name comes from:

- diffusion_policy (real-stanford/diffusion_policy): ``workspace/base_workspace.py``
  save_checkpoint -> ``{'cfg': DictConfig, 'state_dicts': {'model', 'ema_model',
  'optimizer'}, 'pickles': {...}}`` saved with ``pickle_module=dill``;
  ``model/common/normalizer.py`` -> ``normalizer.params_dict.<key>.{scale,offset,
  input_stats.*}``, ``normalized = raw * scale + offset``, images through
  ``get_image_range_normalizer`` (scale 2, offset -1, shape (1,));
  ``model/vision/multi_image_obs_encoder.py`` -> ``obs_encoder.key_model_map.<cam>``
  (torchvision ResNet, fc=Identity); ``common/module_attr_mixin.py`` -> ``_dummy_variable``;
  the hybrid policy's ``obs_encoder`` is robomimic's ObservationEncoder.
- robomimic (ARISE-Initiative/robomimic): ``utils/train_utils.py`` save_model ->
  ``{'model': {'nets', 'ema'}, 'config': json, 'algo_name', 'env_metadata',
  'shape_metadata': {'ac_dim', 'all_shapes', 'all_obs_keys', ...}, 'action_normalization_stats'}``;
  ``algo/diffusion_policy.py`` -> ``policy.obs_encoder`` / ``policy.noise_pred_net``;
  ``models/obs_nets.py`` -> ``nets.obs.obs_nets.<key>``; ``models/obs_core.py``
  VisualCore -> ``backbone`` (``nets.<i>`` = ResNet children), ``pool``
  (SpatialSoftmax: ``nets`` conv, buffers ``pos_x``, ``pos_y``, ``temperature``),
  ``nets`` = Sequential(backbone, pool, Flatten, Linear); ``utils/dataset.py``
  -> action stats ``raw = scale * normalized + offset``.
- LeRobot (huggingface/lerobot): ``policies/diffusion/modeling_diffusion.py``
  -> ``diffusion.unet.*`` (``conv1``/``conv2`` blocks, bare down/up convs),
  ``diffusion.rgb_encoder[.<i>].{backbone.<i>, pool.nets, pool.pos_grid, out}``;
  ``configuration_diffusion.py`` -> config.json fields; ``processor/
  normalize_processor.py`` -> ``<feature>.<stat>`` safetensors, MIN_MAX
  ``2 (x - min) / (max - min) - 1``, MEAN_STD ``(x - mean) / (std + eps)``.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from dp_runtime.model import DiffusionPolicy, EncoderConfig, ImageSpec, LowDimSpec, PolicyConfig, UnetConfig

RESNET = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
UNET = UnetConfig(down_dims=(32, 64), kernel_size=3, n_groups=4, diffusion_step_embed_dim=32)
IMG, CROP = 41, 34  # (41 - 34) / 2 = 3.5: torchvision rounds to 4, robomimic floors to 3


def randomize(policy: DiffusionPolicy, seed: int) -> DiffusionPolicy:
    """Perturb every parameter so a swapped or dropped weight would change the actions."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return policy.eval()


def set_affine(policy: DiffusionPolicy, key: str, scale, offset) -> None:
    with torch.no_grad():
        policy.normalizer.params[key].scale.copy_(torch.as_tensor(scale, dtype=torch.float32))
        policy.normalizer.params[key].offset.copy_(torch.as_tensor(offset, dtype=torch.float32))


def set_image_mean_std(policy: DiffusionPolicy, key: str, mean, std) -> None:
    pre = policy.obs_encoder.preprocess[key]
    with torch.no_grad():
        pre.mean.copy_(torch.as_tensor(mean, dtype=torch.float32).reshape(pre.mean.shape))
        pre.std.copy_(torch.as_tensor(std, dtype=torch.float32).reshape(pre.std.shape))


def resnet_to_sequential(state: dict, ours: str, theirs: str) -> dict:
    out = {}
    for k, v in state.items():
        if k.startswith(ours + "."):
            child, rest = k[len(ours) + 1:].split(".", 1)
            if child in RESNET:
                out[f"{theirs}.{RESNET.index(child)}.{rest}"] = v
    return out


def add_batchnorm_buffers(state: dict, prefix: str) -> dict:
    """What a BatchNorm ResNet leaves in a state dict: running stats next to every bn weight."""
    state = dict(state)
    for k in [k for k in state if k.startswith(prefix) and re.search(r"(bn\d|downsample\.1|\.1)\.weight$", k)]:
        base = k[:-len("weight")]
        n = state[k].shape[0]
        state[base + "running_mean"] = torch.zeros(n)
        state[base + "running_var"] = torch.ones(n)
        state[base + "num_batches_tracked"] = torch.tensor(7)
    return state


# -- diffusion_policy ----------------------------------------------------------------------------

PUSHT_LOW = {"agent_pos": 2}
# diffusion_policy's robomimic *_image_abs tasks (e.g. lift_image_abs.yaml): robosuite's eef observations, 10-D actions
ROBOMIMIC_ABS_LOW = {"robot0_eef_pos": 3, "robot0_eef_quat": 4, "robot0_gripper_qpos": 2}


def dp_source(hybrid: bool = False, seed: int = 0, cropped: bool = True, low: dict[str, int] = PUSHT_LOW,
              action_dim: int = 2) -> DiffusionPolicy:
    """Image policy: rgb keys sorted then low-dim sorted; hybrid: shape_meta order (here the low-dims first).

    ``cropped=False``: what diffusion_policy evaluates with random_crop=False (no crop at all).
    """
    crop = (4, 4, CROP, CROP) if cropped else None  # torchvision center_crop: round(3.5) = 4
    enc = (EncoderConfig(base_width=8, pool="spatial_softmax", num_kp=8, feature_dim=16, fc_relu=True) if hybrid
           else EncoderConfig(base_width=8, pool="avg"))
    order = [*low, "image"] if hybrid else ["image", *sorted(low)]
    cfg = PolicyConfig(images=[ImageSpec("image", (IMG, IMG, 3), crop=crop)],
                       low_dims=[LowDimSpec(k, n) for k, n in low.items()],
                       action_dim=action_dim, horizon=8, n_obs_steps=2, n_action_steps=4, num_inference_steps=8,
                       image_range="mean_std", obs_order=order, encoder=enc, unet=UNET)
    policy = randomize(DiffusionPolicy(cfg), seed)
    for k, n in {**low, "action": action_dim}.items():
        set_affine(policy, k, np.linspace(0.004, 0.005, n).tolist(), np.linspace(-1.1, -0.9, n).tolist())
    m, s = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    if hybrid:  # range normalizer to [-1, 1], no ImageNet step
        set_image_mean_std(policy, "image", [0.5] * 3, [0.5] * 3)
    else:  # range normalizer, then ImageNet normalization: ((2x - 1) - m) / s
        set_image_mean_std(policy, "image", (m + 1) / 2, s / 2)
    return policy


def dp_state_dict(policy: DiffusionPolicy, hybrid: bool) -> dict:
    sd = policy.state_dict()
    out = {k: v for k, v in sd.items() if k.startswith("model.")}
    out["_dummy_variable"] = torch.zeros(0)
    if hybrid:
        pre = "obs_encoder.obs_nets.image"
        out.update(_visual_core(sd, "obs_encoder.key_model_map.image", pre, (CROP, CROP)))
    else:
        out.update({k: v for k, v in sd.items() if k.startswith("obs_encoder.key_model_map.")})
        out["obs_encoder._dummy_variable"] = torch.zeros(0)
    for key in [s.key for s in policy.cfg.low_dims] + ["action"]:
        out[f"normalizer.params_dict.{key}.scale"] = sd[f"normalizer.params.{key}.scale"]
        out[f"normalizer.params_dict.{key}.offset"] = sd[f"normalizer.params.{key}.offset"]
        out[f"normalizer.params_dict.{key}.input_stats.min"] = torch.zeros_like(sd[f"normalizer.params.{key}.scale"])
    out["normalizer.params_dict.image.scale"] = torch.tensor([2.0])
    out["normalizer.params_dict.image.offset"] = torch.tensor([-1.0])
    return out


def dp_cfg(hybrid: bool, target: str | None = None, low: dict[str, int] = PUSHT_LOW, action_dim: int = 2,
           task: dict | None = None):
    """``task``: more of the task config (diffusion_policy's robomimic tasks: abs_action, dataset.rotation_rep)."""
    from omegaconf import OmegaConf
    policy = {
        "_target_": target or ("diffusion_policy.policy.diffusion_unet_hybrid_image_policy."
                               "DiffusionUnetHybridImagePolicy" if hybrid else
                               "diffusion_policy.policy.diffusion_unet_image_policy.DiffusionUnetImagePolicy"),
        "shape_meta": "${shape_meta}",
        "noise_scheduler": {"_target_": "diffusers.schedulers.scheduling_ddpm.DDPMScheduler",
                            "num_train_timesteps": 100, "beta_start": 0.0001, "beta_end": 0.02,
                            "beta_schedule": "squaredcos_cap_v2", "variance_type": "fixed_small",
                            "clip_sample": True, "prediction_type": "epsilon"},
        "horizon": "${horizon}", "n_action_steps": "${eval:'${n_action_steps}+${n_latency_steps}'}",
        "n_obs_steps": "${n_obs_steps}", "num_inference_steps": 8, "obs_as_global_cond": "${obs_as_global_cond}",
        "diffusion_step_embed_dim": 32, "down_dims": [32, 64], "kernel_size": 3, "n_groups": 4,
        "cond_predict_scale": True,
    }
    if hybrid:
        policy.update({"crop_shape": [CROP, CROP], "obs_encoder_group_norm": True, "eval_fixed_crop": True})
    else:
        policy["obs_encoder"] = {
            "_target_": "diffusion_policy.model.vision.multi_image_obs_encoder.MultiImageObsEncoder",
            "shape_meta": "${shape_meta}",
            "rgb_model": {"_target_": "diffusion_policy.model.vision.model_getter.get_resnet",
                          "name": "resnet18", "weights": None},
            "resize_shape": None, "crop_shape": [CROP, CROP], "random_crop": True, "use_group_norm": True,
            "share_rgb_model": False, "imagenet_norm": True}
    lows = {k: {"shape": [n], "type": "low_dim"} for k, n in low.items()}
    obs = {"image": {"shape": [3, IMG, IMG], "type": "rgb"}, **lows}
    if hybrid:  # shape_meta order decides the hybrid policy's feature order
        obs = {**lows, "image": obs["image"]}
    return OmegaConf.create({
        "name": "train_diffusion_unet_hybrid" if hybrid else "train_diffusion_unet_image",
        "shape_meta": "${task.shape_meta}", "horizon": 8, "n_obs_steps": 2, "n_action_steps": 4,
        "n_latency_steps": 0, "obs_as_global_cond": True, "policy": policy,
        "ema": {"_target_": "diffusion_policy.model.diffusion.ema_model.EMAModel", "update_after_step": 0,
                "inv_gamma": 1.0, "power": 0.75, "min_value": 0.0, "max_value": 0.9999},
        "training": {"use_ema": True},
        "task": {"name": "pusht_image", "shape_meta": {"obs": obs, "action": {"shape": [action_dim]}},
                 "env_runner": {"fps": 10}, **(task or {})},
    })


def write_dp(path: Path, policy: DiffusionPolicy, hybrid: bool = False, ema: bool = True,
             state: dict | None = None, cfg=None) -> Path:
    import dill
    sd = state if state is not None else dp_state_dict(policy, hybrid)
    live = shifted(sd)
    payload = {"cfg": cfg if cfg is not None else dp_cfg(hybrid),
               "state_dicts": {"model": live, "optimizer": {"state": {}, "param_groups": []}},
               "pickles": {"_output_dir": dill.dumps("/tmp/outputs")}}
    if ema:
        payload["state_dicts"]["ema_model"] = sd
    with open(path, "wb") as f:
        torch.save(payload, f, pickle_module=dill)
    return path


def _visual_core(sd: dict, ours: str, theirs: str, fmap_input_hw) -> dict:
    """Our spatial-softmax ResNet18GN -> robomimic VisualCore names (modules appear twice, as in torch)."""
    out = resnet_to_sequential(sd, ours, f"{theirs}.backbone.nets")
    out[f"{theirs}.pool.nets.weight"] = sd[f"{ours}.pool.nets.weight"]
    out[f"{theirs}.pool.nets.bias"] = sd[f"{ours}.pool.nets.bias"]
    h, w = fmap_input_hw
    for _ in range(5):
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    px, py = np.meshgrid(np.linspace(-1.0, 1.0, w), np.linspace(-1.0, 1.0, h))
    out[f"{theirs}.pool.pos_x"] = torch.from_numpy(px.reshape(1, h * w)).float()
    out[f"{theirs}.pool.pos_y"] = torch.from_numpy(py.reshape(1, h * w)).float()
    out[f"{theirs}.pool.temperature"] = torch.tensor([1.0])
    for k in list(out):  # nn.Sequential(backbone, pool, Flatten, Linear) holds the same modules again
        if k.startswith(f"{theirs}.backbone."):
            out[k.replace(f"{theirs}.backbone.", f"{theirs}.nets.0.", 1)] = out[k]
        if k.startswith(f"{theirs}.pool."):
            out[k.replace(f"{theirs}.pool.", f"{theirs}.nets.1.", 1)] = out[k]
    out[f"{theirs}.nets.3.weight"] = sd[f"{ours}.fc.weight"]
    out[f"{theirs}.nets.3.bias"] = sd[f"{ours}.fc.bias"]
    return out


# -- robomimic -----------------------------------------------------------------------------------

def rm_source(seed: int = 0) -> DiffusionPolicy:
    """robomimic sorts obs keys (all_shapes), images in [0, 1], crop offset floored: (41 - 34) // 2 = 3."""
    cfg = PolicyConfig(images=[ImageSpec("agentview_image", (IMG, IMG, 3), crop=(3, 3, CROP, CROP))],
                       low_dims=[LowDimSpec("robot0_eef_pos", 3)], action_dim=2, horizon=8, n_obs_steps=2,
                       n_action_steps=4, num_inference_steps=8, image_range="zero_one",
                       obs_order=["agentview_image", "robot0_eef_pos"],
                       encoder=EncoderConfig(base_width=8, pool="spatial_softmax", num_kp=8, feature_dim=16,
                                             fc_relu=True),  # ObservationEncoder's feature_activation
                       unet=UnetConfig(down_dims=(32, 64), kernel_size=3, n_groups=8, diffusion_step_embed_dim=32))
    policy = randomize(DiffusionPolicy(cfg), seed)
    set_affine(policy, "action", [2.0, 4.0], [0.0, -1.0])  # robomimic scale 0.5/0.25, offset 0/0.25
    return policy


def rm_state_dict(policy: DiffusionPolicy) -> dict:
    sd = policy.state_dict()
    out = {"policy.noise_pred_net." + k[len("model."):]: v for k, v in sd.items() if k.startswith("model.")}
    out.update(_visual_core(sd, "obs_encoder.key_model_map.agentview_image",
                            "policy.obs_encoder.nets.obs.obs_nets.agentview_image", (CROP, CROP)))
    return out


def shifted(state: dict) -> dict:
    """'Live' weights that differ from the EMA ones, keeping shared tensors shared."""
    done: dict[int, torch.Tensor] = {}
    buffers = ("pos_x", "pos_y", "temperature", "pos_grid")
    return {k: done.setdefault(id(v), v + 0.5 if v.is_floating_point() and v.numel()
                               and not k.endswith(buffers) else v)
            for k, v in state.items()}


def as_module(state: dict) -> torch.nn.Module:
    """A module tree whose parameters() follow ``state``'s names; tensors shared in ``state`` are one
    Parameter (as VisualCore's backbone/nets.0), buffers stay buffers: what robomimic's nets are."""
    root = torch.nn.Module()
    params: dict[int, torch.nn.Parameter] = {}
    for key, v in state.items():
        *path, leaf = key.split(".")
        mod = root
        for part in path:
            if part not in mod._modules:
                mod.add_module(part, torch.nn.Module())
            mod = mod._modules[part]
        if leaf in ("pos_x", "pos_y", "temperature"):
            mod.register_buffer(leaf, v)
        else:
            mod.register_parameter(leaf, params.setdefault(id(v), torch.nn.Parameter(v.clone())))
    return root


def write_robomimic(path: Path, policy: DiffusionPolicy, ema: bool = True, state: dict | None = None,
                    algo_name: str = "diffusion_policy", ema_state: dict | None = None, ddim: bool = True) -> Path:
    """``ddim=False``: robomimic's default config (DDPM, 100 inference steps)."""
    from collections import OrderedDict
    sd = state if state is not None else rm_state_dict(policy)
    config = {
        "algo_name": algo_name,
        "algo": {"horizon": {"observation_horizon": 2, "action_horizon": 4, "prediction_horizon": 8},
                 "unet": {"enabled": True, "diffusion_step_embed_dim": 32, "down_dims": [32, 64], "kernel_size": 3,
                          "n_groups": 8},
                 "ema": {"enabled": ema, "power": 0.75},
                 "ddpm": {"enabled": not ddim, "num_train_timesteps": 100, "num_inference_timesteps": 100,
                          "beta_schedule": "squaredcos_cap_v2", "clip_sample": True, "prediction_type": "epsilon"},
                 "ddim": {"enabled": ddim, "num_train_timesteps": 100, "num_inference_timesteps": 8,
                          "beta_schedule": "squaredcos_cap_v2", "clip_sample": True, "set_alpha_to_one": True,
                          "steps_offset": 0, "prediction_type": "epsilon"}},
        "observation": {"modalities": {"obs": {"low_dim": ["robot0_eef_pos"], "rgb": ["agentview_image"],
                                               "depth": [], "scan": []}},
                        "encoder": {"rgb": {"core_class": "VisualCore",
                                            "core_kwargs": {"feature_dimension": 16, "backbone_class": "ResNet18Conv",
                                                            "pool_class": "SpatialSoftmax",
                                                            "pool_kwargs": {"num_kp": 8}},
                                            "obs_randomizer_class": "CropRandomizer",
                                            "obs_randomizer_kwargs": {"crop_height": CROP, "crop_width": CROP,
                                                                      "num_crops": 1, "pos_enc": False}}}},
        "train": {"action_keys": ["action/pos", "action/gripper"], "hdf5_normalize_obs": False},
    }
    params = {
        "model": {"nets": shifted(sd), "ema": (ema_state or sd) if ema else None},
        "config": json.dumps(config), "algo_name": algo_name, "env_metadata": {"env_name": "Lift"},
        "shape_metadata": {"ac_dim": 2, "all_shapes": OrderedDict([("agentview_image", [3, IMG, IMG]),
                                                                   ("robot0_eef_pos", [3])]),
                           "all_obs_keys": ["agentview_image", "robot0_eef_pos"], "use_images": True},
        # raw = scale * normalized + offset, one entry per action key (1 dim each here)
        "action_normalization_stats": {"action/pos": {"scale": [[0.5]], "offset": [[0.0]]},
                                       "action/gripper": {"scale": [[0.25]], "offset": [[0.25]]}},
    }
    torch.save(params, path)
    return path


# -- LeRobot -------------------------------------------------------------------------------------

LR_MIN, LR_MAX = np.array([10.0, -50.0]), np.array([510.0, 450.0])
LR_ACT_MIN, LR_ACT_MAX = np.array([0.0, -1.0]), np.array([400.0, 3.0])
LR_MEAN, LR_STD = np.array([0.4, 0.5, 0.6]), np.array([0.2, 0.25, 0.3])
ONE_CAMERA = ("observation.image",)
TWO_CAMERAS = ("observation.images.top", "observation.images.wrist")


def lr_key(feature: str) -> str:
    return feature[len("observation."):].replace(".", "_")


def lr_bounds(dim: int) -> tuple[np.ndarray, ...]:
    """(state min, state max, action min, action max) of ``dim`` values each (the 2-D ones repeated)."""
    return tuple(np.resize(v, dim) for v in (LR_MIN, LR_MAX, LR_ACT_MIN, LR_ACT_MAX))


def lr_source(cameras=ONE_CAMERA, separate: bool = False, seed: int = 0, resize: int | None = None,
              dim: int = 2) -> DiffusionPolicy:
    """State first, then cameras; MIN_MAX state/action, MEAN_STD images; torchvision centre crop (4).

    ``resize``: LeRobot's resize_shape (square), applied before the centre crop; ``dim``: the state's and the
    action's size.
    """
    keys = [lr_key(c) for c in cameras]
    top = int(round(((resize or IMG) - CROP) / 2.0))
    cfg = PolicyConfig(images=[ImageSpec(k, (IMG, IMG, 3), resize=(resize, resize) if resize else None,
                                         crop=(top, top, CROP, CROP)) for k in keys],
                       low_dims=[LowDimSpec("state", dim)], action_dim=dim, horizon=8, n_obs_steps=2,
                       n_action_steps=4, num_inference_steps=8, image_range="mean_std", obs_order=["state", *keys],
                       encoder=EncoderConfig(base_width=8, pool="spatial_softmax", num_kp=8, feature_dim=16,
                                             fc_relu=True, share=not separate),
                       unet=UNET)
    policy = randomize(DiffusionPolicy(cfg), seed)
    s_min, s_max, a_min, a_max = lr_bounds(dim)
    for key, lo, hi in (("state", s_min, s_max), ("action", a_min, a_max)):
        set_affine(policy, key, 2.0 / (hi - lo), -1.0 - 2.0 * lo / (hi - lo))
    for i, k in enumerate(keys):
        set_image_mean_std(policy, k, LR_MEAN + 0.05 * i, LR_STD + 1e-8)
    return policy


def lr_state_dict(policy: DiffusionPolicy) -> dict:
    sd = policy.state_dict()
    out = {}
    for k, v in sd.items():
        if k.startswith("model."):
            k = k[len("model."):].replace(".blocks.0.", ".conv1.").replace(".blocks.1.", ".conv2.")
            k = re.sub(r"^((?:down|up)_modules\.\d+\.2)\.conv\.", r"\1.", k)
            out["diffusion.unet." + k] = v
    names = list(policy.obs_encoder.key_model_map)
    separate = names != ["rgb"]
    for i, name in enumerate(names):
        enc, theirs = f"obs_encoder.key_model_map.{name}", f"diffusion.rgb_encoder.{i}" if separate \
            else "diffusion.rgb_encoder"
        out.update(resnet_to_sequential(sd, enc, f"{theirs}.backbone"))
        out[f"{theirs}.pool.nets.weight"] = sd[f"{enc}.pool.nets.weight"]
        out[f"{theirs}.pool.nets.bias"] = sd[f"{enc}.pool.nets.bias"]
        h, w = policy.cfg.images[0].crop[2:]
        for _ in range(5):  # layer4 map of the crop: five stride-2 stages
            h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        px, py = np.meshgrid(np.linspace(-1.0, 1.0, w), np.linspace(-1.0, 1.0, h))
        out[f"{theirs}.pool.pos_grid"] = torch.from_numpy(
            np.concatenate([px.reshape(h * w, 1), py.reshape(h * w, 1)], axis=1)).float()
        out[f"{theirs}.out.weight"] = sd[f"{enc}.fc.weight"]
        out[f"{theirs}.out.bias"] = sd[f"{enc}.fc.bias"]
    return out


def lr_config(cameras=ONE_CAMERA, separate: bool = False, dim: int = 2, **overrides) -> dict:
    cfg = {
        "type": "diffusion", "n_obs_steps": 2, "horizon": 8, "n_action_steps": 4,
        "normalization_mapping": {"VISUAL": "MEAN_STD", "STATE": "MIN_MAX", "ACTION": "MIN_MAX"},
        "input_features": {**{c: {"type": "VISUAL", "shape": [3, IMG, IMG]} for c in cameras},
                           "observation.state": {"type": "STATE", "shape": [dim]}},
        "output_features": {"action": {"type": "ACTION", "shape": [dim]}},
        "device": "cuda", "use_amp": False, "push_to_hub": False, "drop_n_last_frames": 3,
        "vision_backbone": "resnet18", "resize_shape": None, "crop_ratio": 1.0, "crop_shape": [CROP, CROP],
        "crop_is_random": True, "pretrained_backbone_weights": None, "use_group_norm": True,
        "spatial_softmax_num_keypoints": 8, "use_separate_rgb_encoder_per_camera": separate,
        "down_dims": [32, 64], "kernel_size": 3, "n_groups": 4, "diffusion_step_embed_dim": 32,
        "use_film_scale_modulation": True, "noise_scheduler_type": "DDIM", "num_train_timesteps": 100,
        "beta_schedule": "squaredcos_cap_v2", "beta_start": 0.0001, "beta_end": 0.02, "prediction_type": "epsilon",
        "clip_sample": True, "clip_sample_range": 1.0, "num_inference_steps": 8, "compile_model": False,
        "do_mask_loss_for_padding": False,
    }
    cfg.update(overrides)
    return cfg


def write_lerobot(directory: Path, policy: DiffusionPolicy, config: dict | None = None,
                  state: dict | None = None, cameras=ONE_CAMERA) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    dim = policy.cfg.action_dim
    (directory / "config.json").write_text(json.dumps(config or lr_config(dim=dim), indent=2))
    save_file({k: v.contiguous() for k, v in (state if state is not None else lr_state_dict(policy)).items()},
              str(directory / "model.safetensors"))
    feats = {**{c: {"type": "VISUAL", "shape": [3, IMG, IMG]} for c in cameras},
             "observation.state": {"type": "STATE", "shape": [dim]}, "action": {"type": "ACTION", "shape": [dim]}}
    norm_map = {"VISUAL": "MEAN_STD", "STATE": "MIN_MAX", "ACTION": "MIN_MAX"}
    s_min, s_max, a_min, a_max = lr_bounds(dim)
    stats = {"observation.state.min": s_min, "observation.state.max": s_max, "action.min": a_min, "action.max": a_max}
    for i, c in enumerate(cameras):
        stats[f"{c}.mean"] = (LR_MEAN + 0.05 * i).reshape(3, 1, 1)
        stats[f"{c}.std"] = LR_STD.reshape(3, 1, 1)
    stats = {k: torch.tensor(v, dtype=torch.float32) for k, v in stats.items()}
    pre_file = "policy_preprocessor_step_3_normalizer_processor.safetensors"
    post_file = "policy_postprocessor_step_0_unnormalizer_processor.safetensors"
    save_file(stats, str(directory / pre_file))
    save_file({k: v for k, v in stats.items() if k.startswith("action.")}, str(directory / post_file))
    step_cfg = {"eps": 1e-8, "features": feats, "norm_map": norm_map}
    (directory / "policy_preprocessor.json").write_text(json.dumps({"name": "policy_preprocessor", "steps": [
        {"registry_name": "rename_observations_processor", "config": {"rename_map": {}}},
        {"registry_name": "to_batch_processor", "config": {}},
        {"registry_name": "device_processor", "config": {"device": "cuda", "float_dtype": None}},
        {"registry_name": "normalizer_processor", "config": step_cfg, "state_file": pre_file}]}))
    (directory / "policy_postprocessor.json").write_text(json.dumps({"name": "policy_postprocessor", "steps": [
        {"registry_name": "unnormalizer_processor", "config": step_cfg, "state_file": post_file},
        {"registry_name": "device_processor", "config": {"device": "cpu", "float_dtype": None}}]}))
    return directory


# -- diffusion_policy's state-only policy (DiffusionUnetLowdimPolicy) ------------------------------------------
OBS_DIM = 5


def dp_lowdim_source(seed: int = 0) -> DiffusionPolicy:
    """No camera: the condition is the normalized ``obs`` vector of each history frame, flattened."""
    cfg = PolicyConfig(images=[], low_dims=[LowDimSpec("obs", OBS_DIM)], action_dim=2, horizon=8, n_obs_steps=2,
                       n_action_steps=4, num_inference_steps=8, unet=UNET)
    policy = randomize(DiffusionPolicy(cfg), seed)
    set_affine(policy, "obs", [0.004, 0.005, 0.5, 2.0, 1.0], [-1.1, -0.9, 0.0, 0.3, -0.2])
    set_affine(policy, "action", [0.004, 0.005], [-1.0, -1.2])
    return policy


def dp_lowdim_state_dict(policy: DiffusionPolicy) -> dict:
    """As DiffusionUnetLowdimPolicy.state_dict() names it: model.*, normalizer.params_dict.{obs,action}.*, and the
    ModuleAttrMixin dummies of the policy and its mask generator."""
    sd = policy.state_dict()
    out = {k: v for k, v in sd.items() if k.startswith("model.")}
    out["_dummy_variable"] = torch.zeros(0)
    out["mask_generator._dummy_variable"] = torch.zeros(0)
    for key, dim in (("obs", OBS_DIM), ("action", 2)):
        out[f"normalizer.params_dict.{key}.scale"] = sd[f"normalizer.params.{key}.scale"]
        out[f"normalizer.params_dict.{key}.offset"] = sd[f"normalizer.params.{key}.offset"]
        out[f"normalizer.params_dict.{key}.input_stats.min"] = torch.zeros(dim)
    return out


def dp_lowdim_cfg(**policy_over):
    """train_diffusion_unet_lowdim_workspace.yaml's shape (the UNet under policy.model, its dims by eval)."""
    from omegaconf import OmegaConf
    policy = {
        "_target_": "diffusion_policy.policy.diffusion_unet_lowdim_policy.DiffusionUnetLowdimPolicy",
        "model": {"_target_": "diffusion_policy.model.diffusion.conditional_unet1d.ConditionalUnet1D",
                  "input_dim": "${action_dim}", "local_cond_dim": None,
                  "global_cond_dim": "${eval:'${obs_dim}*${n_obs_steps}'}",
                  "diffusion_step_embed_dim": 32, "down_dims": [32, 64], "kernel_size": 3, "n_groups": 4,
                  "cond_predict_scale": True},
        "noise_scheduler": {"_target_": "diffusers.schedulers.scheduling_ddpm.DDPMScheduler",
                            "num_train_timesteps": 100, "beta_start": 0.0001, "beta_end": 0.02,
                            "beta_schedule": "squaredcos_cap_v2", "variance_type": "fixed_small",
                            "clip_sample": True, "prediction_type": "epsilon"},
        "horizon": "${horizon}", "obs_dim": "${obs_dim}", "action_dim": "${action_dim}",
        "n_action_steps": "${eval:'${n_action_steps}+${n_latency_steps}'}", "n_obs_steps": "${n_obs_steps}",
        "num_inference_steps": 8, "obs_as_local_cond": "${obs_as_local_cond}",
        "obs_as_global_cond": "${obs_as_global_cond}", "pred_action_steps_only": "${pred_action_steps_only}",
        "oa_step_convention": True,
    }
    policy.update(policy_over)
    return OmegaConf.create({
        "name": "train_diffusion_unet_lowdim", "obs_dim": OBS_DIM, "action_dim": 2, "horizon": 8, "n_obs_steps": 2,
        "n_action_steps": 4, "n_latency_steps": 0, "obs_as_local_cond": False, "obs_as_global_cond": True,
        "pred_action_steps_only": False, "policy": policy,
        "ema": {"_target_": "diffusion_policy.model.diffusion.ema_model.EMAModel", "update_after_step": 0,
                "inv_gamma": 1.0, "power": 0.75, "min_value": 0.0, "max_value": 0.9999},
        "training": {"use_ema": True},
        "task": {"name": "pusht_lowdim", "obs_dim": OBS_DIM, "action_dim": 2, "env_runner": {"fps": 10}},
    })
