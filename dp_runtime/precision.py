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

from .errors import BundleError, ConfigError

DEFAULT_TOLERANCE = 0.01  # max action error of a reduced-precision variant, normalized units (0.5 % of [-1, 1])


@dataclass(frozen=True)
class Precision:
    name: str
    bytes_per_weight: float  # what one UNet weight costs to stream (the weight-streaming floor)
    native: dict[str, tuple[str, ...]]  # bundle format -> device kinds whose kernels run it (not emulated)
    how: str  # one line for dp-export --help
    # fp32 weights and graphs run with TF32 tensor-core math: only a CUDA device computes (and measures) it
    tf32: bool = False

    @property
    def formats(self) -> tuple[str, ...]:
        return tuple(self.native)


# Which (format, device) pairs have real kernels was measured at the reference size (bench/latency.py,
# 2-core AVX2 CPU): ONNX Runtime's CPU provider runs the fp16 graph at about fp32 speed (371 vs 350 ms),
# TorchScript on that CPU runs fp16 3x and bf16 4x slower than fp32 (emulated), so those are refused there.
PRECISIONS: dict[str, Precision] = {p.name: p for p in (
    Precision("fp32", 4.0, {"onnx": ("cpu", "cuda"), "torchscript": ("cpu", "cuda"), "export": ("cpu", "cuda")},
              "the trained policy, exact to ~1e-6"),
    Precision("int8", 1.0 + 4.0 / 32, {"onnx": ("cpu",)},
              "UNet convolutions as ONNX Runtime MatMulNBits: int8 weights in blocks of 32 with an fp32 scale, "
              "activations quantized per block at run time (no calibration set needed)"),
    Precision("fp16", 2.0, {"onnx": ("cpu", "cuda"), "torchscript": ("cuda",), "export": ("cuda",)},
              "UNet in float16; the DDIM update and encoder stay fp32"),
    Precision("bf16", 2.0, {"torchscript": ("cuda", "cpu-bf16"), "export": ("cuda",)},
              "UNet in bfloat16; native on CUDA (sm80+) and CPUs with AVX-512 BF16 or AMX"),
    Precision("tf32", 4.0, {"torchscript": ("cuda",), "export": ("cuda",)},
              "fp32 weights, TF32 matmuls and convolutions (CUDA sm80+); measured on the GPU at export", tf32=True),
)}


def parse_precisions(text: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """'fp32,int8' -> ('fp32', 'int8'); fp32 always first (the reference every variant is measured against)."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    unknown = [n for n in names if n not in PRECISIONS]
    if unknown:
        raise ConfigError(f"precision {unknown} is not one of {list(PRECISIONS)}")
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


def supported_on(device: str, fmt: str) -> list[str]:
    """Precisions ``fmt`` graphs run natively on ``device`` ('cpu' | 'cuda')."""
    kinds = device_kinds(device)
    return [p.name for p in PRECISIONS.values() if kinds & set(p.native.get(fmt, ()))]


def check_runs_on(precision: str, device: str, fmt: str) -> None:
    """Refuse a precision whose kernels the device lacks (it would run emulated, slower than fp32)."""
    if precision not in supported_on(device, fmt):
        need = " or ".join(PRECISIONS[precision].native.get(fmt, ())) or "another format"
        raise BundleError(f"precision {precision!r} does not run natively on {device} with {fmt} graphs (it "
                          f"needs {need}); {fmt} on this device runs {supported_on(device, fmt)}: set precision "
                          "to one of them, or auto")
