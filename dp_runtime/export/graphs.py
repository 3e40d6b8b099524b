"""The two graphs a bundle holds, as torch modules ready to trace.

``EncoderGraph``: raw observation history -> the observation part of every
FiLM embedding, run once per chunk.
``DenoiseStepGraph``: one DDIM step with the epsilon UNet and the DDIM update
in-graph, plus the unnormalized actions. The DDIM coefficient table
(alphas_cumprod and the final-step alpha) is taken from diffusers'
DDIMScheduler; the runtime only feeds (timestep, prev_timestep) pairs, so the
step count stays a runtime choice.

Why FiLM is split: each residual block computes
``Linear(Mish(cat(step_emb(t), obs_cond)))``. Mish is elementwise, so this is
``W_t @ Mish(step_emb(t)) + W_c @ Mish(obs_cond) + b``. The observation term
is constant over the denoising loop (computed once in the encoder graph) and
the timestep term depends only on t (tabulated at export for every training
timestep). On the reference size these FiLM layers hold a third of the UNet's
weights; a batch-1 step is bound by streaming weights from memory, so not
re-reading them every step is most of the CPU speed-up.
"""
from __future__ import annotations

import copy

import torch
from diffusers import DDIMScheduler
from torch import nn

from ..model import DiffusionPolicy


def _split_film_weights(policy: DiffusionPolicy) -> tuple[list[nn.Linear], list[int], int]:
    blocks = policy.model.film_blocks()
    linears = [b.cond_encoder[1] for b in blocks]
    sizes = [lin.out_features for lin in linears]
    dsed = policy.cfg.unet.diffusion_step_embed_dim
    return linears, sizes, dsed


class EncoderGraph(nn.Module):
    """Holds the observation encoder and the normalizer only: a traced TorchScript file keeps every weight its
    module holds, used or not (the whole UNet, once)."""

    def __init__(self, policy: DiffusionPolicy):
        super().__init__()
        self.obs_encoder = policy.obs_encoder
        self.normalizer = policy.normalizer
        self.keys = [s.key for s in policy.cfg.images] + [s.key for s in policy.cfg.low_dims]
        linears, _, dsed = _split_film_weights(policy)
        # Observation columns of every FiLM layer, stacked: (sum(out), G) and bias (sum(out),).
        self.register_buffer("w_obs", torch.cat([lin.weight[:, dsed:] for lin in linears]).detach().clone())
        self.register_buffer("b_obs", torch.cat([lin.bias for lin in linears]).detach().clone())

    def forward(self, *obs: torch.Tensor) -> torch.Tensor:
        """obs in manifest order: images (B, To, H, W, C) uint8, low-dim (B, To, D) float32
        -> observation part of all FiLM embeddings (B, F)."""
        cond = self.obs_encoder(dict(zip(self.keys, obs)), self.normalizer)
        return nn.functional.linear(nn.functional.mish(cond), self.w_obs, self.b_obs)


def without_conditioning(unet: nn.Module) -> nn.Module:
    """A copy of the UNet without what the step graph never runs: the FiLM layers' linear maps and the
    diffusion-step encoder, whose results the step graph holds precomputed (``film_t``, the encoder's
    ``w_obs``). A traced file would otherwise carry their weights unused."""
    if not hasattr(unet, "film_blocks"):
        return unet
    unet = copy.deepcopy(unet)
    for block in unet.film_blocks():
        block.cond_encoder = nn.Identity()
    unet.diffusion_step_encoder = nn.Identity()
    return unet


