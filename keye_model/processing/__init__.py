"""Keye input processing: image/video preprocessing, chat format, tokenizer, processor.

Import-light: names resolve lazily, so ``import keye_model.processing`` pulls in neither torch
nor transformers until a processor or tokenizer is used.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "smart_resize": "keye_model.processing.image",
    "image_token_count": "keye_model.processing.image",
    "KeyeImageProcessor": "keye_model.processing.image",
    "KeyeVideoProcessor": "keye_model.processing.video",
    "KeyeProcessor": "keye_model.processing.processor",
    "build_tiny_tokenizer": "keye_model.processing.tokenizer",
    "load_tokenizer": "keye_model.processing.tokenizer",
    "apply_chat_template": "keye_model.processing.chat",
    "parse_thinking": "keye_model.processing.chat",
    "CHAT_TEMPLATE": "keye_model.processing.chat",
    "DEFAULT_SYSTEM_PROMPT": "keye_model.processing.chat",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'keye_model.processing' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
