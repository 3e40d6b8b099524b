"""Policy network, observation encoder, normalizer and the running-statistics guard."""
from .config import EncoderConfig, ImageSpec, LowDimSpec, PolicyConfig, UnetConfig, default_scheduler_config
from .encoder import ResNet18GN
from .norms import (assert_no_running_stats, assert_state_dict_clean, norm_inventory, replace_bn_with_gn,
                    running_stats_keys, running_stats_layers)
from .normalizer import Normalizer, minmax_stats
from .policy import DiffusionPolicy
from .unet import ConditionalUnet1D

__all__ = [
    "ConditionalUnet1D", "DiffusionPolicy", "EncoderConfig", "ImageSpec", "LowDimSpec", "Normalizer",
    "PolicyConfig", "ResNet18GN", "UnetConfig", "assert_no_running_stats", "assert_state_dict_clean",
    "default_scheduler_config", "minmax_stats", "norm_inventory", "replace_bn_with_gn",
    "running_stats_keys", "running_stats_layers",
]
