"""DiffusionPolicy: observation encoder + ConditionalUnet1D + normalizer, sampled with DDIM.

Data path: raw observation history (uint8 images, float32 low-dim) ->
normalize/preprocess -> per-frame features -> global condition (B, To*D) ->
DDIM denoising from the given noise -> unnormalized action trajectory (B, horizon, A).
"""
from __future__ import annotations

from typing import Callable, Mapping

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from torch import nn
from torch.nn import functional as F

from ..holds import Hold, every_step
from ..obs_spec import validate_obs
from .config import PolicyConfig
from .encoder import ResNet18GN
from .normalizer import Normalizer
from .unet import ConditionalUnet1D

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SHARED_ENCODER_KEY = "rgb"


def resize_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in): torch's antialiased bilinear resize along one axis, as a matrix.

    The 2-D resize is separable (torch computes it as two 1-D passes), so an image resizes as
    ``R_h @ img @ R_w.T``: two small matmuls in the graph, exported at any ONNX opset.
    """
    # Resize rows of one-hot images along the width: torch's antialiased kernel misbehaves on a
    # 1-pixel-wide dimension, so the 1-D map is taken along W (the same kernel serves H).
    basis = torch.eye(n_in, dtype=torch.float64).reshape(n_in, 1, 1, n_in)
    out = F.interpolate(basis, size=(1, n_out), mode="bilinear", align_corners=False, antialias=True)
    return out.reshape(n_in, n_out).T.float().contiguous()


class ImagePreprocess(nn.Module):
    """uint8 (N, H, W, C) -> float (N, C, h, w): the range the encoder was trained on, resized and cropped."""

    def __init__(self, image_range: str, channels: int, crop: tuple[int, int, int, int] | None = None,
                 shape_hw: tuple[int, int] | None = None, resize: tuple[int, int] | None = None):
        super().__init__()
        self.image_range = image_range
        self.crop = tuple(crop) if crop is not None else None
        self.resize = resize is not None
        if self.resize:
            self.register_buffer("resize_h", resize_matrix(shape_hw[0], resize[0]))
            self.register_buffer("resize_w", resize_matrix(shape_hw[1], resize[1]))
        if image_range == "imagenet":  # "mean_std" loads its own values into these buffers
            mean = torch.tensor(IMAGENET_MEAN[:channels]).reshape(1, channels, 1, 1)
            std = torch.tensor(IMAGENET_STD[:channels]).reshape(1, channels, 1, 1)
        else:
            mean, std = torch.zeros(1, channels, 1, 1), torch.ones(1, channels, 1, 1)
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if self.resize:  # resize, then crop the resized image (LeRobot's order); affine ranges commute with both
            x = self.resize_h @ (img.permute(0, 3, 1, 2).float() / 255.0) @ self.resize_w.T
            if self.crop is not None:
                top, left, h, w = self.crop
                x = x[:, :, top:top + h, left:left + w]
        else:
            if self.crop is not None:
                top, left, h, w = self.crop
                img = img[:, top:top + h, left:left + w]
            x = img.permute(0, 3, 1, 2).float() / 255.0
        if self.image_range == "minus_one_one":
            return x * 2.0 - 1.0
        if self.image_range in ("imagenet", "mean_std"):
            return (x - self.mean) / self.std
        return x


class ObsEncoder(nn.Module):
    """Observation history dict -> global condition (B, n_obs_steps * feature_dim)."""

    def __init__(self, cfg: PolicyConfig):
        super().__init__()
        self.image_keys = [s.key for s in cfg.images]
        self.low_dim_keys = [s.key for s in cfg.low_dims]
        self.share = cfg.encoder.share
        e = cfg.encoder
        self.preprocess = nn.ModuleDict({
            s.key: ImagePreprocess(cfg.image_range, s.shape[2], s.crop, s.shape[:2], s.resize) for s in cfg.images})
        self.order = cfg.feature_order

        def make(channels: int) -> ResNet18GN:
            return ResNet18GN(e.base_width, e.pool, e.num_kp, e.feature_dim, in_channels=channels,
                              fc_relu=e.fc_relu, stages=e.stages)

        if cfg.images and self.share:
            self.key_model_map = nn.ModuleDict({SHARED_ENCODER_KEY: make(cfg.images[0].shape[2])})
        else:
            self.key_model_map = nn.ModuleDict({s.key: make(s.shape[2]) for s in cfg.images})
        img_dim = sum(m.out_dim for m in self.key_model_map.values())
        if self.share:
            img_dim *= len(cfg.images)
        self.feature_dim = img_dim + sum(s.size for s in cfg.low_dims)

    def forward(self, obs: Mapping[str, torch.Tensor], normalizer: Normalizer) -> torch.Tensor:
        feats = {}
        for key in self.image_keys:
            img = obs[key]  # (B, To, H, W, C) uint8
            batch, steps = img.shape[0], img.shape[1]
            x = self.preprocess[key](img.reshape(batch * steps, *img.shape[2:]))
            net = self.key_model_map[SHARED_ENCODER_KEY if self.share else key]
            feats[key] = net(x).reshape(batch, steps, -1)
        for key in self.low_dim_keys:
            feats[key] = normalizer.normalize(key, obs[key].float())
        x = torch.cat([feats[k] for k in self.order], dim=-1)
        return x.reshape(x.shape[0], -1)


class DiffusionPolicy(nn.Module):
    def __init__(self, cfg: PolicyConfig, normalizer_stats: dict | None = None):
        super().__init__()
        self.cfg = cfg
        sizes = {s.key: s.size for s in cfg.low_dims}
        sizes["action"] = cfg.action_dim
        self.normalizer = Normalizer(sizes, normalizer_stats)
        self.obs_encoder = ObsEncoder(cfg)
        u = cfg.unet
        self.model = ConditionalUnet1D(
            input_dim=cfg.action_dim, global_cond_dim=self.obs_encoder.feature_dim * cfg.n_obs_steps,
            diffusion_step_embed_dim=u.diffusion_step_embed_dim, down_dims=list(u.down_dims),
            kernel_size=u.kernel_size, n_groups=u.n_groups, cond_predict_scale=u.cond_predict_scale)

    # -- pieces the exporter traces --------------------------------------------------
    def encode(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.obs_encoder(obs, self.normalizer)

    def unnormalize_action(self, naction: torch.Tensor) -> torch.Tensor:
        return self.normalizer.unnormalize("action", naction)

    # -- reference inference path ----------------------------------------------------
    def ddim_scheduler(self, num_inference_steps: int | None = None) -> DDIMScheduler:
        sched = DDIMScheduler.from_config(self.cfg.scheduler)
        sched.set_timesteps(num_inference_steps or self.cfg.num_inference_steps)
        return sched

    def check_obs(self, obs: Mapping[str, np.ndarray | torch.Tensor]) -> int:
        as_np = {k: (v.cpu().numpy() if torch.is_tensor(v) else v) for k, v in obs.items()}
        return validate_obs(as_np, {s.key: s.shape for s in self.cfg.images},
                            {s.key: s.size for s in self.cfg.low_dims}, self.cfg.n_obs_steps)

    @torch.no_grad()
    def sample(self, obs: Mapping[str, torch.Tensor], noise: torch.Tensor,
               num_inference_steps: int | None = None, known: torch.Tensor | None = None,
               mask: torch.Tensor | None = None, hold: Hold = every_step) -> torch.Tensor:
        """Denoise ``noise`` (B, horizon, A) with diffusers' DDIMScheduler -> raw actions (B, horizon, A).

        Inpainting (``known`` raw actions (B, horizon, A), ``mask`` (B, horizon) bool): before each
        step the masked part of the sample is replaced by the known actions noised to that step with
        the chunk's own initial noise (``scheduler.add_noise``), and by the known actions themselves at
        the end, so the result continues exactly from the actions already committed. A float ``mask``
        of weights in [0, 1] (soft inpainting) mixes instead, ``w * known part + (1 - w) * sample``, on
        each step's input and on its output (noised to the next step), exactly as the inpainting graph
        does; for a bool mask the second hold changes nothing. ``hold`` (holds.py) gives each step its
        own mask from the weights (``early_steps``: held fully for the noisiest share of the steps).
        """
        self.check_obs(obs)
        cond = self.encode({k: torch.as_tensor(v) for k, v in obs.items()})
        sched = self.ddim_scheduler(num_inference_steps)
        x = noise
        steps = list(sched.timesteps)
        if known is not None:
            per_step = (hold(mask.cpu().numpy(), len(steps)) if mask.dtype != torch.bool else [mask] * len(steps))
            holds = [_holding(torch.as_tensor(m, device=mask.device)) for m in per_step]
            known_n = self.normalizer.normalize("action", known.float())
        for i, t in enumerate(steps):
            if known is not None:
                x = holds[i](sched.add_noise(known_n, noise, t.reshape(1)), x)
            eps = self.model(x, t, global_cond=cond)
            x = sched.step(eps, t, x).prev_sample
            if known is not None:
                after = sched.add_noise(known_n, noise, steps[i + 1].reshape(1)) if i + 1 < len(steps) else known_n
                x = holds[i](after, x)
        return self.unnormalize_action(x)

    # -- training --------------------------------------------------------------------
    def compute_loss(self, obs: Mapping[str, torch.Tensor], action: torch.Tensor,
                     scheduler: DDPMScheduler) -> torch.Tensor:
        """Epsilon-prediction MSE on raw actions (B, horizon, A)."""
        cond = self.encode(obs)
        x0 = self.normalizer.normalize("action", action)
        noise = torch.randn_like(x0)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],), device=x0.device)
        noisy = scheduler.add_noise(x0, noise, t)
        return F.mse_loss(self.model(noisy, t, global_cond=cond), noise)


def _holding(mask: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """(known part, sample) -> sample with the known part held: replaced where a bool ``mask`` (B, T) is
    set, mixed by a float ``mask`` of weights (B, T) in [0, 1] (as the inpainting graph computes it)."""
    if mask.dtype == torch.bool:
        m = mask[..., None]
        return lambda held, x: torch.where(m, held, x)
    w = mask[..., None].float()
    return lambda held, x: w * held + (1 - w) * x
