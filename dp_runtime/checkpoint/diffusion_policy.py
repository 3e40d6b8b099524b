"""diffusion_policy workspace checkpoints (``*.ckpt``, ``torch.save(payload, pickle_module=dill)``).

Payload (``BaseWorkspace.save_checkpoint``): ``cfg`` (the hydra config as an
OmegaConf DictConfig), ``state_dicts`` (``model``, ``ema_model``, ``optimizer``),
``pickles``. The config is read as data (no hydra targets instantiated); the
noise scheduler comes from ``cfg.policy.noise_scheduler`` because it is not in
the weights. The normalizer is in the weights: ``normalizer.params_dict.<key>.
{scale,offset}`` with ``normalized = raw * scale + offset``; images arrive in
[0, 1] and pass through the same normalizer (usually to [-1, 1]).

Supported policies:
- ``DiffusionUnetImagePolicy``: MultiImageObsEncoder, ``obs_encoder.key_model_map.
  <cam>.*`` torchvision ResNet names (or one shared ``rgb`` model), rgb keys sorted,
  then low-dim keys sorted; optional ImageNet normalization after the normalizer.
- ``DiffusionUnetHybridImagePolicy``: robomimic ObservationEncoder,
  ``obs_encoder.obs_nets.<cam>.*`` (see robomimic.map_obs_nets), features in
  shape_meta order.
- ``DiffusionUnetLowdimPolicy`` (state only: PushT keypoints, robomimic lowdim tasks) with
  ``obs_as_global_cond=True``: one ``obs`` vector, normalized, its n_obs_steps frames flattened
  as the global condition (our encoder with no camera does exactly that); the UNet settings
  are under ``policy.model``. Refused by name: ``obs_as_local_cond`` (local conditioning),
  neither (the observation inpainted into the trajectory), ``pred_action_steps_only`` and
  ``oa_step_convention=False`` (actions from step n_obs_steps, where the bundle executes from
  n_obs_steps - 1).
The UNet (``model.*``) has our parameter names already.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, ConfigError
from ..model import EncoderConfig, ImageSpec, LowDimSpec, PolicyConfig, UnetConfig
from ..model.policy import IMAGENET_MEAN, IMAGENET_STD, SHARED_ENCODER_KEY
from .mapping import (Imported, assemble, centre_crop, copy_prefixed, ddim_scheduler, ema_or_live, export_steps,
                      get, guard_raw, put_image_mean_std)
from .layouts import diffusion_policy_action, obs_layout
from .native import Checkpoint
from .pickled import load_torch_pickle, plain_config, resolve
from .robomimic import map_obs_nets

log = logging.getLogger(__name__)
FORMAT = "diffusion_policy"
IMAGE_POLICY = "DiffusionUnetImagePolicy"
LOWDIM_POLICY = "DiffusionUnetLowdimPolicy"
LOWDIM_KEY = "obs"  # the lowdim policy's one observation vector (its normalizer key)
HYBRID_POLICY = "DiffusionUnetHybridImagePolicy"
BN_HINT = ("Retrain with GroupNorm: policy.obs_encoder.use_group_norm=True (image policy) or "
           "policy.obs_encoder_group_norm=True (hybrid policy). Beware share_rgb_model=True: "
           "diffusion_policy then skips the BatchNorm->GroupNorm replacement for the shared model "
           "(real-stanford/diffusion_policy issue #151).")


class _Cfg:
    """The workspace config as data: ``field('policy.horizon', int)`` with interpolations resolved."""

    def __init__(self, cfg: dict, path: Path):
        self.cfg, self.where = cfg, f"{path.name} cfg"

    def __call__(self, p: str, kind=None, default: Any = ...) -> Any:
        kw = {} if default is ... else {"default": default}
        try:
            return get(self.cfg, p, kind, where=self.where, resolve=lambda v: resolve(self.cfg, v), **kw)
        except ConfigError as e:
            raise CheckpointError(f"{self.where} {p!r}: {e}") from e


@dataclass
class _ImageLayout:
    """How an encoder sees its cameras: crop (and its rounding), feature order, sharing, ImageNet norm."""
    crop_shape: list | None
    rule: str
    order: list[str]
    share: bool = False
    imagenet: bool = False


def load(path: Path, trust_pickle: bool = False, allow_non_ema: bool = False) -> Checkpoint:
    payload, field = _read(path, trust_pickle)
    target = _supported_policy(path, field)
    hybrid = target.endswith(HYBRID_POLICY)
    dicts = payload["state_dicts"]
    def guard(state: dict) -> None:
        which = "ema_model" if state is dicts.get("ema_model") else "model"
        guard_raw(state.keys(), where=f"{path.name} state_dicts['{which}']", hint=BN_HINT)
    state, weights = ema_or_live(path, dicts.get("ema_model"), dicts.get("model"), allow_non_ema,
                                 "state_dicts has no 'ema_model'; training.use_ema was false", guard)
    if target.endswith(LOWDIM_POLICY):
        return _load_lowdim(path, field, target, state, weights)
    obs_meta, rgb, low, action_dim = _shape_meta(path, field)
    layout = _hybrid_layout(path, field, obs_meta) if hybrid else _image_layout(path, field, rgb, low)
    images, low_dims, hw = _observation_specs(obs_meta, rgb, low, layout)

    imp = Imported(source_format=FORMAT, weights=weights, ema=_ema_settings(field) if weights == "ema" else {})
    if hybrid:
        encoder = map_obs_nets(imp, state, "obs_encoder.obs_nets", rgb, hw)
    else:
        encoder = _map_key_model_map(imp, state, rgb, layout.share)
    copy_prefixed(imp, state, "model", "model")
    _normalizers(imp, state, images, low_dims, layout.imagenet)
    imp.config = _policy_config(path, field, images, low_dims, action_dim, layout, encoder)
    pose_repr = field("task.pose_repr", dict, None) or {}  # UMI: obs_pose_repr, action_pose_repr
    for spec in low_dims:
        spec.layout = obs_layout(spec.key, spec.size, pose_repr.get("obs_pose_repr"))
    imp.config.action_layout = diffusion_policy_action(action_dim, low, field("task.abs_action", bool, None),
                                                       field("task.dataset.rotation_rep", str, None),
                                                       pose_repr.get("action_pose_repr"))
    imp.config.validate()
    imp.extra = {"policy_class": target, "obs_keys": layout.order}
    if not hybrid and layout.crop_shape is not None and not layout.rule:
        imp.extra["crop"] = ("none: with random_crop=False diffusion_policy's MultiImageObsEncoder assigns the "
                             "CenterCrop to a variable it overwrites, so evaluation sees the whole image")
    return assemble(imp, path, BN_HINT)


def _load_lowdim(path: Path, field: _Cfg, target: str, state: dict, weights: str) -> Checkpoint:
    """DiffusionUnetLowdimPolicy: ``global_cond = normalize(obs)[:, :To].reshape(B, -1)``, the UNet on actions."""
    low_dims = [LowDimSpec(LOWDIM_KEY, field("policy.obs_dim", int))]
    imp = Imported(source_format=FORMAT, weights=weights, ema=_ema_settings(field) if weights == "ema" else {})
    copy_prefixed(imp, state, "model", "model")
    _normalizers(imp, state, [], low_dims, imagenet=False)
    imp.config = _policy_config(path, field, [], low_dims, field("policy.action_dim", int),
                                _ImageLayout(None, "", [LOWDIM_KEY]), EncoderConfig(), unet="policy.model.")
    imp.extra = {"policy_class": target, "obs_keys": [LOWDIM_KEY]}
    return assemble(imp, path, BN_HINT)


def _read(path: Path, trust_pickle: bool) -> tuple[dict, _Cfg]:
    payload = load_torch_pickle(path, trust_pickle, FORMAT)
    if not isinstance(payload, dict) or "state_dicts" not in payload or "cfg" not in payload:
        raise CheckpointError(f"{path}: not a diffusion_policy workspace checkpoint (expected keys 'cfg', "
                              "'state_dicts', 'pickles')")
    try:
        return payload, _Cfg(plain_config(payload["cfg"]), path)
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from e


def _supported_policy(path: Path, field: _Cfg) -> str:
    target = field("policy._target_", str)
    cls = target.rsplit(".", 1)[-1]
    if cls not in (IMAGE_POLICY, HYBRID_POLICY, LOWDIM_POLICY):
        raise CheckpointError(f"{path}: not supported: {cls} ({target}); supported: {IMAGE_POLICY}, {HYBRID_POLICY}, "
                              f"{LOWDIM_POLICY}")
    lowdim = cls == LOWDIM_POLICY
    if lowdim and field("policy.obs_as_local_cond", bool, False):
        raise CheckpointError(f"{path}: not supported: {cls} with obs_as_local_cond=True (local conditioning; "
                              "the bundle conditions globally: retrain with obs_as_global_cond=True)")
    if not field("policy.obs_as_global_cond", bool, not lowdim):
        raise CheckpointError(f"{path}: not supported: {cls} with obs_as_global_cond=False (inpainting)")
    if lowdim and field("policy.pred_action_steps_only", bool, False):
        raise CheckpointError(f"{path}: not supported: {cls} with pred_action_steps_only=True (a trajectory of "
                              "n_action_steps only)")
    if lowdim and not field("policy.oa_step_convention", bool, False):
        raise CheckpointError(f"{path}: not supported: {cls} with oa_step_convention=False (actions from step "
                              "n_obs_steps; the bundle executes from n_obs_steps - 1, as the config files set)")
    return target


def _shape_meta(path: Path, field: _Cfg) -> tuple[dict, list[str], list[str], int]:
    """(obs shape_meta, rgb keys, low-dim keys, action dim), keys in shape_meta order."""
    shape_meta = field("policy.shape_meta", dict)
    obs_meta = shape_meta.get("obs") or {}
    rgb = [k for k, a in obs_meta.items() if (a or {}).get("type", "low_dim") == "rgb"]
    low = [k for k, a in obs_meta.items() if (a or {}).get("type", "low_dim") == "low_dim"]
    unknown = [k for k in obs_meta if k not in rgb and k not in low]
    if unknown:
        raise CheckpointError(f"{path}: not supported: observation types of {unknown} (rgb and low_dim only)")
    action_shape = list(shape_meta.get("action", {}).get("shape", []))
    if len(action_shape) != 1:
        raise CheckpointError(f"{field.where} 'shape_meta.action.shape' is {action_shape}, expected [action_dim]")
    return obs_meta, rgb, low, int(action_shape[0])


def _hybrid_layout(path: Path, field: _Cfg, obs_meta: dict) -> _ImageLayout:
    """robomimic's ObservationEncoder: CropRandomizer crops, features in shape_meta order."""
    crop_shape = field("policy.crop_shape", list, None)
    rule = "round" if field("policy.eval_fixed_crop", bool, False) else "floor"
    if crop_shape is not None and rule == "floor":
        log.warning("%s: eval_fixed_crop=False: robomimic 0.2's CropRandomizer crops at random even at "
                    "evaluation; the bundle uses the centre crop", path)
    return _ImageLayout(crop_shape, rule, list(obs_meta))


