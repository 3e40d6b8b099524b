"""LeRobot diffusion policies: a ``pretrained_model/`` (or ``pretrained_model_ema/``) directory.

Files (LeRobot ``PreTrainedPolicy.save_pretrained`` + processor pipelines):
``config.json`` (``"type": "diffusion"``, ``input_features`` / ``output_features`` with
CHW image shapes, horizons, scheduler, encoder settings), ``model.safetensors``
(``diffusion.unet.*``, ``diffusion.rgb_encoder[.<i>].*``), and the normalization
stats in ``policy_preprocessor.json`` + its ``normalizer_processor`` safetensors
(``<feature>.<stat>``) and ``policy_postprocessor.json`` + ``unnormalizer_processor``
(older LeRobot kept them in model.safetensors as ``normalize_inputs.buffer_<feature>.*``).

Name changes to ours: ``diffusion.unet.* -> model.*`` with ``.conv1./.conv2. ->
.blocks.0./.blocks.1.`` and the bare down/up-sampling convs ``.2.`` -> ``.2.conv.``;
``torch.compile``'s ``._orig_mod`` is dropped. The RGB encoder is ResNet children
[:-2] as a Sequential, SpatialSoftmax ``pool``, ``out`` Linear + ReLU. Feature order:
state, cameras in ``input_features`` order, environment state. LeRobot feeds images
in [0, 1], normalizes them per channel and centre-crops with torchvision (rounded).
safetensors cannot run code, so no --trust-pickle is needed.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..errors import CheckpointError, ConfigError
from ..model import EncoderConfig, ImageSpec, LowDimSpec, PolicyConfig, UnetConfig
from ..model.policy import SHARED_ENCODER_KEY
from .layouts import named_layout
from .mapping import (Imported, affine_mean_std, affine_min_max, assemble, centre_crop, check_pos_grid,
                      copy_prefixed, ddim_scheduler, ema_or_live, export_steps, get, guard_raw,
                      map_resnet_sequential, put_image_mean_std, put_normalizer)
from .native import Checkpoint

log = logging.getLogger(__name__)
FORMAT = "lerobot"
BN_HINT = ("Retrain with use_group_norm=True (and pretrained_backbone_weights=null: LeRobot refuses GroupNorm "
           "on a pretrained BatchNorm backbone).")
BN_REASON = ("LeRobot trains without EMA, so the EMA mismatch does not arise here, but dp_runtime refuses "
             "running statistics in every bundle (one rule that every bundle proves, whatever trained it)")
DEFAULT_NORM = {"VISUAL": "MEAN_STD", "STATE": "MIN_MAX", "ACTION": "MIN_MAX"}
STATE, ENV_STATE = "observation.state", "observation.environment_state"


def our_key(feature: str) -> str:
    """LeRobot feature names contain dots; ours cannot: 'observation.images.top' -> 'images_top'."""
    name = feature[len("observation."):] if feature.startswith("observation.") else feature
    return name.replace(".", "_")


def info_layout(info: dict) -> tuple[list | None, dict[str, list], list[str]]:
    """(action layout or None, observation layouts by our key, action names) from a LeRobot dataset's
    ``meta/info.json``: each low-dim feature's ``names`` (a list, or older datasets' {"motors": [...]})."""
    def names(feature: dict) -> list[str]:
        n = feature.get("names")
        n = next(iter(n.values()), None) if isinstance(n, dict) and len(n) == 1 else n
        return [str(x) for x in n] if isinstance(n, list) else []
    features = {k: v for k, v in info.get("features", {}).items() if isinstance(v, dict)}
    action_names = names(features.get("action", {}))
    action = named_layout(action_names) or None
    observations = {our_key(k): layout for k, f in features.items() if k.startswith("observation.")
                    and f.get("dtype") not in ("image", "video") and (layout := named_layout(names(f)))}
    return action, observations, action_names


def is_lerobot_dir(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not readable JSON ({e})") from e


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read tensors, the file is truncated or corrupt ({e})") from e


def _unet_key(key: str) -> str:
    key = key.replace(".conv1.", ".blocks.0.").replace(".conv2.", ".blocks.1.")
    return re.sub(r"^((?:down|up)_modules\.\d+\.2)\.(weight|bias)$", r"\1.conv.\2", key)


def load(path: Path, allow_non_ema: bool = False) -> Checkpoint:
    config = _read_json(path / "config.json")
    where = f"{path.name}/config.json"
    _check_supported(path, config, where)
    weights_file = path / "model.safetensors"
    if not weights_file.is_file():
        raise CheckpointError(f"{path}: no model.safetensors next to config.json")
    raw = {k.replace("._orig_mod", ""): v for k, v in _read_safetensors(weights_file).items()}
    ema = path.name.endswith("_ema") or bool(config.get("use_ema") or config.get("ema"))
    raw, weights = ema_or_live(path, raw if ema else None, raw, allow_non_ema,
                               "live weights only: LeRobot trains without EMA by default",
                               lambda s: guard_raw(s.keys(), where=f"{path.name}/model.safetensors", hint=BN_HINT,
                                                   reason=BN_REASON))
    inputs, cams, lows = _features(path, config, where)
    images, low_dims, hw = _observation_specs(config, inputs, cams, lows)

    imp = Imported(source_format=FORMAT, weights=weights)
    encoder = _map_rgb_encoders(imp, raw, config, images, hw, where)
    copy_prefixed(imp, raw, "diffusion.unet", "model", rename=_unet_key)
    _normalizers(imp, path, config, inputs, cams, lows, raw)
    imp.config = _policy_config(path, config, where, images, low_dims, encoder)
    imp.extra = {"lerobot_features": {our_key(k): k for k in list(inputs)}}
    return assemble(imp, path, BN_HINT)


def _check_supported(path: Path, config: dict, where: str) -> None:
    # lerobot-train writes "type"; PreTrainedPolicy.save_pretrained (draccus) may leave it out.
    kind = config.get("type") or ("diffusion" if {"noise_scheduler_type", "down_dims"} <= set(config) else None)
    if kind != "diffusion":
        raise CheckpointError(f"{path}: not supported: LeRobot policy type {kind!r} (only 'diffusion')")
    if get(config, "vision_backbone", str, default="resnet18", where=where) != "resnet18":
        raise CheckpointError(f"{path}: not supported: vision_backbone {config['vision_backbone']!r} (resnet18 only)")
    resize = config.get("resize_shape")
    if resize is not None and (not isinstance(resize, (list, tuple)) or len(resize) != 2):
        raise CheckpointError(f"{where} resize_shape {resize!r}: expected [height, width]")
    if config.get("prediction_type", "epsilon") != "epsilon":
        raise CheckpointError(f"{path}: not supported: prediction_type {config['prediction_type']!r}")


def _features(path: Path, config: dict, where: str) -> tuple[dict, list[str], list[str]]:
    """(input_features, camera features, low-dim features: the state, then the environment state if any)."""
    inputs = get(config, "input_features", dict, where=where)
    cams = [k for k, f in inputs.items() if f.get("type") == "VISUAL"]
    if STATE not in inputs:
        raise CheckpointError(f"{where}: input_features has no {STATE!r} (LeRobot's diffusion policy requires it)")
    unsupported = [k for k, f in inputs.items() if k not in cams and k not in (STATE, ENV_STATE)]
    if unsupported:
        raise CheckpointError(f"{path}: not supported: input features {unsupported}")
    return inputs, cams, [STATE] + ([ENV_STATE] if ENV_STATE in inputs else [])


def _observation_specs(config: dict, inputs: dict, cams: list[str], lows: list[str]):
    """(image specs, low-dim specs, encoder input (h, w) per camera).

    LeRobot's DiffusionRgbEncoder resizes (resize_shape, torchvision Resize: bilinear, antialiased), then
    centre-crops (crop_shape, torchvision rounding) at evaluation.
    """
    images, hw = [], {}
    resize = tuple(int(x) for x in config["resize_shape"]) if config.get("resize_shape") is not None else None
    for cam in cams:
        c, h, w = (int(x) for x in inputs[cam]["shape"])
        crop = centre_crop(resize or (h, w), config.get("crop_shape"), "round")
        spec = ImageSpec(our_key(cam), (h, w, c), resize=resize, crop=crop)
        images.append(spec)
        hw[our_key(cam)] = spec.encoder_input_hw
    low_dims = [LowDimSpec(our_key(k), int(torch.tensor(inputs[k]["shape"]).prod())) for k in lows]
    return images, low_dims, hw


def _policy_config(path: Path, config: dict, where: str, images, low_dims, encoder: EncoderConfig) -> PolicyConfig:
    scheduler = ddim_scheduler(config, {"num_train_timesteps": 100, "beta_schedule": "squaredcos_cap_v2"}, path)
    steps = export_steps(config.get("num_inference_steps"), scheduler,
                         trained_with_ddim=config.get("noise_scheduler_type", "DDPM") == "DDIM")
    try:
        return PolicyConfig(
            images=images, low_dims=low_dims,
            action_dim=int(get(config, "output_features.action.shape", list, where=where)[0]),
            horizon=int(get(config, "horizon", int, where=where)),
            n_obs_steps=int(get(config, "n_obs_steps", int, where=where)),
            n_action_steps=int(get(config, "n_action_steps", int, where=where)),
            num_inference_steps=steps, image_range="mean_std" if images else "minus_one_one",
            # LeRobot concatenates the state, the camera features, then the environment state.
            obs_order=[low_dims[0].key] + [s.key for s in images] + [s.key for s in low_dims[1:]],
            scheduler=scheduler, encoder=encoder,
            unet=UnetConfig(down_dims=tuple(get(config, "down_dims", list, where=where)),
                            kernel_size=int(config.get("kernel_size", 5)), n_groups=int(config.get("n_groups", 8)),
                            diffusion_step_embed_dim=int(config.get("diffusion_step_embed_dim", 128)),
                            cond_predict_scale=bool(config.get("use_film_scale_modulation", True))))
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from e


def _map_rgb_encoders(imp: Imported, raw: dict, config: dict, images: list[ImageSpec],
                      hw: dict[str, tuple[int, int]], where: str) -> EncoderConfig:
    if not images:
        return EncoderConfig()
    separate = "diffusion.rgb_encoder.0.backbone.0.weight" in raw
    said = config.get("use_separate_rgb_encoder_per_camera", separate)
    if bool(said) != separate:
        raise CheckpointError(f"{where} says use_separate_rgb_encoder_per_camera={said}, but model.safetensors has "
                              f"{'one encoder per camera' if separate else 'one shared encoder'}")
    prefixes = ([(f"diffusion.rgb_encoder.{i}", s.key) for i, s in enumerate(images)] if separate
                else [("diffusion.rgb_encoder", SHARED_ENCODER_KEY)])
    width = None
    for src, dst_name in prefixes:
        conv1 = raw.get(f"{src}.backbone.0.weight")
        if conv1 is None:
            raise CheckpointError(f"model.safetensors has no {src}.backbone.0.weight "
                                  f"(use_separate_rgb_encoder_per_camera={separate} in {where})")
        width = int(conv1.shape[0])
        grid = raw.get(f"{src}.pool.pos_grid")
        if grid is not None:
            check_pos_grid(f"{src}.pool.pos_grid", grid[:, 0], grid[:, 1], hw[images[0].key])
        dst = f"obs_encoder.key_model_map.{dst_name}"
        map_resnet_sequential(imp, raw, f"{src}.backbone", dst)
        copy_prefixed(imp, raw, f"{src}.pool", f"{dst}.pool", skip=lambda k: k.endswith(".pos_grid"))
        copy_prefixed(imp, raw, f"{src}.out", f"{dst}.fc")
    kp = int(config.get("spatial_softmax_num_keypoints", 32))
    return EncoderConfig(base_width=width, pool="spatial_softmax", num_kp=kp, feature_dim=2 * kp, fc_relu=True,
                         share=not separate)


def _processor_stats(path: Path, json_name: str, step_name: str) -> tuple[dict, dict, float] | None:
    """(stats by feature, norm_map, eps) of one normalizer step of a saved processor pipeline."""
    pipe = path / json_name
    if not pipe.is_file():
        return None
    for step in _read_json(pipe).get("steps", []):
        if step.get("registry_name") == step_name and step.get("state_file"):
            flat = _read_safetensors(path / step["state_file"])
            stats: dict[str, dict[str, torch.Tensor]] = {}
            for key, t in flat.items():
                feature, stat = key.rsplit(".", 1)
                stats.setdefault(feature, {})[stat] = t
            cfg = step.get("config", {})
            return stats, cfg.get("norm_map") or {}, float(cfg.get("eps", 1e-8))
    return None


def _legacy_stats(raw: dict, prefix: str, features: list[str]) -> dict:
    out = {}
    for f in features:
        base = f"{prefix}.buffer_{f.replace('.', '_')}."
        found = {k[len(base):]: v for k, v in raw.items() if k.startswith(base)}
        if found:
            out[f] = found
    return out


def _affine(mode: str, stats: dict, eps: float, feature: str, unnormalize: bool) -> dict[str, list[float]]:
    """LeRobot's normalization modes as ``raw * scale + offset`` (for actions: what its unnormalizer inverts)."""
    need = {"MEAN_STD": ("mean", "std"), "MIN_MAX": ("min", "max"), "QUANTILES": ("q01", "q99"),
            "QUANTILE10": ("q10", "q90")}
    if mode not in need:
        raise CheckpointError(f"not supported: normalization mode {mode!r} for {feature!r}")
    missing = [s for s in need[mode] if s not in stats]
    if missing:
        raise CheckpointError(f"normalization stats for {feature!r} lack {missing} ({mode})")
    a, b = (stats[s] for s in need[mode])
    if mode == "MEAN_STD":
        # LeRobot normalizes with std + eps but unnormalizes with std alone.
        return affine_mean_std(a, b, eps=0.0 if unnormalize else eps)
    return affine_min_max(a, b, eps=eps)


