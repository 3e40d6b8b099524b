"""Checkpoint importers as a registry: name, how to recognise its files, how to load its EMA weights.

A new format is one ``Importer`` entry; ``dp-export --format`` takes its choices
from here. Recognition never unpickles anything (pickle archives are read
opcode by opcode).
"""
from __future__ import annotations

import functools
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import CheckpointError
from . import diffusion_policy, lerobot, robomimic
from .native import Checkpoint, load_checkpoint
from .pickled import sniff_torch_pickle


def _head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(16)


@functools.lru_cache(maxsize=8)
def _pickle_strings(path: Path, mtime_ns: int) -> frozenset[str]:
    return frozenset(sniff_torch_pickle(path))


def _torch_zip_with(*keys: str) -> Callable[[Path], bool]:
    def sniff(path: Path) -> bool:
        if not path.is_file() or _head(path)[:4] != b"PK\x03\x04":
            return False
        return set(keys) <= _pickle_strings(path, path.stat().st_mtime_ns)
    return sniff


def _is_safetensors(path: Path) -> bool:
    if not path.is_file():
        return False
    head = _head(path)
    return len(head) >= 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < (1 << 27)


def _lerobot_load(path: Path, trust_pickle: bool, allow_non_ema: bool) -> Checkpoint:
    if not path.is_dir():
        raise CheckpointError(f"{path}: a LeRobot checkpoint is a pretrained_model/ directory")
    return lerobot.load(path, allow_non_ema=allow_non_ema)


@dataclass(frozen=True)
class Importer:
    name: str
    what: str  # what its checkpoints look like, for help and errors
    sniff: Callable[[Path], bool]
    load: Callable[[Path, bool, bool], Checkpoint]  # (path, trust_pickle, allow_non_ema)


IMPORTERS: dict[str, Importer] = {i.name: i for i in (
    Importer("dp_runtime", "dp_runtime .safetensors (dp-train)", _is_safetensors,
             lambda p, trust, non_ema: load_checkpoint(p, allow_non_ema=non_ema)),
    Importer("diffusion_policy", "diffusion_policy workspace .ckpt (cfg, state_dicts)",
             _torch_zip_with("state_dicts", "cfg"), diffusion_policy.load),
    Importer("robomimic", "robomimic .pth (model, config, shape_metadata)",
             _torch_zip_with("shape_metadata", "model", "config"), robomimic.load),
    Importer("lerobot", "LeRobot pretrained_model/ directory (config.json, model.safetensors)",
             lerobot.is_lerobot_dir, _lerobot_load),
)}
FORMATS = tuple(IMPORTERS)


def detect_format(path: str | Path) -> str:
    """Tell the format from the content; a CheckpointError says what was found instead."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_file() and len(_head(path)) < 8:
        raise CheckpointError(f"{path}: {len(_head(path))} bytes, too short for any checkpoint format (truncated?)")
    for importer in IMPORTERS.values():
        if importer.sniff(path):
            return importer.name
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory without config.json; expected a LeRobot pretrained_model/")
    if _head(path)[:4] == b"PK\x03\x04":
        raise CheckpointError(f"{path}: a torch checkpoint, but neither a diffusion_policy workspace checkpoint "
                              "(cfg, state_dicts) nor a robomimic one (model, config, shape_metadata); pass --format")
    raise CheckpointError(f"{path}: unknown checkpoint format (not safetensors, not a torch zip archive); "
                          f"pass --format, one of {FORMATS}")


def load_any(path: str | Path, format: str | None = None, trust_pickle: bool = False,
             allow_non_ema: bool = False) -> Checkpoint:
    """Load the EMA weights of a checkpoint in any registered format (``format`` overrides detection)."""
    path = Path(path)
    if path.name == "model.safetensors" and lerobot.is_lerobot_dir(path.parent):
        path = path.parent  # the weights file of a LeRobot directory: its config and stats sit beside it
    fmt = format or detect_format(path)
    if fmt not in IMPORTERS:
        raise CheckpointError(f"unknown --format {fmt!r}; expected one of {FORMATS}")
    return IMPORTERS[fmt].load(path, trust_pickle, allow_non_ema)
