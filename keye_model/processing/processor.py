"""``KeyeProcessor``: chat text + images + videos -> model inputs with exactly expanded placeholders.

Each ``<|image_pad|>`` in the (chat-templated) text stands for one image, in order across the
whole batch; it is expanded to ``t*h*w/merge^2`` copies, the number of projector outputs the
model splices into those positions (REFERENCE §1.3). Each ``<|video_pad|>`` stands for one video
and becomes, per sampled frame, ``<|frame|>`` + its time ("1.5 seconds") + either
``<|video_pad|>`` x n (slow frame) or ``<|fast_start|><|fast_video_pad|> x n<|fast_end|>`` (fast
frame). The model fills video pads of both kinds in sequence order with the frames' features in
``video_grid_thw`` row order.

Expansion happens on token ids, not strings, so a 16k-token image never becomes a 200 kB string.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from keye_model.processing.chat import DEFAULT_SYSTEM_PROMPT
from keye_model.processing.chat import apply_chat_template as render_chat
from keye_model.processing.image import KeyeImageProcessor
from keye_model.processing.tokens import (
    FAST_END,
    FAST_START,
    FAST_VIDEO_PAD,
    FRAME,
    IMAGE_PAD,
    VIDEO_PAD,
    VISION_END,
    VISION_START,
)
from keye_model.processing.video import KeyeVideoProcessor

PROCESSOR_CONFIG = "processor_config.json"


def frame_time_text(seconds: float) -> str:
    """Timestamp text written after ``<|frame|>`` (one decimal, e.g. "1.5 seconds")."""
    return f"{seconds:.1f} seconds"


class KeyeProcessor:
    """Tokenizer + image and video processors behind one call, as the model consumes them."""

    def __init__(
        self,
        tokenizer: Any,
        image_processor: KeyeImageProcessor | None = None,
        video_processor: KeyeVideoProcessor | None = None,
        padding_side: str = "left",
    ):
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        self.tokenizer = tokenizer
        self.image_processor = image_processor or KeyeImageProcessor()
        self.video_processor = video_processor or KeyeVideoProcessor()
        self.padding_side = padding_side
        ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in _VISION_TOKENS}
        unknown = [tok for tok, i in ids.items() if i is None or i == tokenizer.unk_token_id]
        if unknown:
            raise ValueError(f"tokenizer lacks the vision tokens {unknown}")
        self.token_ids = ids
        self.image_token_id = ids[IMAGE_PAD]
        self.video_token_id = ids[VIDEO_PAD]
        self.fast_video_token_id = ids[FAST_VIDEO_PAD]
        self.vision_start_token_id = ids[VISION_START]
        self.vision_end_token_id = ids[VISION_END]
        self.frame_token_id = ids[FRAME]

    # ------------------------------------------------------------------ text

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        thinking: str = "auto",
        system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    ) -> str:
        """ChatML prompt with single vision placeholders (see ``keye_model.processing.chat``)."""
        return render_chat(messages, add_generation_prompt, thinking, system_prompt)

    def batch_decode(self, sequences: Any, **kwargs: Any) -> list[str]:
        """Tokenizer ``batch_decode`` passthrough."""
        return self.tokenizer.batch_decode(sequences, **kwargs)

    def decode(self, sequence: Any, **kwargs: Any) -> str:
        """Tokenizer ``decode`` passthrough."""
        return self.tokenizer.decode(sequence, **kwargs)

    # ------------------------------------------------------------------ call

    def _frame_run(self, seconds: float, fast: bool, tokens: int) -> list[int]:
        ids = [
            self.frame_token_id,
            *self.tokenizer.encode(frame_time_text(seconds), add_special_tokens=False),
        ]
        if fast:
            return [
                *ids,
                self.token_ids[FAST_START],
                *[self.fast_video_token_id] * tokens,
                self.token_ids[FAST_END],
            ]
        return [*ids, *[self.video_token_id] * tokens]

    def __call__(
        self,
        text: str | Sequence[str],
        images: Sequence[Any] | None = None,
        videos: Sequence[Any] | None = None,
        return_tensors: str | None = "pt",
        padding: bool = True,
        padding_side: str | None = None,
    ) -> Any:
        """``input_ids``/``attention_mask`` with expanded pads, plus pixel values and grids."""
        import torch
        from transformers import BatchFeature

        texts = [text] if isinstance(text, str) else list(text)
        if not texts:
            raise ValueError("text is empty")
        side = padding_side or self.padding_side
        if side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
        # Per-sample nested lists (HF style) are flattened: images pair with pads in text order.
        images = [
            img
            for item in (images or [])
            for img in (item if isinstance(item, (list, tuple)) else [item])
        ]
        videos = list(videos) if videos is not None else []
        token_ids = [self.tokenizer.encode(t, add_special_tokens=False) for t in texts]
        n_image_pads = sum(ids.count(self.image_token_id) for ids in token_ids)
        n_video_pads = sum(ids.count(self.video_token_id) for ids in token_ids)
        # Counts are checked before any pixel work so a bad request fails fast.
        if n_image_pads != len(images):
            raise ValueError(
                f"text has {n_image_pads} {IMAGE_PAD} placeholders but {len(images)} images were given"
            )
        if n_video_pads != len(videos):
            raise ValueError(
                f"text has {n_video_pads} {VIDEO_PAD} placeholders but {len(videos)} videos were given"
            )
        if n_image_pads and n_image_pads != sum(t.count(IMAGE_PAD) for t in texts):
            raise ValueError(
                f"{IMAGE_PAD} must appear in text as the exact token, not inside other text"
            )

        data: dict[str, Any] = {}
        image_runs: list[int] = []
        if images:
            out = self.image_processor(images)
            data.update(out)
            image_runs = [
                self.image_processor.num_tokens(g) for g in out["image_grid_thw"].tolist()
            ]
        video_runs: list[list[int]] = []
        if videos:
            out = self.video_processor(videos)
            data.update(out)
            frame_grids = out["video_grid_thw"].tolist()
            fast = out["video_frame_is_fast"].tolist()
            times = out["video_timestamps"].tolist()
            start = 0
            for count in out["video_num_frames"].tolist():
                run: list[int] = []
                for f in range(start, start + count):
                    run += self._frame_run(
                        times[f], fast[f], self.video_processor.num_tokens(frame_grids[f])
                    )
                video_runs.append(run)
                start += count

        image_iter, video_iter = iter(image_runs), iter(video_runs)
        expanded: list[list[int]] = []
        for ids in token_ids:
            seq: list[int] = []
            for tid in ids:
                if tid == self.image_token_id:
                    seq += [self.image_token_id] * next(image_iter)
                elif tid == self.video_token_id:
                    seq += next(video_iter)
                else:
                    seq.append(tid)
            expanded.append(seq)

        longest = max(len(s) for s in expanded)
        if not padding and return_tensors == "pt" and any(len(s) != longest for s in expanded):
            raise ValueError("sequences differ in length; pass padding=True to return tensors")
        pad_id = self.tokenizer.pad_token_id
        input_ids, attention = [], []
        for seq in expanded:
            gap = longest - len(seq) if padding else 0
            pads, mask = [pad_id] * gap, [1] * len(seq)
            if side == "left":
                input_ids.append(pads + seq)
                attention.append([0] * gap + mask)
            else:
                input_ids.append(seq + pads)
                attention.append(mask + [0] * gap)
        if return_tensors == "pt":
            data["input_ids"] = torch.tensor(input_ids, dtype=torch.long)
            data["attention_mask"] = torch.tensor(attention, dtype=torch.long)
        elif return_tensors is None:
            data["input_ids"], data["attention_mask"] = input_ids, attention
        else:
            raise ValueError(f"return_tensors must be 'pt' or None, got {return_tensors!r}")
        return BatchFeature(data=data)

    # ------------------------------------------------------------------ persistence

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write tokenizer, image/video processor settings and ``processor_config.json``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(str(directory))
        self.image_processor.save_pretrained(directory)
        self.video_processor.save_pretrained(directory)
        config = {"processor_class": "KeyeProcessor", "padding_side": self.padding_side}
        (directory / PROCESSOR_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> KeyeProcessor:
        """Load what ``save_pretrained`` wrote (or any model dir holding a tokenizer)."""
        from keye_model.processing.tokenizer import load_tokenizer

        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"processor directory not found: {directory}")
        config_path = directory / PROCESSOR_CONFIG
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        return cls(
            load_tokenizer(directory),
            KeyeImageProcessor.from_pretrained(directory),
            KeyeVideoProcessor.from_pretrained(directory),
            padding_side=config.get("padding_side", "left"),
        )


_VISION_TOKENS = (
    IMAGE_PAD,
    VIDEO_PAD,
    FAST_VIDEO_PAD,
    VISION_START,
    VISION_END,
    FRAME,
    FAST_START,
    FAST_END,
)
