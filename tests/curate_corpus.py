"""Builders of messy curation corpora for the curate tests: real photos plus every corruption kind.

Each builder returns bytes; ``build_corpus`` writes a WebDataset tar, a Parquet file and a JSONL
file (with image files beside it) and returns the expected rejection reason of every key.
"""

from __future__ import annotations

import io
import json
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "real"
PHOTOS = sorted(p.name for p in FIXTURES.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
CAPTIONS = [
    "A bird perched on a thin branch against a pale sky.",
    "An orange cat sitting calmly on a wooden floor indoors.",
    "A bar chart comparing benchmark scores of several language models.",
    "A small square picture used for testing image processing code.",
    "Tall buildings of a city skyline seen from a busy street corner.",
    "Two people walking along a sandy beach near the ocean waves.",
    "A bowl of fresh fruit placed on a kitchen table by the window.",
    "Mountains covered with snow under a bright blue winter morning.",
    "A cartoon airplane flying between large fluffy clouds.",
    "A cartoon ship sailing on stylised waves under soft clouds.",
    "An illustrated poster announcing a new vision language model.",
    "A dashboard screenshot listing pipeline runs and their status.",
    "A colourful logo with bold letters on a transparent background.",
    "A quiet garden path lined with green hedges and red flowers.",
]
PER_KIND = 17  # >= 10% of the corpus for every corruption kind (see build_corpus)


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def noise_image(seed: int, width: int, height: int) -> Image.Image:
    """Distinct random pixels: never a near-duplicate of anything else."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def truncated_jpeg(photo: bytes) -> bytes:
    """A JPEG cut at 60%: the header parses, the scan data ends early."""
    image = Image.open(io.BytesIO(photo)).convert("RGB")
    data = encode(image, "JPEG", quality=90)
    return data[: int(len(data) * 0.6)]


def decompression_bomb(width: int = 40000, height: int = 40000) -> bytes:
    """A tiny valid PNG whose IHDR claims ``width`` x ``height`` pixels (CRC fixed up)."""
    data = bytearray(encode(Image.new("L", (8, 8))))
    ihdr = bytearray(data[12:29])  # b"IHDR" + 13 data bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    return bytes(data)


def near_copy(photo: bytes, i: int) -> bytes:
    """Resized (30-80%) and JPEG-recompressed (quality 25-70) copy of a photo."""
    image = Image.open(io.BytesIO(photo)).convert("RGB")
    scale = 0.3 + 0.5 * ((i * 7) % 11) / 10
    size = (max(32, int(image.width * scale)), max(32, int(image.height * scale)))
    return encode(image.resize(size, Image.BILINEAR), "JPEG", quality=25 + (i * 13) % 46)


def write_tar(path: Path, samples: list[tuple[str, str, bytes, dict]]) -> None:
    """WebDataset shard: <key>.<ext> media and <key>.json fields per sample."""
    with tarfile.open(path, "w") as archive:
        for key, ext, media, fields in samples:
            for name, data in (
                (f"{key}.{ext}", media),
                (f"{key}.json", json.dumps(fields).encode()),
            ):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))


def build_corpus(root: Path) -> tuple[list[str], dict[str, str]]:
    """Write tar + parquet + jsonl inputs under ``root``; return (input paths, key -> expected reason).

    Expected reason ``"kept"`` marks good samples. Order matters for dedup: originals (tar, the
    first input) precede their exact and near copies (parquet, the second input).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir(parents=True, exist_ok=True)
    photos = {name: (FIXTURES / name).read_bytes() for name in PHOTOS}
    names = list(photos)
    expected: dict[str, str] = {}

    # 1) tar: the 14 real photos (good) + corrupt media kinds.
    tar_samples = []
    for i, name in enumerate(names):
        ext = "png" if name.endswith(".png") else "jpg"
        tar_samples.append(
            (f"photo_{i:02d}", ext, photos[name], {"text": CAPTIONS[i], "category": "caption"})
        )
        expected[f"photo_{i:02d}"] = "kept"
    jpegs = [n for n in names if n.endswith((".jpg", ".jpeg"))]
    for k in range(PER_KIND):
        caption = {
            "text": f"Corrupted sample number {k} that should never be kept.",
            "category": "caption",
        }
        tar_samples.append(
            (f"trunc_{k:02d}", "jpg", truncated_jpeg(photos[jpegs[k % len(jpegs)]]), caption)
        )
        expected[f"trunc_{k:02d}"] = "truncated_image"
        tar_samples.append((f"empty_{k:02d}", "jpg", b"", caption))
        expected[f"empty_{k:02d}"] = "empty_file"
        tar_samples.append(
            (f"notimg_{k:02d}", "jpg", b"<html>not an image</html>" * (k + 1), caption)
        )
        expected[f"notimg_{k:02d}"] = "not_an_image"
        tar_samples.append((f"bomb_{k:02d}", "png", decompression_bomb(40000 + k, 40000), caption))
        expected[f"bomb_{k:02d}"] = "decompression_bomb"
    tar_path = root / "shard-000.tar"
    write_tar(tar_path, tar_samples)

    # 2) parquet: exact duplicates, near duplicates, too small, extreme aspect.
    rows = []
    for k in range(PER_KIND):
        i = k % len(names)
        rows.append(
            {
                "key": f"dup_{k:02d}",
                "image": photos[names[i]],
                "text": CAPTIONS[i],
                "category": "caption",
            }
        )
        expected[f"dup_{k:02d}"] = "exact_duplicate"
        rows.append(
            {
                "key": f"near_{k:02d}",
                "image": near_copy(photos[names[i]], k),
                "text": f"Recompressed copy {k} of a picture with a completely new description here.",
                "category": "caption",
            }
        )
        expected[f"near_{k:02d}"] = "near_duplicate_image"
        rows.append(
            {
                "key": f"small_{k:02d}",
                "image": encode(noise_image(100 + k, 6 + k, 9 + k)),
                "text": f"A very small thumbnail image, variant number {k}.",
                "category": "caption",
            }
        )
        expected[f"small_{k:02d}"] = "too_small"
        rows.append(
            {
                "key": f"aspect_{k:02d}",
                "image": encode(Image.new("RGB", (28 * (201 + k), 28), (k * 9, 80, 120))),
                "text": f"An extremely long and thin banner strip, variant {k}.",
                "category": "caption",
            }
        )
        expected[f"aspect_{k:02d}"] = "extreme_aspect"
    parquet_path = root / "part-000.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet_path)

    # 3) jsonl with image files beside it: bad text kinds, a video, a missing file, a broken line.
    media_dir = root / "media"
    media_dir.mkdir()
    lines = []
    bad_texts = [
        ("text_repetitive", lambda k: "buy now " * (12 + k)),
        ("text_low_alnum", lambda k: "@@ ## $$ %% ^^ && ** !! ?? ~~ " + "-" * k + " ok"),
        (
            "language",
            lambda k: (
                f"Dies ist eine ausführliche deutsche Bildbeschreibung mit vielen Wörtern, Nummer {k}."
            ),
        ),
        ("text_too_short", lambda k: "ok"),
    ]
    for k in range(PER_KIND):
        reason, make = bad_texts[k % len(bad_texts)]
        path = media_dir / f"text_{k:02d}.png"
        path.write_bytes(encode(noise_image(500 + k, 64, 64)))
        lines.append(
            {
                "key": f"badtext_{k:02d}",
                "image": f"media/{path.name}",
                "text": make(k),
                "category": "caption",
            }
        )
        expected[f"badtext_{k:02d}"] = reason
    video = media_dir / "video1.mp4"
    video.write_bytes((FIXTURES / "video1.mp4").read_bytes())
    lines.append(
        {
            "key": "video_00",
            "image": "media/video1.mp4",
            "text": "A short video clip recorded outdoors with some movement.",
            "category": "video",
        }
    )
    expected["video_00"] = "kept"
    lines.append(
        {
            "key": "missing_00",
            "image": "media/does_not_exist.jpg",
            "text": "This record points at a file that is gone.",
        }
    )
    expected["missing_00"] = "media_missing"
    jsonl_path = root / "records.jsonl"
    text = "\n".join(json.dumps(line) for line in lines)
    jsonl_path.write_text(text + "\n{this line is not json\n")
    expected["line00000020"] = "bad_record"
    return [str(tar_path), str(parquet_path), str(jsonl_path)], expected
