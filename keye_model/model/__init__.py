"""The Keye-VL model: configs, KeyeViT, the mlp_AR projector and the composite LM."""

from keye_model.model.configuration import KeyeVisionConfig, KeyeVLMoeConfig
from keye_model.model.keye import KeyeVLMoeForConditionalGeneration
from keye_model.model.vision import KeyeVisionModel

__all__ = [
    "KeyeVisionConfig",
    "KeyeVLMoeConfig",
    "KeyeVLMoeForConditionalGeneration",
    "KeyeVisionModel",
]


def _register_auto_classes() -> None:
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
    )

    AutoConfig.register(KeyeVisionConfig.model_type, KeyeVisionConfig, exist_ok=True)
    AutoConfig.register(KeyeVLMoeConfig.model_type, KeyeVLMoeConfig, exist_ok=True)
    AutoModel.register(KeyeVisionConfig, KeyeVisionModel, exist_ok=True)
    AutoModelForImageTextToText.register(
        KeyeVLMoeConfig, KeyeVLMoeForConditionalGeneration, exist_ok=True
    )
    AutoModelForCausalLM.register(KeyeVLMoeConfig, KeyeVLMoeForConditionalGeneration, exist_ok=True)


_register_auto_classes()