def _image_layout(path: Path, field: _Cfg, rgb: list[str], low: list[str]) -> _ImageLayout:
    """MultiImageObsEncoder: rgb keys sorted, then low-dim keys sorted.

    Its crop at evaluation: random_crop=True -> CropRandomizer's centre crop (torchvision rounding);
    random_crop=False -> none at all (the CenterCrop is assigned to ``this_normalizer``, which the
    next lines overwrite), so the bundle crops nothing either. ``rule`` "" marks that case.
    """
    enc = field("policy.obs_encoder", dict)
    if enc.get("resize_shape") is not None:
        raise CheckpointError(f"{path}: not supported: policy.obs_encoder.resize_shape {enc['resize_shape']} "
                              "(crop only)")
    crop_shape = enc.get("crop_shape")
    if isinstance(crop_shape, dict):
        raise CheckpointError(f"{path}: not supported: per-camera crop_shape {crop_shape}")
    rule = "round"
    if crop_shape is not None and not enc.get("random_crop", True):
        rule = ""
        log.warning("%s: obs_encoder.random_crop=False with crop_shape %s: diffusion_policy applies no crop in "
                    "that case (its CenterCrop is overwritten), so neither does the bundle", path, crop_shape)
    return _ImageLayout(crop_shape, rule, sorted(rgb) + sorted(low), bool(enc.get("share_rgb_model", False)),
                        bool(enc.get("imagenet_norm", False)))


