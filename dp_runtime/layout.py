"""What each part of a low-dim observation or of the action vector is: the layout in the bundle contract.

A vector is a sequence of segments: joint values (with names), a position (with its axes and frame), a
rotation (in a representation of rotations.py), a gripper value, or plain values (keypoints from
perception). An action segment also says how it is meant: ``absolute``; ``delta``, a per-step change
applied to the pose when the step executes, times ``scale`` (robomimic's OSC_POSE: 0.05 m and 0.5 rad
per unit); or ``relative`` to the pose measured at the chunk's observation time (UMI). An observation's pose
is ``absolute``, ``relative`` to the newest of its history (UMI's ``obs_pose_repr: relative``) or relative
to the ``start`` pose (UMI's ``*_wrt_start``: the first measured after a start, reset or discontinuity).
Kinds and modes are tables; a segment is checked once, when it is read, so nothing downstream branches on
strings.

Written to the manifest as a list of objects per low-dim observation and for the action; a bundle
without one means joint values with the recorded names (every bundle before end-effector support).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Callable

from .errors import ConfigError
from .rotations import REPRESENTATIONS


@dataclass(frozen=True)
class Kind:
    name: str
    size: Callable[["Segment"], int | None]  # the size the segment must have (None: any >= 1)
    posed: bool  # part of an end-effector pose (a frame applies; may be delta or relative)
    doc: str


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("joints", lambda s: len(s.names) or None, False, "joint values, one per name"),
    Kind("position", lambda s: len(s.axes), True, "end-effector position on the named axes (metres)"),
    Kind("rotation", lambda s: REPRESENTATIONS[s.representation].size, True,
         "end-effector orientation in a rotations.py representation"),
    Kind("gripper", lambda s: None, False, "gripper opening or command (one value, or robosuite's two fingers)"),
    Kind("values", lambda s: len(s.names) or None, False, "other values (keypoints, object state)"),
)}
ACTION_MODES = ("absolute", "delta", "relative")
OBSERVATION_MODES = ("absolute", "relative", "start")
MODES = tuple(dict.fromkeys(ACTION_MODES + OBSERVATION_MODES))


@dataclass(frozen=True)
class Segment:
    kind: str
    size: int
    representation: str = ""  # rotation: a rotations.REPRESENTATIONS name
    axes: str = ""  # position: which of x, y, z it holds, in order ("xy": a planar task, the rest held)
    frame: str = ""  # position / rotation: the reference frame ("": the node's configured base frame)
    mode: str = "absolute"  # actions: absolute | delta | relative; observations: absolute | relative | start
    scale: float = 1.0  # delta: metres or radians per action unit
    names: tuple[str, ...] = ()  # joints / values: element names
    assumed: str = ""  # where an importer had to assume (the checkpoint did not say), for dp-inspect

    def to_json(self) -> dict[str, Any]:
        """Only what differs from the defaults (a readable manifest)."""
        defaults = {f.name: f.default for f in fields(self)}
        d = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()
             if k in ("kind", "size") or v != defaults[k]}
        return d

    def describe(self) -> str:
        what = {"rotation": f"rotation {self.representation}", "position": f"position {self.axes}"}.get(
            self.kind, self.kind)
        parts = [what]
        if self.kind in ("joints", "values") and self.names:
            parts.append("[" + ", ".join(self.names) + "]")
        if self.frame:
            parts.append(f"in {self.frame}")
        if self.mode != "absolute":
            parts.append({"start": "relative to the start pose"}.get(self.mode, self.mode)
                         + (f" x {self.scale:g}" if self.mode == "delta" and self.scale != 1 else ""))
        if self.assumed:
            parts.append(f"(assumed: {self.assumed})")
        return " ".join(parts)


Layout = tuple[Segment, ...]


def segment(d: dict[str, Any] | Segment, where: str) -> Segment:
    """One segment from its JSON object (or a Segment), checked; errors name ``where`` and the fix."""
    if isinstance(d, Segment):
        d = asdict(d)
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: a layout segment must be an object, got {d!r}")
    unknown = set(d) - {f.name for f in fields(Segment)}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; a segment has "
                          f"{', '.join(f.name for f in fields(Segment))}")
    kind = KINDS.get(d.get("kind", ""))
    if kind is None:
        raise ConfigError(f"{where}: kind {d.get('kind')!r}; expected one of {', '.join(KINDS)}")
    d = dict(d)
    d["names"] = tuple(d.get("names") or ())
    if kind.name == "position":
        d.setdefault("axes", "xyz")
        if not d["axes"] or len(set(d["axes"])) != len(d["axes"]) or set(d["axes"]) - set("xyz"):
            raise ConfigError(f"{where}: position axes {d['axes']!r}; expected distinct letters of xyz")
    if kind.name == "rotation" and d.get("representation") not in REPRESENTATIONS:
        raise ConfigError(f"{where}: rotation representation {d.get('representation')!r}; expected one of "
                          f"{', '.join(REPRESENTATIONS)}")
    if "size" not in d:
        d["size"] = kind.size(Segment(kind.name, 0, **{k: v for k, v in d.items() if k not in ("kind", "size")}))
        if d["size"] is None:
            raise ConfigError(f"{where}: {kind.name} segment needs a size (or names)")
    s = Segment(**d)
    want = kind.size(s)
    if not isinstance(s.size, int) or s.size < 1 or (want is not None and s.size != want):
        raise ConfigError(f"{where}: {s.describe()} has size {s.size!r}; expected {want or 'an integer >= 1'}")
    if s.mode not in MODES:
        raise ConfigError(f"{where}: mode {s.mode!r}; expected one of {', '.join(MODES)}")
    if s.mode != "absolute" and not kind.posed:
        raise ConfigError(f"{where}: {kind.name} segments are absolute; {s.mode} applies to position and rotation")
    if not (isinstance(s.scale, (int, float)) and s.scale > 0):
        raise ConfigError(f"{where}: scale {s.scale!r}; expected a positive number (metres or radians per unit)")
    return s


def parse(items: Any, dim: int, where: str, observation: bool = False) -> Layout:
    """A layout from its JSON list, checked: every segment valid, their sizes adding up to ``dim``, each mode
    one that applies to an ``observation`` or to an action."""
    if not isinstance(items, (list, tuple)) or not items:
        raise ConfigError(f"{where}: a layout is a non-empty list of segments, got {items!r}")
    layout = tuple(segment(d, f"{where}[{i}]") for i, d in enumerate(items))
    modes = OBSERVATION_MODES if observation else ACTION_MODES
    wrong = next((s for s in layout if s.mode not in modes), None)
    if wrong is not None:
        raise ConfigError(f"{where}: mode {wrong.mode!r} on {'an observation' if observation else 'an action'}; "
                          f"expected one of {', '.join(modes)}")
    modes = {s.mode for s in layout if KINDS[s.kind].posed}
    if len(modes) > 1:
        raise ConfigError(f"{where}: the position and rotation segments mix modes {sorted(modes)}; one pose is "
                          "absolute, delta or relative as a whole")
    scaled = [s for s in layout if s.kind == "rotation" and s.scale != 1 and
              not (s.representation == "axis_angle" or s.representation.startswith("euler_"))]
    if scaled:
        raise ConfigError(f"{where}: scale {scaled[0].scale:g} on a {scaled[0].representation} rotation; a scale "
                          "applies to angles (axis_angle, euler_*)")
    total = sum(s.size for s in layout)
    if total != dim:
        raise ConfigError(f"{where}: segments add up to {total} values ({', '.join(f'{s.describe()}: {s.size}' for s in layout)}); "
                          f"the vector has {dim}")
    return layout


def joints(names: tuple[str, ...] | list[str]) -> Layout:
    """The layout of a vector of joint values (what a bundle without a layout means)."""
    return (Segment("joints", len(names), names=tuple(names)),)


def slices(layout: Layout) -> list[tuple[Segment, slice]]:
    """Each segment with its slice of the vector."""
    out, start = [], 0
    for s in layout:
        out.append((s, slice(start, start + s.size)))
        start += s.size
    return out


def is_joint_space(layout: Layout) -> bool:
    return all(s.kind == "joints" for s in layout)


def describe(layout: Layout) -> list[str]:
    """One line per segment with its index range, for dp-inspect."""
    return [f"[{sl.start}:{sl.stop}] {s.describe()}" for s, sl in slices(layout)]


def read_file(path) -> tuple[list | None, dict[str, list]]:
    """dp-export --layout: a YAML (or JSON) file ``{action: [segments], observations: {key: [segments]}}``,
    for a checkpoint that does not say (or says wrongly) what its vectors are."""
    import yaml
    try:
        data = yaml.safe_load(open(path)) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"--layout {path}: cannot read it: {e}") from None
    unknown = set(data) - {"action", "observations"} if isinstance(data, dict) else {"(not a mapping)"}
    if unknown:
        raise ConfigError(f"--layout {path}: unknown top-level key(s) {sorted(unknown)}; expected action, observations")
    obs = data.get("observations") or {}
    if not isinstance(obs, dict):
        raise ConfigError(f"--layout {path}: observations must map observation keys to segment lists")
    return data.get("action"), obs
