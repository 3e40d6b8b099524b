"""PolicyConfig: everything needed to rebuild a policy, as plain JSON-able data."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .. import layout as layouts
from ..errors import ConfigError
from ..layout import Layout
from ..spec import ActionSpec, ObsSpec, PolicySpec

# How uint8 pixels become encoder input. "mean_std": (pixel / 255 - mean) / std per channel, with
# mean/std stored as weights (imported checkpoints fold their normalizers into these).
IMAGE_RANGES = ("minus_one_one", "zero_one", "imagenet", "mean_std")


def default_scheduler_config(num_train_timesteps: int = 100) -> dict[str, Any]:
    """The reference Diffusion Policy noise scheduler (a diffusers config dict)."""
    return {
        "num_train_timesteps": num_train_timesteps,
        "beta_start": 0.0001,
        "beta_end": 0.02,
        "beta_schedule": "squaredcos_cap_v2",
        "clip_sample": True,
        "set_alpha_to_one": True,
        "steps_offset": 0,
        "prediction_type": "epsilon",
    }


@dataclass
class ImageSpec:
    key: str
    shape: tuple[int, int, int]  # (H, W, C), uint8 HWC as cameras publish
    topic: str = ""
    # (height, width) the image is resized to first (bilinear, antialiased, as torchvision's Resize on
    # tensors), None = as recorded. LeRobot's resize_shape.
    resize: tuple[int, int] | None = None
    # (top, left, height, width) window the encoder sees (the eval-time centre crop, in the resized image),
    # None = whole image.
    crop: tuple[int, int, int, int] | None = None

    @property
    def encoder_input_hw(self) -> tuple[int, int]:
        """(h, w) the backbone sees: after the resize and the crop."""
        if self.crop is not None:
            return self.crop[2], self.crop[3]
        return tuple(self.resize) if self.resize is not None else (self.shape[0], self.shape[1])


@dataclass
class LowDimSpec:
    key: str
    size: int
    topic: str = ""
    names: list[str] = field(default_factory=list)
    layout: list[dict[str, Any]] = field(default_factory=list)  # segments (layout.py); [] = joint values


ENCODER_STAGES = (2, 3, 4)  # how many of ResNet-18's stages an encoder may run (4: all of them)


@dataclass
class EncoderConfig:
    base_width: int = 64
    pool: str = "avg"  # "avg" | "spatial_softmax"
    num_kp: int = 32
    feature_dim: int | None = None
    fc_relu: bool = False  # ReLU after the feature projection (LeRobot's encoder has one)
    share: bool = False  # one encoder for all cameras
    stages: int = 4  # ResNet stages run: 4 (ResNet-18: 1/32, a 64 px image's keypoints on 2x2), 3 (1/16), 2 (1/8)


@dataclass
class UnetConfig:
    down_dims: tuple[int, ...] = (256, 512, 1024)
    kernel_size: int = 5
    n_groups: int = 8
    diffusion_step_embed_dim: int = 256
    cond_predict_scale: bool = True


@dataclass
class PolicyConfig:
    images: list[ImageSpec]
    low_dims: list[LowDimSpec]
    action_dim: int
    action_names: list[str] = field(default_factory=list)
    horizon: int = 16
    n_obs_steps: int = 2
    n_action_steps: int = 8
    num_inference_steps: int = 16
    obs_interval_s: float = 0.1  # time between observation-history frames
    image_range: str = "minus_one_one"
    # Order of the per-step features in the condition vector; empty = images, then low-dims.
    obs_order: list[str] = field(default_factory=list)
    action_layout: list[dict[str, Any]] = field(default_factory=list)  # segments (layout.py); [] = joint values
    scheduler: dict[str, Any] = field(default_factory=default_scheduler_config)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    unet: UnetConfig = field(default_factory=UnetConfig)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler["num_train_timesteps"])

    @property
    def feature_order(self) -> list[str]:
        return list(self.obs_order) or [s.key for s in self.images] + [s.key for s in self.low_dims]

    @property
    def action_slice(self) -> tuple[int, int]:
        """The executed part of the predicted horizon (same in all three reference codebases)."""
        start = self.n_obs_steps - 1
        return start, start + self.n_action_steps

    def validate(self) -> None:
        if not self.images and not self.low_dims:
            raise ConfigError("policy config has no observation keys (images or low_dims)")
        keys = [s.key for s in self.images] + [s.key for s in self.low_dims]
        if len(set(keys)) != len(keys):
            raise ConfigError(f"observation keys must be unique, got {keys}")
        for k in keys:
            if not k or "." in k:
                raise ConfigError(f"observation key {k!r} must be non-empty and contain no '.'")
        for s in self.images:
            if len(s.shape) != 3 or s.shape[2] not in (1, 3):
                raise ConfigError(f"image {s.key!r} shape must be (H, W, C) with C in (1, 3), got {s.shape}")
            if s.resize is not None and (len(s.resize) != 2 or min(s.resize) < 1):
                raise ConfigError(f"image {s.key!r} resize must be (height, width) >= 1, got {s.resize}")
            frame = tuple(s.resize) if s.resize is not None else s.shape[:2]
            if s.crop is not None:
                top, left, h, w = s.crop
                if min(s.crop) < 0 or h < 1 or w < 1 or top + h > frame[0] or left + w > frame[1]:
                    raise ConfigError(f"image {s.key!r} crop (top, left, height, width) {tuple(s.crop)} "
                                      f"does not fit the {'resized ' if s.resize else ''}image {frame}")
        if self.encoder.stages not in ENCODER_STAGES:
            raise ConfigError(f"encoder stages must be 2, 3 or 4 (ResNet-18's stages run; 4: all), "
                              f"got {self.encoder.stages!r}")
        if self.obs_order and sorted(self.obs_order) != sorted(keys):
            raise ConfigError(f"obs_order {self.obs_order} must list each observation key once: {keys}")
        if not self.obs_interval_s > 0:
            raise ConfigError(f"obs_interval_s must be > 0 (seconds between observation-history frames), "
                              f"got {self.obs_interval_s}")
        if self.action_dim < 1:
            raise ConfigError(f"action_dim must be >= 1, got {self.action_dim}")
        if self.action_names and len(self.action_names) != self.action_dim:
            raise ConfigError(f"action_names has {len(self.action_names)} names, action_dim is {self.action_dim}")
        self._layouts()
        if self.horizon % (2 ** (len(self.unet.down_dims) - 1)):
            raise ConfigError(f"horizon {self.horizon} must be divisible by "
                              f"{2 ** (len(self.unet.down_dims) - 1)} for down_dims {self.unet.down_dims}")
        start, end = self.action_slice
        if end > self.horizon:
            raise ConfigError(f"n_obs_steps - 1 + n_action_steps = {end} exceeds horizon {self.horizon}")
        if self.image_range not in IMAGE_RANGES:
            raise ConfigError(f"image_range must be one of {IMAGE_RANGES}, got {self.image_range!r}")
        if self.scheduler.get("prediction_type", "epsilon") != "epsilon":
            raise ConfigError("only prediction_type 'epsilon' is supported, got "
                              f"{self.scheduler.get('prediction_type')!r}")
        if not 1 <= self.num_inference_steps <= self.num_train_timesteps:
            raise ConfigError(f"num_inference_steps {self.num_inference_steps} must be in "
                              f"[1, {self.num_train_timesteps}]")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def _layouts(self) -> tuple[dict[str, Layout], Layout]:
        """The low-dims' and the action's layouts, checked (() where none is given: joint values)."""
        low = {s.key: layouts.parse(s.layout, s.size, f"low-dim {s.key!r} layout", observation=True) if s.layout else ()
               for s in self.low_dims}
        action = layouts.parse(self.action_layout, self.action_dim, "action layout") if self.action_layout else ()
        return low, action

    def policy_spec(self) -> PolicySpec:
        """The control loop's contract for this policy (what the bundle manifest records)."""
        low, action = self._layouts()
        obs = [ObsSpec(s.key, "image", tuple(s.shape), s.topic) for s in self.images]
        obs += [ObsSpec(s.key, "low_dim", (s.size,), s.topic, tuple(s.names), low[s.key]) for s in self.low_dims]
        start, end = self.action_slice
        names = tuple(self.action_names) or tuple(f"action_{i}" for i in range(self.action_dim))
        return PolicySpec(tuple(obs), ActionSpec(self.action_dim, names, start, end, layout=action), self.horizon,
                          self.n_obs_steps, self.obs_interval_s)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PolicyConfig":
        try:
            d = dict(d)
            d["images"] = [ImageSpec(key=i["key"], shape=tuple(i["shape"]), topic=i.get("topic", ""),
                                     resize=tuple(i["resize"]) if i.get("resize") is not None else None,
                                     crop=tuple(i["crop"]) if i.get("crop") is not None else None)
                           for i in d.get("images", [])]
            d["low_dims"] = [LowDimSpec(**i) for i in d.get("low_dims", [])]
            d["encoder"] = EncoderConfig(**d.get("encoder", {}))
            unet = dict(d.get("unet", {}))
            if "down_dims" in unet:
                unet["down_dims"] = tuple(unet["down_dims"])
            d["unet"] = UnetConfig(**unet)
            return cls(**d)
        except (KeyError, TypeError) as e:
            raise ConfigError(f"policy config is malformed: {e}") from e
