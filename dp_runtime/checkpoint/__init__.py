"""Checkpoint loaders that return EMA weights + config."""
from .native import Checkpoint, load_checkpoint, save_checkpoint, sha256_file
from .ema import load_ema_state

__all__ = ["Checkpoint", "load_checkpoint", "save_checkpoint", "load_ema_state", "sha256_file"]
