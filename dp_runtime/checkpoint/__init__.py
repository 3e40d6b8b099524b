"""Checkpoint loaders that return EMA weights + config (ours, diffusion_policy, robomimic, LeRobot)."""
from .formats import FORMATS, IMPORTERS, detect_format, load_any
from .native import Checkpoint, load_checkpoint, save_checkpoint

__all__ = ["Checkpoint", "FORMATS", "IMPORTERS", "detect_format", "load_any", "load_checkpoint", "save_checkpoint"]
