"""robomimic diffusion-policy checkpoints (``*.pth``, a plain torch pickle).

Layout (robomimic ``TrainUtils.save_model`` / ``DiffusionPolicyUNet.serialize``):
``params['model'] = {'nets': live state dict, 'ema': EMA state dict or None}``,
``params['config']`` the run config as a JSON string, ``params['shape_metadata']``
(``all_shapes`` in the order robomimic concatenates features, image shapes CHW),
optional ``obs_normalization_stats`` / ``action_normalization_stats``
(``raw = scale * normalized + offset``, per action key of ``train.action_keys``).
Weights: ``policy.noise_pred_net.*`` (the reference UNet names) and
``policy.obs_encoder.nets.obs.obs_nets.<key>.*`` (VisualCore: ``backbone.nets.<i>``
ResNet-18 children, SpatialSoftmax ``pool``, ``nets.3`` the feature Linear; ``nets.0``/
``nets.1`` are the same modules again), followed by the ObservationEncoder's ReLU.
robomimic feeds images in [0, 1] and takes the eval-time centre crop with a floored offset.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..model import EncoderConfig, ImageSpec, LowDimSpec, PolicyConfig, UnetConfig
from .layouts import obs_layout, robomimic_action
from .mapping import (Imported, affine_mean_std, assemble, centre_crop, check_pos_grid, copy_prefixed, ddim_scheduler,
                      ema_or_live, export_steps, get, guard_raw, map_resnet_sequential, put_normalizer)
from .native import Checkpoint
from .pickled import load_torch_pickle

log = logging.getLogger(__name__)
FORMAT = "robomimic"
BN_HINT = ("robomimic's DiffusionPolicyUNet replaces BatchNorm with GroupNorm itself (replace_bn_with_gn); "
           "a checkpoint with BatchNorm comes from a modified encoder: retrain with GroupNorm.")


def map_obs_nets(imp: Imported, src: dict[str, torch.Tensor], prefix: str, image_keys: list[str],
                 input_hw: dict[str, tuple[int, int]]) -> EncoderConfig:
    """robomimic VisualCore weights under ``{prefix}.<key>.*`` -> our per-camera ResNet18GN.

    Returns the encoder config read off the weight shapes (robomimic does not store it).
    """
    enc = None
    for key in image_keys:
        base = f"{prefix}.{key}"
        conv1 = src.get(f"{base}.backbone.nets.0.weight")
        if not any(k.startswith(base + ".") for k in src):
            raise CheckpointError(f"the config lists image {key!r}, the weights have nothing under {base}.* "
                                  "(config and weights disagree)")
        if conv1 is None:
            raise CheckpointError(f"weights have no {base}.backbone.nets.0.weight: image {key!r} is not encoded by "
                                  "a ResNet VisualCore (only ResNet18Conv + SpatialSoftmax is supported)")
        kp = src.get(f"{base}.pool.nets.weight")
        lin = src.get(f"{base}.nets.3.weight")
        if kp is None or lin is None:
            raise CheckpointError(f"{base}: expected a SpatialSoftmax pool ({base}.pool.nets.weight) and a feature "
                                  f"Linear ({base}.nets.3.weight); other VisualCore layouts are not supported")
        temp = src.get(f"{base}.pool.temperature")
        if temp is not None and abs(float(temp.flatten()[0]) - 1.0) > 1e-6:
            raise CheckpointError(f"{base}.pool.temperature is {float(temp.flatten()[0])}: only temperature 1 "
                                  "is supported")
        if f"{base}.pool.pos_x" in src:
            check_pos_grid(f"{base}.pool.pos_x", src[f"{base}.pool.pos_x"], src[f"{base}.pool.pos_y"], input_hw[key])
        # ObservationEncoder applies its feature_activation (ReLU by default) to each obs net's output.
        this = EncoderConfig(base_width=int(conv1.shape[0]), pool="spatial_softmax", num_kp=int(kp.shape[0]),
                             feature_dim=int(lin.shape[0]), fc_relu=True)
        if enc is not None and this != enc:
            raise CheckpointError(f"{base}: encoder differs in shape from the other cameras' ({this} vs {enc})")
        enc = this
        dst = f"obs_encoder.key_model_map.{key}"
        map_resnet_sequential(imp, src, f"{base}.backbone.nets", dst)
        copy_prefixed(imp, src, f"{base}.pool", f"{dst}.pool",
                      skip=lambda k: k.rsplit(".", 1)[-1] in ("pos_x", "pos_y", "temperature"))
        copy_prefixed(imp, src, f"{base}.nets.3", f"{dst}.fc")
    return enc or EncoderConfig()


def unet_from_weights(src: dict[str, torch.Tensor], prefix: str, n_groups: int) -> UnetConfig:
    """UnetConfig read off ConditionalUnet1D weight shapes (robomimic builds it with defaults, not its config)."""
    dims, i = [], 0
    while f"{prefix}.down_modules.{i}.0.blocks.0.block.0.weight" in src:
        dims.append(int(src[f"{prefix}.down_modules.{i}.0.blocks.0.block.0.weight"].shape[0]))
        i += 1
    if not dims:
        raise CheckpointError(f"weights have no {prefix}.down_modules.0.0.blocks.0.block.0.weight: not a "
                              "ConditionalUnet1D noise-prediction network")
    first = src[f"{prefix}.down_modules.0.0.blocks.0.block.0.weight"]
    dsed = int(src[f"{prefix}.diffusion_step_encoder.1.weight"].shape[1])
    film = int(src[f"{prefix}.down_modules.0.0.cond_encoder.1.weight"].shape[0])
    return UnetConfig(down_dims=tuple(dims), kernel_size=int(first.shape[-1]), n_groups=n_groups,
                      diffusion_step_embed_dim=dsed, cond_predict_scale=film == 2 * dims[0])


BUFFERS = ("pos_x", "pos_y", "temperature", "running_mean", "running_var", "num_batches_tracked")


def shadow_to_state_dict(nets: dict[str, torch.Tensor], ema: dict, path: Path) -> dict[str, torch.Tensor]:
    """diffusers ``EMAModel.state_dict()`` (``shadow_params`` in ``nets.parameters()`` order) -> a state dict.

    ``nets.parameters()`` is the state dict's order without buffers and without the second name of a
    shared module (VisualCore lists its backbone and pool twice); shared entries share storage.
    """
    def ident(t: torch.Tensor) -> tuple:
        return t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape)

    shadow = list(ema["shadow_params"])
    names, seen = [], {}
    for key, t in nets.items():
        if key.rsplit(".", 1)[-1] in BUFFERS:
            continue
        if ident(t) in seen:
            continue
        seen[ident(t)] = key
        names.append(key)
    if len(names) != len(shadow):
        raise CheckpointError(f"{path}: params['model']['ema'] has {len(shadow)} shadow params, the live nets "
                              f"have {len(names)} parameters; cannot tell which EMA value belongs to which weight")
    by_name = dict(zip(names, shadow))
    out = {}
    for key, t in nets.items():
        src = seen.get(ident(t), key)
        value = by_name.get(src, t)
        if tuple(value.shape) != tuple(t.shape):
            raise CheckpointError(f"{path}: EMA shadow param for {src!r} has shape {tuple(value.shape)}, "
                                  f"the live weight {tuple(t.shape)}")
        out[key] = value
    return out


def _as_tensor(v: Any) -> torch.Tensor:
    return torch.as_tensor(v, dtype=torch.float64)


def load(path: Path, trust_pickle: bool = False, allow_non_ema: bool = False) -> Checkpoint:
    params, config = _read(path, trust_pickle)
    where = f"{path.name} config"
    algo = _supported_algo(path, params, config)
    model = params["model"]
    ema = model.get("ema")
    if ema is not None and "shadow_params" in ema:  # robomimic versions on diffusers' newer EMAModel
        ema = shadow_to_state_dict(model["nets"], ema, path)

    def guard(state: dict) -> None:
        guard_raw(state.keys(), where=f"{path.name} ({'live' if state is model['nets'] else 'ema'} weights)",
                  hint=BN_HINT)
    state, weights = ema_or_live(path, ema, model["nets"], allow_non_ema,
                                 "algo.ema.enabled was false, params['model']['ema'] is None", guard)
    images, low_dims, hw, order = _observation_specs(path, params, config)
    action_dim = int(params["shape_metadata"].get("ac_dim") or
                     state["policy.noise_pred_net.final_conv.1.weight"].shape[0])

    imp = Imported(source_format=FORMAT, weights=weights,
                   ema={"power": get(config, "algo.ema.power", (int, float), default=None, where=where)}
                   if weights == "ema" else {})
    encoder = map_obs_nets(imp, state, "policy.obs_encoder.nets.obs.obs_nets", [s.key for s in images], hw)
    unet = unet_from_weights(state, "policy.noise_pred_net", n_groups=8)
    copy_prefixed(imp, state, "policy.noise_pred_net", "model")
    _normalizers(imp, params, low_dims, action_dim, config, path)
    scheduler, steps = _schedule(path, config)
    horizon = get(config, "algo.horizon", dict, where=where)
    imp.config = PolicyConfig(
        images=images, low_dims=low_dims, action_dim=action_dim, horizon=int(horizon["prediction_horizon"]),
        n_obs_steps=int(horizon["observation_horizon"]), n_action_steps=int(horizon["action_horizon"]),
        num_inference_steps=steps, image_range="zero_one", obs_order=order, scheduler=scheduler, encoder=encoder,
        unet=unet, action_layout=robomimic_action(get(config, "train.action_keys", list, default=[], where=where),
                                                  action_dim, [s.key for s in low_dims]))
    imp.extra = {"robomimic_algo": algo, "obs_keys": order, **_action_formats(path, config)}
    return assemble(imp, path, BN_HINT)


def _read(path: Path, trust_pickle: bool) -> tuple[dict, dict]:
    params = load_torch_pickle(path, trust_pickle, FORMAT)
    if not isinstance(params, dict) or "model" not in params or "config" not in params:
        found = sorted(params)[:8] if isinstance(params, dict) else type(params).__name__
        raise CheckpointError(f"{path}: not a robomimic checkpoint (expected keys 'model', 'config', "
                              f"'shape_metadata'; found {found})")
    try:
        config = json.loads(params["config"]) if isinstance(params["config"], str) else dict(params["config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: params['config'] is not the JSON config robomimic writes: {e}") from e
    return params, config


def _supported_algo(path: Path, params: dict, config: dict) -> str:
    where = f"{path.name} config"
    algo = params.get("algo_name") or get(config, "algo_name", str, where=where)
    if algo != "diffusion_policy":
        raise CheckpointError(f"{path}: not supported: robomimic algo {algo!r} (only 'diffusion_policy' with the UNet)")
    if not get(config, "algo.unet.enabled", bool, default=True, where=where):
        raise CheckpointError(f"{path}: not supported: robomimic diffusion_policy with a transformer backbone")
    return algo


def _observation_specs(path: Path, params: dict, config: dict):
    """(image specs, low-dim specs, encoder input (h, w) per camera, feature order = shape_metadata order)."""
    where = f"{path.name} config"
    shapes = get(params, "shape_metadata.all_shapes", dict, where=f"{path.name} shape_metadata")
    modalities = get(config, "observation.modalities.obs", dict, where=where)
    rgb = set(modalities.get("rgb") or [])
    low = set(modalities.get("low_dim") or [])
    other = {m: v for m, v in modalities.items() if v and m not in ("rgb", "low_dim")}
    if other:
        raise CheckpointError(f"{path}: not supported: observation modalities {sorted(other)} (rgb and low_dim only)")
    order = [k for k in shapes if k in rgb or k in low]
    if sorted(order) != sorted(rgb | low):
        raise CheckpointError(f"{path}: shape_metadata lacks shapes for {sorted((rgb | low) - set(order))}")
    rand = get(config, "observation.encoder.rgb.obs_randomizer_class", (str, type(None)), default=None, where=where)
    rkw = get(config, "observation.encoder.rgb.obs_randomizer_kwargs", dict, default={}, where=where)
    images, hw = [], {}
    for k in (k for k in order if k in rgb):
        c, h, w = (int(x) for x in shapes[k])
        crop = centre_crop((h, w), (rkw["crop_height"], rkw["crop_width"]), "floor") \
            if rand == "CropRandomizer" else None
        images.append(ImageSpec(k, (h, w, c), crop=crop))
        hw[k] = (crop[2], crop[3]) if crop else (h, w)
    low_dims = [LowDimSpec(k, n, layout=obs_layout(k, n))
                for k, n in ((k, int(torch.tensor(shapes[k]).prod())) for k in order if k in low)]
    return images, low_dims, hw, order


def _schedule(path: Path, config: dict) -> tuple[dict, int]:
    """robomimic trains with algo.ddpm or algo.ddim (beta range fixed in its code); DDPM exports with <= 16 steps."""
    where = f"{path.name} config"
    ddim = get(config, "algo.ddim.enabled", bool, default=False, where=where)
    sched = get(config, f"algo.{'ddim' if ddim else 'ddpm'}", dict, where=where)
    src = {k: v for k, v in sched.items() if k in ("num_train_timesteps", "beta_schedule", "clip_sample",
                                                    "prediction_type")}
    scheduler = ddim_scheduler(src, {"num_train_timesteps": 100, "beta_schedule": "squaredcos_cap_v2"}, path)
    return scheduler, export_steps(sched.get("num_inference_timesteps"), scheduler, trained_with_ddim=ddim)


def _action_formats(path: Path, config: dict) -> dict:
    formats = {k: c.get("format") for k, c in (get(config, "train.action_config", dict, default={},
                                                   where=f"{path.name} config") or {}).items()
               if isinstance(c, dict) and c.get("format")}
    if not formats:
        return {}
    log.warning("%s: robomimic converts action parts at rollout (%s); the bundle outputs the action vector "
                "as the network predicts it", path, formats)
    return {"unconverted_action_formats": formats}


def _normalizers(imp: Imported, params: dict, low_dims: list[LowDimSpec], action_dim: int, config: dict,
                 path: Path) -> None:
    """robomimic stats -> our ``raw * scale + offset``; its convention is ``normalized = (raw - offset) / scale``."""
    obs_stats = params.get("obs_normalization_stats") or {}
    for spec in low_dims:
        s = obs_stats.get(spec.key)
        if s is None:
            imp.identity_normalizer(spec.key)
            continue
        mean, std = (s["offset"], s["scale"]) if "offset" in s else (s["mean"], s["std"])
        put_normalizer(imp, spec.key, affine_mean_std(mean, std), f"obs_normalization_stats.{spec.key}")
    image_stats = sorted(set(obs_stats) - {s.key for s in low_dims})
    if image_stats:
        raise CheckpointError(f"{path}: not supported: per-pixel observation normalization of {image_stats}")
    act = params.get("action_normalization_stats")
    if not act:
        # Older robomimic trains on actions already in [-1, 1] (hdf5_normalize_action) and outputs them as is.
        imp.identity_normalizer("action")
        return
    keys = get(config, "train.action_keys", list, default=list(act), where=f"{path.name} config")
    scale = torch.cat([_as_tensor(act[k]["scale"]).flatten() for k in keys])
    offset = torch.cat([_as_tensor(act[k]["offset"]).flatten() for k in keys])
    if scale.numel() != action_dim:
        raise CheckpointError(f"{path}: action_normalization_stats for {keys} cover {scale.numel()} dims, "
                              f"the action has {action_dim}")
    put_normalizer(imp, "action", affine_mean_std(offset, scale), "action_normalization_stats")
