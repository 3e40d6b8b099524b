"""ConditionalUnet1D: the FiLM-conditioned temporal UNet of Diffusion Policy (Chi et al.).

Parameter names and shapes match real-stanford/diffusion_policy's
``conditional_unet1d.py`` exactly, so its state dicts load with ``strict=True``.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn


class SinusoidalPosEmb(nn.Module):
    """Sinusoidal embedding of the diffusion timestep: (B,) -> (B, dim)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freq = torch.exp(torch.arange(half, device=x.device) * -(math.log(10000) / (half - 1)))
        arg = x.float()[:, None] * freq[None, :]
        return torch.cat((arg.sin(), arg.cos()), dim=-1)


class Conv1dBlock(nn.Module):
    """Conv1d -> GroupNorm -> Mish."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, n_groups: int = 8):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(n_groups, out_channels),
            nn.Mish(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class Downsample1d(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample1d(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.ConvTranspose1d(dim, dim, 4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class _AddTimeAxis(nn.Module):
    """(B, C) -> (B, C, 1); parameter-free, keeps the reference's Sequential indices."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(-1)


class ConditionalResidualBlock1D(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, cond_dim: int,
                 kernel_size: int = 3, n_groups: int = 8, cond_predict_scale: bool = False):
        super().__init__()
        self.blocks = nn.ModuleList([
            Conv1dBlock(in_channels, out_channels, kernel_size, n_groups=n_groups),
            Conv1dBlock(out_channels, out_channels, kernel_size, n_groups=n_groups),
        ])
        cond_channels = out_channels * 2 if cond_predict_scale else out_channels
        self.cond_predict_scale = cond_predict_scale
        self.out_channels = out_channels
        # FiLM: per-channel bias (and scale) predicted from the condition.
        self.cond_encoder = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, cond_channels), _AddTimeAxis())
        self.residual_conv = (nn.Conv1d(in_channels, out_channels, 1)
                              if in_channels != out_channels else nn.Identity())

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.forward_film(x, self.cond_encoder(cond))

    def forward_film(self, x: torch.Tensor, embed: torch.Tensor) -> torch.Tensor:
        """Forward with the FiLM embedding (B, cond_channels, 1) already computed."""
        out = self.blocks[0](x)
        if self.cond_predict_scale:
            embed = embed.reshape(embed.shape[0], 2, self.out_channels, 1)
            out = embed[:, 0] * out + embed[:, 1]
        else:
            out = out + embed
        out = self.blocks[1](out)
        return out + self.residual_conv(x)


class ConditionalUnet1D(nn.Module):
    def __init__(self, input_dim: int, local_cond_dim: int | None = None,
                 global_cond_dim: int | None = None, diffusion_step_embed_dim: int = 256,
                 down_dims: Sequence[int] = (256, 512, 1024), kernel_size: int = 5,
                 n_groups: int = 8, cond_predict_scale: bool = False):
        super().__init__()
        all_dims = [input_dim] + list(down_dims)
        start_dim = down_dims[0]
        dsed = diffusion_step_embed_dim
        self.diffusion_step_encoder = nn.Sequential(
            SinusoidalPosEmb(dsed), nn.Linear(dsed, dsed * 4), nn.Mish(), nn.Linear(dsed * 4, dsed))
        cond_dim = dsed + (global_cond_dim or 0)
        in_out = list(zip(all_dims[:-1], all_dims[1:]))

        def block(i: int, o: int) -> ConditionalResidualBlock1D:
            return ConditionalResidualBlock1D(i, o, cond_dim=cond_dim, kernel_size=kernel_size,
                                              n_groups=n_groups, cond_predict_scale=cond_predict_scale)

        self.local_cond_encoder = None
        if local_cond_dim is not None:
            dim_out = in_out[0][1]
            self.local_cond_encoder = nn.ModuleList([block(local_cond_dim, dim_out),
                                                     block(local_cond_dim, dim_out)])
        mid_dim = all_dims[-1]
        self.mid_modules = nn.ModuleList([block(mid_dim, mid_dim), block(mid_dim, mid_dim)])
        self.down_modules = nn.ModuleList([
            nn.ModuleList([block(dim_in, dim_out), block(dim_out, dim_out),
                           Downsample1d(dim_out) if ind < len(in_out) - 1 else nn.Identity()])
            for ind, (dim_in, dim_out) in enumerate(in_out)])
        self.up_modules = nn.ModuleList([
            nn.ModuleList([block(dim_out * 2, dim_in), block(dim_in, dim_in),
                           Upsample1d(dim_in) if ind < len(in_out) - 1 else nn.Identity()])
            for ind, (dim_in, dim_out) in enumerate(reversed(in_out[1:]))])
        self.final_conv = nn.Sequential(
            Conv1dBlock(start_dim, start_dim, kernel_size=kernel_size),
            nn.Conv1d(start_dim, input_dim, 1))

    def film_blocks(self) -> list[ConditionalResidualBlock1D]:
        """The FiLM-conditioned blocks in forward order (local-cond encoders excluded)."""
        blocks = [b for res1, res2, _ in self.down_modules for b in (res1, res2)]
        blocks += list(self.mid_modules)
        return blocks + [b for res1, res2, _ in self.up_modules for b in (res1, res2)]

    def forward_film(self, sample: torch.Tensor, embeds: list[torch.Tensor]) -> torch.Tensor:
        """Forward with precomputed per-block FiLM embeddings (see ``film_blocks``), no local cond."""
        x = sample.transpose(1, 2)
        it = iter(embeds)
        skips = []
        for res1, res2, down in self.down_modules:
            x = res2.forward_film(res1.forward_film(x, next(it)), next(it))
            skips.append(x)
            x = down(x)
        for mid in self.mid_modules:
            x = mid.forward_film(x, next(it))
        for res1, res2, up in self.up_modules:
            x = torch.cat((x, skips.pop()), dim=1)
            x = up(res2.forward_film(res1.forward_film(x, next(it)), next(it)))
        return self.final_conv(x).transpose(1, 2)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | int | float,
                local_cond: torch.Tensor | None = None,
                global_cond: torch.Tensor | None = None) -> torch.Tensor:
        """sample (B, T, input_dim); timestep (B,) or scalar; global_cond (B, G) -> (B, T, input_dim)."""
        x = sample.transpose(1, 2)
        if not torch.is_tensor(timestep):
            timestep = torch.tensor([timestep], dtype=torch.long, device=sample.device)
        elif timestep.dim() == 0:
            timestep = timestep[None].to(sample.device)
        timestep = timestep.expand(sample.shape[0])
        feature = self.diffusion_step_encoder(timestep)
        if global_cond is not None:
            feature = torch.cat([feature, global_cond], dim=-1)

        h_local = []
        if local_cond is not None:
            assert self.local_cond_encoder is not None, "model was built without local_cond_dim"
            lc = local_cond.transpose(1, 2)
            h_local = [enc(lc, feature) for enc in self.local_cond_encoder]

        skips = []
        for idx, (res1, res2, down) in enumerate(self.down_modules):
            x = res1(x, feature)
            if idx == 0 and h_local:
                x = x + h_local[0]
            x = res2(x, feature)
            skips.append(x)
            x = down(x)
        for mid in self.mid_modules:
            x = mid(x, feature)
        for idx, (res1, res2, up) in enumerate(self.up_modules):
            x = torch.cat((x, skips.pop()), dim=1)
            x = res1(x, feature)
            if idx == len(self.up_modules) - 1 and h_local:
                x = x + h_local[1]
            x = res2(x, feature)
            x = up(x)
        return self.final_conv(x).transpose(1, 2)
