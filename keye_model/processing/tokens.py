"""Special tokens of the Keye chat and vision format (REFERENCE §1.3, §1.5).

The tiny tokenizer puts these at ids 0..len-1 in this order, so the tiny model config and the
tokenizer agree by construction. Real models read the ids from their config fields
(``image_token_id``, ``video_token_id``, ...).
"""

from __future__ import annotations

PAD = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
FAST_VIDEO_PAD = "<|fast_video_pad|>"
FRAME = "<|frame|>"
FAST_START = "<|fast_start|>"
FAST_END = "<|fast_end|>"
THINK_START = "<think>"
THINK_END = "</think>"

SPECIAL_TOKENS: tuple[str, ...] = (
    PAD,
    IM_START,
    IM_END,
    VISION_START,
    VISION_END,
    IMAGE_PAD,
    VIDEO_PAD,
    FAST_VIDEO_PAD,
    FRAME,
    FAST_START,
    FAST_END,
    THINK_START,
    THINK_END,
)


def tiny_token_id(token: str) -> int:
    """Id of a special token in the tiny tokenizer (its position in SPECIAL_TOKENS)."""
    return SPECIAL_TOKENS.index(token)
