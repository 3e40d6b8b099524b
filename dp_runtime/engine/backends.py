"""Inference backends: ONNX Runtime sessions or TorchScript modules, same two-graph interface."""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from ..errors import BundleError

log = logging.getLogger(__name__)

PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


DEVICES = ("auto", "cpu", "cuda", "tensorrt")  # the device parameter's values


def check_device(device: str) -> None:
    if device not in DEVICES:
        raise BundleError(f"device must be {', '.join(DEVICES[:-1])} or {DEVICES[-1]}, got {device!r}")


@dataclass(frozen=True)
class BackendOptions:
    """How a backend runs its graphs: explicit, never read from the environment or set process-wide."""
    threads: int | None = None  # CPU intra-op threads (None: min(cores, 8) for ORT, torch's own for TorchScript)
    cuda_graphs: bool = True  # TorchScript on CUDA: capture the whole denoising loop once per input shape
    # TF32 convolutions differ from the fp32 policy by ~1e-3 (measured on an H100): off, so the bundle runs
    # the policy that was trained, within the export parity tolerance.
    tf32: bool = False
    compile_cache: Path | None = None  # compiled formats: where compiled packages are kept (None: ~/.cache/...)


Schedule = Sequence[tuple[np.ndarray, np.ndarray]]  # (timestep, previous timestep) int64 (1,) pairs


class Backend(Protocol):
    name: str
    provider: str
    can_inpaint: bool
    masks_per_step: bool  # can give the inpainting step another mask at each step (holds.early_steps)

    def denoise(self, obs: Sequence[np.ndarray], noise: np.ndarray, schedule: Schedule,
                known: np.ndarray | None = None, masks: Sequence[np.ndarray] | None = None) -> np.ndarray:
        """Encoder graph once, step graph per timestep; returns the unnormalized actions (B, T, A).

        With ``known`` (B, T, A) raw actions and ``masks`` (one (B, T, 1) float per step of the schedule;
        a mask equal to the previous step's is the same object), the inpainting step graph holds the
        masked actions fixed."""


def cuda_driver_present() -> bool:
    """True when the NVIDIA driver library loads; avoids ORT's noisy failed CUDA start on CPU hosts."""
    import ctypes
    try:
        ctypes.CDLL("libcuda.so.1")
        return True
    except OSError:
        return False


def ort_provider_chain(device: str) -> list[str]:
    """Providers to ask ORT for, best first; 'auto' takes what is available, CPU last."""
    import onnxruntime as ort
    available = ort.get_available_providers()
    check_device(device)
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "auto":
        wanted = ["CUDAExecutionProvider"] if cuda_driver_present() else []
    else:
        wanted = [PROVIDERS[device]] + (["CUDAExecutionProvider"] if device == "tensorrt" else [])
    return [p for p in wanted if p in available] + ["CPUExecutionProvider"]


def resolve_device(backend: str, device: str) -> str:
    """'cpu' or 'cuda': where ``device`` (auto | cpu | cuda | tensorrt) will run ``backend``."""
    check_device(device)
    if device != "auto":
        return "cpu" if device == "cpu" else "cuda"
    if backend == "onnxruntime":
        return "cpu" if ort_provider_chain("auto")[0] == "CPUExecutionProvider" else "cuda"
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def device_kind(provider: str) -> str:
    """'cpu' or 'cuda': where a backend's provider (ORT provider name or torch:<device>) runs."""
    return "cpu" if provider in ("CPUExecutionProvider", "torch:cpu") else "cuda"


class DeviceSchedule:
    """The (timestep, prev_timestep) pairs as device values, converted once per schedule object."""

    def __init__(self, convert):
        self.convert = convert
        self.key: Schedule | None = None
        self.pairs: list = []

    def __call__(self, schedule: Schedule) -> list:
        if self.key is not schedule:
            self.pairs = [(self.convert(t), self.convert(p)) for t, p in schedule]
            self.key = schedule
        return self.pairs


def batch_bucket(batch: int) -> int:
    """The captured batch size a batch runs in: the next power of two (a CUDA graph is captured per shape, so
    batches of 5..8 robots share one capture)."""
    return 1 << max(0, (batch - 1).bit_length())


def pad_batch(a: np.ndarray, size: int) -> np.ndarray:
    """``a`` (B, ...) padded to ``size`` rows by repeating its last row (padded rows are computed, then dropped)."""
    return a if a.shape[0] == size else np.concatenate([a, np.repeat(a[-1:], size - a.shape[0], axis=0)])


