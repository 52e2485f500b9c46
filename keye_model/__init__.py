"""keye: the Keye-VL-671B-A37B recipe as a library (model, processing, data, train, eval, serve).

Importing the package registers the Keye model with transformers' Auto classes, so
``AutoModelForImageTextToText.from_pretrained(path)`` loads a checkpoint written by ``keye init``.
"""

from keye_model.model import (
    KeyeVisionConfig,
    KeyeVisionModel,
    KeyeVLMoeConfig,
    KeyeVLMoeForConditionalGeneration,
)

__all__ = [
    "KeyeVisionConfig",
    "KeyeVisionModel",
    "KeyeVLMoeConfig",
    "KeyeVLMoeForConditionalGeneration",
]
__version__ = "0.1.0"
