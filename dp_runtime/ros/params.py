"""Node parameters: defaults in one dataclass, declared on the node, documented in config/policy.yaml."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from ..control import ActionLimits, RunnerConfig
from ..errors import ConfigError
from ..precision import PRECISIONS
from ..spec import ObsSpec
from .commands import command_interface
from .convert import OBS_MESSAGE_TYPES

OBS_TYPES = tuple(OBS_MESSAGE_TYPES)
QOS = ("best_effort", "reliable")
EXECUTORS = ("single", "multi", "events")
JOINT_FIELDS = ("position", "velocity", "effort")


@dataclass
class ObsTopic:
    key: str
    topic: str
    type: str  # image | compressed_image | joint_state
    qos: str  # best_effort | reliable
    joint_field: str = "position"  # JointState field for low-dim keys: position | velocity | effort
    joint_names: list[str] = field(default_factory=list)  # order of the low-dim vector (proprio joints)


@dataclass
class NodeParams:
    bundle: str = ""
    backend: str = "auto"  # auto | onnxruntime | torchscript
    device: str = "auto"  # auto | cpu | cuda | tensorrt
    num_inference_steps: int = 0  # 0: as exported
    precision: str = "auto"  # auto | fp32 | int8 | fp16 | bf16: the bundle variant to run (auto: fastest allowed)
    max_action_error: float = 0.0  # run variants up to this recorded error (normalized); 0: as checked at export
    control_rate_hz: float = 10.0
    action_joint_names: list[str] = field(default_factory=list)
    command_interface: str = "float64_multi_array"  # | joint_trajectory | joint_state
    command_topic: str = "/forward_position_controller/commands"
    command_qos: str = "reliable"
    inference_lead: int | str = 2  # actions left when the next inference starts; "auto": from measured latency
    chunk_transition: str = "replace"  # replace | blend | inpaint (bundle exported with --inpaint)
    blend_actions: int = 4  # blend: actions over which a new chunk cross-fades in
    max_obs_age: float = 0.5
    max_stamp_ahead: float = 0.1  # s an observation stamp may lead the node clock before it is refused
    execution_latency: float = 0.0
    on_starvation: str = "hold"  # hold | stop
    on_stale: str = "stop"  # stop | hold_position (publish the measured joint positions)
    action_lower: list[float] = field(default_factory=list)
    action_upper: list[float] = field(default_factory=list)
    action_max_delta: list[float] = field(default_factory=list)
    seed: int = -1  # >= 0: chunk k uses noise seed + k (reproducible); -1: random
    resize_images: bool = False
    autostart: bool = True
    diagnostics_period: float = 1.0
    # What delivers messages: events (rclpy's EventsExecutor; measured cheapest under sensor load, bench/soak.py),
    # single or multi. events falls back to single where rclpy lacks it.
    executor: str = "events"
    qos_warn_after: float = 3.0  # warn when a topic has publishers but nothing arrived for this long

    def validate(self) -> None:
        if not self.bundle:
            raise ConfigError("parameter 'bundle' is empty: set it to an exported bundle directory")
        command_interface(self.command_interface)
        if self.precision not in ("auto", *PRECISIONS):
            raise ConfigError(f"precision must be auto or one of {list(PRECISIONS)}, got {self.precision!r}")
        if self.max_action_error < 0:
            raise ConfigError(f"max_action_error must be >= 0 (0: the bounds recorded at export), got "
                              f"{self.max_action_error}")
        if self.executor not in EXECUTORS:
            raise ConfigError(f"executor must be one of {EXECUTORS}, got {self.executor!r}")
        if self.command_qos not in QOS:
            raise ConfigError(f"command_qos must be one of {QOS}, got {self.command_qos!r}")
        for name in ("diagnostics_period", "qos_warn_after"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        self.runner_config()

    def runner_config(self, **overrides: Any) -> RunnerConfig:
        """The control loop's settings (validated there) from these parameters."""
        kw = dict(control_rate_hz=self.control_rate_hz, max_obs_age=self.max_obs_age,
                  max_stamp_ahead=self.max_stamp_ahead,
                  execution_latency=self.execution_latency, inference_lead=self.inference_lead,
                  seed=self.seed if self.seed >= 0 else None, on_starvation=self.on_starvation,
                  on_stale=self.on_stale, per_chunk=command_interface(self.command_interface).per_chunk,
                  action_names=tuple(self.action_joint_names), autostart=self.autostart,
                  chunk_transition=self.chunk_transition, blend_actions=self.blend_actions)
        kw.update(overrides)
        return RunnerConfig(**kw)

    def limits(self, action_dim: int) -> ActionLimits:
        return ActionLimits.from_lists(action_dim, self.action_lower, self.action_upper, self.action_max_delta)


KINDS = {f.name: f.type for f in fields(NodeParams)}


