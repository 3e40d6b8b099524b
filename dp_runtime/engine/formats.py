"""Graph formats as a table: one entry per format a bundle can carry.

Each entry names its file suffix, the backend that runs it (and the name a user selects it by),
the devices that backend accepts, the scanner that proves a graph file has no BatchNorm, and the
exporter that writes a traced module in this format. ``load_bundle``, the exporter, dp-inspect and
the latency bench read this table; a new format is one entry. ``export`` is the compiled one: a
torch.export program per graph, compiled by AOTInductor where it runs (engine/compiled.py).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import BundleError
from .backends import DEVICES, Backend, BackendOptions, OrtBackend, TorchScriptBackend, check_device
from .compiled import CompiledBackend, batch_dims
from .manifest import scan_exported, scan_onnx, scan_torchscript_file


def export_onnx(module: Any, args: tuple, inputs: Sequence[str], outputs: Sequence[str], path: Path,
                opset: int) -> None:
    """torch.onnx (TorchScript-based exporter), batch axis dynamic, checked by onnx.checker."""
    import onnx
    import torch
    batch = {name: {0: "batch"} for name in [*inputs, *outputs] if name not in ("timestep", "prev_timestep")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), input_names=list(inputs), output_names=list(outputs),
                          dynamic_axes=batch, opset_version=opset, dynamo=False)
    onnx.checker.check_model(str(path), full_check=True)


def export_torchscript(module: Any, args: tuple, inputs: Sequence[str], outputs: Sequence[str], path: Path,
                       opset: int) -> None:
    import torch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(module, args, check_trace=False).save(str(path))


def export_program(module: Any, args: tuple, inputs: Sequence[str], outputs: Sequence[str], path: Path,
                   opset: int) -> None:
    """torch.export (batch axis dynamic up to MAX_BATCH) saved as a portable program; compiled where it runs."""
    import torch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(module, args, dynamic_shapes=batch_dims(module, args), strict=False)
    torch.export.save(ep, str(path))


@dataclass(frozen=True)
class GraphFormat:
    name: str  # the manifest's graphs[].format
    backend: str  # what a user selects it by (the backend parameter)
    suffix: str  # graph file suffix
    devices: tuple[str, ...]  # device parameter values its backend accepts
    backend_class: Callable[..., Backend]  # (encoder, step, device, options, inpaint_step) -> Backend
    scan: Callable[[Path], None]  # raises BatchNormError when a graph file holds running statistics
    export: Callable[[Any, tuple, Sequence[str], Sequence[str], Path, int], None]
    # compiled where it runs (AOTInductor): opt-in at export, whose parity check compiles; traced in the UNet's
    # matmul form (export/precision.py:convs_as_matmul), which Inductor fuses
    compiled: bool = False

    def check_device(self, device: str) -> None:
        check_device(device)
        if device not in self.devices:
            raise BundleError(f"device {device!r} is not available with backend {self.backend} (it takes "
                              f"{', '.join(self.devices)}); {_who_takes(device)}")

    def open(self, encoder: Path, step: Path, device: str, options: BackendOptions,
             inpaint_step: Path | None = None) -> Backend:
        self.check_device(device)
        return self.backend_class(encoder, step, device, options, inpaint_step=inpaint_step)


FORMATS: dict[str, GraphFormat] = {f.name: f for f in (
    GraphFormat("onnx", "onnxruntime", ".onnx", DEVICES, OrtBackend, scan_onnx, export_onnx),
    GraphFormat("torchscript", "torchscript", ".pt", ("auto", "cpu", "cuda"), TorchScriptBackend,
                scan_torchscript_file, export_torchscript),
    GraphFormat("export", "aoti", ".pt2", ("auto", "cpu", "cuda"), CompiledBackend, scan_exported, export_program,
                compiled=True),
)}
BACKENDS: dict[str, GraphFormat] = {f.backend: f for f in FORMATS.values()}
# What dp-export writes unless told: compiled formats are opt-in (their parity check compiles them, minutes).
DEFAULT_FORMATS = tuple(f.name for f in FORMATS.values() if not f.compiled)


def _who_takes(device: str) -> str:
    takers = [f.backend for f in FORMATS.values() if device in f.devices]
    return f"device {device!r} is only available with backend {' or '.join(takers)}"


def graph_format(name: str) -> GraphFormat:
    try:
        return FORMATS[name]
    except KeyError:
        raise BundleError(f"graph format {name!r} is not one of {list(FORMATS)}") from None


def by_backend(name: str) -> GraphFormat:
    try:
        return BACKENDS[name]
    except KeyError:
        raise BundleError(f"backend must be auto, {', '.join(BACKENDS)}, got {name!r}") from None
