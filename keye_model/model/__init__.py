"""The Keye-VL model: configs, KeyeViT, the mlp_AR projector and the composite LM."""

from keye_model.model.configuration import KeyeVisionConfig, KeyeVLMoeConfig
from keye_model.model.keye import KeyeVLMoeForConditionalGeneration
from keye_model.model.vision import KeyeVisionModel

__all__ = ["KeyeVisionConfig", "KeyeVLMoeConfig", "KeyeVLMoeForConditionalGeneration", "KeyeVisionModel"]
