"""The sample record that flows through curation, and its WebDataset encoding.

A sample is one or more images (or videos) plus text: a caption, a document transcription, an
interleaved image-text document, or question / answer turns with an optional chain of thought.
In a WebDataset shard a sample is the tar members ``<key>.<ext>`` (the first media item),
``<key>.<i>.<ext>`` (item ``i`` >= 1 of a sample with several), ``<key>.json`` (everything else)
and ``<key>.txt`` holding the plain text, so caption-only loaders work too.

Where each media item stands in the text is marked with the chat format's own placeholders
(``IMAGE_PLACEHOLDER`` / ``VIDEO_PLACEHOLDER``, one per item, in item order), so the processor can
consume the text as is. A text without placeholders has its media in front of it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, NamedTuple

from keye_model.processing.chat import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
VIDEO_EXTS = ("mp4", "webm", "mkv", "avi", "mov")
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_\-/]")
_MARKER = re.compile(f"{re.escape(IMAGE_PLACEHOLDER)}|{re.escape(VIDEO_PLACEHOLDER)}")
# A placeholder with the blanks around it: prose keeps one space where an image stood mid-line.
_MARKER_SPACED = re.compile(rf"[ \t]*(?:{_MARKER.pattern})[ \t]*")


class Media(NamedTuple):
    """One image or video of a sample: file extension (``jpg``, ``mp4``, ...) and bytes."""

    ext: str
    data: bytes

    @property
    def kind(self) -> str:
        """``image`` or ``video``, from the extension."""
        return "video" if self.ext in VIDEO_EXTS else "image"


@dataclass
class QA:
    """One question/answer turn; ``cot`` is the reasoning that leads to the answer."""

    question: str
    answer: str
    cot: str = ""
    kind: str = ""  # what was asked (lookup, sum, ...): lets tests re-derive the answer


@dataclass
class Sample:
    """One curated sample: media bytes, text, QA turns and free-form metadata."""

    key: str
    source: str
    category: str
    media: bytes | None = None  # the first media item
    media_ext: str = "jpg"
    text: str = ""
    qa: list[QA] = dataclasses.field(default_factory=list)
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    extra_media: list[Media] = dataclasses.field(default_factory=list)  # items 2.. in text order
    # Filled by operators while scanning (not part of the input).
    width: int = 0
    height: int = 0
    text_tokens: int = 0
    image_tokens: int = 0
    # The decoded image, shared by operators of one scan; never serialised.
    image: Any = dataclasses.field(default=None, repr=False, compare=False)
    # (width, height, seconds) of every media item, filled by the decode operator; never serialised.
    media_dims: list[tuple[int, int, float]] = dataclasses.field(
        default_factory=list, repr=False, compare=False
    )

    @property
    def is_video(self) -> bool:
        return self.media_ext in VIDEO_EXTS

    @property
    def synthetic(self) -> bool:
        return bool(self.metadata.get("synthetic"))

    def media_items(self) -> list[Media]:
        """Every media item of the sample, in text order."""
        if self.media is None:
            return []
        return [Media(self.media_ext, self.media), *self.extra_media]

    def set_media(self, items: list[Media]) -> None:
        """Make ``items`` the sample's media, in order (none: no media)."""
        if not items:
            self.media, self.media_ext, self.extra_media = None, "jpg", []
            return
        self.media, self.media_ext = items[0].data, items[0].ext
        self.extra_media = list(items[1:])

    def raw_texts(self) -> list[str]:
        """Caption and turns as stored, media placeholders included."""
        parts = [self.text]
        for turn in self.qa:
            parts += [turn.question, turn.cot, turn.answer]
        return parts

    def full_text(self) -> str:
        """All prose of the sample (caption, then question/CoT/answer turns) for quality checks."""
        return "\n".join(p for p in map(prose, self.raw_texts()) if p)

    def content_hash(self) -> str:
        """SHA-256 over media bytes and text: equal hashes mean exact duplicates."""
        digest = hashlib.sha256()
        digest.update(self.media or b"")
        for item in self.extra_media:  # absent for one-item samples: their hash is unchanged
            digest.update(b"\0" + item.ext.encode() + b"\0")
            digest.update(item.data)
        digest.update(b"\0")
        digest.update(self.full_text().encode("utf-8"))
        return digest.hexdigest()

    def header(self) -> dict[str, Any]:
        """Everything but the media bytes, JSON-ready."""
        return {
            "key": self.key,
            "source": self.source,
            "category": self.category,
            "text": self.text,
            "qa": [dataclasses.asdict(turn) for turn in self.qa],
            "metadata": self.metadata,
            "media_ext": self.media_ext if self.media is not None else None,
            "extra_media_ext": [item.ext for item in self.extra_media],
            "width": self.width,
            "height": self.height,
            "text_tokens": self.text_tokens,
            "image_tokens": self.image_tokens,
        }

    def members(self) -> list[tuple[str, bytes]]:
        """Tar members of this sample in WebDataset layout, in a fixed order."""
        out = []
        if self.media is not None:
            out.append((f"{self.key}.{self.media_ext}", self.media))
        for i, item in enumerate(self.extra_media, start=1):
            out.append((f"{self.key}.{i}.{item.ext}", item.data))
        out.append((f"{self.key}.json", json.dumps(self.header(), sort_keys=True).encode("utf-8")))
        out.append((f"{self.key}.txt", self.full_text().encode("utf-8")))
        return out

    @classmethod
    def from_members(cls, key: str, members: dict[str, bytes]) -> Sample:
        """Rebuild a sample written by ``members`` (extension -> bytes)."""
        header = json.loads(members["json"])
        ext = header.get("media_ext")
        extra = header.get("extra_media_ext", [])
        return cls(
            key=key,
            source=header["source"],
            category=header["category"],
            media=members.get(ext) if ext else None,
            media_ext=ext or "jpg",
            extra_media=[Media(e, members[f"{i}.{e}"]) for i, e in enumerate(extra, start=1)],
            text=header.get("text", ""),
            qa=[QA(**turn) for turn in header.get("qa", [])],
            metadata=header.get("metadata", {}),
            width=header.get("width", 0),
            height=header.get("height", 0),
            text_tokens=header.get("text_tokens", 0),
            image_tokens=header.get("image_tokens", 0),
        )