def coerce(name: str, value: Any, kind: str) -> Any:
    """A parameter value as its field's type; integers where a decimal is meant are accepted.

    ``kind`` is the dataclass annotation: str, int, float, bool, list[str], list[float].
    Raises ConfigError naming the parameter and the type expected.
    """
    def bad(expected: str) -> ConfigError:
        return ConfigError(f"parameter {name!r} must be {expected}, got {value!r} ({type(value).__name__})")

    if kind == "int | str":  # an integer, or the word "auto"
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        raise bad("an integer or auto")
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise bad("true or false")
    if kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad("an integer")
    if kind == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise bad("a number")
    if kind == "str":
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # ros2 launch / -p type a bare 1.5 as a double; a path or name is still text
        raise bad("a string")
    if kind.startswith("list"):
        if value is None:
            return []
        if not isinstance(value, (list, tuple)):
            raise bad(f"a list ({kind})")
        item = kind[5:-1]
        return [coerce(f"{name}[{i}]", v, item) for i, v in enumerate(value)]
    raise AssertionError(f"no coercion for {kind}")


def declare_any(node: Any, name: str, default: Any) -> Any:
    """Declare with dynamic typing so a mistyped value reaches our own check (not an rclpy traceback)."""
    from rcl_interfaces.msg import ParameterDescriptor
    if node.has_parameter(name):  # a lifecycle node configured a second time
        value = node.get_parameter(name).value
    else:
        value = node.declare_parameter(name, None if default == [] else default,
                                       ParameterDescriptor(dynamic_typing=True)).value
    return default if value is None else value


def declare(node: Any) -> NodeParams:
    """Declare every NodeParams field on ``node`` with its default, read the values back and validate."""
    defaults = NodeParams()
    values = {f.name: coerce(f.name, declare_any(node, f.name, getattr(defaults, f.name)), KINDS[f.name])
              for f in fields(NodeParams)}
    p = NodeParams(**values)
    p.validate()
    return p


def resolve_obs_topics(get: Callable[[str, Any], Any], observations: Sequence[ObsSpec]) -> list[ObsTopic]:
    """Per-key ``obs.<key>.topic|type|qos|field|joint_names``; defaults from the bundle's spec.

    ``get(name, default)`` returns a parameter value: a declared ROS parameter in the
    node, a key of a parameter file in replay.
    """
    out = []
    for o in observations:
        key, image = o.key, o.kind == "image"
        prefix = f"obs.{key}."

        def param(name: str, default: Any, kind: str = "str") -> Any:
            return coerce(prefix + name, get(prefix + name, default), kind)
        topic = param("topic", o.topic or f"/{key}")
        kind = param("type", "image" if image else "joint_state")
        qos = param("qos", "best_effort" if image else "reliable")
        fld = param("field", "position")
        names = []
        if not image:
            names = param("joint_names", list(o.names), "list[str]")
            if len(names) != o.shape[0]:
                raise ConfigError(f"{prefix}joint_names has {len(names)} names, the bundle's {key!r} has "
                                  f"{o.shape[0]} dims")
        if kind not in OBS_TYPES:
            raise ConfigError(f"{prefix}type must be one of {OBS_TYPES}, got {kind!r}")
        if image != (kind in ("image", "compressed_image")):
            raise ConfigError(f"{prefix}type {kind!r} does not fit the bundle's {o.kind} observation")
        if qos not in QOS:
            raise ConfigError(f"{prefix}qos must be one of {QOS}, got {qos!r}")
        if fld not in JOINT_FIELDS:
            raise ConfigError(f"{prefix}field must be one of {JOINT_FIELDS}, got {fld!r}")
        out.append(ObsTopic(key, topic, kind, qos, fld, names))
    return out


def load_params_file(path: str | Path | None, node_name: str = "policy_node",
                     **overrides: Any) -> tuple[NodeParams, dict[str, Any]]:
    """NodeParams (and the flat parameter dict) from a ROS 2 parameter YAML, as the node would see it."""
    flat: dict[str, Any] = {}
    if path:
        path = Path(path)
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"cannot read parameter file {path}: {e}") from e
        section = doc.get(node_name) or doc.get("/**") or {}
        if "ros__parameters" not in section:
            raise ConfigError(f"{path}: expected '{node_name}: ros__parameters: ...' (ROS 2 parameter file)")
        flat = flatten_params(section["ros__parameters"])
    flat.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in fields(NodeParams)}
    unknown = [k for k in flat if k not in known and not k.startswith("obs.") and k != "use_sim_time"]
    if unknown:
        raise ConfigError(f"{path}: unknown parameter(s) {unknown}")
    p = NodeParams(**{k: coerce(k, v, KINDS[k]) for k, v in flat.items() if k in known})
    return p, flat


def flatten_params(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested YAML parameters -> ROS 2's dotted names (obs: {camera: {topic: x}} -> obs.camera.topic)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten_params(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out
