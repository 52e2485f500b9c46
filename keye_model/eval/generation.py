"""Generation with a local Keye model directory, from OpenAI-format chat messages.

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
- decoding is greedy at temperature 0 (the default). Above it, every row draws from
  ``softmax(logits / temperature)``, narrowed by ``top_k`` / ``top_p``, with its own
  ``torch.Generator`` seeded per request (``draw_tokens``, shared with the RL rollout), so a
  seeded answer does not depend on the requests batched with it. Per request it stops at
  ``<|im_end|>`` (unless ``ignore_eos``), at a ``stop`` string (cut from the text, as OpenAI
  does) or at the token budget, and decodes with or without special tokens
  (``skip_special_tokens``, default on, as SGLang). Stopping is decided row by row after every
  decoding step (``_Rows``), which also streams text deltas and lets a running batch be
  aborted (``keye serve local``'s ``/pause_generation``).
- ``load_weights`` swaps in another checkpoint of the same architecture between batches (no
  answer or KV cache outlives a batch, so nothing computed with the old weights is reused).
"""

from __future__ import annotations

import base64
import hashlib
import io
import tempfile
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
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
    finish_reason: str  # "stop" | "length" | "abort" (batch stopped by ``abort()``)


@dataclass(frozen=True)
class SamplingParams:
    """What one request asks of decoding; requests batch together only with equal ones (the
    seed is per row, not part of these)."""

    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()  # cut at the first occurrence; the stop string is not returned
    ignore_eos: bool = False  # keep generating past <|im_end|> up to the budget
    skip_special_tokens: bool = True  # SGLang's default; <think> tags are not special
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(
                f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}"
            )
        if not 0 <= self.temperature < float("inf"):
            raise ValueError(f"temperature must be >= 0, got {self.temperature!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be 0 (off) or a positive integer, got {self.top_k!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError(f"stop must hold non-empty strings, got {list(self.stop)!r}")


OnDelta = Callable[[str], None]


def draw_tokens(logits_BV, generators: Sequence[Any], temperature: float, top_k: int, top_p: float):
    """One token per row from ``softmax(logits / temperature)`` narrowed to the ``top_k`` most
    likely tokens and the ``top_p`` nucleus, row b drawing with ``generators[b]`` (so its draw
    does not depend on the other rows). The one sampler of the rollout and the local server."""
    import torch
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    draw_BV = logits_BV / temperature
    if top_k > 0:
        draw_BV = TopKLogitsWarper(top_k)(None, draw_BV)
    if top_p < 1.0:
        draw_BV = TopPLogitsWarper(top_p)(None, draw_BV)
    probs_BV = torch.softmax(draw_BV, dim=-1)
    return torch.stack(
        [torch.multinomial(probs_BV[b], 1, generator=g)[0] for b, g in enumerate(generators)]
    )


class _Draw:
    """A ``transformers`` logits processor that samples each row with its own generator and
    leaves only the drawn token finite, so ``generate``'s greedy step picks it."""

    def __init__(self, params: SamplingParams, seeds: Sequence[int]):
        import torch

        self.params = params
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]

    def __call__(self, input_ids, scores):
        import torch

        p = self.params
        tokens_B = draw_tokens(scores.float(), self.generators, p.temperature, p.top_k, p.top_p)
        chosen = torch.full_like(scores, float("-inf"))
        chosen[torch.arange(len(tokens_B)), tokens_B] = 0.0
        return chosen


def _remote_url(url: str) -> bool:
    return url.startswith(("http://", "https://"))


def _decode_data_url(url: str, where: str) -> bytes:
    if _remote_url(url):
        # Nothing is downloaded: the server may have no network, and fetching arbitrary URLs
        # on a client's behalf is not this server's job.
        raise ValueError(
            f"{where}: remote URL {url[:80]!r} cannot be fetched by keye serve local; send the "
            "media inline as a base64 data URL (data:image/png;base64,...) or as a file:// path"
        )
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


