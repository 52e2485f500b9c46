"""Exact and near-duplicate removal, one implementation for both curation engines.

1. ``signature`` (while scanning, per sample): content SHA-256, perceptual hash of an image,
   perceptual hashes of a video's frames, MinHash of the text.
2. ``route_rows`` (per batch of signatures): rows keyed by route, one kind at a time: the content
   hash (exact), the bands of the image / frame hashes, the MinHash LSH bands (text).
3. ``kind_edges`` (per group of whole routes): candidate pairs from shared bucket keys, verified
   (equal content, Hamming radius, Jaccard). Any split of the routes over partitions or workers
   gives the same edge set, because a route group is never split.
4. ``neardup.components`` over all edges.
5. ``resolve`` (per component): members ranked larger image first, then less compressed (more
   bytes at the same size), then input order; each is dropped when it duplicates an
   already-kept member under the first dedup operator, in configured order, that matches.

Step 5 is the ordered greedy choice a single pass over the ranked corpus would make: a sample
can only duplicate members of its own component. The local engine (``run_local``) runs the steps
in this process; ``keye_model.data.ray_curate`` runs the same functions as a Ray Data job.
Both write ``work/dedup/<unit>.drops.jsonl`` and ``work/dedup.done``.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from keye_model import storage
from keye_model.data.config import CurateConfig
from keye_model.data.neardup import (
    bit_columns,
    bucket_pairs,
    components,
    deletion_masks,
    frames_within,
    group_rows,
    hamming_within,
    hash_columns,
    lsh_bands,
    lsh_near,
    mih_layout,
    minhash_values,
    mix64,
    pack_bits,
    shingles,
    split_widths,
    unique_pairs,
)
from keye_model.data.records import Sample

# A columnar batch of rows: column name -> numpy array (Ray Data's "numpy" batch format).
Table = dict[str, np.ndarray]
KINDS = ("exact", "image", "video", "text")
_SALT = {"exact": 0x1000, "image": 0x2000, "video": 0x3000, "text": 0x4000}
SIDE_BINS = [16 * 2 ** (i / 2) for i in range(19)]  # 16 .. 8192 px, half-octave bins
VERIFY_CHUNK = 1 << 20  # candidate pairs verified at a time (bounds temporary memory)
SPREAD = np.uint64(0x9E3779B97F4A7C15)  # odd: multiplying by it permutes 64-bit words
# Route rows per kind_edges call (each becomes up to ~12 bucket keys). Measured: a Ray task on
# 2.5M image rows peaked at 5.1 GiB, so ~2 KiB per row: 1M rows stay near 2 GiB.
PARTITION_ROWS = 1 << 20
PARTITION_BYTES_PER_ROW = 2048
DROP_FIELDS = ("key", "reason", "detail")
REASONS = {
    "exact": "exact_duplicate",
    "image": "near_duplicate_image",
    "video": "near_duplicate_video",
    "text": "near_duplicate_text",
}
_DETAILS = {
    "exact": "same content as {}",
    "image": "perceptual hash within radius of {}",
    "video": "frame hashes within radius of {}",
    "text": "MinHash Jaccard above threshold with {}",
}
# Which signature column each kind compares, and the dedup operator that enables it.
KIND_COLUMNS = {"exact": "sha", "image": "phash", "video": "frames", "text": "minhash"}
_OPERATOR_KINDS = {
    "exact_dedup": ("exact",),
    "near_dup_image": ("image", "video"),
    "near_dup_text": ("text",),
}


# ---------------------------------------------------------------------------------------------
# Signatures (scan phase)


def phash_code(image: Any, hash_size: int) -> int:
    """The DCT perceptual hash of an image as an integer of ``hash_size``^2 bits."""
    import imagehash

    return int(str(imagehash.phash(image, hash_size=hash_size)), 16)


def code_bytes(code: int, hash_size: int) -> bytes:
    """A perceptual hash as big-endian bytes (fixed width: leading zero bits kept)."""
    return code.to_bytes((hash_size * hash_size + 7) // 8, "big")


def video_frame_codes(data: bytes, hash_size: int, count: int) -> bytes | None:
    """Perceptual hashes of ``count`` frames at evenly spaced times, concatenated; None if unreadable.

    Frame k is the first frame shown at or after ``(k + 0.5) / count`` of the duration, found by
    seeking to the keyframe before it and decoding forward, so a re-encoded or resized copy
    (other keyframes, other frame rate) is hashed at the same moments.
    """
    import av

    try:
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.video[0]
            seconds = float(stream.duration * stream.time_base) if stream.duration else 0.0
            if seconds <= 0 and container.duration:
                seconds = container.duration / 1e6
            if seconds <= 0:
                return None
            codes = []
            for k in range(count):
                target = (k + 0.5) / count * seconds
                container.seek(int(target / stream.time_base), stream=stream, backward=True)
                chosen = None
                for frame in container.decode(stream):
                    chosen = frame
                    if frame.time is not None and frame.time >= target:
                        break
                if chosen is None:
                    return None
                codes.append(code_bytes(phash_code(chosen.to_image(), hash_size), hash_size))
    except (av.error.FFmpegError, IndexError, ValueError):
        return None
    return b"".join(codes)


def signature(sample: Sample, cfg: CurateConfig) -> dict[str, Any]:
    """What the global dedup needs to know about one sample (JSON-ready)."""
    ops, dd = cfg.operators, cfg.dedup
    exempt = dd.exempt_synthetic and sample.synthetic
    items = sample.media_items()
    sig: dict[str, Any] = {
        "key": sample.key,
        "source": sample.source,
        "category": sample.category,
        "sha": sample.content_hash() if "exact_dedup" in ops else None,
        "phash": None,
        "frames": None,
        "minhash": None,
        "width": sample.width,
        "height": sample.height,
        "bytes": sum(len(item.data) for item in items),
        "text_tokens": sample.text_tokens,
        "image_tokens": sample.image_tokens,
    }
    if "near_dup_image" in ops and not exempt:
        if sample.image is not None:  # decode keeps pixels for one-image samples only
            sig["phash"] = code_bytes(phash_code(sample.image, dd.phash_size), dd.phash_size).hex()
        elif len(items) == 1 and items[0].kind == "video":
            frames = video_frame_codes(items[0].data, dd.phash_size, dd.video_frames)
            sig["frames"] = frames.hex() if frames else None
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


def signatures_uri(work: str, unit_name: str) -> str:
    """Where the scan phase leaves a unit's signatures."""
    return storage.join(work, "scan", f"{unit_name}.sig.jsonl")


