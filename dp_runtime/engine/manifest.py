"""Reading and verifying a bundle: manifest -> BundleSpec, file hashes, and the proof of no BatchNorm.

Loading verifies every file's sha256 against the manifest, the manifest's
norm-layer inventory (recorded from the torch module at export) and scans
each graph for BatchNorm. A graph without a valid manifest is refused:
exporters fold eval-mode BatchNorm into Conv, so a clean-looking graph alone
proves nothing.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..digest import sha256_file
from ..errors import BatchNormError, BundleError
from ..spec import MANIFEST, BundleSpec


def read_manifest(bundle: str | Path) -> BundleSpec:
    bundle = Path(bundle)
    if not bundle.exists():
        raise BundleError(f"bundle directory {bundle} does not exist (expected a directory written by dp-export)")
    if bundle.is_file():
        raise BundleError(f"{bundle} is a file; a bundle is a directory with {MANIFEST} "
                          "(a bare ONNX/TorchScript file cannot prove it has no BatchNorm)")
    path = bundle / MANIFEST
    if not path.is_file():
        raise BundleError(f"{bundle}: no {MANIFEST}; graphs without a manifest are refused because "
                          "exporters fold BatchNorm into Conv, so the graph alone cannot prove the "
                          "policy had no BatchNorm")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{path}: not valid JSON: {e}") from e
    return BundleSpec.from_json(manifest)


def verify_hashes(bundle: Path, spec: BundleSpec) -> None:
    for name, info in spec.files.items():
        f = Path(bundle) / name
        if not f.is_file():
            raise BundleError(f"{name}: listed in {MANIFEST} but missing from {bundle}")
        actual = sha256_file(f)
        if actual != info.sha256:
            raise BundleError(f"{name} sha256 mismatch (manifest says {info.sha256[:12]}..., "
                              f"file is {actual[:12]}...)")


def verify_norm_inventory(spec: BundleSpec) -> None:
    bad = [(n.name, n.type) for n in spec.running_stats_layers]
    if bad:
        raise BatchNormError(bad, where="bundle manifest norm_inventory")


def scan_onnx(path: Path) -> None:
    import onnx
    model = onnx.load(str(path), load_external_data=False)
    nodes = [(n.name or n.output[0], n.op_type) for n in model.graph.node
             if n.op_type in ("BatchNormalization", "SyncBatchNormalization")]
    for fn in model.functions:
        nodes += [(f"{fn.name}/{n.name}", n.op_type) for n in fn.node if n.op_type == "BatchNormalization"]
    if nodes:
        raise BatchNormError(nodes, where=f"ONNX graph {path.name}")


def scan_exported(path: Path) -> None:
    """A torch.export program: BatchNorm ops in its graph (export keeps them unfolded) or running-statistics
    buffers in its state."""
    import torch
    try:
        ep = torch.export.load(str(path))
    except Exception as e:  # torch raises its own errors for a damaged archive
        raise BundleError(f"cannot load the exported program {path.name}: {e}") from e
    bad = [(n.name, str(n.target)) for n in ep.graph.nodes if n.op == "call_function" and "batch_norm" in str(n.target)]
    bad += [(name, "running-statistics buffer") for name in ep.state_dict
            if name.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked")]
    if bad:
        raise BatchNormError(bad, where=f"exported program {path.name}")


def scan_torchscript_file(path: Path) -> None:
    """Load a TorchScript graph on the CPU and scan its module tree (no weights run)."""
    import torch
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # torch.jit raises RuntimeError with its own text
        raise BundleError(f"TorchScript cannot load {path.name}: {e}") from e
    scan_torchscript(module, path.name)


def scan_torchscript(module: Any, name: str) -> None:
    bad = []
    for qual, sub in module.named_modules():
        kind = getattr(sub, "original_name", type(sub).__name__)
        buffers = {b for b, _ in sub.named_buffers(recurse=False)}
        if "BatchNorm" in kind or {"running_mean", "running_var"} & buffers:
            bad.append((qual or "<root>", kind))
    if bad:
        raise BatchNormError(bad, where=f"TorchScript module {name}")
