"""The bundle contract: what an exported bundle promises, as typed, torch-free data.

``BundleSpec`` is ``manifest.json`` read once and validated once. The exporter
writes it (``to_json``), ``load_bundle`` reads it (``from_json``), and the
runner, node, replay and dp-inspect read its attributes, never string keys.
``PolicySpec`` is the part the control loop needs (observations in, actions
out, horizons, the observation interval); a torch policy can state the same
contract without being exported.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from . import layout as layouts
from .errors import BundleError, ConfigError
from .layout import Layout

FORMAT = "dp_runtime.bundle"
FORMAT_VERSION = 4  # 4: typed parity, source, EMA and DDIM config; 3: precision variants, graphs_sha256
MANIFEST = "manifest.json"


def graphs_digest(graphs: list[dict[str, Any]]) -> str:
    """sha256 of the graphs entries (files, precisions, recorded errors) as canonical JSON.

    The graph files carry their own sha256; this covers the figures the runtime trusts when it picks a
    variant, so an edited recorded error is refused like an edited graph file."""
    return hashlib.sha256(json.dumps(graphs, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _need(d: dict, key: str, where: str) -> Any:
    if not isinstance(d, dict) or key not in d:
        raise BundleError(f"{MANIFEST}: {where} has no {key!r}")
    return d[key]


@dataclass(frozen=True)
class ObsSpec:
    key: str
    kind: str  # "image" (uint8 HWC) | "low_dim" (float32 vector)
    shape: tuple[int, ...]  # image (H, W, C); low-dim (D,)
    topic: str = ""  # suggested ROS topic
    names: tuple[str, ...] = ()  # low-dim: joint names in vector order
    layout: Layout = ()  # low-dim: what each part is (layout.py); () = joint values with ``names``

    @property
    def dtype(self) -> str:
        return "uint8" if self.kind == "image" else "float32"

    @property
    def segments(self) -> Layout:
        """The low-dim vector's layout (joint values with ``names`` where the bundle records none)."""
        return self.layout or layouts.joints(self.names or tuple(f"{self.key}_{i}" for i in range(self.shape[0])))

    def to_json(self) -> dict[str, Any]:
        d = {"key": self.key, "kind": self.kind, "shape": list(self.shape), "dtype": self.dtype,
             "topic": self.topic}
        if self.kind == "image":
            d["layout"] = "HWC"
        else:
            d["names"] = list(self.names)
            if self.layout:
                d["segments"] = [seg.to_json() for seg in self.layout]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "ObsSpec":
        kind = _need(d, "kind", "an observation")
        if kind not in ("image", "low_dim"):
            raise BundleError(f"{MANIFEST}: observation {d.get('key')!r} kind {kind!r}; expected image or low_dim")
        key, shape = _need(d, "key", "an observation"), tuple(int(s) for s in _need(d, "shape", "an observation"))
        return cls(key, kind, shape, d.get("topic") or "", tuple(d.get("names") or ()),
                   _layout(d.get("segments"), shape[0] if kind == "low_dim" else 0, f"observation {key!r} segments",
                           observation=True))


def _layout(items: Any, dim: int, where: str, observation: bool = False) -> Layout:
    """A manifest layout (absent: ()), every fault a BundleError naming ``where``."""
    if items is None:
        return ()
    try:
        return layouts.parse(items, dim, where, observation)
    except ConfigError as e:
        raise BundleError(f"{MANIFEST}: {e}") from None


@dataclass(frozen=True)
class ActionSpec:
    dim: int
    names: tuple[str, ...]
    execute_start: int  # the executed slice of the predicted horizon: [execute_start, execute_end)
    execute_end: int
    scale: tuple[float, ...] = ()  # |the action normalizer's scale|: normalized units per raw unit (() unknown)
    layout: Layout = ()  # what each part of the vector is (layout.py); () = joint values with ``names``

    @property
    def n_execute(self) -> int:
        return self.execute_end - self.execute_start

    @property
    def segments(self) -> Layout:
        return self.layout or layouts.joints(self.names)


def action_scale(normalizer: dict[str, Any]) -> tuple[float, ...]:
    """|scale| of the manifest's action normalizer (normalized = raw * scale + offset); () without one."""
    return tuple(abs(float(v)) for v in (normalizer.get("action") or {}).get("scale", ()))