def scan_summary(work: str, unit_name: str) -> dict[str, Any]:
    """The counts a finished scan left in ``<unit>.done`` (``passed`` = its signatures)."""
    return json.loads(storage.read_text(storage.join(work, "scan", f"{unit_name}.done")))


def read_signatures(uri: str, unit_index: int) -> Table:
    """One unit's signatures (``<unit>.sig.jsonl``) as a table; see ``signature_table``."""
    text = storage.read_text(uri)
    return signature_table(
        [json.loads(line) for line in text.splitlines() if line.strip()], unit_index
    )


def signature_table(rows: list[dict[str, Any]], unit_index: int) -> Table:
    """Signatures of one unit, in order, as columns; ``node`` = unit index << 32 | position."""
    n = len(rows)

    def ints(name: str) -> np.ndarray:
        return np.array([r.get(name) or 0 for r in rows], dtype=np.int64)

    def codes(name: str, decode) -> np.ndarray:
        out = np.empty(n, dtype=object)
        out[:] = [decode(r[name]) if r.get(name) else b"" for r in rows]
        return out

    def strings(name: str) -> np.ndarray:
        out = np.empty(n, dtype=object)
        out[:] = [r[name] for r in rows]
        return out

    return {
        "node": (np.int64(unit_index) << np.int64(32)) + np.arange(n, dtype=np.int64),
        "key": strings("key"),
        "category": strings("category"),
        "text_tokens": ints("text_tokens"),
        "image_tokens": ints("image_tokens"),
        "width": ints("width"),
        "height": ints("height"),
        "bytes": ints("bytes"),
        "sha": codes("sha", lambda h: bytes.fromhex(h)[:16]),
        "phash": codes("phash", bytes.fromhex),
        "frames": codes("frames", bytes.fromhex),
        "minhash": codes("minhash", base64.b64decode),
    }


