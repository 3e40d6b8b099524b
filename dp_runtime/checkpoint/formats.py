"""Which checkpoint format a path holds, told from its content, and the loader for it."""
from __future__ import annotations

import struct
from pathlib import Path

from ..errors import CheckpointError
from . import diffusion_policy, lerobot, robomimic
from .native import Checkpoint, load_checkpoint
from .pickled import sniff_torch_pickle

FORMATS = ("dp_runtime", "diffusion_policy", "robomimic", "lerobot")


def detect_format(path: str | Path) -> str:
    """Tell the format without unpickling anything (pickle archives are read opcode by opcode)."""
    path = Path(path)
    if path.is_dir():
        if lerobot.is_lerobot_dir(path):
            return "lerobot"
        raise CheckpointError(f"{path} is a directory without config.json; expected a LeRobot pretrained_model/")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) < 8:
        raise CheckpointError(f"{path}: {len(head)} bytes, too short for any checkpoint format (truncated?)")
    if head[:4] == b"PK\x03\x04":
        strings = sniff_torch_pickle(path)
        if {"state_dicts", "cfg"} <= strings:
            return "diffusion_policy"
        if {"shape_metadata", "model", "config"} <= strings:
            return "robomimic"
        raise CheckpointError(f"{path}: a torch checkpoint, but neither a diffusion_policy workspace checkpoint "
                              "(cfg, state_dicts) nor a robomimic one (model, config, shape_metadata); pass --format")
    header_len = struct.unpack("<Q", head[:8])[0]
    if head[8:9] == b"{" and header_len < (1 << 27):
        return "dp_runtime"
    raise CheckpointError(f"{path}: unknown checkpoint format (not safetensors, not a torch zip archive); "
                          f"pass --format, one of {FORMATS}")


def load_any(path: str | Path, format: str | None = None, trust_pickle: bool = False,
             allow_non_ema: bool = False) -> Checkpoint:
    """Load the EMA weights of a checkpoint in any supported format (``format`` overrides detection)."""
    path = Path(path)
    if path.name == "model.safetensors" and lerobot.is_lerobot_dir(path.parent):
        path = path.parent  # the weights file of a LeRobot directory: its config and stats sit beside it
    fmt = format or detect_format(path)
    if fmt == "dp_runtime":
        return load_checkpoint(path, allow_non_ema=allow_non_ema)
    if fmt == "diffusion_policy":
        return diffusion_policy.load(path, trust_pickle=trust_pickle, allow_non_ema=allow_non_ema)
    if fmt == "robomimic":
        return robomimic.load(path, trust_pickle=trust_pickle, allow_non_ema=allow_non_ema)
    if fmt == "lerobot":
        if not path.is_dir():
            raise CheckpointError(f"{path}: a LeRobot checkpoint is a pretrained_model/ directory")
        return lerobot.load(path, allow_non_ema=allow_non_ema)
    raise CheckpointError(f"unknown --format {fmt!r}; expected one of {FORMATS}")