def _normalizers(imp: Imported, path: Path, config: dict, inputs: dict, cams: list[str], lows: list[str],
                 raw: dict) -> None:
    pre = _processor_stats(path, "policy_preprocessor.json", "normalizer_processor")
    post = _processor_stats(path, "policy_postprocessor.json", "unnormalizer_processor")
    if pre is None:
        obs_stats = _legacy_stats(raw, "normalize_inputs", cams + lows)
        act_stats = _legacy_stats(raw, "unnormalize_outputs", ["action"]).get("action")
        norm_map, eps = config.get("normalization_mapping") or DEFAULT_NORM, 1e-8
        if not obs_stats and not act_stats:
            raise CheckpointError(f"{path}: no normalization stats (policy_preprocessor.json with a "
                                  "normalizer_processor step, or normalize_inputs buffers in model.safetensors)")
    else:
        obs_stats, norm_map, eps = pre
        act_stats = (post[0] if post else obs_stats).get("action")
    norm_map = {**DEFAULT_NORM, **(config.get("normalization_mapping") or {}), **norm_map}

    def mode(feature: str) -> str:
        return str(norm_map.get(inputs[feature]["type"] if feature in inputs else "ACTION", "IDENTITY"))

    for cam in cams:
        m = mode(cam)
        if m == "IDENTITY" or cam not in obs_stats:
            continue  # pixels in [0, 1]: the config's default mean 0 / std 1, for any channel count
        aff = _affine(m, obs_stats[cam], eps, cam, unnormalize=False)
        scale, offset = torch.tensor(aff["scale"]), torch.tensor(aff["offset"])
        put_image_mean_std(imp, our_key(cam), -offset / scale, 1.0 / scale, f"stats {cam}")
    for f in lows:
        if mode(f) == "IDENTITY" or f not in obs_stats:
            imp.identity_normalizer(our_key(f))
        else:
            put_normalizer(imp, our_key(f), _affine(mode(f), obs_stats[f], eps, f, unnormalize=False), f"stats {f}")
    if mode("action") == "IDENTITY" or act_stats is None:
        imp.identity_normalizer("action")
    else:
        put_normalizer(imp, "action", _affine(mode("action"), act_stats, eps, "action", unnormalize=True),
                       "stats action")
