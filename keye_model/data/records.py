"""The sample record that flows through curation, and its WebDataset encoding.

A sample is one image (or video) plus text: a caption, a document transcription, or question /
answer turns with an optional chain of thought. In a WebDataset shard a sample is the tar members
``<key>.<ext>`` (the media bytes) and ``<key>.json`` (everything else), plus ``<key>.txt`` holding
the plain text so caption-only loaders work too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
VIDEO_EXTS = ("mp4", "webm", "mkv", "avi", "mov")
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_\-/]")


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
    media: bytes | None = None
    media_ext: str = "jpg"
    text: str = ""
    qa: list[QA] = dataclasses.field(default_factory=list)
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Filled by operators while scanning (not part of the input).
    width: int = 0
    height: int = 0
    text_tokens: int = 0
    image_tokens: int = 0
    # The decoded image, shared by operators of one scan; never serialised.
    image: Any = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def is_video(self) -> bool:
        return self.media_ext in VIDEO_EXTS

    @property
    def synthetic(self) -> bool:
        return bool(self.metadata.get("synthetic"))

    def full_text(self) -> str:
        """All text of the sample (caption, then question/CoT/answer turns) for quality checks."""
        parts = [self.text] if self.text else []
        for turn in self.qa:
            parts += [turn.question, turn.cot, turn.answer]
        return "\n".join(p for p in parts if p)

    def content_hash(self) -> str:
        """SHA-256 over media bytes and text: equal hashes mean exact duplicates."""
        digest = hashlib.sha256()
        digest.update(self.media or b"")
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
        out.append((f"{self.key}.json", json.dumps(self.header(), sort_keys=True).encode("utf-8")))
        out.append((f"{self.key}.txt", self.full_text().encode("utf-8")))
        return out

    @classmethod
    def from_members(cls, key: str, members: dict[str, bytes]) -> Sample:
        """Rebuild a sample written by ``members`` (extension -> bytes)."""
        header = json.loads(members["json"])
        ext = header.get("media_ext")
        return cls(
            key=key,
            source=header["source"],
            category=header["category"],
            media=members.get(ext) if ext else None,
            media_ext=ext or "jpg",
            text=header.get("text", ""),
            qa=[QA(**turn) for turn in header.get("qa", [])],
            metadata=header.get("metadata", {}),
            width=header.get("width", 0),
            height=header.get("height", 0),
            text_tokens=header.get("text_tokens", 0),
            image_tokens=header.get("image_tokens", 0),
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
