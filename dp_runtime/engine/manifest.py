"""The bundle contract: manifest format, file hashes and the proof of no BatchNorm.

A bundle is a directory with ``manifest.json``, the ONNX graphs and the
TorchScript graphs. Loading verifies every file's sha256 against the
manifest, the manifest's norm-layer inventory (recorded from the torch module
at export) and scans each graph for BatchNorm. A graph without a valid
manifest is refused: exporters fold eval-mode BatchNorm into Conv, so a
clean-looking graph alone proves nothing.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..errors import BatchNormError, BundleError

MANIFEST = "manifest.json"
FORMAT = "dp_runtime.bundle"
FORMAT_VERSION = 1
ROLES = ("encoder", "step")
BACKEND_FORMATS = {"onnxruntime": "onnx", "torchscript": "torchscript"}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(bundle: Path) -> dict[str, Any]:
    bundle = Path(bundle)
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
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{path}: format is {manifest.get('format')!r}, expected {FORMAT!r}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{path}: format_version {manifest.get('format_version')!r} is not supported "
                          f"(this dp_runtime reads version {FORMAT_VERSION})")
    for key in ("policy", "ddim", "files", "graphs", "norm_inventory", "parity"):
        if key not in manifest:
            raise BundleError(f"{path}: manifest has no {key!r} section")
    return manifest


def verify_hashes(bundle: Path, manifest: dict[str, Any], names: list[str] | None = None) -> None:
    for name, info in manifest["files"].items():
        if names is not None and name not in names:
            continue
        f = Path(bundle) / name
        if not f.is_file():
            raise BundleError(f"{name}: listed in {MANIFEST} but missing from {bundle}")
        actual = sha256_file(f)
        if actual != info["sha256"]:
            raise BundleError(f"{name} sha256 mismatch (manifest says {info['sha256'][:12]}..., "
                              f"file is {actual[:12]}...)")


def verify_norm_inventory(manifest: dict[str, Any]) -> None:
    bad = [(e["name"], e["type"]) for e in manifest["norm_inventory"] if e.get("running_stats")]
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


def scan_torchscript(module: Any, name: str) -> None:
    bad = []
    for qual, sub in module.named_modules():
        kind = getattr(sub, "original_name", type(sub).__name__)
        buffers = {b for b, _ in sub.named_buffers(recurse=False)}
        if "BatchNorm" in kind or {"running_mean", "running_var"} & buffers:
            bad.append((qual or "<root>", kind))
    if bad:
        raise BatchNormError(bad, where=f"TorchScript module {name}")