def concat(tables: list[Table]) -> Table:
    """Rows of several tables with the same columns, in order."""
    tables = [t for t in tables if t]
    if not tables:
        return {}
    return {name: np.concatenate([t[name] for t in tables]) for name in tables[0]}


def take(table: Table, index: np.ndarray) -> Table:
    """The rows at ``index`` (a boolean mask or positions)."""
    return {name: column[index] for name, column in table.items()}


# ---------------------------------------------------------------------------------------------
# The plan: everything the decisions depend on, small and picklable


@dataclass(frozen=True)
class DedupPlan:
    """The dedup settings of one run, resolved once (band layout, LSH bands, operators)."""

    operators: tuple[str, ...]
    code_bits: int
    radius: int
    band_bits: int
    sub_radius: int
    bands: int
    lsh: tuple[tuple[int, int], ...]
    num_perm: int
    threshold: float
    video_frames: int
    video_share: float
    cap: int

    @classmethod
    def from_config(cls, cfg: CurateConfig) -> DedupPlan:
        dd = cfg.dedup
        bits = dd.phash_size**2
        sub, bands = mih_layout(bits, dd.phash_radius, dd.phash_band_bits)
        return cls(
            operators=tuple(op for op in cfg.operators if op in _OPERATOR_KINDS),
            code_bits=bits,
            radius=dd.phash_radius,
            band_bits=dd.phash_band_bits,
            sub_radius=sub,
            bands=bands,
            lsh=tuple(lsh_bands(dd.minhash_threshold, dd.minhash_num_perm)),
            num_perm=dd.minhash_num_perm,
            threshold=dd.minhash_threshold,
            video_frames=dd.video_frames,
            video_share=dd.video_min_match,
            cap=dd.max_bucket,
        )

    @property
    def kinds(self) -> list[str]:
        """The signature kinds the configured operators compare."""
        return [kind for op in self.operators for kind in _OPERATOR_KINDS[op]]

    def rows_per_signature(self, kind: str) -> int:
        """Route rows ``route_rows`` makes per signature of ``kind``."""
        if kind == "exact":
            return 1
        if kind == "text":
            return len(self.lsh)
        frames = self.video_frames if kind == "video" else 1
        return frames * len(self.slots())

    @property
    def code_bytes(self) -> int:
        return (self.code_bits + 7) // 8

    def code_width(self, kind: str) -> int:
        """Bytes of one ``kind`` code: SHA prefix, perceptual hash, frame hashes, MinHash."""
        return {
            "exact": 16,
            "image": self.code_bytes,
            "video": self.video_frames * self.code_bytes,
            "text": 4 * self.num_perm,
        }[kind]

    def slots(self) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """Per (band, part): band index, bit positions of the part, bit positions of the rest.

        Positions index the code's bits most significant first; a code whose bit count is not a
        multiple of 8 starts after the padding bits of its first byte.
        """
        pad = self.code_bytes * 8 - self.code_bits
        out = []
        for band in range(self.bands):
            start = pad + band * self.band_bits
            offset = start
            for width in split_widths(self.band_bits, self.sub_radius + 1):
                part = np.arange(offset, offset + width)
                rest = np.setdiff1d(np.arange(start, start + self.band_bits), part)
                out.append((band, part, rest))
                offset += width
        return out


