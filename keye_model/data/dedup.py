"""Exact and near-duplicate removal: per-sample signatures, then one global ordered pass.

Scanning workers compute a compact signature per surviving sample (content SHA-256, perceptual
hash, MinHash); the global pass walks the signatures in unit order and keeps the first of every
duplicate group, so the result does not depend on how many workers scanned. Memory grows with the
number of *kept* signatures (~100 bytes per image, ~0.5 KB per checked text), never with pixels.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from keye_model.data.config import CurateConfig
from keye_model.data.neardup import MultiIndexHash, TextNearDupIndex, minhash_values, shingles
from keye_model.data.operators import Rejection
from keye_model.data.records import Sample


def phash_code(image: Any, hash_size: int) -> int:
    """The DCT perceptual hash of an image as an integer of ``hash_size``^2 bits."""
    import imagehash

    return int(str(imagehash.phash(image, hash_size=hash_size)), 16)


def signature(sample: Sample, cfg: CurateConfig) -> dict[str, Any]:
    """What the global dedup pass needs to know about one sample (JSON-ready)."""
    ops, dd = cfg.operators, cfg.dedup
    exempt = dd.exempt_synthetic and sample.synthetic
    sig: dict[str, Any] = {
        "key": sample.key,
        "source": sample.source,
        "category": sample.category,
        "sha": sample.content_hash() if "exact_dedup" in ops else None,
        "phash": None,
        "minhash": None,
        "width": sample.width,
        "height": sample.height,
        "text_tokens": sample.text_tokens,
        "image_tokens": sample.image_tokens,
    }
    if "near_dup_image" in ops and sample.image is not None and not exempt:
        sig["phash"] = f"{phash_code(sample.image, dd.phash_size):x}"
    text = sample.full_text()
    if (
        "near_dup_text" in ops
        and not exempt
        and sample.category in dd.text_categories
        and len(text.split()) >= dd.min_words
    ):
        values = minhash_values(shingles(text, dd.shingle_words), dd.minhash_num_perm)
        sig["minhash"] = base64.b64encode(values.astype("<u4").tobytes()).decode("ascii")
    return sig


class GlobalDedup:
    """Ordered exact / near-duplicate decisions over a stream of signatures."""

    def __init__(self, cfg: CurateConfig):
        dd = cfg.dedup
        self.order = [
            op for op in cfg.operators if op in ("exact_dedup", "near_dup_image", "near_dup_text")
        ]
        self.seen: dict[bytes, str] = {}
        self.images = MultiIndexHash(dd.phash_size**2, dd.phash_radius, dd.phash_band_bits)
        self.texts = (
            TextNearDupIndex(dd.minhash_threshold, dd.minhash_num_perm)
            if "near_dup_text" in self.order
            else None
        )

    def check(self, sig: dict[str, Any]) -> Rejection | None:
        """Reject ``sig`` if it duplicates an earlier kept sample; otherwise remember it."""
        pending: list = []
        for op in self.order:
            if op == "exact_dedup" and sig["sha"]:
                digest = bytes.fromhex(sig["sha"])[:16]
                if digest in self.seen:
                    return Rejection("exact_duplicate", f"same content as {self.seen[digest]}")
                pending.append(lambda d=digest: self.seen.__setitem__(d, sig["key"]))
            elif op == "near_dup_image" and sig["phash"]:
                code = int(sig["phash"], 16)
                hit = self.images.query(code)
                if hit is not None:
                    return Rejection(
                        "near_duplicate_image", f"perceptual hash within radius of {hit}"
                    )
                pending.append(lambda c=code: self.images.add(c, sig["key"]))
            elif op == "near_dup_text" and sig["minhash"] and self.texts is not None:
                values = np.frombuffer(base64.b64decode(sig["minhash"]), dtype="<u4").astype(
                    np.uint32
                )
                hit = self.texts.query(values)
                if hit is not None:
                    return Rejection(
                        "near_duplicate_text", f"MinHash Jaccard above threshold with {hit}"
                    )
                pending.append(lambda v=values: self.texts.add(v, sig["key"]))
        # Index only samples that survive every dedup operator, so a rejected copy never
        # becomes the "original" another sample is matched against.
        for add in pending:
            add()
        return None
