"""Near-duplicate indexes: multi-index hashing for perceptual hashes, MinHash LSH for text.

Perceptual hashes (``phash_size``^2 bits) are near-duplicates within a Hamming radius ``r``.
A linear scan costs O(n) per query, O(n^2) per corpus. Multi-index hashing (Norouzi, Punjani and
Fleet, CVPR 2012) cuts ``p`` disjoint bands of ``b`` bits out of the code, keeps one hash table per
band, and probes each table at every value within a sub-radius ``s`` of the query's band, then
verifies the few candidates. Pigeonhole makes it exact: at most ``r // (s + 1)`` bands of a true
match differ in more than ``s`` bits, so ``p = r // (s + 1) + 1`` bands cannot all miss it (the
bands need not cover the whole code). We take the smallest ``s`` for which ``p`` bands of ``b``
bits fit: r = 18, b = 20 gives s = 1, p = 10, so a query costs 10 x 21 = 210 probes into buckets
of ~n / 2^20 codes instead of n comparisons. We chose it over a BK-tree, whose search at radius
18 in 256 bits visits most of the tree.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import numpy as np

MINHASH_SCHEME = "affine32"  # datasketch 2.x default; must be named when rebuilding from values


def band_masks(band_bits: int, sub_radius: int) -> list[int]:
    """All XOR masks of at most ``sub_radius`` set bits within one band (0 first)."""
    masks = [0]
    for weight in range(1, sub_radius + 1):
        for bits in itertools.combinations(range(band_bits), weight):
            masks.append(sum(1 << b for b in bits))
    return masks


class MultiIndexHash:
    """Exact Hamming-radius search over fixed-width integer codes without pairwise comparison."""

    def __init__(self, bits: int, radius: int, band_bits: int):
        if not 1 <= band_bits <= bits:
            raise ValueError(f"band_bits must lie in [1, {bits}], got {band_bits}")
        self.bits, self.radius, self.band_bits = bits, radius, band_bits
        self.sub_radius = next(
            s for s in range(radius + 1) if (radius // (s + 1) + 1) * band_bits <= bits
        )
        self.bands = radius // (self.sub_radius + 1) + 1
        self.band_mask = (1 << band_bits) - 1
        self.probes = band_masks(band_bits, self.sub_radius)
        self.tables: list[dict[int, list[int]]] = [{} for _ in range(self.bands)]
        self.codes: list[int] = []
        self.keys: list[str] = []

    def __len__(self) -> int:
        return len(self.codes)

    def _band_values(self, code: int) -> list[int]:
        return [(code >> (i * self.band_bits)) & self.band_mask for i in range(self.bands)]

    def query(self, code: int) -> str | None:
        """Key of an indexed code within the radius of ``code`` (the earliest found), else None."""
        codes, radius = self.codes, self.radius
        for table, value in zip(self.tables, self._band_values(code)):
            for mask in self.probes:
                bucket = table.get(value ^ mask)
                if bucket is None:
                    continue
                for idx in bucket:
                    if (codes[idx] ^ code).bit_count() <= radius:
                        return self.keys[idx]
        return None

    def add(self, code: int, key: str) -> None:
        """Index ``code`` under ``key``."""
        idx = len(self.codes)
        self.codes.append(code)
        self.keys.append(key)
        for table, value in zip(self.tables, self._band_values(code)):
            table.setdefault(value, []).append(idx)

    def query_or_add(self, code: int, key: str) -> str | None:
        """Return the key ``code`` duplicates, or index it and return None."""
        hit = self.query(code)
        if hit is None:
            self.add(code, key)
        return hit


def shingles(text: str, n: int) -> set[str]:
    """Lower-cased word ``n``-grams of ``text`` (alphanumerics only)."""
    words = "".join(ch.lower() if ch.isalnum() else " " for ch in text).split()
    if len(words) < n:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


def minhash_values(items: Iterable[str], num_perm: int) -> np.ndarray:
    """MinHash signature (integer array) of a set of strings; fixed seed so runs agree."""
    from datasketch import MinHash

    sketch = MinHash(num_perm=num_perm, seed=1, scheme=MINHASH_SCHEME)
    sketch.update_batch([s.encode("utf-8") for s in items])
    return sketch.hashvalues


class TextNearDupIndex:
    """MinHash LSH (datasketch) with verification of the estimated Jaccard similarity."""

    def __init__(self, threshold: float, num_perm: int):
        from datasketch import MinHashLSH

        self.threshold, self.num_perm = threshold, num_perm
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self.signatures: dict[str, np.ndarray] = {}

    def _sketch(self, values: np.ndarray):
        from datasketch import MinHash

        return MinHash(num_perm=self.num_perm, seed=1, hashvalues=values, scheme=MINHASH_SCHEME)

    def query(self, values: np.ndarray) -> str | None:
        """Key of an indexed text with estimated Jaccard >= threshold, else None."""
        # LSH returns candidates in set order; sort so the reported duplicate is deterministic.
        for other in sorted(self.lsh.query(self._sketch(values))):
            if float(np.mean(self.signatures[other] == values)) >= self.threshold:
                return other
        return None

    def add(self, values: np.ndarray, key: str) -> None:
        """Index a text signature under ``key``."""
        self.lsh.insert(key, self._sketch(values))
        self.signatures[key] = values