# ---------------------------------------------------------------------------------------------
# Steps 2 and 3: routes and verified edges


def code_matrix(column: np.ndarray) -> np.ndarray:
    """An object column of equal-length byte strings as an (n, bytes) uint8 matrix."""
    if not len(column):
        return np.zeros((0, 0), dtype=np.uint8)
    return np.frombuffer(b"".join(column), dtype=np.uint8).reshape(len(column), -1)


def route_rows(sigs: Table, plan: DedupPlan, kind: str, round_: tuple[int, int] = (0, 1)) -> Table:
    """Rows of one kind for the shuffle: route (the group key), slot, rest bits, node, code.

    exact: one row per sample, routed by its content hash. text: one row per LSH band, routed
    by the band's values. image: one row per (band, part), routed by the part's bits, carrying
    the rest of the band. video: the image rows of every frame hash.

    ``round_ = (r, rounds)`` keeps only the copies (bands, parts) whose index is ``r`` modulo
    ``rounds``: every bucket lies in one copy, so the edges of all rounds together are the
    edges of one pass, and a shuffle too large for memory can run as several smaller ones.
    """
    r, rounds = round_
    empty = {
        "route": np.zeros(0, dtype=np.uint64),
        "slot": np.zeros(0, dtype=np.int64),
        "rest": np.zeros(0, dtype=np.uint64),
        "node": np.zeros(0, dtype=np.int64),
        "code": np.zeros((0, plan.code_width(kind)), dtype=np.uint8),
    }
    column = sigs[KIND_COLUMNS[kind]] if sigs else np.zeros(0, dtype=object)
    present = np.array([len(c) > 0 for c in column], dtype=bool)
    if not present.any():
        return empty
    node, code = sigs["node"][present], code_matrix(column[present])
    n = len(node)
    routes, slots, rests = [], [], []
    copy = itertools.count()
    if kind == "exact":
        if next(copy) % rounds == r:
            routes.append(hash_columns(code.view("<u8"), _SALT[kind]))
    elif kind == "text":
        values = code.view("<u4")
        for band, (start, end) in enumerate(plan.lsh):
            if next(copy) % rounds == r:
                routes.append(hash_columns(values[:, start:end], _SALT[kind] + band))
    else:
        frames = plan.video_frames if kind == "video" else 1
        for frame in range(frames):
            bits = bit_columns(code[:, frame * plan.code_bytes : (frame + 1) * plan.code_bytes])
            for slot, (band, part, rest) in enumerate(plan.slots()):
                if next(copy) % rounds != r:
                    continue
                label = np.array([[frame, band, slot]], dtype=np.uint64)
                routes.append(
                    mix64(pack_bits(bits[:, part]), int(hash_columns(label, _SALT[kind])[0]))
                )
                slots.append(np.full(n, slot, dtype=np.int64))
                rests.append(pack_bits(bits[:, rest]))
    copies = len(routes)
    if not copies:
        return empty
    return {
        "route": np.concatenate(routes),
        "slot": np.concatenate(slots) if slots else np.zeros(n * copies, dtype=np.int64),
        "rest": np.concatenate(rests) if rests else np.zeros(n * copies, dtype=np.uint64),
        "node": np.tile(node, copies),
        "code": np.tile(code, (copies, 1)),
    }


@dataclass
class Edges:
    """Verified duplicate pairs (node ids) and the hot buckets met on the way."""

    first: np.ndarray
    second: np.ndarray
    capped_buckets: int = 0
    capped_members: int = 0

    @classmethod
    def empty(cls) -> Edges:
        return cls(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))

    @classmethod
    def merge(cls, parts: list[Edges]) -> Edges:
        """All edges of ``parts``, each pair once (routes of one pair may lie in several parts)."""
        if not parts:
            return cls.empty()
        first, second = unique_pairs(
            np.concatenate([p.first for p in parts]), np.concatenate([p.second for p in parts])
        )
        return cls(
            first,
            second,
            sum(p.capped_buckets for p in parts),
            sum(p.capped_members for p in parts),
        )


