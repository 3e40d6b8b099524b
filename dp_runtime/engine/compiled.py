"""AOTInductor backend: a bundle's exported whole-chunk program, compiled for this machine and cached.

The bundle carries a ``torch.export`` program (portable, hashed in the manifest, scanned for
BatchNorm like every graph). Compiled code is specific to the device and the torch/CUDA build, so
it is compiled where it runs, at first load (``torch._inductor.aoti_compile_and_package``), and
cached, as ONNX Runtime caches TensorRT engines: one entry per (program sha256, torch version, CUDA
version, device identity). An entry whose recorded key or package hash does not match is recompiled
with a log line, never loaded; a cache directory that cannot be written compiles into a temporary
one (said in the log; every start then compiles).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..digest import sha256_file
from ..errors import BundleError
from ..precision import cpu_flags
from .backends import BackendOptions, torch_device

log = logging.getLogger(__name__)
MAX_BATCH = 256  # the exported programs' batch axis is dynamic up to this
PACKAGE = "chunk.pt2"
KEY_FILE = "key.json"


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dp_runtime" / "compiled"


def device_identity(device) -> str:
    """What compiled code is specific to: the GPU model and compute capability, or the CPU's ISA level."""
    import torch
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return f"cuda {p.name} sm{p.major}{p.minor}"
    flags = cpu_flags()
    isa = next((name for name in ("amx_tile", "avx512_bf16", "avx512_vnni", "avx512f", "avx2") if name in flags),
               "baseline")
    return f"cpu {platform.machine()} {isa}"


@dataclass(frozen=True)
class CompileKey:
    program_sha256: str
    torch: str
    cuda: str
    device: str

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:24]


class CompileCache:
    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()

    def package(self, key: CompileKey, compile_to: Callable[[Path], None], what: str) -> Path:
        """The compiled package for ``key``: the cached one if it is intact and was compiled for this key,
        else compiled now (``compile_to(path)``) and cached."""
        entry = self.root / key.digest()
        reason = self._check(entry, key)
        if reason is None:
            log.info("%s: compiled package from the cache (%s)", what, entry)
            return entry / PACKAGE
        if reason != "not compiled yet":
            log.warning("%s: cached package %s %s: recompiling", what, entry, reason)
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            work = Path(tempfile.mkdtemp(prefix=".compiling.", dir=entry.parent))
        except OSError as e:
            work = Path(tempfile.mkdtemp(prefix="dp_runtime_compiled."))
            log.warning("%s: compile cache %s is not writable (%s); compiling into %s (every start compiles "
                        "again: set a writable compile cache)", what, self.root, e, work)
            return self._compile(work, key, compile_to, what)
        package = self._compile(work, key, compile_to, what)
        shutil.rmtree(entry, ignore_errors=True)
        try:
            work.rename(entry)
        except OSError:  # another process cached it first: theirs is as good
            return package
        return entry / PACKAGE

    def _compile(self, work: Path, key: CompileKey, compile_to: Callable[[Path], None], what: str) -> Path:
        log.info("%s: compiling for %s with AOTInductor (first load on this machine; cached after)...", what,
                 key.device)
        t0 = time.perf_counter()
        compile_to(work / PACKAGE)
        (work / KEY_FILE).write_text(json.dumps({"key": asdict(key), "package_sha256": sha256_file(work / PACKAGE)},
                                                indent=2))
        log.info("%s: compiled in %.0f s", what, time.perf_counter() - t0)
        return work / PACKAGE

    @staticmethod
    def _check(entry: Path, key: CompileKey) -> str | None:
        """None when the entry holds an intact package compiled for ``key``; else why not."""
        if not (entry / PACKAGE).is_file() or not (entry / KEY_FILE).is_file():
            return "not compiled yet"
        try:
            recorded = json.loads((entry / KEY_FILE).read_text())
        except (OSError, json.JSONDecodeError) as e:
            return f"has an unreadable {KEY_FILE} ({e})"
        if recorded.get("key") != asdict(key):
            differs = [k for k, v in asdict(key).items() if (recorded.get("key") or {}).get(k) != v]
            return f"was compiled for another {', '.join(differs)}"
        if recorded.get("package_sha256") != sha256_file(entry / PACKAGE):
            return "was altered after compiling (sha256 mismatch)"
        return None


def batch_dims(module, args: tuple):
    """dynamic_shapes for torch.export: every input's axis 0 is the batch (1..MAX_BATCH). A forward taking
    ``*inputs`` gets them as one group, as torch.export matches the signature."""
    import inspect

    import torch
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    dims = tuple({0: batch} for _ in args)
    params = inspect.signature(module.forward).parameters.values()
    return (dims,) if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params) else dims


def compile_program(program: Path, device, out: Path) -> None:
    """AOTInductor-compile the exported program for ``device`` into the package ``out``."""
    import torch
    try:
        ep = torch.export.load(str(program))
    except Exception as e:  # torch raises its own errors for a damaged archive
        raise BundleError(f"cannot load the exported program {program.name}: {e}") from e
    if device.type != "cpu":  # exported on the CPU: re-export with weights and examples on the device
        args, kwargs = ep.example_inputs
        module = ep.module().to(device)
        args = tuple(a.to(device) for a in args)
        ep = torch.export.export(module, args, kwargs, dynamic_shapes=batch_dims(module, args), strict=False)
    torch._inductor.aoti_compile_and_package(ep, package_path=str(out))


class CompiledBackend:
    """The whole chunk in one compiled call. The schedule is baked into the program: ``load_bundle`` refuses
    another step count, so ``denoise`` ignores the one it is given."""
    name = "aoti"

    def __init__(self, encoder: Path | None, step: Path, device: str = "auto",
                 options: BackendOptions = BackendOptions(), inpaint_step: Path | None = None):
        """``encoder``: unused (the chunk program holds the encoder); the format table passes every backend
        the same arguments."""
        import torch
        self.torch = torch
        self.device = torch_device(device, options.threads)
        self.cache = CompileCache(options.compile_cache)
        self.chunk = self._open(step)
        self.inp = self._open(inpaint_step) if inpaint_step else None
        self.can_inpaint = self.inp is not None
        self.masks_per_step = False  # the chunk program runs every step with the one mask it is given
        self.provider = f"aoti:{self.device.type}"

    def _open(self, program: Path):
        """The compiled program (the bundle's verification has already loaded and scanned the exported one;
        it is loaded again only to compile)."""
        torch = self.torch
        key = CompileKey(sha256_file(program), torch.__version__, str(torch.version.cuda),
                         device_identity(self.device))
        package = self.cache.package(key, lambda out: compile_program(program, self.device, out), program.name)
        try:
            return torch._inductor.aoti_load_package(str(package))
        except Exception as e:
            raise BundleError(f"cannot load the compiled package {package} for {program.name}: {e}") from e

    def denoise(self, obs: Sequence[np.ndarray], noise: np.ndarray, schedule,
                known: np.ndarray | None = None, masks: Sequence[np.ndarray] | None = None) -> np.ndarray:
        th = self.torch
        held = () if known is None else (known, masks[0])  # one mask for every step (the engine checks)
        with th.inference_mode():
            args = [th.from_numpy(np.ascontiguousarray(a)).to(self.device) for a in (*obs, noise, *held)]
            out = (self.chunk if known is None else self.inp)(*args)
        out = out[0] if isinstance(out, (tuple, list)) else out
        return out.cpu().numpy()