@dataclass(frozen=True)
class PolicySpec:
    """The control loop's contract with a policy: what goes in, what comes out, and when."""
    observations: tuple[ObsSpec, ...]
    action: ActionSpec
    horizon: int
    n_obs_steps: int
    obs_interval_s: float  # time between observation-history frames

    def __post_init__(self) -> None:
        if not self.observations:
            raise BundleError(f"{MANIFEST}: no observations")
        if not self.obs_interval_s > 0:
            raise BundleError(f"{MANIFEST}: obs_interval_s must be > 0, got {self.obs_interval_s} "
                              "(re-export with --obs-interval SECONDS)")
        a = self.action
        if a.dim < 1 or len(a.names) != a.dim:
            raise BundleError(f"{MANIFEST}: action has dim {a.dim} and {len(a.names)} names; expected one name per dim")
        if not 0 <= a.execute_start < a.execute_end <= self.horizon:
            raise BundleError(f"{MANIFEST}: executed slice [{a.execute_start}, {a.execute_end}) does not fit the "
                              f"horizon {self.horizon}")

    @property
    def image_shapes(self) -> dict[str, tuple[int, ...]]:
        return {o.key: o.shape for o in self.observations if o.kind == "image"}

    @property
    def low_dim_sizes(self) -> dict[str, int]:
        return {o.key: o.shape[0] for o in self.observations if o.kind == "low_dim"}

    @property
    def keys(self) -> list[str]:
        """Observation keys in graph input order: images, then low-dims."""
        return list(self.image_shapes) + list(self.low_dim_sizes)

    @property
    def n_action_steps(self) -> int:
        return self.action.n_execute

    def executed(self, actions):
        """The executed slice of a predicted trajectory (..., horizon, A)."""
        return actions[..., self.action.execute_start:self.action.execute_end, :]


def _typed(cls, d: Any, where: str):
    """A frozen dataclass from its JSON object; unknown or mistyped keys are a BundleError naming ``where``."""
    if not isinstance(d, dict):
        raise BundleError(f"{MANIFEST}: {where} must be an object, got {d!r}")
    unknown = set(d) - {f.name for f in fields(cls)}
    if unknown:
        raise BundleError(f"{MANIFEST}: {where} has unknown key(s) {sorted(unknown)}")
    return cls(**d)


def _present(obj) -> dict[str, Any]:
    """A dataclass as JSON, fields left unset (None) out."""
    return {k: v for k, v in asdict(obj).items() if v is not None}


