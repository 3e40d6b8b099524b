"""Checkpoint loaders that return EMA weights + config (ours, diffusion_policy, robomimic, LeRobot)."""
from .native import Checkpoint, load_checkpoint, save_checkpoint, sha256_file
from .ema import load_ema_state
from .formats import FORMATS, detect_format, load_any

__all__ = ["Checkpoint", "FORMATS", "detect_format", "load_any", "load_checkpoint", "save_checkpoint",
           "load_ema_state", "sha256_file"]
