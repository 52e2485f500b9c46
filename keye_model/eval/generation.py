"""Greedy generation with a local Keye model directory, from OpenAI-format chat messages.

One code path for both the in-process evaluation backend and ``keye serve local``, so the two
give the same predictions for the same request:

- ``image_url`` parts (``data:`` base64 or ``file://`` URLs) become processor images; ``video_url``
  parts become video files the processor samples (``file://`` URLs are read in place; data URLs
  are written once to a media folder, by default a temporary one removed by ``close()`` or when
  the generator is collected);
- the user text already carries its thinking suffix, so the chat template adds none (``auto``);
- batching is ``exact`` (default) or ``padded``. ``exact`` batches a request only with
  requests whose prompts have the same token length, so no padding enters and its output can
  never depend on its neighbours. ``padded`` left-pads any requests into one batch (the model
  keeps the positions of left-padded rows unchanged), which batches far more under concurrency;
  its answers equal unbatched ones up to floating-point ties between top logits;
- decoding is greedy (``do_sample=False``) and stops at ``<|im_end|>`` or the token budget.
"""

from __future__ import annotations

import base64
import hashlib
import io
import tempfile
import threading
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from keye_model.processing.tokens import IM_END, PAD


@dataclass
class Generation:
    """One finished completion: text, token counts and why it stopped."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" | "length"


def _decode_data_url(url: str, where: str) -> bytes:
    header, _, payload = url.partition(",")
    if not header.startswith("data:") or ";base64" not in header:
        raise ValueError(f"{where}: only base64 data URLs are supported, got {header[:40]!r}")
    try:
        return base64.b64decode(payload, validate=False)
    except ValueError as err:
        raise ValueError(f"{where}: invalid base64 payload") from err


def _file_url_path(url: str, where: str) -> Path:
    path = Path(unquote(urlparse(url).path))
    if not path.is_file():
        raise FileNotFoundError(f"{where}: file not found: {path}")
    return path


def _part_url(part: dict, key: str, where: str) -> str:
    value = part.get(key)
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str) or not url:
        raise ValueError(f"{where}: {key} part without a url")
    return url


BATCHING_MODES = ("exact", "padded")


class LocalGenerator:
    """A model directory loaded on CPU, turning chat requests into greedy completions."""

    def __init__(
        self,
        model_dir: str | Path,
        media_cache: str | Path | None = None,
        dtype: str = "float32",
        batching: str = "exact",
    ):
        import torch

        if batching not in BATCHING_MODES:
            raise ValueError(f"batching must be one of {BATCHING_MODES}, got {batching!r}")
        self.batching = batching

        from keye_model.model import KeyeVLMoeForConditionalGeneration
        from keye_model.processing import KeyeProcessor

        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").is_file():
            raise FileNotFoundError(f"model directory has no config.json: {self.model_dir}")
        self.processor = KeyeProcessor.from_pretrained(self.model_dir)
        self.model = KeyeVLMoeForConditionalGeneration.from_pretrained(
            str(self.model_dir), dtype=getattr(torch, dtype)
        ).eval()
        tok = self.processor.tokenizer
        self.stop_ids = {
            i for i in (tok.convert_tokens_to_ids(IM_END), tok.eos_token_id) if i is not None
        }
        self.pad_text = PAD
        # An owned temporary folder cleans itself up on close(), collection or interpreter exit.
        self._own_media = None if media_cache else tempfile.TemporaryDirectory(prefix="keye-media-")
        self.media_cache = Path(media_cache or self._own_media.name)
        self.media_cache.mkdir(parents=True, exist_ok=True)
        # One generation at a time: torch already uses every core for one batch.
        self.lock = threading.Lock()

    def close(self) -> None:
        """Remove the media folder if this generator created it."""
        if self._own_media is not None:
            self._own_media.cleanup()

    # ------------------------------------------------------------------ requests -> inputs

    def _video_file(self, url: str, where: str) -> Path:
        if url.startswith("file://"):
            return _file_url_path(url, where)
        data = _decode_data_url(url, where)
        mime = url[5 : url.index(";")]
        ext = {"video/webm": ".webm", "video/x-matroska": ".mkv"}.get(mime, ".mp4")
        path = self.media_cache / f"{hashlib.sha256(data).hexdigest()[:24]}{ext}"
        if not path.exists():
            tmp = path.with_suffix(path.suffix + ".tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        return path

    def prepare(self, messages: Sequence[dict]) -> tuple[str, list[Any], list[Path]]:
        """Prompt text, images and videos of one OpenAI chat request (clear errors on bad parts)."""
        from PIL import Image

        if not isinstance(messages, Sequence) or not messages:
            raise ValueError("messages must be a non-empty list")
        converted, images, videos = [], [], []
        for m_index, message in enumerate(messages):
            if not isinstance(message, dict) or "role" not in message:
                raise ValueError(f"messages[{m_index}] must be an object with a role")
            content = message.get("content")
            if isinstance(content, str) or content is None:
                converted.append({"role": message["role"], "content": content or ""})
                continue
            parts = []
            for p_index, part in enumerate(content):
                where = f"messages[{m_index}].content[{p_index}]"
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text":
                    parts.append({"type": "text", "text": str(part.get("text", ""))})
                elif kind == "image_url":
                    url = _part_url(part, "image_url", where)
                    raw = (
                        _file_url_path(url, where).read_bytes()
                        if url.startswith("file://")
                        else _decode_data_url(url, where)
                    )
                    try:
                        images.append(Image.open(io.BytesIO(raw)).convert("RGB"))
                    except Exception as err:  # PIL raises several types for undecodable bytes
                        raise ValueError(f"{where}: cannot decode image: {err}") from err
                    parts.append({"type": "image"})
                elif kind == "video_url":
                    videos.append(self._video_file(_part_url(part, "video_url", where), where))
                    parts.append({"type": "video"})
                else:
                    raise ValueError(
                        f"{where}: unsupported content part type {kind!r} (text, image_url, video_url)"
                    )
            converted.append({"role": message["role"], "content": parts})
        text = self.processor.apply_chat_template(
            converted, add_generation_prompt=True, thinking="auto"
        )
        return text, images, videos

    # ------------------------------------------------------------------ generation

    def _trim(self, ids: list[int]) -> tuple[list[int], str]:
        for pos, tid in enumerate(ids):
            if tid in self.stop_ids:
                return ids[:pos], "stop"
        return ids, "length"

    # Processor outputs the model takes; the vision ones are concatenated over images/frames.
    _MODEL_INPUTS = (
        "input_ids",
        "attention_mask",
        "pixel_values",
        "image_grid_thw",
        "pixel_values_videos",
        "video_grid_thw",
    )

    def encode(self, messages: Sequence[dict]) -> dict[str, Any]:
        """Model inputs of one chat request (batch of one, no padding)."""
        text, images, videos = self.prepare(messages)
        inputs = self.processor(text, images=images or None, videos=videos or None)
        return {k: inputs[k] for k in self._MODEL_INPUTS if k in inputs}

    def _run_batch(self, encoded: list[dict[str, Any]], max_new_tokens: int) -> list[Generation]:
        import torch

        # Rows are left-padded to the longest prompt (a no-op for equal lengths, the exact
        # mode); vision tensors are concatenated over images/frames, as the processor does.
        longest = max(e["input_ids"].shape[1] for e in encoded)
        pad_id = self.processor.tokenizer.pad_token_id
        kwargs = {}
        for key in encoded[0]:
            parts = [e[key] for e in encoded]
            if key in ("input_ids", "attention_mask"):
                fill = pad_id if key == "input_ids" else 0
                parts = [
                    torch.nn.functional.pad(t, (longest - t.shape[1], 0), value=fill) for t in parts
                ]
            kwargs[key] = torch.cat(parts, dim=0)
        prompt_len = kwargs["input_ids"].shape[1]
        with torch.inference_mode():
            out = self.model.generate(
                **kwargs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=self.processor.tokenizer.pad_token_id,
                eos_token_id=sorted(self.stop_ids),
            )
        results = []
        for enc, row in zip(encoded, out[:, prompt_len:].tolist()):
            ids, reason = self._trim(row)
            text = self.processor.decode(ids, skip_special_tokens=False).replace(self.pad_text, "")
            results.append(Generation(text, enc["input_ids"].shape[1], len(ids), reason))
        return results

    def generate_many(
        self, requests: Sequence[Sequence[dict]], max_new_tokens: int, max_batch: int = 8
    ) -> list[Generation]:
        """Completions of several chat requests, batched per ``self.batching``."""
        encoded = [self.encode(messages) for messages in requests]
        buckets: dict[tuple, list[int]] = defaultdict(list)
        for i, enc in enumerate(encoded):
            length = enc["input_ids"].shape[1] if self.batching == "exact" else 0
            # Rows with and without images/videos never share a batch (the vision inputs differ).
            buckets[(length, frozenset(enc))].append(i)
        results: list[Generation | None] = [None] * len(encoded)
        with self.lock:
            for members in buckets.values():
                for start in range(0, len(members), max_batch):
                    chunk = members[start : start + max_batch]
                    for i, gen in zip(
                        chunk, self._run_batch([encoded[i] for i in chunk], max_new_tokens)
                    ):
                        results[i] = gen
        return [r for r in results if r is not None]
