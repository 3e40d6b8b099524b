"""Node parameters: each declared once (NodeParams), declared on the node, documented from the same fields."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from ..control import ActionLimits, RunnerConfig
from ..engine.backends import DEVICES
from ..engine.formats import BACKENDS
from ..errors import ConfigError
from ..kinematics import Kinematics
from ..precision import PRECISIONS
from ..settings import coerce, coerce_all, default_of, setting, settings_of
from ..spec import ActionSpec, ObsSpec
from .commands import COMMAND_INTERFACES, command_interface
from .convert import OBS_TYPES, ObsReader
QOS = ("best_effort", "reliable")
EXECUTORS = ("single", "multi", "events")
JOINT_FIELDS = ("position", "velocity", "effort")


@dataclass
class ObsTopic:
    key: str
    topic: str
    type: str  # convert.OBS_TYPES: image | compressed_image | joint_state | pose | float64/32_multi_array
    qos: str  # best_effort | reliable
    joint_field: str = "position"  # JointState field for low-dim keys: position | velocity | effort
    joint_names: list[str] = field(default_factory=list)  # order of the low-dim vector (proprio joints)
    frame_id: str = ""  # pose: the frame the pose must be in ("": any)
    spec: ObsSpec | None = None  # the bundle's observation (its size and layout)
    kinematics: Kinematics | None = None  # fk: the chain from the URDF

    def reader(self, image_shape=None, resize: bool = False) -> ObsReader:
        """A reader of this topic's messages (one per subscription: it keeps the stream's state)."""
        low = self.spec is not None and self.spec.kind == "low_dim"
        return ObsReader(self.type, self.topic, image_shape, resize, self.joint_names, self.joint_field,
                         self.spec.segments if low else (), self.spec.shape[0] if low else 0, self.frame_id,
                         self.kinematics)


def default_obs_type(o: ObsSpec) -> str:
    """The topic type a bundle's observation is read from unless configured: cameras as images, a pose layout
    (positions and rotations) as PoseStamped, plain values as Float64MultiArray, joints as JointState."""
    if o.kind == "image":
        return "image"
    kinds = {s.kind for s in o.segments}
    if kinds <= {"position", "rotation"}:
        return "pose"
    return "float64_multi_array" if "values" in kinds else "joint_state"


@dataclass
class NodeParams(RunnerConfig):
    """Every node parameter, declared once: the control loop's (RunnerConfig) and the node's own.

    From these fields come the ROS declarations (descriptions, constraints), coercion and
    validation, the launch arguments' descriptions, the README's parameter table and
    config/policy.yaml (``python -m dp_runtime.ros.params --write``; a test fails when they drift).
    """
    bundle: str = setting("", "exported bundle directory (dp-export -o ...)", shown="(required)")
    backend: str = setting("auto", "graph format to run: auto (the compiled programs where a compile for this "
                                   "machine is cached and they measure faster here than onnxruntime, else the first "
                                   "the bundle has: onnxruntime, then torchscript; logged with the reason), or "
                                   "remote (a dp-serve host at server_url runs the bundle)",
                           choices=("auto", *BACKENDS, "remote"))
    device: str = setting("auto", "auto (TensorRT/CUDA if usable, else CPU), cpu, cuda, tensorrt", choices=DEVICES)
    num_inference_steps: int = setting(0, "DDIM steps; 0 = as exported", ge=0)
    precision: str = setting("auto", "bundle variant; auto = the fastest within its recorded error bound with "
                                     "native kernels on the device (dp-inspect lists them)",
                             choices=("auto", *PRECISIONS))
    max_action_error: float = setting(0.0, "run variants whose recorded max action error (normalized) is up to "
                                           "this; 0 = the bound each was checked against at export", ge=0)
    command_interface: str = setting("float64_multi_array", "command message: float64_multi_array, "
                                     "joint_trajectory (the remaining chunk), joint_state, pose (PoseStamped "
                                     "target of an end-effector policy's pose), twist (TwistStamped: its per-step "
                                     "deltas over one period), pose_trajectory (MultiDOFJointTrajectory: the "
                                     "remaining chunk's absolute poses, timed) or pose_path (nav_msgs/Path: the "
                                     "same, each pose stamped when it is due)",
                                     choices=tuple(COMMAND_INTERFACES))
    command_topic: str = setting("/forward_position_controller/commands", "topic the commands go to")
    command_outputs: list[str] = setting(
        [], "more outputs beside command_topic, each SELECTOR:INTERFACE:TOPIC: the action's segments of one kind "
            "(gripper, joints, values) or an index range i-j, through float64_multi_array or joint_state (the "
            "gripper of an end-effector policy to its own controller)", shown="unset")
    command_frame_id: str = setting("base_link", "command_interface pose, twist, pose_trajectory, pose_path: the "
                                                 "frame the target is in (the controller's base frame; the bundle's "
                                                 "poses are in it too)")
    command_qos: str = setting("reliable", "command publisher reliability", choices=QOS)
    action_lower: list[float] = setting([], "clip: one value or one per action joint", shown="unset", live=True)
    action_upper: list[float] = setting([], "clip: one value or one per action joint", shown="unset", live=True)
    action_max_delta: list[float] = setting([], "max change per control step", shown="unset", live=True)
    ee_workspace_lower: list[float] = setting([], "end-effector pose actions: x, y, z lower corner of the workspace "
                                                  "box (m, in the bundle's frame); clamped, counted", shown="unset",
                                              live=True)
    ee_workspace_upper: list[float] = setting([], "end-effector pose actions: x, y, z upper corner of the workspace "
                                                  "box", shown="unset", live=True)
    ee_max_linear_step: float = setting(0.0, "end-effector pose actions: m the target may move per control step "
                                             "(0: unlimited)", ge=0, live=True)
    ee_max_angular_step: float = setting(0.0, "end-effector pose actions: rad the target may turn per control step, "
                                              "along the shorter arc (0: unlimited)", ge=0, live=True)
    threads: int = setting(0, "CPU threads inference uses (0: min(cores, 8) for ONNX Runtime, one fewer than the "
                              "cores for backend aoti, whose compiled code waits for every thread; torch's default "
                              "for TorchScript)", ge=0)
    cuda_graphs: bool = setting(True, "TorchScript on CUDA: capture the denoising loop as a CUDA graph per "
                                      "batch-size bucket (false: plain kernel launches)")
    compile_cache: str = setting("", "backend aoti: directory of compiled packages (empty: "
                                     "~/.cache/dp_runtime/compiled); compiled at the first start on a machine")
    server_url: str = setting("", "backend remote: dp-serve's address, http(s)://HOST:PORT")
    server_timeout: float = setting(0.5, "backend remote: s a chunk request may take before it counts as failed "
                                         "(the queue runs on meanwhile; on_starvation applies)", gt=0)
    server_tls_ca: str = setting("", "backend remote over https: PEM CA that signed the server's certificate "
                                     "(empty: the system's)")
    server_tls_cert: str = setting("", "backend remote over https: this robot's PEM certificate, when the server "
                                       "requires client certificates")
    server_tls_key: str = setting("", "backend remote over https: the private key of server_tls_cert")
    resize_images: bool = setting(False, "resize camera images to the bundle's size instead of refusing them")
    diagnostics_period: float = setting(1.0, "s between /diagnostics messages", gt=0)
    executor: str = setting("events", "what delivers messages: events (rclpy's EventsExecutor, measured "
                                      "cheapest under sensor load; single where rclpy lacks it), single or multi",
                            choices=EXECUTORS)
    qos_warn_after: float = setting(3.0, "s a topic may have publishers but deliver nothing before a QoS warning",
                                    gt=0)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.per_chunk = command_interface(self.command_interface).per_chunk
        if self.backend == "remote" and not self.server_url:
            raise ConfigError("backend remote needs server_url (the address dp-serve prints, http(s)://HOST:PORT)")
        if self.server_url and self.backend != "remote":
            raise ConfigError(f"server_url is set but backend is {self.backend!r}; set backend: remote to run the "
                              "policy on that server, or clear server_url")

    def validate(self) -> None:
        """What only a running node needs: a bundle to load."""
        if not self.bundle:
            raise ConfigError("parameter 'bundle' is empty: set it to an exported bundle directory")

    def runner_config(self, **overrides: Any) -> RunnerConfig:
        """The control loop's settings from these parameters."""
        return RunnerConfig(**{**self.runner_fields(), **overrides})

    def limits(self, action: ActionSpec) -> ActionLimits:
        return ActionLimits.from_lists(action.dim, self.action_lower, self.action_upper, self.action_max_delta,
                                       action.segments, self.ee_workspace_lower, self.ee_workspace_upper,
                                       self.ee_max_linear_step, self.ee_max_angular_step)


