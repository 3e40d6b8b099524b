"""Image observation encoder: ResNet-18 layout with GroupNorm, torchvision parameter names.

No torchvision dependency. ``base_width`` scales every stage (64 is the real
ResNet-18) so tiny policies can train on CPU with the same layout and names.
"""
from __future__ import annotations

import torch
from torch import nn

from .config import ENCODER_STAGES


def _gn(channels: int) -> nn.GroupNorm:
    # diffusion_policy's replace_bn_with_gn: one group per 16 channels.
    return nn.GroupNorm(max(1, channels // 16), channels)


class BasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = _gn(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = _gn(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), _gn(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class SpatialSoftmax(nn.Module):
    """Keypoint pooling (robomimic): 1x1 conv to K maps, softmax over pixels, expected (x, y)."""

    def __init__(self, in_channels: int, num_kp: int = 32, temperature: float = 1.0):
        super().__init__()
        self.nets = nn.Conv2d(in_channels, num_kp, 1)
        self.num_kp = num_kp
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        maps = self.nets(x).flatten(2) / self.temperature
        attn = torch.softmax(maps, dim=-1)
        # Pixel-centre coordinates in [-1, 1]; arange exports cleanly to ONNX, linspace does not.
        xs = torch.arange(w, device=x.device, dtype=x.dtype) * (2.0 / max(w - 1, 1)) - 1.0
        ys = torch.arange(h, device=x.device, dtype=x.dtype) * (2.0 / max(h - 1, 1)) - 1.0
        ex = (attn.reshape(b, self.num_kp, h, w) * xs.reshape(1, 1, 1, w)).sum((-1, -2))
        ey = (attn.reshape(b, self.num_kp, h, w) * ys.reshape(1, 1, h, 1)).sum((-1, -2))
        return torch.stack([ex, ey], dim=-1).reshape(b, self.num_kp * 2)


class ResNet18GN(nn.Module):
    """(N, 3, H, W) float -> (N, out_dim) features."""

    def __init__(self, base_width: int = 64, pool: str = "avg", num_kp: int = 32,
                 feature_dim: int | None = None, in_channels: int = 3, fc_relu: bool = False, stages: int = 4):
        super().__init__()
        if stages not in ENCODER_STAGES:
            raise ValueError(f"encoder stages must be one of {ENCODER_STAGES}, got {stages!r}")
        w = base_width
        self.conv1 = nn.Conv2d(in_channels, w, 7, 2, 3, bias=False)
        self.bn1 = _gn(w)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths = [w, 2 * w, 4 * w, 8 * w][:stages]
        inplanes = w
        for i, planes in enumerate(widths):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(inplanes, planes, stride),
                                                        BasicBlock(planes, planes)))
            inplanes = planes
        if pool == "avg":
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            pooled = inplanes
        elif pool == "spatial_softmax":
            self.pool = SpatialSoftmax(inplanes, num_kp)
            pooled = 2 * num_kp
        else:
            raise ValueError(f"encoder pool must be 'avg' or 'spatial_softmax', got {pool!r}")
        self.pool_kind = pool
        self.stages = stages
        self.fc = nn.Linear(pooled, feature_dim) if feature_dim else nn.Identity()
        self.fc_relu = fc_relu
        self.out_dim = feature_dim or pooled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(self.stages):
            x = getattr(self, f"layer{i + 1}")(x)
        x = self.avgpool(x).flatten(1) if self.pool_kind == "avg" else self.pool(x)
        x = self.fc(x)
        return torch.relu(x) if self.fc_relu else x