def _observation_specs(obs_meta: dict, rgb: list[str], low: list[str], layout: _ImageLayout):
    """(image specs, low-dim specs, encoder input (h, w) per camera) in the encoder's feature order."""
    images, hw = [], {}
    for k in (k for k in layout.order if k in rgb):
        c, h, w = (int(x) for x in obs_meta[k]["shape"])
        crop = centre_crop((h, w), layout.crop_shape, layout.rule) if layout.crop_shape and layout.rule else None
        images.append(ImageSpec(k, (h, w, c), crop=crop))
        hw[k] = (crop[2], crop[3]) if crop else (h, w)
    low_dims = [LowDimSpec(k, int(torch.tensor(obs_meta[k]["shape"]).prod())) for k in layout.order if k in low]
    return images, low_dims, hw


def _policy_config(path: Path, field: _Cfg, images, low_dims, action_dim: int, layout: _ImageLayout,
                   encoder: EncoderConfig, unet: str = "policy.") -> PolicyConfig:
    """``unet``: where the UNet settings are (the image policies: on the policy; lowdim: its model)."""
    sched = field("policy.noise_scheduler", dict)
    scheduler = ddim_scheduler(sched, {"num_train_timesteps": 1000, "beta_schedule": "linear"}, path)
    steps = export_steps(field("policy.num_inference_steps", int, None), scheduler,
                         trained_with_ddim="DDIM" in str(sched.get("_target_", "")))
    try:
        return PolicyConfig(
            images=images, low_dims=low_dims, action_dim=action_dim, horizon=field("policy.horizon", int),
            n_obs_steps=field("policy.n_obs_steps", int), n_action_steps=field("policy.n_action_steps", int),
            num_inference_steps=steps, obs_interval_s=_obs_interval(field),
            image_range="mean_std" if images else "minus_one_one", obs_order=layout.order,
            scheduler=scheduler, encoder=encoder,
            unet=UnetConfig(down_dims=tuple(field(f"{unet}down_dims", list, [256, 512, 1024])),
                            kernel_size=field(f"{unet}kernel_size", int, 5), n_groups=field(f"{unet}n_groups", int, 8),
                            diffusion_step_embed_dim=field(f"{unet}diffusion_step_embed_dim", int, 256),
                            cond_predict_scale=field(f"{unet}cond_predict_scale", bool, True)))
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from e