PARAMETERS = {f.name: (rule, tp) for f, rule, tp in settings_of(NodeParams)}


def declare_any(node: Any, name: str, default: Any, description: str = "", constraints: str = "") -> Any:
    """Declare with dynamic typing so a mistyped value reaches our own check (not an rclpy traceback)."""
    from rcl_interfaces.msg import ParameterDescriptor
    if node.has_parameter(name):  # a lifecycle node configured a second time
        value = node.get_parameter(name).value
    else:
        descriptor = ParameterDescriptor(dynamic_typing=True, description=description,
                                         additional_constraints=constraints)
        value = node.declare_parameter(name, None if default == [] else default, descriptor).value
    return default if value is None else value


def declare(node: Any) -> NodeParams:
    """Declare every NodeParams setting on ``node`` (default, description, constraints), read back, validate."""
    values = {f.name: declare_any(node, f.name, default_of(f), rule.doc, rule.describe())
              for f, rule, _ in settings_of(NodeParams)}
    p = NodeParams(**coerce_all(NodeParams, values))
    p.validate()
    return p


def resolve_obs_topics(get: Callable[[str, Any], Any], observations: Sequence[ObsSpec],
                       robot_description: Callable[[str], str] | None = None) -> list[ObsTopic]:
    """Per-key ``obs.<key>.topic|type|qos|field|joint_names``; defaults from the bundle's spec.

    ``get(name, default)`` returns a parameter value: a declared ROS parameter in the
    node, a key of a parameter file in replay. ``robot_description(topic)``: the URDF published on a
    topic (the node waits for it; None: only files can be read, as in replay).
    """
    out = []
    for o in observations:
        key, image = o.key, o.kind == "image"
        prefix = f"obs.{key}."

        def param(name: str, default: Any, kind: Any = str) -> Any:
            return coerce(prefix + name, get(prefix + name, default), kind)
        topic = param("topic", o.topic or f"/{key}")
        kind = param("type", default_obs_type(o))
        qos = param("qos", "best_effort" if image else "reliable")
        fld = param("field", "position")
        frame_id = param("frame_id", "")
        if kind not in OBS_TYPES:
            raise ConfigError(f"{prefix}type must be one of {tuple(OBS_TYPES)}, got {kind!r}")
        if image != OBS_TYPES[kind].image:
            raise ConfigError(f"{prefix}type {kind!r} does not fit the bundle's {o.kind} observation")
        names = []
        if kind == "joint_state":
            names = param("joint_names", list(o.names), list[str])
            if len(names) != o.shape[0]:
                raise ConfigError(f"{prefix}joint_names has {len(names)} names, the bundle's {key!r} has "
                                  f"{o.shape[0]} dims")
        if kind in ("pose", "fk") and not {s.kind for s in o.segments} <= {"position", "rotation"}:
            raise ConfigError(f"{prefix}type {kind}: the bundle's {key!r} is "
                              f"{'; '.join(s.describe() for s in o.segments)}, not positions and rotations "
                              "(re-export with dp-export --layout, or read it as joint_state or float64_multi_array)")
        kinematics = None
        if kind == "fk":
            urdf = param("urdf", "")
            if urdf:
                try:
                    text = Path(urdf).expanduser().read_text()
                except OSError as e:
                    raise ConfigError(f"{prefix}urdf: cannot read {urdf}: {e}") from None
            else:  # robot_state_publisher's latched topic
                urdf = param("robot_description", "/robot_description")
                if robot_description is None:
                    raise ConfigError(f"{prefix}urdf: type fk without a URDF file reads {urdf}, which only the node "
                                      "can (set obs.<key>.urdf to the robot's URDF file here)")
                text = robot_description(urdf)
            kinematics = Kinematics(text, param("tip_link", "tool0"), param("base_link", ""), f"{prefix}urdf {urdf}")
        if qos not in QOS:
            raise ConfigError(f"{prefix}qos must be one of {QOS}, got {qos!r}")
        if fld not in JOINT_FIELDS:
            raise ConfigError(f"{prefix}field must be one of {JOINT_FIELDS}, got {fld!r}")
        out.append(ObsTopic(key, topic, kind, qos, fld, names, frame_id, o, kinematics))
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
    unknown = [k for k in flat if k not in PARAMETERS and not k.startswith("obs.") and k != "use_sim_time"]
    if unknown:
        raise ConfigError(f"{path}: unknown parameter(s) {unknown}")
    p = NodeParams(**coerce_all(NodeParams, {k: v for k, v in flat.items() if k in PARAMETERS}))
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