def related(kind: str, a: np.ndarray, b: np.ndarray, plan: DedupPlan) -> np.ndarray:
    """Row-wise: are codes ``a[i]`` and ``b[i]`` duplicates under ``kind``'s rule?"""
    if kind == "exact":
        return (a == b).all(axis=1)
    if kind == "image":
        return hamming_within(a, b, plan.radius)
    if kind == "video":
        return frames_within(a, b, plan.radius, plan.video_frames, plan.video_share)
    return lsh_near(a, b, list(plan.lsh), plan.threshold)


def kind_edges(kind: str, rows: Table, plan: DedupPlan) -> Edges:
    """Verified edges among rows of one kind that hold whole route groups."""
    if len(rows["node"]) < 2:
        return Edges.empty()
    # One entry per sample (its rows repeat it once per route), in input order.
    nodes, first_row = np.unique(rows["node"], return_index=True)
    # Samples with identical codes are one member: a chain of edges joins them and only the
    # first meets other codes in buckets, so a thousand copies of one picture stay a thousand
    # edges instead of half a million pairs. Members are numbered in input order.
    member_of_sample, first_sample = group_rows(rows["code"][first_row])
    same_code = np.argsort(member_of_sample, kind="stable")
    chained = member_of_sample[same_code][1:] == member_of_sample[same_code][:-1]
    firsts, seconds = [nodes[same_code][:-1][chained]], [nodes[same_code][1:][chained]]
    member = member_of_sample[np.searchsorted(nodes, rows["node"])]
    member_code = rows["code"][first_row][first_sample]
    member_node = nodes[first_sample]
    capped = capped_members = 0
    if kind != "exact":  # exact duplicates are identical codes: the chains above are all of them
        buckets, members = [], []
        if kind == "text":
            buckets.append(rows["route"])
            members.append(member)
        else:
            # Deletion keys: route ^ spread(mask index, rest with the mask's bits cleared).
            # The odd multiplier is a bijection mod 2^64, so distinct pairs stay distinct at
            # one multiply per key (an image makes ~240 keys: this is the hot loop).
            widths = np.array([len(rest) for _, _, rest in plan.slots()])[rows["slot"]]
            for width in sorted(set(widths.tolist())):
                chosen = widths == width
                masks = deletion_masks(width, plan.sub_radius)
                tags = rows["rest"][chosen][:, None] & ~masks[None, :]
                tags |= (np.arange(len(masks), dtype=np.uint64) << np.uint64(32))[None, :]
                with np.errstate(over="ignore"):
                    tags *= SPREAD
                tags ^= rows["route"][chosen][:, None]  # already a 64-bit hash per route
                buckets.append(tags.reshape(-1))
                members.append(np.repeat(member[chosen], len(masks)))
        a, b, capped, capped_members = bucket_pairs(
            np.concatenate(buckets), np.concatenate(members), plan.cap
        )
        for start in range(0, len(a), VERIFY_CHUNK):
            ca, cb = a[start : start + VERIFY_CHUNK], b[start : start + VERIFY_CHUNK]
            ok = related(kind, member_code[ca], member_code[cb], plan)
            firsts.append(member_node[ca[ok]])
            seconds.append(member_node[cb[ok]])
    # A true pair meets in up to one bucket per band: keep each edge once.
    first, second = unique_pairs(np.concatenate(firsts), np.concatenate(seconds))
    return Edges(first, second, capped, capped_members)


# ---------------------------------------------------------------------------------------------
# Step 5: decisions per component


