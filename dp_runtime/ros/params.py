"""Node parameters: defaults in one dataclass, declared on the node, documented in config/policy.yaml."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import yaml

from ..errors import ConfigError
from .convert import COMMAND_INTERFACES, OBS_MESSAGE_TYPES

OBS_TYPES = tuple(OBS_MESSAGE_TYPES)
QOS = ("best_effort", "reliable")
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
    control_rate_hz: float = 10.0
    action_joint_names: list[str] = field(default_factory=list)
    command_interface: str = "float64_multi_array"  # | joint_trajectory | joint_state
    command_topic: str = "/forward_position_controller/commands"
    command_qos: str = "reliable"
    inference_lead: int = 2
    max_obs_age: float = 0.5
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
    qos_warn_after: float = 3.0  # warn when a topic has publishers but nothing arrived for this long

    def validate(self) -> None:
        if not self.bundle:
            raise ConfigError("parameter 'bundle' is empty: set it to an exported bundle directory")
        if self.control_rate_hz <= 0:
            raise ConfigError(f"control_rate_hz must be > 0, got {self.control_rate_hz}")
        if self.command_interface not in COMMAND_INTERFACES:
            raise ConfigError(f"command_interface must be one of {COMMAND_INTERFACES}, "
                              f"got {self.command_interface!r}")
        if self.on_starvation not in ("hold", "stop"):
            raise ConfigError(f"on_starvation must be 'hold' or 'stop', got {self.on_starvation!r}")
        if self.on_stale not in ("stop", "hold_position"):
            raise ConfigError(f"on_stale must be 'stop' or 'hold_position', got {self.on_stale!r}")
        if self.command_qos not in QOS:
            raise ConfigError(f"command_qos must be one of {QOS}, got {self.command_qos!r}")


def declare_list(node: Any, name: str, default: list, strings: bool) -> list:
    """Declare a typed array parameter; an empty default leaves it unset (rclpy cannot type [])."""
    from rclpy.exceptions import ParameterUninitializedException
    from rclpy.parameter import Parameter
    if default:
        return list(node.declare_parameter(name, default).value)
    node.declare_parameter(name, Parameter.Type.STRING_ARRAY if strings else Parameter.Type.DOUBLE_ARRAY)
    try:
        return list(node.get_parameter(name).value or [])
    except ParameterUninitializedException:
        return []


def declare(node: Any) -> NodeParams:
    """Declare every NodeParams field on ``node`` with its default and read the values back."""
    values = {}
    for f in fields(NodeParams):
        default = getattr(NodeParams(), f.name)
        if isinstance(default, list):
            values[f.name] = declare_list(node, f.name, default, strings="names" in f.name)
        else:
            node.declare_parameter(f.name, default)
            values[f.name] = node.get_parameter(f.name).value
    p = NodeParams(**values)
    p.validate()
    return p


def resolve_obs_topics(get: Callable[..., Any], observations: list[dict]) -> list[ObsTopic]:
    """Per-key ``obs.<key>.topic|type|qos|field|joint_names``; defaults from the bundle manifest.

    ``get(name, default, strings=False)`` returns a parameter value: a declared ROS
    parameter in the node, a key of a parameter file in replay.
    """
    out = []
    for o in observations:
        key, image = o["key"], o["kind"] == "image"
        prefix = f"obs.{key}."
        topic = get(prefix + "topic", o.get("topic") or f"/{key}")
        kind = get(prefix + "type", "image" if image else "joint_state")
        qos = get(prefix + "qos", "best_effort" if image else "reliable")
        fld = get(prefix + "field", "position")
        names = []
        if not image:
            names = list(get(prefix + "joint_names", o.get("names") or [], strings=True))
            if len(names) != o["shape"][0]:
                raise ConfigError(f"{prefix}joint_names has {len(names)} names, the bundle's {key!r} has "
                                  f"{o['shape'][0]} dims")
        if kind not in OBS_TYPES:
            raise ConfigError(f"{prefix}type must be one of {OBS_TYPES}, got {kind!r}")
        if image != (kind in ("image", "compressed_image")):
            raise ConfigError(f"{prefix}type {kind!r} does not fit the bundle's {o['kind']} observation")
        if qos not in QOS:
            raise ConfigError(f"{prefix}qos must be one of {QOS}, got {qos!r}")
        if fld not in JOINT_FIELDS:
            raise ConfigError(f"{prefix}field must be one of {JOINT_FIELDS}, got {fld!r}")
        out.append(ObsTopic(key, topic, kind, qos, fld, names))
    return out


def declare_obs_topics(node: Any, observations: list[dict]) -> list[ObsTopic]:
    def get(name: str, default: Any, strings: bool = False) -> Any:
        if isinstance(default, list):
            return declare_list(node, name, default, strings)
        return node.declare_parameter(name, default).value
    return resolve_obs_topics(get, observations)


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
    p = NodeParams(**{k: v for k, v in flat.items() if k in known})
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
