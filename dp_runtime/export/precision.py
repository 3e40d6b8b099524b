"""Reduced-precision step graphs: the UNet in fp16/bf16, or its convolutions as int8 MatMulNBits.

A batch-1 DDIM step streams every UNet weight once, so its floor is bytes per
weight x weights / bandwidth: fewer bytes per weight is the only way below the
fp32 floor. Only the UNet changes; the DDIM update around it and the encoder
graph stay fp32 (see ``dp_runtime.precision``).

int8 uses ONNX Runtime's MatMulNBits (8-bit weights, blockwise scales, int8
activations quantized per block at run time). It applies to MatMul, so the
int8 graph writes each Conv1d as the same sum over a (C x k) window with one
MatMul (``Conv1dAsMatMul``); ConvTranspose1d (upsampling, a few % of the
weights) stays fp32. Static QDQ int8 (per-tensor activation scales from a
calibration set) was measured first on the demo policy: its action error was
about 1.0 normalized after 16 steps, a hundred times the tolerance, so it is
not offered.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

INT8_BLOCK = 32
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


class CastUnet(nn.Module):
    """The UNet in a reduced float dtype behind an fp32 interface (``forward_film`` in and out)."""

    def __init__(self, unet: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.unet = copy.deepcopy(unet).to(dtype)
        self.dtype = dtype

    def forward_film(self, sample: torch.Tensor, embeds: list[torch.Tensor]) -> torch.Tensor:
        eps = self.unet.forward_film(sample.to(self.dtype), [e.to(self.dtype) for e in embeds])
        return eps.float()


class Conv1dAsMatMul(nn.Module):
    """A Conv1d as one MatMul over its unfolded input windows (same math; lets MatMulNBits hold the weight)."""

    def __init__(self, conv: nn.Conv1d):
        super().__init__()
        if conv.groups != 1 or conv.dilation != (1,) or isinstance(conv.padding, str) or conv.padding_mode != "zeros":
            raise ValueError(f"Conv1dAsMatMul supports plain zero-padded Conv1d, got {conv}")
        out_ch, in_ch, k = conv.weight.shape
        self.k, self.stride, self.pad = k, conv.stride[0], conv.padding[0]
        # (C * k, O): row c * k + i multiplies input channel c at window offset i.
        self.weight = nn.Parameter(conv.weight.detach().reshape(out_ch, in_ch * k).T.contiguous())
        self.bias = nn.Parameter(conv.bias.detach().clone()) if conv.bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.k == 1 and self.stride == 1 and self.pad == 0:
            cols = x.transpose(1, 2)
        else:
            xp = nn.functional.pad(x, (self.pad, self.pad))
            n_out = (xp.shape[-1] - self.k) // self.stride + 1
            span = self.stride * (n_out - 1) + 1
            win = torch.stack([xp[:, :, i:i + span:self.stride] for i in range(self.k)], dim=-1)  # B, C, L, k
            cols = win.permute(0, 2, 1, 3).reshape(x.shape[0], n_out, -1)
        y = cols @ self.weight
        if self.bias is not None:
            y = y + self.bias
        return y.transpose(1, 2)


def convs_as_matmul(unet: nn.Module) -> nn.Module:
    unet = copy.deepcopy(unet)
    for parent in list(unet.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Conv1d:
                setattr(parent, name, Conv1dAsMatMul(child))
    return unet


def unet_for(unet: nn.Module, precision: str) -> nn.Module:
    """The UNet module a step graph of ``precision`` traces."""
    if precision == "fp32":
        return unet
    if precision == "tf32":  # fp32 weights as GEMMs (cuBLAS, TF32 tensor cores; BackendOptions.tf32 switches it on)
        return convs_as_matmul(unet)
    if precision in DTYPES:
        return CastUnet(unet, DTYPES[precision])
    if precision == "int8":
        return convs_as_matmul(unet)
    raise ValueError(f"no step graph for precision {precision!r}")


def quantize_int8(path: Path) -> None:
    """Rewrite the MatMuls of an exported step graph as int8 MatMulNBits, in place."""
    import logging

    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer
    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    # accuracy_level 4: int8 activations (the int8 x int8 kernels); levels 0-1 dequantize to fp32 in a
    # reference kernel that ran 20x slower than fp32 MatMul on the 2-core AVX2 CI machine.
    config = DefaultWeightOnlyQuantConfig(block_size=INT8_BLOCK, is_symmetric=True, accuracy_level=4, bits=8)
    q = MatMulNBitsQuantizer(onnx.load(str(path)), algo_config=config)
    q.process()
    q.model.save_model_to_file(str(path))
    onnx.checker.check_model(str(path), full_check=True)
