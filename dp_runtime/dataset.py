"""dp-dataset BAG --config dataset.yaml -o DATASET.npz: demonstrations in a bag -> training arrays.

Observation histories are assembled by the runtime's own ObservationBuffer at
each recorded command, so training sees exactly what the node will feed the
bundle. Episodes are split where the command stream pauses for longer than
``episode_gap_s``; action chunks are padded with the episode's edge commands
(as diffusion_policy's sequence sampler does).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .control import ObservationBuffer
from .errors import ConfigError, DpRuntimeError, StaleInputError
from .ros import convert
from .layout import Layout, parse, segment, slices
from .ros.commands import RECORDED_COMMAND_TYPES, DecodeContext, command_to_vector, decode_float64_multi_array


@dataclass
class DatasetObs:
    key: str
    topic: str
    type: str  # image | compressed_image | joint_state | pose
    joint_names: list[str] = field(default_factory=list)
    layout: list[dict[str, Any]] = field(default_factory=list)  # pose: the segments it is written as (layout.py)
    frame_id: str = ""  # pose: the frame it must be in ("": any)
    field: str = "position"
    shape: list[int] | None = None  # images: (H, W, C) to resize to; default: as recorded

    @property
    def image(self) -> bool:
        return convert.OBS_TYPES[self.type].image

    @cached_property
    def segments(self) -> Layout:
        if not self.layout:
            return ()
        where = f"dataset obs {self.key!r} layout"
        return parse(self.layout, sum(segment(d, where).size for d in self.layout), where, observation=True)

    @property
    def size(self) -> int:
        return sum(s.size for s in self.segments) if self.layout else len(self.joint_names)


DATASET_OBS_TYPES = ("image", "compressed_image", "joint_state", "pose")


@dataclass
class DatasetConfig:
    command_topic: str  # its messages time the samples (joint commands, or an end-effector pose / twist)
    action_names: list[str]
    obs: list[DatasetObs]
    # the action's segments (layout.py; [] = joint values): where a pose or twist command's values go
    action_layout: list[dict[str, Any]] = field(default_factory=list)
    # more of the action from other topics, SELECTOR: TOPIC (a segment kind, e.g. gripper: /gripper/command,
    # Float64MultiArray): the message nearest in time to each command (within episode_gap_s; none: no sample)
    command_parts: dict[str, str] = field(default_factory=dict)
    command_period_s: float = 0.0  # twist commands: the period each velocity was held (delta = velocity * period)
    horizon: int = 16
    n_obs_steps: int = 2
    n_action_steps: int = 8
    obs_interval_s: float = 0.1
    episode_gap_s: float = 0.5
    policy: dict[str, Any] = field(default_factory=dict)  # PolicyConfig overrides (network sizes, ...)

    @classmethod
    def load(cls, path: str | Path) -> "DatasetConfig":
        try:
            d = dict(yaml.safe_load(Path(path).read_text())["dataset"])
            d["obs"] = [DatasetObs(key=k, **v) for k, v in d["obs"].items()]
            out = cls(**d)
        except (OSError, KeyError, TypeError, yaml.YAMLError) as e:
            raise ConfigError(f"dataset config {path}: {e} (expected 'dataset:' with command_topic, "
                              "action_names and obs.<key>.topic/type)") from e
        bad = [f"{o.key}: {o.type!r}" for o in out.obs if o.type not in DATASET_OBS_TYPES]
        if bad:
            raise ConfigError(f"dataset config {path}: obs type(s) {bad}; dp-dataset reads {', '.join(DATASET_OBS_TYPES)}")
        unlaid = [o.key for o in out.obs if o.type == "pose" and not o.layout]
        if unlaid:
            raise ConfigError(f"dataset config {path}: pose observation(s) {unlaid} need a layout (e.g. "
                              "[{kind: position}] or [{kind: rotation, representation: quat_xyzw}])")
        for o in out.obs:
            o.segments  # checked here, once
        segments = out.segments
        for selector in out.command_parts:
            if not any(s.kind == selector for s in segments):
                raise ConfigError(f"dataset config {path}: command_parts {selector!r} is not a segment kind of the "
                                  f"action_layout ({sorted({s.kind for s in segments}) or 'none given'})")
        return out

    @cached_property
    def segments(self) -> Layout:
        return parse(self.action_layout, len(self.action_names), "dataset action_layout") if self.action_layout else ()

    def part_columns(self) -> dict[str, list[int]]:
        """command_parts topic -> the action's columns its values fill."""
        out: dict[str, list[int]] = {}
        for selector, topic in self.command_parts.items():
            out.setdefault(topic, []).extend(i for s, sl in slices(self.segments) if s.kind == selector
                                             for i in range(sl.start, sl.stop))
        return out


