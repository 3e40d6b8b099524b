"""Numeric precisions a bundle's step graph can run in, and which devices run each one well.

Torch-free: the exporter reads it to decide what it can build, the runtime to
decide what the device in front of it can run. Only the denoising step graph
changes precision (it is run once per DDIM step and streams the UNet's weights
each time); the observation encoder, the normalizers and the DDIM update stay
fp32, so a reduced-precision variant only perturbs the noise prediction.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .errors import BundleError

DEFAULT_TOLERANCE = 0.01  # max action error of a reduced-precision variant, normalized units (0.5 % of [-1, 1])


@dataclass(frozen=True)
class Precision:
    name: str
    bytes_per_weight: float  # what one UNet weight costs to stream (the weight-streaming floor)
    formats: tuple[str, ...]  # bundle formats it is exported in
    devices: tuple[str, ...]  # device kinds whose kernels run it natively
    how: str  # one line for dp-export --help and the manifest


PRECISIONS: dict[str, Precision] = {p.name: p for p in (
    Precision("fp32", 4.0, ("onnx", "torchscript"), ("cpu", "cuda"),
              "the trained policy, exact to ~1e-6"),
    Precision("int8", 1.0 + 4.0 / 32, ("onnx",), ("cpu",),
              "UNet convolutions as ONNX Runtime MatMulNBits: int8 weights in blocks of 32 with an fp32 scale, "
              "activations quantized per block at run time (no calibration set needed)"),
    Precision("fp16", 2.0, ("onnx", "torchscript"), ("cuda",),
              "UNet in float16 (tensor cores); the DDIM update and encoder stay fp32"),
    Precision("bf16", 2.0, ("torchscript",), ("cuda", "cpu-bf16"),
              "UNet in bfloat16; native on CUDA (sm80+) and CPUs with AVX-512 BF16 or AMX"),
)}


def parse_precisions(text: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """'fp32,int8' -> ('fp32', 'int8'); fp32 always first (the reference every variant is measured against)."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    unknown = [n for n in names if n not in PRECISIONS]
    if unknown:
        raise BundleError(f"precision {unknown} is not one of {list(PRECISIONS)}")
    return ("fp32",) + tuple(dict.fromkeys(n for n in names if n != "fp32"))


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def device_kinds(device: str) -> set[str]:
    """The kinds a resolved device ('cpu' | 'cuda') offers, for matching Precision.devices."""
    if device != "cpu":
        return {"cuda"}
    kinds = {"cpu"}
    if {"avx512_bf16", "amx_bf16"} & cpu_flags():
        kinds.add("cpu-bf16")
    return kinds


def supported_on(device: str) -> list[str]:
    kinds = device_kinds(device)
    return [p.name for p in PRECISIONS.values() if kinds & set(p.devices)]


def check_runs_on(precision: str, device: str) -> None:
    """Refuse a precision whose kernels the device lacks (it would run emulated, slower than fp32)."""
    if precision not in supported_on(device):
        need = " or ".join(PRECISIONS[precision].devices) if precision in PRECISIONS else "?"
        raise BundleError(f"precision {precision!r} does not run natively on {device} (it needs {need}); this "
                          f"device runs {supported_on(device)}: set precision to one of them, or auto")