# -- documentation produced from the declarations (python -m dp_runtime.ros.params --write) ----------------
OBS_ROW = ("| `obs.<key>.topic` / `.type` / `.qos` / `.field` / `.joint_names` / `.frame_id` / `.urdf` / "
           "`.robot_description` / `.tip_link` / `.base_link` | from the manifest | per observation key: topic, "
           "`image`/`compressed_image`/`joint_state`/`pose`/`fk`/`float64_multi_array`/`float32_multi_array`, "
           "`best_effort`/`reliable`, JointState field, joint order (matched by name), the frame a pose must be in, "
           "fk's URDF file (default: the URDF on `/robot_description`) and chain |")
TABLE_BEGIN, TABLE_END = "<!-- parameters: generated from NodeParams -->", "<!-- parameters: end -->"
YAML_HEADER = """# dp_runtime policy_node parameters (ROS 2 parameter file), generated from
# dp_runtime/ros/params.py:NodeParams (python -m dp_runtime.ros.params --write).
# Every key is optional except `bundle` (set here or with `bundle:=` on the launch line).
# List parameters are left out when unused: ROS 2 cannot type an empty list.
policy_node:
  ros__parameters:
"""
YAML_OBS = """    # Per observation key (the keys come from the bundle manifest; `dp-inspect BUNDLE` lists them):
    # obs.<key>.topic: topic name (default: the manifest's topic, else /<key>)
    # obs.<key>.type: image | compressed_image | joint_state | pose (PoseStamped) | fk (pose from JointState and
    #   a URDF) | float64_multi_array | float32_multi_array (no header: timed on receipt); default from the
    #   bundle's layout (dp-inspect)
    # obs.<key>.qos: best_effort (cameras) | reliable (joint states)
    # obs.<key>.field: position | velocity | effort (joint_state only)
    # obs.<key>.joint_names: [..] order of the low-dim vector, matched by name
    # obs.<key>.frame_id: pose only: the frame the pose must be in (another is refused, counted); "" any
    # obs.<key>.urdf / .tip_link / .base_link: fk only: the robot's URDF file and the chain (default tool0,
    #   from the URDF's root): the pose computed from /joint_states; without a file, the URDF latched on
    #   obs.<key>.robot_description (default /robot_description, waited for 10 s at configure)
"""


