"""Flax linen modules of BLIP: ViT, the BERT-style text transformer and the MED model."""

from blip_jax.models.blip import Blip, abstract_params, init_params, l2_normalize
from blip_jax.models.config import BlipConfig, ConfigError, TextConfig, VisionConfig, preset

__all__ = ["Blip", "BlipConfig", "ConfigError", "TextConfig", "VisionConfig", "abstract_params",
           "init_params", "l2_normalize", "preset"]
