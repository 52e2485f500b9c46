"""Per-sample curation operators, each a small callable returning a rejection or None.

An operator takes a ``Sample`` and returns ``None`` (keep) or a ``Rejection`` (a stable reason
code plus a human detail). ``build_filters`` turns the configured names into instances in the
configured order; the scanner stops at the first rejection. Dedup operators need the whole corpus
and live in ``keye_model.data.dedup``; here we only compute their per-sample signatures.
"""

from __future__ import annotations

import collections
import io
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from keye_model.data.config import CurateConfig, FilterConfig
from keye_model.data.records import IMAGE_EXTS, VIDEO_EXTS, Sample


@dataclass(frozen=True)
class Rejection:
    """Why a sample was dropped: ``reason`` is a stable code, ``detail`` is for people."""

    reason: str
    detail: str = ""


Operator = Callable[[Sample], "Rejection | None"]


class Decode:
    """Verify the media decodes fully: zero bytes, not an image, truncated, decompression bombs."""

    name = "decode"

    def __init__(self, cfg: FilterConfig):
        from PIL import Image, ImageFile

        self.max_pixels = cfg.max_image_pixels
        # Deliberate process-wide settings: PIL warns above MAX_IMAGE_PIXELS and raises above
        # twice it (we turn the warning into an error and check the header ourselves first);
        # truncated files must fail, whatever another library may have switched on.
        Image.MAX_IMAGE_PIXELS = cfg.max_image_pixels
        ImageFile.LOAD_TRUNCATED_IMAGES = False

    def __call__(self, sample: Sample) -> Rejection | None:
        if sample.media is None:
            return Rejection("no_media", "sample has no image or video member")
        if len(sample.media) == 0:
            return Rejection("empty_file", "media is zero bytes")
        if sample.media_ext in VIDEO_EXTS:
            return self._video(sample)
        return self._image(sample)

    def _image(self, sample: Sample) -> Rejection | None:
        from PIL import Image, UnidentifiedImageError

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(sample.media))
                width, height = image.size
                if width * height > self.max_pixels:  # header only: nothing decoded yet
                    return Rejection(
                        "decompression_bomb", f"{width}x{height} exceeds {self.max_pixels} pixels"
                    )
                image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            return Rejection("decompression_bomb", str(err)[:200])
        except UnidentifiedImageError:
            return Rejection("not_an_image", f"{len(sample.media)} bytes PIL cannot identify")
        except (OSError, SyntaxError, ValueError, EOFError) as err:
            reason = "truncated_image" if "truncat" in str(err).lower() else "corrupt_image"
            return Rejection(reason, str(err)[:200])
        sample.image, sample.width, sample.height = image, width, height
        return None

    def _video(self, sample: Sample) -> Rejection | None:
        import av

        try:
            with av.open(io.BytesIO(sample.media)) as container:
                stream = container.streams.video[0]
                frame = next(container.decode(stream))
                sample.width, sample.height = frame.width, frame.height
                seconds = float(stream.duration * stream.time_base) if stream.duration else 0.0
                sample.metadata.setdefault("duration_s", round(seconds, 3))
        except (av.error.FFmpegError, IndexError, StopIteration, ValueError) as err:
            return Rejection("corrupt_video", str(err)[:200])
        return None


class ImageSize:
    """Side, aspect and pixel bounds consistent with ``smart_resize``; counts image tokens."""

    name = "image_size"

    def __init__(self, cfg: FilterConfig):
        self.cfg = cfg

    def __call__(self, sample: Sample) -> Rejection | None:
        width, height = sample.width, sample.height
        if min(width, height) < self.cfg.min_side:
            return Rejection("too_small", f"{width}x{height} has a side below {self.cfg.min_side}")
        aspect = max(width, height) / min(width, height)
        if aspect > self.cfg.max_aspect:
            return Rejection("extreme_aspect", f"aspect {aspect:.1f} > {self.cfg.max_aspect}")
        try:
            sample.image_tokens = media_tokens(sample, self.cfg)
        except ValueError as err:  # smart_resize's own refusal, with its message
            return Rejection("extreme_aspect", str(err)[:200])
        return None


def media_tokens(sample: Sample, cfg: FilterConfig) -> int:
    """LM tokens of the media after smart_resize; videos at 2 fps within the frame budget."""
    from keye_model.processing import image_token_count

    if not sample.width:
        return 0
    tokens = image_token_count(
        sample.height, sample.width, min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels
    )
    if sample.media_ext in VIDEO_EXTS:
        # REFERENCE §1.1: 2 fps, 48..768 tokens per frame, 65,536 per video.
        frames = max(1, math.ceil(2 * sample.metadata.get("duration_s", 0.5)))
        return min(65536, frames * min(768, max(48, tokens)))
    return tokens