def bag_to_dataset(bag_path: str | Path, cfg: DatasetConfig, distro: str = "kilted") -> tuple[dict, dict]:
    """Returns (arrays, info): arrays per obs key ``(N, To, ...)``, ``action (N, horizon, A)``, ``episode (N,)``."""
    from .replay.bag import Bag
    parts = cfg.part_columns()
    layout = cfg.segments
    with Bag(bag_path, distro) as bag:
        for o in cfg.obs:
            bag.require(o.topic, (convert.OBS_MESSAGE_TYPES[o.type],), f"dataset observation {o.key!r}")
        bag.require(cfg.command_topic, RECORDED_COMMAND_TYPES, "dataset commands")
        for topic in parts:
            bag.require(topic, ("std_msgs/msg/Float64MultiArray",), "dataset command_parts")
        by_topic: dict[str, list[DatasetObs]] = {}  # a pose topic may feed two keys (position, quaternion)
        for o in cfg.obs:
            by_topic.setdefault(o.topic, []).append(o)
        readers: dict[str, convert.ObsReader] = {}
        shapes: dict[str, tuple] = {}
        samples: list[tuple[float, str, Any]] = []  # (time, key|"__command__", value) in bag order
        part_messages: list[tuple[float, list[int], np.ndarray]] = []  # (time, columns, values)
        skipped = 0
        for raw in bag.messages(set(by_topic) | {cfg.command_topic} | set(parts)):
            msg = bag.deserialize(raw)
            if msg is None:
                skipped += 1
                continue
            try:
                if raw.topic in parts:
                    part_messages.append((raw.time, parts[raw.topic], decode_float64_multi_array(
                        msg, DecodeContext([str(i) for i in parts[raw.topic]], raw.topic))))
                if raw.topic == cfg.command_topic:
                    samples.append((raw.time, "__command__", command_to_vector(
                        msg, raw.msgtype, cfg.action_names, raw.topic, layout, cfg.command_period_s)))
                for o in by_topic.get(raw.topic, ()):
                    if o.image and o.key not in shapes:  # the first frame fixes the size
                        shapes[o.key] = (tuple(o.shape) if o.shape else
                                         (int(msg.height), int(msg.width), 3) if o.type == "image" else _decode_size(msg))
                    if o.key not in readers:
                        readers[o.key] = convert.ObsReader(o.type, raw.topic, shapes.get(o.key), bool(o.shape),
                                                           o.joint_names, o.field, o.segments, o.size, o.frame_id)
                    samples.append((raw.time, o.key, readers[o.key](msg, received=raw.time)))
            except DpRuntimeError:
                skipped += 1
        problems = {"truncated": bag.problems.truncated, "corrupt": len(bag.problems.corrupt)}
    images = {o.key: shapes[o.key] for o in cfg.obs if o.image and o.key in shapes}
    low_dims = {o.key: o.size for o in cfg.obs if not o.image}
    missing = [o.key for o in cfg.obs if o.image and o.key not in images]
    if missing:
        raise DpRuntimeError(f"bag {bag_path}: no usable messages for {missing}")
    buffer = ObservationBuffer(images, low_dims, cfg.n_obs_steps, cfg.obs_interval_s, max_obs_age=1.0,
                               capacity=256, layouts={o.key: o.segments for o in cfg.obs if not o.image})
    _join_parts(samples, part_messages, cfg.episode_gap_s)
    histories, commands, times = [], [], []
    for t, key, value in samples:
        if key == "__command__":
            if np.isnan(value).any():  # a command part not heard near it: no action to learn from
                skipped += 1
                continue
            try:
                histories.append(buffer.assemble(t).history)
            except StaleInputError:
                histories.append(None)  # no observation yet: its action still belongs to the chunks
            commands.append(value)
            times.append(t)
        else:
            newest = buffer.newest(key)
            if newest is not None and value[0] - newest > cfg.episode_gap_s:  # a new episode: its history starts
                buffer.drop_before(value[0], key)  # afresh (quaternions canonical), as the node's after a reset
            try:
                buffer.add(key, *value)
            except DpRuntimeError:
                skipped += 1
    if not any(h is not None for h in histories):
        raise DpRuntimeError(f"bag {bag_path}: no command on {cfg.command_topic} has observations before it")
    episodes = _split_episodes(np.array(times), cfg.episode_gap_s)
    actions = np.stack(commands).astype(np.float32)
    arrays: dict[str, list] = {k: [] for k in [*images, *low_dims, "action", "episode"]}
    for ep, (start, end) in enumerate(episodes):
        for i in range(start, end):
            if histories[i] is None:
                continue
            idx = np.clip(np.arange(i - (cfg.n_obs_steps - 1), i - (cfg.n_obs_steps - 1) + cfg.horizon), start,
                          end - 1)
            for k in [*images, *low_dims]:
                arrays[k].append(histories[i][k])
            arrays["action"].append(actions[idx])
            arrays["episode"].append(ep)
    out = {k: np.stack(v) for k, v in arrays.items()}
    info = {"bag": str(bag_path), "episodes": len(episodes), "samples": int(len(out["action"])),
            "skipped_messages": skipped, "bag_problems": problems, "images": images, "low_dims": low_dims}
    return out, info