@dataclass(frozen=True)
class DdimConfig:
    """diffusers' DDIMScheduler config as exported (its defaults filled in): what the graphs' DDIM update used."""
    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: list[float] | None = None
    clip_sample: bool = True
    set_alpha_to_one: bool = True
    steps_offset: int = 0
    prediction_type: str = "epsilon"
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    clip_sample_range: float = 1.0
    sample_max_value: float = 1.0
    timestep_spacing: str = "leading"
    rescale_betas_zero_snr: bool = False

    @classmethod
    def of(cls, config: dict[str, Any]) -> "DdimConfig":
        """The fields this class knows of a full diffusers config (diffusers' private keys dropped)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in config.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SchedulerSpec:
    """The DDIM schedule the graphs were exported for (diffusers' config and its walk)."""
    config: DdimConfig
    num_inference_steps: int
    timesteps: tuple[int, ...]
    prev_timesteps: tuple[int, ...]
    scheduler_class: str = "DDIMScheduler"
    eta: float = 0.0

    def __post_init__(self) -> None:
        if len(self.timesteps) != self.num_inference_steps or len(self.prev_timesteps) != self.num_inference_steps:
            raise BundleError(f"{MANIFEST}: ddim lists {len(self.timesteps)} timesteps for "
                              f"num_inference_steps {self.num_inference_steps}")


@dataclass(frozen=True)
class GraphSet:
    """One runnable pair of graphs (encoder once per chunk, step per DDIM step) and its measured parity."""
    format: str  # "onnx" | "torchscript"
    encoder: str  # file names inside the bundle
    step: str
    precision: str = "fp32"
    max_abs_error: float = 0.0  # vs the torch policy, normalized action units
    max_abs_error_raw: float = 0.0  # the same in raw action units
    inpaint_step: str = ""  # the step graph holding committed actions fixed ("": exported without it)
    inpaint_max_abs_error: float = 0.0  # its parity vs the torch reference, normalized action units
    p99_abs_error: float = 0.0  # 99th percentile over the samples of the per-chunk max error (normalized)
    samples: int = 0  # observation/noise pairs the errors were measured on
    tolerance: float = 0.0  # the bound max_abs_error was checked against at export
    forced: bool = False  # exported above tolerance on request (dp-export --force-precision)
    latency_ms: float = 0.0  # median per chunk, measured at export
    latency_device: str = ""  # where latency_ms was measured (provider, machine)

    @property
    def name(self) -> str:
        return f"{self.format}-{self.precision}"

    @property
    def files(self) -> tuple[str, ...]:
        """The variant's graph files inside the bundle."""
        return tuple(f for f in (self.encoder, self.step, self.inpaint_step) if f)


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    bytes: int
    role: str  # "encoder" | "step"


@dataclass(frozen=True)
class NormLayer:
    name: str
    type: str
    running_stats: bool


@dataclass(frozen=True)
class CalibrationInfo:
    path: str  # the dataset file's name
    samples: int  # real observation histories taken from it


@dataclass(frozen=True)
class ParityInfo:
    """How the graphs were checked against the torch policy."""
    samples: int
    tolerance: float  # fp32 graphs' bound, normalized action units
    units: str = "normalized action ([-1, 1] training range)"
    reference: str = "torch policy + diffusers DDIMScheduler.step"
    calibration: CalibrationInfo | None = None

    @classmethod
    def from_json(cls, d: Any) -> "ParityInfo":
        p = _typed(cls, d, "parity")
        cal = p.calibration
        return p if cal is None else cls(p.samples, p.tolerance, p.units, p.reference,
                                          _typed(CalibrationInfo, cal, "parity.calibration"))


@dataclass(frozen=True)
class SourceInfo:
    """The checkpoint the bundle was exported from."""
    path: str  # file or directory name
    sha256: str
    format: str  # the importer that read it
    weights: str  # "ema" | "live"
    details: dict[str, Any] = field(default_factory=dict)  # importer notes for people (crop, renamed keys)


@dataclass(frozen=True)
class EmaInfo:
    """EMA settings as the checkpoint recorded them (each framework records a different subset)."""
    library: str | None = None
    power: float | None = None
    inv_gamma: float | None = None
    use_ema_warmup: bool | None = None
    max_decay: float | None = None
    min_value: float | None = None
    max_value: float | None = None
    update_after_step: int | None = None
    decay: float | None = None  # the decay reached at the last update
    step: int | None = None  # optimization steps averaged

    @classmethod
    def of(cls, settings: dict[str, Any]) -> "EmaInfo":
        """The settings this record knows; a checkpoint's other notes stay in the source checkpoint."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in settings.items() if k in names})


@dataclass(frozen=True)
class BundleSpec:
    policy: PolicySpec
    ddim: SchedulerSpec
    graphs: list[GraphSet]
    files: dict[str, FileEntry]
    norm_inventory: list[NormLayer]  # every normalization layer of the torch module at export
    parity: ParityInfo
    source: SourceInfo
    ema: EmaInfo = EmaInfo()
    normalizer: dict[str, Any] = field(default_factory=dict)  # per-key scale/offset baked into the graphs
    config: dict[str, Any] = field(default_factory=dict)  # the PolicyConfig the graphs were built from (a record)
    versions: dict[str, str] = field(default_factory=dict)
    created: str = ""
    onnx_opset: int | None = None

    def graph_set(self, fmt: str, precision: str = "fp32") -> GraphSet | None:
        return next((g for g in self.graphs if g.format == fmt and g.precision == precision), None)

    @property
    def formats(self) -> list[str]:
        return sorted({g.format for g in self.graphs})

    @property
    def graphs_sha256(self) -> str:
        """The digest naming exactly these graphs (a server and a node agree on a policy by it)."""
        return graphs_digest([asdict(g) for g in self.graphs])

    @property
    def running_stats_layers(self) -> list[NormLayer]:
        return [n for n in self.norm_inventory if n.running_stats]

    def to_json(self) -> dict[str, Any]:
        p = self.policy
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION, "created": self.created,
            "observations": [o.to_json() for o in p.observations],
            "action": {"dim": p.action.dim, "names": list(p.action.names),
                       "execute_start": p.action.execute_start, "execute_end": p.action.execute_end,
                       **({"segments": [s.to_json() for s in p.action.layout]} if p.action.layout else {})},
            "horizon": p.horizon, "n_obs_steps": p.n_obs_steps, "n_action_steps": p.n_action_steps,
            "obs_interval_s": p.obs_interval_s,
            "ddim": {"scheduler_class": self.ddim.scheduler_class, "config": self.ddim.config.to_dict(),
                     "num_inference_steps": self.ddim.num_inference_steps, "timesteps": list(self.ddim.timesteps),
                     "prev_timesteps": list(self.ddim.prev_timesteps), "eta": self.ddim.eta},
            "graphs": [asdict(g) for g in self.graphs],
            "graphs_sha256": self.graphs_sha256,
            "files": {n: asdict(f) for n, f in self.files.items()},
            "norm_inventory": [asdict(n) for n in self.norm_inventory],
            "parity": _present(self.parity) | ({"calibration": asdict(self.parity.calibration)}
                                              if self.parity.calibration else {}),
            "source": asdict(self.source), "ema": _present(self.ema), "normalizer": self.normalizer,
            "policy_config": self.config, "versions": self.versions, "onnx_opset": self.onnx_opset,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "BundleSpec":
        """Validate a manifest dict; every fault is a BundleError naming the field."""
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise BundleError(f"{MANIFEST}: format is {d.get('format') if isinstance(d, dict) else d!r}, "
                              f"expected {FORMAT!r}")
        if d.get("format_version") != FORMAT_VERSION:
            raise BundleError(f"{MANIFEST}: format_version {d.get('format_version')!r} is not supported (this "
                              f"dp_runtime reads version {FORMAT_VERSION}; re-export the bundle with dp-export)")
        try:
            a = _need(d, "action", "the manifest")
            policy = PolicySpec(
                tuple(ObsSpec.from_json(o) for o in _need(d, "observations", "the manifest")),
                ActionSpec(int(_need(a, "dim", "action")), tuple(_need(a, "names", "action")),
                           int(_need(a, "execute_start", "action")), int(_need(a, "execute_end", "action")),
                           action_scale(d.get("normalizer") or {}),
                           _layout(a.get("segments"), int(a["dim"]), "action segments")),
                int(_need(d, "horizon", "the manifest")), int(_need(d, "n_obs_steps", "the manifest")),
                float(_need(d, "obs_interval_s", "the manifest")))
            s = _need(d, "ddim", "the manifest")
            ddim = SchedulerSpec(_typed(DdimConfig, _need(s, "config", "ddim"), "ddim.config"),
                                 int(_need(s, "num_inference_steps", "ddim")),
                                 tuple(int(t) for t in _need(s, "timesteps", "ddim")),
                                 tuple(int(t) for t in _need(s, "prev_timesteps", "ddim")),
                                 s.get("scheduler_class", "DDIMScheduler"), float(s.get("eta", 0.0)))
            listed = _need(d, "graphs", "the manifest")
            if d.get("graphs_sha256") != graphs_digest(listed):
                raise BundleError(f"{MANIFEST}: the graphs entries do not match graphs_sha256 (their files, "
                                  "precisions or recorded errors were altered after export); re-export the bundle")
            graphs = [GraphSet(**g) for g in listed]
            files = {n: FileEntry(**f) for n, f in _need(d, "files", "the manifest").items()}
            norms = [NormLayer(**n) for n in _need(d, "norm_inventory", "the manifest")]
            return cls(policy, ddim, graphs, files, norms, ParityInfo.from_json(_need(d, "parity", "the manifest")),
                       _typed(SourceInfo, _need(d, "source", "the manifest"), "source"),
                       _typed(EmaInfo, d.get("ema") or {}, "ema"), d.get("normalizer") or {},
                       d.get("policy_config") or {}, d.get("versions") or {}, d.get("created", ""),
                       d.get("onnx_opset"))
        except (TypeError, ValueError, AttributeError) as e:
            raise BundleError(f"{MANIFEST} is malformed: {type(e).__name__}: {e}") from e