def yaml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value == "":
        return '""'
    return str(value)


def markdown_table() -> str:
    """The README's parameter table."""
    rows = ["| parameter | default | meaning |", "|---|---|---|"]
    for f, rule, _ in settings_of(NodeParams):
        default = rule.shown or f"`{yaml_value(default_of(f))}`"
        allowed = f" ({rule.describe()})" if rule.describe() else ""
        live = " **live**: `ros2 param set` applies it from the next tick" if rule.live else ""
        rows.append(f"| `{f.name}` | {default} | {rule.doc}{allowed}{live} |")
    return "\n".join([TABLE_BEGIN, *rows, OBS_ROW, TABLE_END])


def policy_yaml() -> str:
    """config/policy.yaml: every parameter with its default, described above it."""
    import textwrap
    lines = [YAML_HEADER.rstrip("\n")]
    for f, rule, _ in settings_of(NodeParams):
        allowed = f" ({rule.describe()})" if rule.describe() else ""
        lines += textwrap.wrap(rule.doc + allowed, 110, initial_indent="    # ", subsequent_indent="    #   ")
        default = default_of(f)
        lines.append(f"    # {f.name}: [...]" if isinstance(default, list) else f"    {f.name}: {yaml_value(default)}")
    return "\n".join(lines) + "\n" + YAML_OBS


def documented_files(root: Path) -> dict[Path, str]:
    """The files generated from NodeParams, as they should read (README.md: its table only)."""
    readme = root / "README.md"
    text = readme.read_text()
    begin, end = text.index(TABLE_BEGIN), text.index(TABLE_END) + len(TABLE_END)
    return {readme: text[:begin] + markdown_table() + text[end:], root / "config" / "policy.yaml": policy_yaml()}


def main(argv: Sequence[str] | None = None) -> int:
    import argparse
    ap = argparse.ArgumentParser(description="Write the README's parameter table and config/policy.yaml from "
                                             "NodeParams (or --check that they match).")
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[2])
    ap.add_argument("--write", action="store_true", help="(the default) write the files")
    ap.add_argument("--check", action="store_true", help="exit 1 when a file differs")
    args = ap.parse_args(argv)
    stale = [p for p, text in documented_files(args.root).items() if p.read_text() != text]
    if args.check:
        for p in stale:
            print(f"{p} differs from NodeParams: run python -m dp_runtime.ros.params --write")
        return 1 if stale else 0
    for p, text in documented_files(args.root).items():
        p.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