class _Rows:
    """Per-row stopping, streaming and abort, called by ``generate`` after every decoding step.

    A ``transformers`` stopping criterion: given the sequences so far it returns which rows are
    done. A row is done at a stop token (unless ``ignore_eos``), at a ``stop`` string, at the
    budget, or for every row when ``abort()`` turns true. Streaming rows get their new text as
    it forms; text that may still turn into a stop string, or an incomplete UTF-8 character
    (decoded as U+FFFD), is held back, so the deltas always add up to the final text.
    """

    def __init__(
        self,
        generator: LocalGenerator,
        params: SamplingParams,
        rows: int,
        on_delta: Sequence[OnDelta | None],
        abort: Callable[[], bool] | None,
    ):
        self.generator, self.params, self.abort = generator, params, abort
        self.on_delta = list(on_delta) if on_delta else [None] * rows
        self.ids: list[list[int]] = [[] for _ in range(rows)]
        self.reason: list[str | None] = [None] * rows
        self.sent = [""] * rows
        # A stop string can start this many characters before the end of the text seen so far.
        self.hold = max((len(s) for s in params.stop), default=1) - 1

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        stop_ids = () if self.params.ignore_eos else self.generator.stop_ids
        aborted = self.abort is not None and self.abort()
        for row, token in enumerate(input_ids[:, -1].tolist()):
            if self.reason[row] is not None:
                continue
            if token in stop_ids:
                self.reason[row] = "stop"
            else:
                self.ids[row].append(token)
                if self.params.stop or self.on_delta[row] is not None:
                    text, hit = self.generator.completion_text(self.ids[row], self.params)
                    if hit:
                        self.reason[row] = "stop"
                    else:
                        self._stream(row, text)
                if self.reason[row] is None and len(self.ids[row]) >= self.params.max_new_tokens:
                    self.reason[row] = "length"
            if self.reason[row] is None and aborted:
                self.reason[row] = "abort"
            if self.reason[row] is not None:
                self._stream(row, self.text(row), final=True)
        return torch.tensor([r is not None for r in self.reason], device=input_ids.device)

    def text(self, row: int) -> str:
        """The row's text as returned (stop string and everything after it cut)."""
        return self.generator.completion_text(self.ids[row], self.params)[0]

    def _stream(self, row: int, text: str, final: bool = False) -> None:
        on_delta = self.on_delta[row]
        if on_delta is None:
            return
        end = len(text)
        if not final:
            end -= self.hold
            while end > 0 and text[end - 1] == "\ufffd":
                end -= 1
        if end <= len(self.sent[row]):
            return
        if not text.startswith(
            self.sent[row]
        ):  # impossible for byte-level BPE; say so if it happens
            raise RuntimeError(f"streamed text {self.sent[row]!r} is not a prefix of {text!r}")
        delta = text[len(self.sent[row]) : end]
        self.sent[row] += delta
        on_delta(delta)


