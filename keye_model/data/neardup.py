"""Near-duplicate math shared by both curation engines: band keys, bucket pairs, verification,
connected components.

Perceptual hashes (``phash_size``^2 bits) are near-duplicates within a Hamming radius ``r``.
Comparing every pair is O(n^2). Multi-index hashing (Norouzi, Punjani and Fleet, CVPR 2012) cuts
``p`` disjoint bands of ``b`` bits out of the code; pigeonhole makes it exact: at most
``r // (s + 1)`` bands of a true match differ in more than ``s`` bits, so with
``p = r // (s + 1) + 1`` bands one band differs in at most ``s`` bits. We take the smallest ``s``
for which ``p`` bands of ``b`` bits fit (r = 18, b = 24: s = 1, p = 10).

To find candidates by *grouping* (a shuffle, as a distributed engine does) rather than by probing
an index, each band is split again into ``s + 1`` parts: a band within ``s`` bits has one part
equal, and the rest of the band within ``s`` bits. A row is routed by (band, part, part value);
inside a route group the rest is compared through *deletion keys*: the rest with ``s`` chosen bits
cleared, one key per choice. Two rests within ``s`` bits share the key that clears the bits where
they differ, so every true pair meets in some bucket. Routes and buckets are 64-bit hashes: a
collision only adds a candidate, and every candidate is verified, so the result stays exact.

Text uses MinHash LSH bands (datasketch's choice of ``b`` bands of ``r`` rows for the
threshold); a bucket is one band's values. Candidates are verified by the estimated Jaccard.

Verified pairs are edges of a graph; samples only ever duplicate samples of their own connected
component, so deciding per component equals deciding over the whole corpus.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Iterable
from typing import Any

import numpy as np

MINHASH_SCHEME = "affine32"  # datasketch 2.x default; must be named when rebuilding from values
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def mih_layout(bits: int, radius: int, band_bits: int) -> tuple[int, int]:
    """(sub-radius s, bands p) of exact multi-index hashing: the smallest s with p * b <= bits."""
    if not 1 <= band_bits <= bits:
        raise ValueError(f"band_bits must lie in [1, {bits}], got {band_bits}")
    sub = next(s for s in range(radius + 1) if (radius // (s + 1) + 1) * band_bits <= bits)
    return sub, radius // (sub + 1) + 1


def split_widths(total: int, parts: int) -> list[int]:
    """``total`` bits cut into ``parts`` contiguous widths as even as possible (wider first)."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def deletion_masks(width: int, sub_radius: int) -> np.ndarray:
    """Every mask of exactly ``min(sub_radius, width)`` set bits within ``width`` bits (uint64)."""
    weight = min(sub_radius, width)
    masks = [sum(1 << b for b in bits) for bits in itertools.combinations(range(width), weight)]
    return np.array(masks, dtype=np.uint64)


def mix64(values: np.ndarray, salt: int = 0) -> np.ndarray:
    """splitmix64's finaliser of ``values ^ salt``: well-spread 64-bit keys, same on every machine."""
    with np.errstate(over="ignore"):
        z = values.astype(np.uint64) ^ np.uint64(salt & 0xFFFFFFFFFFFFFFFF)
        z = z + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def hash_columns(columns: np.ndarray, salt: int) -> np.ndarray:
    """One 64-bit key per row of an (n, k) unsigned array, chained through ``mix64``."""
    key = np.full(len(columns), salt & 0xFFFFFFFFFFFFFFFF, dtype=np.uint64)
    for j in range(columns.shape[1]):
        key = mix64(key ^ columns[:, j].astype(np.uint64), salt=j)
    return key


def bit_columns(codes: np.ndarray) -> np.ndarray:
    """(n, bytes) uint8 codes -> (n, bits) 0/1 array, most significant bit first."""
    return np.unpackbits(codes, axis=1)


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """(n, w) 0/1 array (w <= 64) -> the integer each row spells, most significant bit first."""
    weights = np.left_shift(np.uint64(1), np.arange(bits.shape[1] - 1, -1, -1, dtype=np.uint64))
    return (bits.astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)


def hamming_within(a: np.ndarray, b: np.ndarray, radius: int) -> np.ndarray:
    """Row-wise ``popcount(a ^ b) <= radius`` for (n, bytes) uint8 codes."""
    return np.bitwise_count(a ^ b).sum(axis=1, dtype=np.int64) <= radius


def frames_within(
    a: np.ndarray, b: np.ndarray, radius: int, frames: int, share: float
) -> np.ndarray:
    """Row-wise: at least ``share`` of the aligned frame hashes lie within ``radius``.

    ``a``, ``b``: (n, frames * bytes) uint8, the frame hashes of two videos side by side.
    """
    n = len(a)
    per_frame = np.bitwise_count(a ^ b).reshape(n, frames, -1).sum(axis=2, dtype=np.int64)
    return (per_frame <= radius).sum(axis=1) >= math.ceil(share * frames - 1e-9)


def lsh_near(
    a: np.ndarray, b: np.ndarray, bands: list[tuple[int, int]], threshold: float
) -> np.ndarray:
    """Row-wise LSH near-duplicates of (n, 4 * perm) uint8 MinHash values.

    The pair shares one band (all values of ``values[start:end]`` equal: what makes LSH find it)
    and the Jaccard estimate ``mean(a == b)`` reaches ``threshold``. Requiring the band keeps
    the rule a property of the pair alone, so it is the same in every engine and component.
    """
    equal = a.view("<u4") == b.view("<u4")
    shared = np.zeros(len(a), dtype=bool)
    for start, end in bands:
        shared |= equal[:, start:end].all(axis=1)
    return shared & (equal.mean(axis=1) >= threshold)


