"""AOTInductor backend: a bundle's exported programs (encoder, DDIM step, inpainting step), compiled for this
machine and cached, run in the same loop as the TorchScript graphs.

The bundle carries ``torch.export`` programs (portable, hashed in the manifest, scanned for BatchNorm like
every graph). Compiled code is specific to the device and the torch/CUDA build, so it is compiled where it
runs, at first load (``torch._inductor.aoti_compile_and_package``), and cached, as ONNX Runtime caches
TensorRT engines: one entry per (program sha256, torch version, CUDA version, device identity). An entry
whose recorded key or package hash does not match is recompiled with a log line, never loaded; a cache
directory that cannot be written compiles into a temporary one (said in the log; every start then
compiles). A pair of steps is compiled and looped over, not the whole chunk unrolled: a compile of two UNet
evaluations instead of sixteen, the step count a runtime choice (an odd one's last pair passes its first
step's result through), the inpainting mask free to change between steps (soft_inpaint_early), and on CUDA
the loop is captured as one CUDA graph per batch bucket (the TorchScript backend's capture), so a GPU still
runs the chunk without a host round trip per step. Two steps per call, not one: on a CPU a looped 4-step chunk
was 7-8 % slower than the unrolled one with one step per call, 3-6 % in pairs (the same kernels for the same
time: what a call adds is cache and memory effects at its boundary), and the 16-step chunk 5-8 % faster in
pairs (bench/compiled_loop.py).
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
from typing import Callable


from ..digest import sha256_file
from ..errors import BundleError
from ..precision import cpu_flags
from ..spec import FileEntry
from .backends import BackendOptions, TorchScriptBackend, torch_device

log = logging.getLogger(__name__)
MAX_BATCH = 256  # the exported programs' batch axis is dynamic up to this
PACKAGE = "program.pt2"
KEY_FILE = "key.json"
STEPS_PER_CALL = 2  # DDIM steps per call of a compiled step program


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
    threads: int = 0  # CPU: the OpenMP thread count Inductor writes into the code (0: a CUDA program)
    steps: int = 1  # DDIM steps per call (a step program compiled as a pair: STEPS_PER_CALL)

    @classmethod
    def here(cls, program_sha256: str, device, threads: int, steps: int = 1) -> "CompileKey":
        """The key of a program compiled on this machine's ``device`` (a torch.device) with this torch build."""
        import torch
        return cls(program_sha256, torch.__version__, str(torch.version.cuda), device_identity(device), threads,
                   steps)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:24]


class CompileCache:
    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()

    def has(self, key: CompileKey) -> bool:
        """Whether an intact package compiled for ``key`` is cached (nothing is compiled)."""
        return self._check(self.root / key.digest(), key) is None

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
        log.info("%s: compiling for %s%s with AOTInductor (first load on this machine; cached after)...", what,
                 key.device, f", {key.threads} threads" if key.threads else "")
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


# (1,) schedule entries and the pair's second-step switch: the same for every robot in a batch
STATIC_INPUTS = ("timestep", "prev_timestep", "timestep2", "prev_timestep2", "second")


def batch_dims(module, args: tuple):
    """dynamic_shapes for torch.export: every input's axis 0 is the batch (1..MAX_BATCH), but the timesteps. A
    forward taking ``*inputs`` gets them as one group, as torch.export matches the signature."""
    import inspect

    import torch
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    params = [p for p in inspect.signature(module.forward).parameters.values()]
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return (tuple({0: batch} for _ in args),)
    return tuple(None if p.name in STATIC_INPUTS else {0: batch} for p, _ in zip(params, args))


def cpu_threads(asked: int | None) -> int:
    """The threads a compiled CPU program runs on: ``asked``, else one fewer than the cores (at least one).

    Inductor writes the count into the code (``#pragma omp parallel num_threads(N)``) and every parallel region
    waits for all N: with as many threads as cores, one core taken by another process (a camera driver, another
    node) holds each region up by a scheduler time slice, 3x slower at batch 1 (issue 34, bench/compiled_loop.py).
    One core is left to the rest of the robot. More threads than cores are cut to the cores, with a warning."""
    cores = os.cpu_count() or 1
    if asked and asked > cores:
        log.warning("threads %d is more than this machine's %d cores: the compiled program runs on %d", asked,
                    cores, cores)
        return cores
    return asked or max(1, cores - 1)


def step_pair(step, inpaint: bool):
    """Two DDIM steps of an exported step program as one module: ``second`` (a (1,) bool) False passes the first
    step's result through (an odd step count's last call). The inpainting pair takes a mask per step."""
    import torch
    from torch import nn

    class StepPair(nn.Module):
        def __init__(self):
            super().__init__()
            self.step = step

        def forward(self, sample, timestep, prev_timestep, timestep2, prev_timestep2, second, cond):
            x, actions = self.step(sample, timestep, prev_timestep, cond)
            x2, actions2 = self.step(x, timestep2, prev_timestep2, cond)
            return torch.where(second, x2, x), torch.where(second, actions2, actions)

    class InpaintStepPair(StepPair):
        def forward(self, sample, timestep, prev_timestep, timestep2, prev_timestep2, second, cond, known, mask,
                    mask2, noise):
            x, actions = self.step(sample, timestep, prev_timestep, cond, known, mask, noise)
            x2, actions2 = self.step(x, timestep2, prev_timestep2, cond, known, mask2, noise)
            return torch.where(second, x2, x), torch.where(second, actions2, actions)

    return (InpaintStepPair if inpaint else StepPair)()