class LocalGenerator:
    """A model directory loaded on CPU, turning chat requests into completions."""

    def __init__(
        self,
        model_dir: str | Path,
        media_cache: str | Path | None = None,
        dtype: str = "float32",
        batching: str = "exact",
    ):
        if batching not in BATCHING_MODES:
            raise ValueError(f"batching must be one of {BATCHING_MODES}, got {batching!r}")
        self.batching = batching
        self.dtype = dtype

        from keye_model.processing import KeyeProcessor

        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").is_file():
            raise FileNotFoundError(f"model directory has no config.json: {self.model_dir}")
        self.processor = KeyeProcessor.from_pretrained(self.model_dir)
        self.model = self._load_model(self.model_dir)
        tok = self.processor.tokenizer
        self.stop_ids = {
            i for i in (tok.convert_tokens_to_ids(IM_END), tok.eos_token_id) if i is not None
        }
        self.pad_text = PAD
        # An owned temporary folder cleans itself up on close(), collection or interpreter exit.
        self._own_media = None if media_cache else tempfile.TemporaryDirectory(prefix="keye-media-")
        self.media_cache = Path(media_cache or self._own_media.name)
        self.media_cache.mkdir(parents=True, exist_ok=True)
        # One generation (or weight swap) at a time: torch already uses every core for one batch.
        self.lock = threading.Lock()

    def _load_model(self, model_dir: Path):
        """The model saved in ``model_dir``; ``ValueError`` if tensors are missing or misshaped."""
        import torch

        from keye_model.model import KeyeVLMoeForConditionalGeneration

        # from_pretrained fills missing tensors with fresh random values: a truncated
        # checkpoint would serve noise, so the loading report is checked.
        model, info = KeyeVLMoeForConditionalGeneration.from_pretrained(
            str(model_dir), dtype=getattr(torch, self.dtype), output_loading_info=True
        )
        bad = {k: sorted(info.get(k) or ()) for k in ("missing_keys", "mismatched_keys")}
        if any(bad.values()):
            raise ValueError(
                f"{model_dir}: incomplete checkpoint - "
                + "; ".join(
                    f"{k.replace('_', ' ')}: {len(v)}, e.g. {v[:3]}" for k, v in bad.items() if v
                )
            )
        return model.eval()

    def load_weights(self, model_dir: str | Path) -> str:
        """Replace the weights by another checkpoint of the same architecture; a summary line.

        The new model is loaded and checked (complete, same parameter names and shapes) before
        the swap, so a bad checkpoint raises ``ValueError`` and the old weights keep serving.
        The swap waits for the running batch; the processor and tokenizer stay.
        """
        path = Path(model_dir)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model_path has no config.json: {path}")
        new = self._load_model(path)
        old_shapes = {k: tuple(v.shape) for k, v in self.model.state_dict().items()}
        new_shapes = {k: tuple(v.shape) for k, v in new.state_dict().items()}
        if new_shapes != old_shapes:
            differ = sorted(
                k
                for k in old_shapes.keys() | new_shapes.keys()
                if old_shapes.get(k) != new_shapes.get(k)
            )
            raise ValueError(
                f"{path}: not the served architecture - {len(differ)} parameter(s) missing or "
                f"shaped differently, e.g. {differ[:3]}"
            )
        with self.lock:
            self.model, self.model_dir = new, path
        return f"loaded {len(new_shapes)} tensors from {path}"

    def close(self) -> None:
        """Remove the media folder if this generator created it."""
        if self._own_media is not None:
            self._own_media.cleanup()

    def clear_media(self) -> int:
        """Delete the videos written from data URLs (re-written on demand); how many."""
        removed = 0
        for path in self.media_cache.iterdir():
            if path.is_file():
                path.unlink(missing_ok=True)
                removed += 1
        return removed

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

    # ------------------------------------------------------------------ generation

    def completion_text(self, ids: Sequence[int], params: SamplingParams) -> tuple[str, bool]:
        """Text of generated ``ids`` per ``params``, cut before the first stop string; and whether one was hit."""
        text = self.processor.decode(
            list(ids), skip_special_tokens=params.skip_special_tokens
        ).replace(self.pad_text, "")
        cuts = [i for i in (text.find(s) for s in params.stop) if i >= 0]
        return (text[: min(cuts)], True) if cuts else (text, False)

    def _run_batch(
        self,
        encoded: list[dict[str, Any]],
        params: SamplingParams,
        on_delta: Sequence[OnDelta | None] | None = None,
        abort: Callable[[], bool] | None = None,
        seeds: Sequence[int] | None = None,
    ) -> list[Generation]:
        import torch
        from transformers import LogitsProcessorList, StoppingCriteriaList

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
        rows = _Rows(self, params, len(encoded), on_delta or [], abort)
        draw = []
        if params.temperature > 0:
            draw = [_Draw(params, seeds if seeds is not None else [0] * len(encoded))]
        with torch.inference_mode():
            # eos_token_id=None: stopping is _Rows' per-row decision (ignore_eos, stop strings),
            # not the checkpoint's generation_config.
            self.model.generate(
                **kwargs,
                max_new_tokens=params.max_new_tokens,
                do_sample=False,
                pad_token_id=pad_id,
                eos_token_id=None,
                logits_processor=LogitsProcessorList(draw),
                stopping_criteria=StoppingCriteriaList([rows]),
            )
        results = []
        for row, enc in enumerate(encoded):
            if rows.reason[row] is None:  # generate ended without _Rows seeing the last step
                rows.reason[row] = "length"
                rows._stream(row, rows.text(row), final=True)
            results.append(
                Generation(
                    rows.text(row), enc["input_ids"].shape[1], len(rows.ids[row]), rows.reason[row]
                )
            )
        return results

    def generate_encoded(
        self,
        encoded: Sequence[dict[str, Any]],
        params: SamplingParams,
        max_batch: int = 8,
        on_delta: Sequence[OnDelta | None] | None = None,
        abort: Callable[[], bool] | None = None,
        seeds: Sequence[int] | None = None,
    ) -> list[Generation]:
        """Completions of encoded requests, batched per ``self.batching``; ``abort()`` stops them.

        ``seeds`` (one per request, default 0) seed the draws when ``params.temperature`` > 0.
        """
        buckets: dict[tuple, list[int]] = defaultdict(list)
        for i, enc in enumerate(encoded):
            length = enc["input_ids"].shape[1] if self.batching == "exact" else 0
            # Rows with and without images/videos never share a batch (the vision inputs differ).
            buckets[(length, frozenset(enc))].append(i)
        deltas = list(on_delta) if on_delta else [None] * len(encoded)
        seeds = list(seeds) if seeds is not None else [0] * len(encoded)
        results: list[Generation | None] = [None] * len(encoded)
        with self.lock:
            for members in buckets.values():
                for start in range(0, len(members), max_batch):
                    chunk = members[start : start + max_batch]
                    gens = self._run_batch(
                        [encoded[i] for i in chunk],
                        params,
                        [deltas[i] for i in chunk],
                        abort,
                        [seeds[i] for i in chunk],
                    )
                    for i, gen in zip(chunk, gens):
                        results[i] = gen
        return [r for r in results if r is not None]

    def generate_many(
        self,
        requests: Sequence[Sequence[dict]],
        params: SamplingParams | int,
        max_batch: int = 8,
    ) -> list[Generation]:
        """Completions of several chat requests (``params`` or just a token budget)."""
        if isinstance(params, int):
            params = SamplingParams(max_new_tokens=params)
        return self.generate_encoded([self.encode(m) for m in requests], params, max_batch)