def group_rows(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Group equal rows of an (n, bytes) uint8 matrix, numbering groups by first appearance.

    Returns (group id of every row, row index of each group's first occurrence).
    """
    n = len(matrix)
    if not n:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    pad = (-matrix.shape[1]) % 8
    words = np.ascontiguousarray(np.pad(matrix, ((0, 0), (0, pad)))).view("<u8")
    order = np.lexsort(words.T[::-1])  # stable: equal rows keep their original order
    ordered = words[order]
    new = np.r_[True, (ordered[1:] != ordered[:-1]).any(axis=1)]
    firsts = order[new]  # each group's first occurrence, groups in code order
    by_appearance = np.argsort(firsts, kind="stable")
    renumber = np.empty_like(by_appearance)
    renumber[by_appearance] = np.arange(len(by_appearance))
    ids = np.empty(n, dtype=np.int64)
    ids[order] = renumber[np.cumsum(new) - 1]
    return ids, firsts[by_appearance]


def bucket_pairs(
    bucket: np.ndarray, member: np.ndarray, cap: int
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Candidate pairs of members sharing a bucket key; hot buckets are capped.

    Members are ordered by id inside a bucket and each is paired with the next ``cap`` members
    only, so a bucket of ``m`` members yields at most ``m * cap`` pairs instead of ``m^2 / 2``.
    Bucket key and member id are packed into one 64-bit word and sorted once; the key loses
    the bits the id needs, which can only merge buckets (more candidates, all verified).
    Returns (first ids, second ids, capped buckets, members in capped buckets).
    """
    empty = np.zeros(0, dtype=np.int64)
    if len(bucket) < 2:
        return empty, empty, 0, 0
    id_bits = max(1, int(member.max()).bit_length())
    mask = np.uint64((1 << id_bits) - 1)
    packed = bucket & ~mask
    packed |= member.view(np.uint64)  # ids are non-negative int64
    packed.sort()
    # Adjacent comparison, not np.unique: numpy 2.4's hash-based unique took 67 s on 24M words
    # that sort in 0.6 s.
    fresh = np.empty(len(packed), dtype=bool)
    fresh[0] = True
    np.not_equal(packed[1:], packed[:-1], out=fresh[1:])
    packed = packed[fresh]
    ids = (packed & mask).view(np.int64)
    keys = packed
    keys &= ~mask
    firsts, seconds = [empty], [empty]
    for d in range(1, cap + 1):  # keys are sorted: members d apart share a bucket or none do
        hit = np.flatnonzero(keys[d:] == keys[:-d])
        if not len(hit):
            break
        firsts.append(ids[hit])
        seconds.append(ids[hit + d])
    capped = capped_members = 0
    if len(keys) > cap + 1:
        long = keys[: -(cap + 1)][keys[cap + 1 :] == keys[: -(cap + 1)]]
        if len(long):
            hot = long[np.r_[True, long[1:] != long[:-1]]]
            sizes = np.searchsorted(keys, hot, "right") - np.searchsorted(keys, hot, "left")
            capped, capped_members = len(hot), int(sizes.sum())
    return np.concatenate(firsts), np.concatenate(seconds), capped, capped_members


def unique_pairs(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each undirected pair once, as (smaller, larger), sorted."""
    if not len(first):
        return first.astype(np.int64), second.astype(np.int64)
    low, high = np.minimum(first, second), np.maximum(first, second)
    order = np.lexsort((high, low))
    low, high = low[order], high[order]
    new = np.r_[True, (low[1:] != low[:-1]) | (high[1:] != high[:-1])]
    return low[new], high[new]


def components(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Connected components of an undirected edge list of int64 node ids.

    Returns (nodes, labels): every node that has an edge, sorted, and its component's label,
    which is the smallest node id of the component (so labels do not depend on edge order, and
    the number of components is ``(nodes == labels).sum()``).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    nodes, index = np.unique(np.concatenate([first, second]), return_inverse=True)
    if not len(nodes):
        return nodes, nodes.copy()
    n = len(nodes)
    graph = coo_matrix(
        (np.ones(len(first), dtype=np.int8), (index[: len(first)], index[len(first) :])),
        shape=(n, n),
    )
    count, labels = connected_components(graph, directed=False)
    smallest = np.full(count, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(smallest, labels, nodes)
    return nodes, smallest[labels]


def lsh_bands(threshold: float, num_perm: int) -> list[tuple[int, int]]:
    """MinHash LSH band ranges (start, end) that datasketch picks for ``threshold``."""
    from datasketch import MinHashLSH

    return list(MinHashLSH(threshold=threshold, num_perm=num_perm).hashranges)


def shingles(text: str, n: int) -> set[str]:
    """Lower-cased word ``n``-grams of ``text`` (alphanumerics only)."""
    words = "".join(ch.lower() if ch.isalnum() else " " for ch in text).split()
    if len(words) < n:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


def minhash_values(items: Iterable[str], num_perm: int) -> np.ndarray:
    """MinHash signature (integer array) of a set of strings; fixed seed so runs agree."""
    from datasketch import MinHash

    sketch = MinHash(
        num_perm=num_perm,
        seed=1,
        scheme=MINHASH_SCHEME,
        permutations=_minhash_permutations(num_perm),
    )
    sketch.update_batch([s.encode("utf-8") for s in items])
    return sketch.hashvalues


@functools.cache
def _minhash_permutations(num_perm: int) -> Any:
    """The seed-1 permutations, drawn once per process (a third of a caption's MinHash time)."""
    from datasketch import MinHash

    return MinHash(num_perm=num_perm, seed=1, scheme=MINHASH_SCHEME).permutations