def pair_inputs(args: tuple, inpaint: bool) -> tuple:
    """A step program's example inputs (x, t, prev, cond[, known, mask, noise]) as its pair's (the second step's
    copies, not the same tensors: torch.export would take two inputs that alias for one)."""
    import torch
    x, t, prev, cond, *held = args
    pair = (x, t, prev, t.clone(), prev.clone(), torch.ones(1, dtype=torch.bool, device=x.device), cond)
    return pair + ((held[0], held[1], held[1].clone(), held[2]) if inpaint else ())


def compile_program(program: Path, device, out: Path, threads: int = 0, steps: int = 1) -> None:
    """AOTInductor-compile the exported program for ``device`` (on the CPU: ``threads`` OpenMP threads) into the
    package ``out``; ``steps`` 2: a step program as a pair of steps (``step_pair``)."""
    import torch
    try:
        ep = torch.export.load(str(program))
    except Exception as e:  # torch raises its own errors for a damaged archive
        raise BundleError(f"cannot load the exported program {program.name}: {e}") from e
    if device.type != "cpu" or steps > 1:  # re-export: with weights and examples on the device, or as a pair
        args, kwargs = ep.example_inputs
        module = ep.module().to(device)
        args = tuple(a.to(device) for a in args)
        if steps > 1:
            inpaint = len(args) > 4
            module, args = step_pair(module, inpaint), pair_inputs(args, inpaint)
        ep = torch.export.export(module, args, kwargs, dynamic_shapes=batch_dims(module, args), strict=False)
    with torch._inductor.config.patch({"cpp.threads": threads or -1}):
        torch._inductor.aoti_compile_and_package(ep, package_path=str(out))


class CompiledBackend(TorchScriptBackend):
    """The TorchScript backend's loop (encoder once, then the steps, CUDA graphs on the GPU) over
    AOTInductor-compiled programs, the steps two per call; the compile (or the cache hit) of each is timed in the
    log."""
    name = "aoti"

    def __init__(self, encoder: Path, step: Path, device: str = "auto", options: BackendOptions = BackendOptions(),
                 inpaint_step: Path | None = None):
        import dataclasses
        self.cache = CompileCache(options.compile_cache)
        self.threads = cpu_threads(options.threads) if torch_device(device, None).type == "cpu" else 0
        t0 = time.perf_counter()
        super().__init__(encoder, step, device, dataclasses.replace(options, threads=self.threads or None),
                         inpaint_step)
        self._second = {flag: self.torch.tensor([flag], device=self.device) for flag in (False, True)}
        self.provider = f"aoti:{self.device.type}"
        log.info("compiled programs ready in %.1f s (%s%s)", time.perf_counter() - t0,
                 ", ".join(p.name for p in (encoder, step, inpaint_step) if p),
                 f"; {self.threads} CPU threads" if self.threads else "")

    def _load(self, program: Path, steps: int = 1):
        """The compiled program (the bundle's verification has already loaded and scanned the exported one;
        it is loaded again only to compile)."""
        key = CompileKey.here(sha256_file(program), self.device, self.threads, steps)
        package = self.cache.package(
            key, lambda out: compile_program(program, self.device, out, self.threads, steps),
            program.name + (f" ({steps} steps per call)" if steps > 1 else ""))
        try:
            return Program(self.torch._inductor.aoti_load_package(str(package)))
        except Exception as e:
            raise BundleError(f"cannot load the compiled package {package} for {program.name}: {e}") from e

    def _load_step(self, program: Path):
        return self._load(program, STEPS_PER_CALL)

    def _loop(self, obs, x, schedule, held=None):
        """The steps in pairs (an odd count's last pair takes its first step only)."""
        cond = self.enc(*obs)
        known, masks, noise = held or (None, None, None)
        pairs = self.device_schedule(schedule)
        actions = None
        for i in range(0, len(pairs), 2):
            j = min(i + 1, len(pairs) - 1)  # the second step (an odd count's last call: the first again, unused)
            (t, prev), (t2, prev2), second = pairs[i], pairs[j], self._second[j > i]
            if held is None:
                x, actions = self.stp(x, t, prev, t2, prev2, second, cond)
            else:
                x, actions = self.inp(x, t, prev, t2, prev2, second, cond, known, masks[i], masks[j], noise)
        return actions


def cached(programs: list[FileEntry], device: str, options: BackendOptions) -> bool:
    """Whether every program (its manifest entry) has an intact compile for this machine in the cache, the step
    programs as pairs (what ``backend: auto`` asks before it considers the compiled format: a first start
    compiles for minutes)."""
    dev = torch_device(device, None)
    threads = cpu_threads(options.threads) if dev.type == "cpu" else 0
    cache = CompileCache(options.compile_cache)
    return all(cache.has(CompileKey.here(p.sha256, dev, threads, 1 if p.role == "encoder" else STEPS_PER_CALL))
               for p in programs)


class Program:
    """A compiled package called as the module it was exported from: one output as a tensor, several as a tuple.

    Calls the package's loader directly with the tensors: the package's own ``__call__`` parses its input and
    output tree specs from JSON at every call (33 us a call: 8.59 against 8.02 ms for a 16-step chunk of the demo
    policy, 1 thread, interleaved), where ours are fixed (positional tensors in, a tensor or a flat tuple out, read
    from the spec once)."""

    def __init__(self, model):
        from torch.utils import _pytree as pytree
        self.loader = model.loader
        spec = pytree.treespec_loads(self.loader.get_call_spec()[1])
        self.single = spec.is_leaf()
        if not self.single and any(not child.is_leaf() for child in spec.children()):
            raise BundleError(f"a compiled program returns nested outputs ({spec}); expected tensors")

    def __call__(self, *args):
        out = self.loader.boxed_run(list(args))
        return out[0] if self.single else tuple(out)