def _join_parts(samples: list, part_messages: list, within_s: float) -> None:
    """Each command's NaN columns filled from the nearest message in time of the topic that carries them (the
    gripper's command is published beside the pose target, just before or after it), within ``within_s``."""
    by_columns: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]] = {}
    for cols in {tuple(c) for _, c, _ in part_messages}:
        rows = [(t, v) for t, c, v in part_messages if tuple(c) == cols]
        by_columns[cols] = (np.array([t for t, _ in rows]), np.stack([v for _, v in rows]))
    for i, (t, key, value) in enumerate(samples):
        if key != "__command__":
            continue
        for cols, (pt, pv) in by_columns.items():
            j = int(np.argmin(np.abs(pt - t)))
            if abs(pt[j] - t) <= within_s:
                value = value.copy()
                value[list(cols)] = np.where(np.isnan(value[list(cols)]), pv[j], value[list(cols)])
        samples[i] = (t, key, value)


def _decode_size(msg) -> tuple[int, int, int]:
    import io

    from PIL import Image as PILImage
    w, h = PILImage.open(io.BytesIO(bytes(msg.data))).size
    return h, w, 3


def _split_episodes(times: np.ndarray, gap: float) -> list[tuple[int, int]]:
    cuts = [0, *(np.nonzero(np.diff(times) > gap)[0] + 1).tolist(), len(times)]
    return [(a, b) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]


def policy_config(cfg: DatasetConfig, info: dict):
    """The PolicyConfig a policy trained on this dataset needs (topics and names included)."""
    from .model import ImageSpec, LowDimSpec, PolicyConfig
    from .model.config import EncoderConfig, UnetConfig
    topic = {o.key: o for o in cfg.obs}
    over = dict(cfg.policy)
    enc = EncoderConfig(**over.pop("encoder", {}))
    unet = over.pop("unet", {})
    if "down_dims" in unet:
        unet["down_dims"] = tuple(unet["down_dims"])
    return PolicyConfig(
        images=[ImageSpec(k, tuple(s), topic=topic[k].topic) for k, s in info["images"].items()],
        low_dims=[LowDimSpec(k, n, topic=topic[k].topic, names=list(topic[k].joint_names), layout=topic[k].layout)
                  for k, n in info["low_dims"].items()],
        action_dim=len(cfg.action_names), action_names=list(cfg.action_names), action_layout=cfg.action_layout,
        horizon=cfg.horizon,
        n_obs_steps=cfg.n_obs_steps, n_action_steps=cfg.n_action_steps, obs_interval_s=cfg.obs_interval_s,
        encoder=enc, unet=UnetConfig(**unet), **over)


def save_dataset(path: str | Path, arrays: dict, policy_cfg, info: dict) -> Path:
    """One .npz (arrays + the policy config + provenance), written to a temp name then renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial.npz")
    np.savez(tmp, **arrays, __config__=np.array(json.dumps(policy_cfg.to_dict())),
             __info__=np.array(json.dumps(info)))
    tmp.rename(path)
    return path


def load_dataset(path: str | Path):
    """(PolicyConfig, arrays) from a dp-dataset file."""
    from .model import PolicyConfig
    try:
        with np.load(path) as z:
            cfg = PolicyConfig.from_dict(json.loads(str(z["__config__"])))
            data = {k: z[k] for k in z.files if not k.startswith("__") and k != "episode"}
    except (OSError, KeyError, ValueError) as e:
        raise DpRuntimeError(f"dataset {path}: {e} (expected a dp-dataset .npz file)") from e
    return cfg, data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dp-dataset", description="Turn a demonstration bag into training arrays.")
    p.add_argument("bag", help="rosbag2 directory or .mcap/.db3 file with cameras, joint states and commands")
    p.add_argument("--config", required=True, help="dataset YAML (see config/sim_dataset.yaml)")
    p.add_argument("-o", "--out", required=True, help="output .npz")
    p.add_argument("--distro", default="kilted")
    args = p.parse_args(argv)
    cfg = DatasetConfig.load(args.config)
    arrays, info = bag_to_dataset(args.bag, cfg, args.distro)
    save_dataset(args.out, arrays, policy_config(cfg, info), info)
    print(f"{info['samples']} samples from {info['episodes']} episodes -> {args.out} "
          f"(skipped {info['skipped_messages']} messages)")
    return 0
