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
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .control import ObservationBuffer
from .errors import ConfigError, DpRuntimeError, StaleInputError
from .ros import convert
from .ros.commands import RECORDED_COMMAND_TYPES, command_to_vector


@dataclass
class DatasetObs:
    key: str
    topic: str
    type: str  # image | compressed_image | joint_state
    joint_names: list[str] = field(default_factory=list)
    field: str = "position"
    shape: list[int] | None = None  # images: (H, W, C) to resize to; default: as recorded


DATASET_OBS_TYPES = ("image", "compressed_image", "joint_state")


@dataclass
class DatasetConfig:
    command_topic: str
    action_names: list[str]
    obs: list[DatasetObs]
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
        return out


def bag_to_dataset(bag_path: str | Path, cfg: DatasetConfig, distro: str = "kilted") -> tuple[dict, dict]:
    """Returns (arrays, info): arrays per obs key ``(N, To, ...)``, ``action (N, horizon, A)``, ``episode (N,)``."""
    from .replay.bag import Bag
    with Bag(bag_path, distro) as bag:
        for o in cfg.obs:
            bag.require(o.topic, (convert.OBS_MESSAGE_TYPES[o.type],), f"dataset observation {o.key!r}")
        bag.require(cfg.command_topic, RECORDED_COMMAND_TYPES, "dataset commands")
        by_topic = {o.topic: o for o in cfg.obs}
        shapes: dict[str, tuple] = {}
        samples: list[tuple[float, str, Any]] = []  # (time, key|"__command__", value) in bag order
        skipped = 0
        for raw in bag.messages(set(by_topic) | {cfg.command_topic}):
            msg = bag.deserialize(raw)
            if msg is None:
                skipped += 1
                continue
            try:
                if raw.topic == cfg.command_topic:
                    samples.append((raw.time, "__command__",
                                    command_to_vector(msg, raw.msgtype, cfg.action_names, raw.topic)))
                    continue
                o = by_topic[raw.topic]
                if o.type != "joint_state" and o.key not in shapes:  # the first frame fixes the size
                    shapes[o.key] = (tuple(o.shape) if o.shape else
                                     (int(msg.height), int(msg.width), 3) if o.type == "image" else _decode_size(msg))
                stamp, value = convert.ObsReader(o.type, raw.topic, shapes.get(o.key), bool(o.shape), o.joint_names,
                                                 o.field)(msg, received=raw.time)
                samples.append((raw.time, o.key, (stamp, value)))
            except DpRuntimeError:
                skipped += 1
        problems = {"truncated": bag.problems.truncated, "corrupt": len(bag.problems.corrupt)}
    images = {o.key: shapes[o.key] for o in cfg.obs if o.type != "joint_state" and o.key in shapes}
    low_dims = {o.key: len(o.joint_names) for o in cfg.obs if o.type == "joint_state"}
    missing = [o.key for o in cfg.obs if o.type != "joint_state" and o.key not in images]
    if missing:
        raise DpRuntimeError(f"bag {bag_path}: no usable messages for {missing}")
    buffer = ObservationBuffer(images, low_dims, cfg.n_obs_steps, cfg.obs_interval_s, max_obs_age=1.0,
                               capacity=256)
    histories, commands, times = [], [], []
    for t, key, value in samples:
        if key == "__command__":
            try:
                histories.append(buffer.assemble(t).history)
            except StaleInputError:
                histories.append(None)  # no observation yet: its action still belongs to the chunks
            commands.append(value)
            times.append(t)
        else:
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
        low_dims=[LowDimSpec(k, n, topic=topic[k].topic, names=list(topic[k].joint_names))
                  for k, n in info["low_dims"].items()],
        action_dim=len(cfg.action_names), action_names=list(cfg.action_names), horizon=cfg.horizon,
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
