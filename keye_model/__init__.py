"""keye: the Keye-VL-671B-A37B recipe as a library (model, processing, data, train, eval, serve).

The model classes load lazily so that light entry points (``keye --help``, the S3 fetch init
container inside the SGLang image, which ships an older transformers) never import torch or
transformers. ``from keye_model import KeyeVLMoeForConditionalGeneration`` (or importing
``keye_model.model``) loads them and registers the Keye model with transformers' Auto classes,
after which ``AutoModelForImageTextToText.from_pretrained(path)`` loads checkpoints written by
``keye init``.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
_MODEL_EXPORTS = (
    "KeyeVisionConfig",
    "KeyeVisionModel",
    "KeyeVLMoeConfig",
    "KeyeVLMoeForConditionalGeneration",
)
__all__ = list(_MODEL_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _MODEL_EXPORTS:
        from keye_model import model

        return getattr(model, name)
    raise AttributeError(f"module 'keye_model' has no attribute {name!r}")