def text_stats(text: str) -> tuple[float, float]:
    """(share of the most frequent word 3-gram, share of letters/digits among non-space chars)."""
    words = text.lower().split()
    grams = list(zip(words, words[1:], words[2:]))
    repetition = (
        collections.Counter(grams).most_common(1)[0][1] / len(grams) if len(grams) >= 4 else 0.0
    )
    chars = [c for c in text if not c.isspace()]
    alnum = sum(c.isalnum() for c in chars) / len(chars) if chars else 0.0
    return repetition, alnum


class TextQuality:
    """Length bounds, word-3-gram repetition and character composition of the sample's text."""

    name = "text_quality"

    def __init__(self, cfg: FilterConfig):
        self.cfg = cfg

    def __call__(self, sample: Sample) -> Rejection | None:
        text = sample.full_text()
        if len(text) < self.cfg.min_text_chars:
            return Rejection("text_too_short", f"{len(text)} chars < {self.cfg.min_text_chars}")
        if len(text) > self.cfg.max_text_chars:
            return Rejection("text_too_long", f"{len(text)} chars > {self.cfg.max_text_chars}")
        repetition, alnum = text_stats(text)
        if repetition > self.cfg.max_repetition:
            return Rejection("text_repetitive", f"top 3-gram covers {repetition:.0%} of 3-grams")
        if alnum < self.cfg.min_alnum_ratio:
            return Rejection("text_low_alnum", f"letters/digits are {alnum:.0%} of characters")
        return None


class Language:
    """Offline language id (langid.py); texts too short to classify pass."""

    name = "language"

    def __init__(self, cfg: FilterConfig):
        from langid.langid import LanguageIdentifier, model

        self.allowed = set(cfg.languages)
        self.min_chars = cfg.min_lang_chars
        self.identifier = LanguageIdentifier.from_modelstring(model, norm_probs=True)
        self.identifier.set_languages(None)

    def __call__(self, sample: Sample) -> Rejection | None:
        # The whole text, prose turns included: a receipt's item lines alone are no language.
        text = sample.full_text()
        if len(text) < self.min_chars:
            return None
        # The opening 400 characters decide the language as well as the whole text, far faster.
        lang, prob = self.identifier.classify(text[:400])
        if lang not in self.allowed:
            return Rejection(
                "language", f"identified as {lang!r} (p={prob:.2f}); kept: {sorted(self.allowed)}"
            )
        return None


class ImageTextScorer(Protocol):
    """Interface: cosine similarity of each (image, text) pair, in [-1, 1]."""

    def score(self, images: list[Any], texts: list[str]) -> list[float]: ...


class ClipScorer:
    """A CLIP-style dual encoder from a local directory (transformers model, tokenizer, image processor)."""

    def __init__(self, path: str):
        import torch
        from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

        self.torch = torch
        self.model = AutoModel.from_pretrained(path).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.image_processor = AutoImageProcessor.from_pretrained(path)

    def score(self, images: list[Any], texts: list[str]) -> list[float]:
        torch = self.torch
        pixels = self.image_processor(
            images=[im.convert("RGB") for im in images], return_tensors="pt"
        )["pixel_values"]
        tokens = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True)
        with torch.no_grad():
            image_emb = self.model.get_image_features(pixel_values=pixels)
            text_emb = self.model.get_text_features(
                input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
            )
        # transformers 5 may wrap the projected features in an output object.
        image_emb = getattr(image_emb, "pooler_output", image_emb)
        text_emb = getattr(text_emb, "pooler_output", text_emb)
        sims = torch.nn.functional.cosine_similarity(image_emb, text_emb, dim=-1)
        return [float(s) for s in sims]


class ClipScore:
    """Reject pairs whose image-text similarity is below ``min_clip_score``."""

    name = "clip_score"

    def __init__(self, cfg: FilterConfig, scorer: ImageTextScorer | None = None):
        if scorer is None and not cfg.clip_model:
            raise ValueError(
                "curate.filters.clip_model: the clip_score operator needs a local model path"
            )
        self.scorer = scorer or ClipScorer(cfg.clip_model)
        self.min_score = cfg.min_clip_score

    def __call__(self, sample: Sample) -> Rejection | None:
        if sample.image is None:
            return None
        text = sample.text or (sample.qa[0].question if sample.qa else "")
        (score,) = self.scorer.score([sample.image], [text[:300]])
        sample.metadata["clip_score"] = round(score, 4)
        if score < self.min_score:
            return Rejection("clip_score_low", f"similarity {score:.3f} < {self.min_score}")
        return None


FILTERS: dict[str, Callable[[FilterConfig], Operator]] = {
    "decode": Decode,
    "image_size": ImageSize,
    "text_quality": TextQuality,
    "language": Language,
    "clip_score": ClipScore,
}


def build_filters(cfg: CurateConfig) -> list[Operator]:
    """The configured per-sample operators, in configured order."""
    return [FILTERS[name](cfg.filters) for name in cfg.operators if name in FILTERS]


def is_media_ext(ext: str) -> bool:
    """Whether a tar member extension holds an image or a video."""
    return ext in IMAGE_EXTS or ext in VIDEO_EXTS