def torch_device(device: str, threads: int | None):
    """The torch device a torch-based backend runs on ('auto': CUDA where torch sees it), and its CPU thread
    count when one was asked for (torch's CPU pool is per process: set only on request)."""
    import torch
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise BundleError("device='cuda' asked for, but torch sees no CUDA device")
    if device == "cpu" and threads:
        torch.set_num_threads(threads)
    return torch.device(device)


def default_threads() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


@dataclass(frozen=True)
class BoundDevice:
    """Where an ORT session's I/O-bound tensors live (TensorRT shares CUDA device memory)."""
    type: str  # "cpu" | "cuda"
    id: int


class OrtBackend:
    name = "onnxruntime"

    def __init__(self, encoder: Path, step: Path, device: str = "auto", options: BackendOptions = BackendOptions(),
                 inpaint_step: Path | None = None):
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = options.threads or default_threads()
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        # Spinning worker threads would steal the control loop's core on a small robot computer.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        chain = ort_provider_chain(device)
        try:
            self.enc = ort.InferenceSession(str(encoder), opts, providers=chain)
            self.stp = ort.InferenceSession(str(step), opts, providers=chain)
            self.inp = ort.InferenceSession(str(inpaint_step), opts, providers=chain) if inpaint_step else None
        except Exception as e:  # ORT raises its own untyped errors for bad graphs
            raise BundleError(f"ONNX Runtime cannot load {encoder.name}/{step.name}: {e}") from e
        self.can_inpaint = self.inp is not None
        self.masks_per_step = True
        self.provider = self.stp.get_providers()[0]
        if device in ("cuda", "tensorrt") and self.provider == "CPUExecutionProvider":
            raise BundleError(f"device={device!r} asked for, but ONNX Runtime could not start "
                              f"{PROVIDERS[device]} (available: {ort.get_available_providers()}); "
                              "use device=auto to fall back to CPU")
        if device == "auto" and self.provider == "CPUExecutionProvider" and len(chain) > 1:
            log.warning("CUDA provider listed but not usable; running on CPUExecutionProvider")
        self.enc_inputs = [i.name for i in self.enc.get_inputs()]
        self.ort = ort
        self.device = BoundDevice(device_kind(self.provider), 0)
        self.device_schedule = DeviceSchedule(self.on_device)  # uploaded once per schedule

    def denoise(self, obs: Sequence[np.ndarray], noise: np.ndarray, schedule: Schedule,
                known: np.ndarray | None = None, masks: Sequence[np.ndarray] | None = None) -> np.ndarray:
        """Encoder once, step graph per timestep, all through I/O binding.

        The loop's tensors (cond, the sample, the committed actions) live on the session's device and
        the step writes its output into the other of two preallocated buffers: on CUDA nothing crosses
        to the host between steps; only the observations go in and the final actions come out."""
        dev = self.device
        enc = self.enc.io_binding()
        for name, o in zip(self.enc_inputs, obs):
            enc.bind_cpu_input(name, o)
        enc.bind_output(self.enc.get_outputs()[0].name, dev.type, dev.id)
        self.enc.run_with_iobinding(enc)
        cond = enc.get_outputs()[0]
        session, bound = self.stp, {"cond": cond}
        if known is not None:
            session = self.inp
            bound.update(known=self.on_device(known), mask=self.on_device(masks[0]), noise=self.on_device(noise))
        step = session.io_binding()
        for name, value in bound.items():
            step.bind_ortvalue_input(name, value)
        x, y = self.on_device(noise), self.empty_like(noise)
        actions = self.empty_like(noise)
        step.bind_ortvalue_output("action", actions)
        for i, (t, prev) in enumerate(self.device_schedule(schedule)):
            if known is not None and i and masks[i] is not masks[i - 1]:
                step.bind_ortvalue_input("mask", self.on_device(masks[i]))
            step.bind_ortvalue_input("timestep", t)
            step.bind_ortvalue_input("prev_timestep", prev)
            step.bind_ortvalue_input("sample", x)
            step.bind_ortvalue_output("prev_sample", y)
            session.run_with_iobinding(step)
            x, y = y, x
        return actions.numpy()

    def on_device(self, a: np.ndarray):
        """A copy on the device (on the CPU ORT would wrap, not copy, the array: the loop writes into it)."""
        return self.ort.OrtValue.ortvalue_from_numpy(np.array(a, order="C"), self.device.type, self.device.id)

    def empty_like(self, a: np.ndarray):
        return self.ort.OrtValue.ortvalue_from_shape_and_type(a.shape, a.dtype, self.device.type, self.device.id)