def _map_key_model_map(imp: Imported, state: dict, rgb: list[str], share: bool) -> EncoderConfig:
    """MultiImageObsEncoder: torchvision ResNet-18 (fc = Identity) per camera or shared as 'rgb'."""
    names = [SHARED_ENCODER_KEY] if share else rgb
    widths = set()
    for name in names:
        w = state.get(f"obs_encoder.key_model_map.{name}.conv1.weight")
        if w is None:
            raise CheckpointError(f"weights have no obs_encoder.key_model_map.{name}.conv1.weight: the rgb model is "
                                  "not a torchvision ResNet (only get_resnet('resnet18') is supported)")
        if f"obs_encoder.key_model_map.{name}.fc.weight" in state:
            raise CheckpointError(f"obs_encoder.key_model_map.{name}.fc.weight: the ResNet keeps its fc layer; "
                                  "only get_resnet's fc=Identity encoders are supported")
        widths.add(int(w.shape[0]))
        copy_prefixed(imp, state, f"obs_encoder.key_model_map.{name}", f"obs_encoder.key_model_map.{name}")
    return EncoderConfig(base_width=widths.pop() if widths else 64, pool="avg", share=share)


def _normalizers(imp: Imported, state: dict, images: list[ImageSpec], low_dims: list[LowDimSpec],
                 imagenet: bool) -> None:
    """LinearNormalizer params -> ours; images fold normalizer (and ImageNet norm) into per-channel mean/std."""
    def param(key: str, leaf: str) -> torch.Tensor:
        name = f"normalizer.params_dict.{key}.{leaf}"
        if name not in state:
            raise CheckpointError(f"weights have no {name}: the normalizer was never fitted for {key!r}")
        return state[name].double().flatten()

    for key in [s.key for s in low_dims] + ["action"]:
        for leaf in ("scale", "offset"):
            imp.put(f"normalizer.params.{key}.{leaf}", f"normalizer.params_dict.{key}.{leaf}",
                    param(key, leaf).float())
    for spec in images:
        c = spec.shape[2]
        s, o = param(spec.key, "scale").expand(c), param(spec.key, "offset").expand(c)
        m = torch.tensor(IMAGENET_MEAN[:c] if imagenet else [0.0] * c, dtype=torch.float64)
        sd = torch.tensor(IMAGENET_STD[:c] if imagenet else [1.0] * c, dtype=torch.float64)
        # ((x * s + o) - m) / sd == (x - (m - o) / s) / (sd / s)
        put_image_mean_std(imp, spec.key, (m - o) / s, sd / s, f"normalizer.params_dict.{spec.key}")


def _ema_settings(field) -> dict[str, Any]:
    ema = field("ema", dict, {}) or {}
    return {k: ema[k] for k in ("power", "inv_gamma", "update_after_step", "min_value", "max_value") if k in ema}


def _obs_interval(field) -> float:
    fps = field("task.env_runner.fps", (int, float), None)
    return 1.0 / fps if fps else 0.1