def members_of(sigs: Table, nodes: np.ndarray, labels: np.ndarray) -> Table:
    """The signature rows of nodes that have an edge, with their component label as ``comp``."""
    if not sigs or not len(nodes):
        return {}
    position = np.searchsorted(nodes, sigs["node"])
    position = np.minimum(position, len(nodes) - 1)
    inside = nodes[position] == sigs["node"]
    table = take(sigs, inside)
    table["comp"] = labels[position[inside]]
    return table


def resolve(members: Table, plan: DedupPlan) -> Table:
    """Drop rows for the members of whole components (see the module docstring, step 5)."""
    out: dict[str, list] = {name: [] for name in ("node", *DROP_FIELDS, *_TOTAL_COLUMNS)}
    if not members or not len(members["node"]):
        return _drop_table(out)
    pixels = members["width"] * members["height"]
    order = np.lexsort((members["node"], -members["bytes"], -pixels, members["comp"]))
    comp = members["comp"][order]
    starts = np.flatnonzero(np.r_[True, comp[1:] != comp[:-1]])
    for group in np.split(order, starts[1:]):
        kept: list[int] = []
        for row in group:
            verdict = _first_duplicate(members, int(row), kept, plan)
            if verdict is None:
                kept.append(int(row))
                continue
            kind, other = verdict
            out["node"].append(int(members["node"][row]))
            out["key"].append(members["key"][row])
            out["reason"].append(REASONS[kind])
            out["detail"].append(_DETAILS[kind].format(members["key"][other]))
            for name in _TOTAL_COLUMNS:
                out[name].append(members[name][row])
    return _drop_table(out)


def _first_duplicate(
    members: Table, row: int, kept: list[int], plan: DedupPlan
) -> tuple[str, int] | None:
    """(kind, kept row) of the first rule, in operator order, under which ``row`` repeats a kept one."""
    if not kept:
        return None
    for kind in plan.kinds:
        column = members[KIND_COLUMNS[kind]]
        if not column[row]:
            continue
        candidates = [k for k in kept if len(column[k]) == len(column[row])]
        if not candidates:
            continue
        mine = code_matrix(np.array([column[row]] * len(candidates), dtype=object))
        hits = np.flatnonzero(related(kind, mine, code_matrix(column[candidates]), plan))
        if len(hits):
            return kind, candidates[hits[0]]
    return None


_TOTAL_COLUMNS = ("category", "text_tokens", "image_tokens", "width", "height")


def _drop_table(columns: dict[str, list]) -> Table:
    table: Table = {}
    for name, values in columns.items():
        if name in ("key", "reason", "detail", "category"):
            array = np.empty(len(values), dtype=object)
            array[:] = values
            table[name] = array
        else:
            table[name] = np.array(values, dtype=np.int64)
    return table


# ---------------------------------------------------------------------------------------------
# Totals, drop files and the local engine


def totals(table: Table) -> dict[str, Any]:
    """Samples and tokens per category, and the image-side histogram, of some signature rows."""
    hist = np.zeros(len(SIDE_BINS) - 1, dtype=np.int64)
    tokens: Counter = Counter()
    samples: Counter = Counter()
    if table and len(table["node"]):
        for category, text, image in zip(
            table["category"], table["text_tokens"], table["image_tokens"]
        ):
            tokens[category] += int(text) + int(image)
            samples[category] += 1
        width, height = table["width"], table["height"]
        sides = np.minimum(np.maximum(width, height)[width > 0], SIDE_BINS[-1] - 1)
        bins = np.maximum(np.searchsorted(SIDE_BINS, sides, side="right") - 1, 0)
        np.add.at(hist, bins, 1)
    return {"tokens": dict(tokens), "samples": dict(samples), "sides": hist.tolist()}


