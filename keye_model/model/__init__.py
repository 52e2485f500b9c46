"""The Keye-VL model: configs, KeyeViT, the mlp_AR projector and the composite LM.

Names load lazily (``keye init --help`` needs none of them). Loading any of them imports
``keye_model.model.keye``, which registers the Keye classes with transformers' Auto classes.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "KeyeVisionConfig",
    "KeyeVLMoeConfig",
    "KeyeVLMoeForConditionalGeneration",
    "KeyeVisionModel",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from keye_model.model import keye

        return getattr(keye, name)
    raise AttributeError(f"module 'keye_model.model' has no attribute {name!r}")