def prose(text: str) -> str:
    """``text`` without media placeholders (unchanged when it holds none)."""
    if not _MARKER.search(text):
        return text

    def blank(match: re.Match) -> str:
        at_edge = match.start() == 0 or match.end() == len(text)
        at_edge = at_edge or "\n" in (text[match.start() - 1], text[match.end() : match.end() + 1])
        return "" if at_edge else " "

    return _MARKER_SPACED.sub(blank, text).strip()


def marker_kinds(text: str) -> list[str]:
    """The media placeholders of ``text`` in order, as ``image`` / ``video``."""
    return ["image" if m == IMAGE_PLACEHOLDER else "video" for m in _MARKER.findall(text)]


def media_marker_error(sample: Sample) -> str | None:
    """Why the sample's placeholders do not match its media, or None when they do.

    No placeholders at all is fine (the media come first); otherwise there is one per item,
    of the item's kind, in item order.
    """
    marks = [kind for part in sample.raw_texts() for kind in marker_kinds(part)]
    kinds = [item.kind for item in sample.media_items()]
    if not marks or marks == kinds:
        return None
    if sorted(marks) == sorted(kinds):
        return f"placeholders order images and videos as {marks}, the media list as {kinds}"
    return f"text places {_count(marks)} but the sample has {_count(kinds) or 'no media'}"


def _count(kinds: list[str]) -> str:
    return ", ".join(
        f"{kinds.count(k)} {k}{'s' * (kinds.count(k) != 1)}" for k in sorted(set(kinds))
    )


def safe_key(raw: str) -> str:
    """A WebDataset-safe key: no dots (they separate the extension), no odd characters."""
    return _KEY_UNSAFE.sub("_", raw).strip("/") or "_"


def split_member_name(name: str) -> tuple[str, str]:
    """``dir/key.ext.gz`` -> (``dir/key``, ``ext.gz``): WebDataset splits at the first dot of the basename."""
    head, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    key = f"{head}/{stem}" if head else stem
    return key, ext.lower() if dot else ""