def add_totals(parts: list[dict[str, Any]], sign: int = 1) -> dict[str, Any]:
    """Sum (or with ``sign=-1`` negate the sum of) results of ``totals``."""
    tokens: Counter = Counter()
    samples: Counter = Counter()
    sides = np.zeros(len(SIDE_BINS) - 1, dtype=np.int64)
    for part in parts:
        for category, value in part["tokens"].items():
            tokens[category] += sign * value
        for category, value in part["samples"].items():
            samples[category] += sign * value
        sides += sign * np.array(part["sides"], dtype=np.int64)
    return {"tokens": dict(tokens), "samples": dict(samples), "sides": sides.tolist()}


def drops_uri(work: str, unit_name: str) -> str:
    """Where the dedup phase leaves one unit's dropped keys."""
    return storage.join(work, "dedup", f"{unit_name}.drops.jsonl")


def write_unit_drops(work: str, unit_name: str, drops: Table) -> None:
    """Store one unit's drop rows, in input order."""
    order = np.argsort(drops["node"], kind="stable")
    lines = [
        json.dumps({name: str(drops[name][i]) for name in DROP_FIELDS}, sort_keys=True)
        for i in order
    ]
    storage.write_text(drops_uri(work, unit_name), "".join(line + "\n" for line in lines))


def read_unit_drops(work: str, unit_name: str) -> dict[str, list[str]]:
    """key -> [reason, detail] of one unit (none when the dedup dropped nothing there)."""
    uri = drops_uri(work, unit_name)
    if not storage.exists(uri):
        return {}
    rows = [json.loads(line) for line in storage.read_text(uri).splitlines() if line.strip()]
    return {row["key"]: [row["reason"], row["detail"]] for row in rows}


def summary(everything: dict, dropped: dict, reasons: Counter, edges: Edges, comps: int) -> dict:
    """The dedup phase's result, stored as ``work/dedup.done``: what the mixture and manifest need."""
    kept = add_totals([everything, add_totals([dropped], sign=-1)])
    present = {c for c, n in kept["samples"].items() if n > 0}
    return {
        "available": {c: t for c, t in sorted(kept["tokens"].items()) if c in present},
        "side_hist": kept["sides"],
        "reasons": dict(sorted(reasons.items())),
        "stats": {
            "edges": int(len(edges.first)),
            "components": int(comps),
            "capped_buckets": int(edges.capped_buckets),
            "capped_bucket_members": int(edges.capped_members),
        },
    }


def route_partition(route: np.ndarray, parts: int) -> np.ndarray:
    """The partition (0 .. parts-1) of each route: a route group always lands in one."""
    return (mix64(route, salt=0x7061) % np.uint64(parts)).astype(np.int64)


def decide(sigs: Table, plan: DedupPlan) -> tuple[Table, Edges, int]:
    """Steps 2-5 in this process: (drop rows, edges, number of components).

    Route rows are cut into partitions as the Ray engine cuts them and handled one at a time:
    bounded memory, the same edges.
    """
    found = []
    for kind in plan.kinds:
        rows = route_rows(sigs, plan, kind)
        parts = 1 + len(rows["node"]) // PARTITION_ROWS
        part = route_partition(rows["route"], parts)
        found += [kind_edges(kind, take(rows, part == p), plan) for p in range(parts)]
    edges = Edges.merge(found)
    nodes, labels = components(edges.first, edges.second)
    drops = resolve(members_of(sigs, nodes, labels), plan)
    return drops, edges, int((nodes == labels).sum())  # a component's label is its first node


def run_local(plan: DedupPlan, units: list, work: str) -> dict:
    """The dedup phase of the local engine; writes the drop files and returns the summary."""
    sigs = concat([read_signatures(signatures_uri(work, u.name), u.index) for u in units])
    drops, edges, count = decide(sigs, plan)
    unit_of = drops["node"] >> 32
    for unit in units:
        mine = unit_of == unit.index
        if mine.any():
            write_unit_drops(work, unit.name, take(drops, mine))
    return summary(totals(sigs), totals(drops), Counter(drops["reason"]), edges, count)