class DenoiseStepGraph(nn.Module):
    """``unet``: the UNet to trace in place of the policy's (a reduced-precision form, export/precision.py).

    Holds only the UNet and the action normalizer: the encoder's weights stay out of the step file."""

    def __init__(self, policy: DiffusionPolicy, scheduler: DDIMScheduler, unet: nn.Module | None = None):
        super().__init__()
        self.unet = without_conditioning(policy.model if unet is None else unet)
        self.action_norm = policy.normalizer.params["action"]
        linears, self.film_sizes, dsed = _split_film_weights(policy)
        model = policy.model
        with torch.no_grad():
            t_all = torch.arange(scheduler.config.num_train_timesteps)
            emb = nn.functional.mish(model.diffusion_step_encoder(t_all))
            w_t = torch.cat([lin.weight[:, :dsed] for lin in linears])
            # Timestep part of all FiLM embeddings for every training timestep: (T, F).
            self.register_buffer("film_t", (emb @ w_t.T).contiguous())
        cfg = scheduler.config
        self.register_buffer("alphas_cumprod", scheduler.alphas_cumprod.clone().float())
        self.register_buffer("final_alpha_cumprod",
                             torch.as_tensor(scheduler.final_alpha_cumprod, dtype=torch.float32).reshape(1))
        self.clip_sample = bool(cfg.clip_sample)
        self.clip_range = float(cfg.get("clip_sample_range", 1.0))
        if cfg.get("thresholding", False):
            raise ValueError("DDIM thresholding is not supported in the bundle graph")

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, prev_timestep: torch.Tensor,
                cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """sample (B, T, A) normalized; timestep, prev_timestep (1,) int64; cond (B, F) from EncoderGraph.

        Returns (prev_sample (B, T, A) normalized, actions (B, T, A) unnormalized from prev_sample).
        """
        film = (cond + self.film_t[timestep]).unsqueeze(-1)
        eps = self.unet.forward_film(sample, list(torch.split(film, self.film_sizes, dim=1)))
        alpha_t = self.alphas_cumprod[timestep].reshape(1, 1, 1)
        prev_alpha = torch.where(prev_timestep >= 0, self.alphas_cumprod[prev_timestep.clamp(min=0)],
                                 self.final_alpha_cumprod).reshape(1, 1, 1)
        x0 = (sample - (1 - alpha_t) ** 0.5 * eps) / alpha_t ** 0.5
        if self.clip_sample:
            x0 = x0.clamp(-self.clip_range, self.clip_range)
        prev = prev_alpha ** 0.5 * x0 + (1 - prev_alpha) ** 0.5 * eps
        return prev, self.action_norm.unnormalize(prev)


class InpaintStepGraph(DenoiseStepGraph):
    """One DDIM step that holds the committed actions fixed (chunk transitions ``inpaint``).

    Extra inputs: ``known`` (B, T, A) raw actions, ``mask`` (B, T, 1) 1.0 where known, ``noise``
    (B, T, A) the chunk's initial noise. The masked part of the input sample is the known actions
    noised to ``timestep``, and of the output the known actions noised to ``prev_timestep`` (exactly
    the known actions after the last step), as the torch reference ``DiffusionPolicy.sample(known=,
    mask=)`` does with diffusers' ``add_noise``. A separate graph, so ``replace`` runs today's.
    """

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, prev_timestep: torch.Tensor,
                cond: torch.Tensor, known: torch.Tensor, mask: torch.Tensor,
                noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        known_n = self.action_norm.normalize(known)
        alpha_t = self.alphas_cumprod[timestep].reshape(1, 1, 1)
        sample = mask * (alpha_t ** 0.5 * known_n + (1 - alpha_t) ** 0.5 * noise) + (1 - mask) * sample
        prev, _ = super().forward(sample, timestep, prev_timestep, cond)
        prev_alpha = torch.where(prev_timestep >= 0, self.alphas_cumprod[prev_timestep.clamp(min=0)],
                                 torch.ones_like(self.final_alpha_cumprod)).reshape(1, 1, 1)
        prev = mask * (prev_alpha ** 0.5 * known_n + (1 - prev_alpha) ** 0.5 * noise) + (1 - mask) * prev
        return prev, self.action_norm.unnormalize(prev)


class ChunkGraph(nn.Module):
    """The whole chunk in one graph: encoder, every DDIM step of the exported schedule, unnormalize.

    For compiled formats (torch.export + AOTInductor): one program per chunk, so a GPU runs it without
    a host round trip between steps. The schedule is baked in (the step count is an export choice).
    ``step``: a DenoiseStepGraph, or an InpaintStepGraph (then known, mask follow noise as inputs).
    """

    def __init__(self, encoder: EncoderGraph, step: DenoiseStepGraph, timesteps, prev_timesteps):
        super().__init__()
        self.encoder, self.step = encoder, step
        self.n_obs = len(encoder.keys)
        self.register_buffer("timesteps", torch.as_tensor(list(timesteps), dtype=torch.int64))
        self.register_buffer("prev_timesteps", torch.as_tensor(list(prev_timesteps), dtype=torch.int64))
        self.inpaint = isinstance(step, InpaintStepGraph)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        """obs in manifest order, noise (B, T, A) [, known (B, T, A) raw, mask (B, T, 1)] -> actions (B, T, A)."""
        obs, noise, held = inputs[:self.n_obs], inputs[self.n_obs], inputs[self.n_obs + 1:]
        cond = self.encoder(*obs)
        x, actions = noise, noise
        for i in range(self.timesteps.shape[0]):
            t, prev = self.timesteps[i:i + 1], self.prev_timesteps[i:i + 1]
            x, actions = self.step(x, t, prev, cond, *held, noise) if self.inpaint else self.step(x, t, prev, cond)
        return actions