class TorchScriptBackend:
    name = "torchscript"

    def __init__(self, encoder: Path, step: Path, device: str = "auto", options: BackendOptions = BackendOptions(),
                 inpaint_step: Path | None = None):
        import torch
        self.torch = torch
        self.device = torch_device(device, options.threads)
        self.options = options
        self.enc, self.stp = self._load(encoder), self._load_step(step)
        self.inp = self._load_step(inpaint_step) if inpaint_step else None
        self.can_inpaint = self.inp is not None
        self.masks_per_step = True
        self.provider = f"torch:{self.device.type}"
        self.device_schedule = DeviceSchedule(lambda a: torch.from_numpy(a).to(self.device))
        self.cuda_graphs = options.cuda_graphs and self.device.type == "cuda"
        self._graphs: dict = {}

    def _load(self, path: Path):
        """One graph file as a callable on ``self.device`` (the compiled backend compiles its programs here)."""
        try:
            return self.torch.jit.load(str(path), map_location=self.device).eval()
        except Exception as e:  # torch.jit raises RuntimeError with its own text
            raise BundleError(f"TorchScript cannot load {path.name}: {e}") from e

    def _load_step(self, path: Path):
        """A step graph as a callable (the compiled backend compiles two steps per call)."""
        return self._load(path)

    def _math_mode(self):
        """TF32 on or off for this backend's CUDA work only (torch's switches are process-wide: restored after)."""
        if self.device.type != "cuda":
            return contextlib.nullcontext()
        return _tf32(self.torch, self.options.tf32)

    def denoise(self, obs: Sequence[np.ndarray], noise: np.ndarray, schedule: Schedule,
                known: np.ndarray | None = None, masks: Sequence[np.ndarray] | None = None) -> np.ndarray:
        """Encoder once, then the step graph per timestep; tensors stay on the device until the end.

        On CUDA the whole loop is captured once per input shape as a CUDA graph and replayed: at
        batch 1 the loop is bound by kernel launches, not by the GPU.
        """
        with self._math_mode():
            return self._denoise(obs, noise, schedule, known, masks)

    def _denoise(self, obs, noise, schedule, known, masks) -> np.ndarray:
        th = self.torch
        batch = noise.shape[0]
        if self.cuda_graphs and known is None:
            size = batch_bucket(batch)
            obs, noise = [pad_batch(o, size) for o in obs], pad_batch(noise, size)
            key = (tuple((o.shape, o.dtype.str) for o in obs), noise.shape, id(schedule))
            graph = self._graphs.get(key)
            if graph is None:
                graph = self._graphs[key] = self._capture(obs, noise, schedule)
            if graph is not False:
                g, static_obs, static_noise, static_out = graph
                with th.inference_mode():
                    for dst, src in zip(static_obs, obs):
                        dst.copy_(th.from_numpy(src))
                    static_noise.copy_(th.from_numpy(noise))
                    g.replay()
                    return static_out[:batch].cpu().numpy()
        with th.inference_mode():
            x = th.from_numpy(noise).to(self.device)
            held = None
            if known is not None:
                on_device = {id(m): th.from_numpy(m).to(self.device) for m in masks}
                held = (th.from_numpy(known).to(self.device), [on_device[id(m)] for m in masks], x)
            actions = self._loop([th.from_numpy(o).to(self.device) for o in obs], x, schedule, held)
            return actions[:batch].cpu().numpy()

    def _loop(self, obs, x, schedule, held=None):
        """The denoising loop on device tensors; ``held`` (known, a mask per step, noise) selects the
        inpainting step."""
        cond = self.enc(*obs)
        known, masks, noise = held or (None, None, None)
        actions = None
        for i, (t, prev) in enumerate(self.device_schedule(schedule)):
            if held is None:
                x, actions = self.stp(x, t, prev, cond)
            else:
                x, actions = self.inp(x, t, prev, cond, known, masks[i], noise)
        return actions

    def _capture(self, obs, noise, schedule):
        th = self.torch
        try:
            with th.inference_mode():
                static_obs = [th.from_numpy(o).to(self.device) for o in obs]
                static_noise = th.from_numpy(noise).to(self.device)
                side = th.cuda.Stream()
                side.wait_stream(th.cuda.current_stream())
                with th.cuda.stream(side):
                    for _ in range(3):  # warm-up (TorchScript profiling runs) before capture
                        self._loop(static_obs, static_noise, schedule)
                th.cuda.current_stream().wait_stream(side)
                g = th.cuda.CUDAGraph()
                with th.cuda.graph(g):
                    static_out = self._loop(static_obs, static_noise, schedule)
            return g, static_obs, static_noise, static_out
        except RuntimeError as e:  # capture is an optimization: fall back to plain launches
            log.warning("CUDA graph capture failed (%s); running without graphs", e)
            return False


@contextlib.contextmanager
def _tf32(torch, enabled: bool):
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
