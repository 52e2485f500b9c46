"""Input discovery, up-front validation and streaming readers (WebDataset tar, Parquet, JSONL).

``plan_units`` expands input URIs (files or prefixes, local or ``s3://``) into work units and
checks every file's format from its first bytes *before* any sample is processed, so a wrong
path fails in seconds with the file named. ``read_unit`` then streams one unit's samples; a record
that cannot even be parsed becomes a ``bad_record`` rejection instead of vanishing.
"""

from __future__ import annotations

import base64
import json
import math
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from keye_model import storage
from keye_model.data.config import CurateConfig
from keye_model.data.operators import Rejection, is_media_ext
from keye_model.data.records import QA, Sample, safe_key, split_member_name

FORMATS = {".tar": "tar", ".parquet": "parquet", ".jsonl": "jsonl"}
IMAGE_COLUMNS = ("image", "jpg", "png", "jpeg", "webp", "image_bytes")
TEXT_COLUMNS = ("text", "caption", "txt")


@dataclass(frozen=True)
class WorkUnit:
    """One independently processable slice of the input: a file, or a synthetic block."""

    index: int
    kind: str  # tar | parquet | jsonl | synthetic
    uri: str  # input file URI, or "synthetic:<kinds>"
    start: int = 0  # synthetic: first stream index
    count: int = 0  # synthetic: number of samples

    @property
    def name(self) -> str:
        return f"{self.index:05d}"


@dataclass
class BadRecord:
    """A record the reader could not turn into a sample (counted as input, then rejected)."""

    key: str
    source: str
    rejection: Rejection
    raw: bytes = b""


def _format_of(uri: str) -> str | None:
    return FORMATS.get(PurePosixPath(uri.split("?")[0]).suffix.lower())


HEAD_BYTES = 1 << 20  # enough for the first JSONL record of any sane file


def parquet_schema_names(uri: str) -> list[str]:
    """Column names from a Parquet footer alone (two range reads on S3, no full download)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tail = storage.read_tail(uri, 8)
    if len(tail) < 8 or tail[4:] != b"PAR1":
        raise ValueError(f"input file {uri} is not Parquet (no trailing PAR1 magic)")
    footer_len = int.from_bytes(tail[:4], "little")
    footer = storage.read_tail(uri, footer_len + 8)
    # A stand-in file holding only the footer: enough for pyarrow to parse the schema.
    stub = b"PAR1" + footer
    return list(pq.read_schema(pa.BufferReader(stub)).names)


def _check_file(uri: str, fmt: str) -> None:
    """Raise an error naming ``uri`` unless it exists and its bytes look like ``fmt``."""
    try:
        head = storage.read_head(uri, HEAD_BYTES if fmt == "jsonl" else 4096)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"input file {uri} does not exist") from err
    except Exception as err:  # botocore errors: missing key, no bucket, no access
        raise FileNotFoundError(f"input file {uri} cannot be read: {err}") from err
    if not head:
        raise ValueError(f"input file {uri} is empty")
    if fmt == "tar" and head[257:262] != b"ustar":
        raise ValueError(f"input file {uri} is not a tar archive (no ustar header)")
    if fmt == "parquet":
        if head[:4] != b"PAR1":
            raise ValueError(f"input file {uri} is not Parquet (no PAR1 magic)")
        try:
            names = parquet_schema_names(uri)
        except (OSError, ValueError) as err:  # pyarrow.ArrowInvalid is a ValueError
            raise ValueError(f"input file {uri}: unreadable Parquet footer ({err})") from err
        if not set(names) & set(IMAGE_COLUMNS):
            raise ValueError(
                f"input file {uri} has no image column; expected one of {list(IMAGE_COLUMNS)}, got {sorted(names)}"
            )
    if fmt == "jsonl":
        first, newline, _ = head.partition(b"\n")
        if not newline and len(head) == HEAD_BYTES:
            raise ValueError(
                f"input file {uri}: first line longer than {HEAD_BYTES} bytes; not JSONL"
            )
        try:
            record = json.loads(first)
        except ValueError as err:
            raise ValueError(f"input file {uri}: first line is not JSON ({err})") from err
        if not isinstance(record, dict) or not ({"image", "video", "media"} & set(record)):
            raise ValueError(
                f"input file {uri}: records need an 'image' (or 'video') field with a path"
            )


def plan_units(cfg: CurateConfig, inputs: list[str]) -> list[WorkUnit]:
    """Expand and validate inputs into work units; synthetic blocks when ``inputs`` is empty."""
    if not inputs:
        block = cfg.shard_size
        kinds = ",".join(cfg.synthetic_kinds)
        return [
            WorkUnit(
                i,
                "synthetic",
                f"synthetic:{kinds}",
                start=i * block,
                count=min(block, cfg.num_synthetic - i * block),
            )
            for i in range(math.ceil(cfg.num_synthetic / block))
        ]
    files: list[tuple[str, str]] = []
    for uri in inputs:
        fmt = _format_of(uri)
        if fmt is not None:
            files.append((uri, fmt))
            continue
        if not storage.is_s3(uri) and storage.local_path(uri).is_file():
            raise ValueError(f"input file {uri}: unknown format; expected one of {sorted(FORMATS)}")
        if not storage.is_s3(uri) and not storage.local_path(uri).exists():
            raise FileNotFoundError(f"input {uri} does not exist")
        found = [(f, _format_of(f)) for f in storage.list_files(uri)]
        found = [(f, fmt) for f, fmt in found if fmt is not None]
        if not found:
            raise ValueError(f"input prefix {uri} holds no {sorted(FORMATS)} files")
        files += found
    for uri, fmt in files:
        _check_file(uri, fmt)
    return [WorkUnit(i, fmt, uri) for i, (uri, fmt) in enumerate(files)]


def _local_copy(uri: str, scratch: Path) -> Path:
    if storage.is_s3(uri):
        return storage.download(uri, scratch / PurePosixPath(uri).name)
    return storage.local_path(uri)


def read_unit(unit: WorkUnit, cfg: CurateConfig, scratch: Path) -> Iterator[Sample | BadRecord]:
    """Stream one unit's samples (or bad records) in a fixed order."""
    if unit.kind == "synthetic":
        from keye_model.data.synth import generate

        kinds = unit.uri.split(":", 1)[1].split(",")
        for sample in generate(
            kinds, unit.count, cfg.seed, cfg.synthetic_max_side, start=unit.start
        ):
            sample.key = f"{unit.name}/{sample.key}"
            yield sample
        return
    path = _local_copy(unit.uri, scratch)
    prefix = f"{unit.name}"
    reader = {"tar": _read_tar, "parquet": _read_parquet, "jsonl": _read_jsonl}[unit.kind]
    for item in reader(path, unit.uri, cfg):
        item.key = f"{prefix}/{safe_key(item.key)}"
        yield item


def _sample_from_fields(key: str, source: str, fields: dict[str, Any], cfg: CurateConfig) -> Sample:
    qa = fields.get("qa") or []
    if isinstance(qa, str):
        qa = json.loads(qa)
    metadata = fields.get("metadata") or {}
    if isinstance(metadata, str):
        metadata = json.loads(metadata)
    return Sample(
        key=key,
        source=source,
        category=fields.get("category") or cfg.default_category,
        text=fields.get("text") or fields.get("caption") or "",
        qa=[
            QA(**{k: v for k, v in turn.items() if k in ("question", "answer", "cot", "kind")})
            for turn in qa
        ],
        metadata=dict(metadata),
    )


def iter_tar_groups(path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) per sample: WebDataset groups consecutive members by key."""
    group_key, members = None, {}
    with tarfile.open(path, "r|*") as archive:
        for member in archive:
            if not member.isfile():
                continue
            key, ext = split_member_name(member.name)
            if key != group_key and group_key is not None:
                yield group_key, members
                members = {}
            group_key = key
            members[ext] = archive.extractfile(member).read()
    if group_key is not None:
        yield group_key, members


def _read_tar(path: Path, source: str, cfg: CurateConfig) -> Iterator[Sample | BadRecord]:
    """Samples of a WebDataset shard: media member + ``json`` fields and/or ``txt`` caption."""
    last = None
    try:
        for key, members in iter_tar_groups(path):
            last = key
            yield _tar_sample(key, members, source, cfg)
    except (tarfile.TarError, EOFError, OSError) as err:
        # A damaged archive: whatever follows the damage cannot be located, so it is recorded
        # as one rejected record naming the file; the samples read before it are kept.
        yield BadRecord(
            "_damaged_tail",
            source,
            Rejection("bad_record", f"tar archive damaged after {last!r}: {err}"),
        )


def _tar_sample(
    key: str, members: dict[str, bytes], source: str, cfg: CurateConfig
) -> Sample | BadRecord:
    fields: dict[str, Any] = {}
    try:
        if "json" in members:
            fields = json.loads(members["json"])
            if not isinstance(fields, dict):
                raise ValueError("json member is not an object")
        if "txt" in members and not fields.get("text"):
            fields["text"] = members["txt"].decode("utf-8")
        sample = _sample_from_fields(key, source, fields, cfg)
    except (ValueError, TypeError, UnicodeDecodeError) as err:
        return BadRecord(
            key,
            source,
            Rejection("bad_record", f"unreadable json/txt: {err}"),
            members.get("json", b""),
        )
    media = [ext for ext in members if is_media_ext(ext)]
    if media:
        sample.media_ext = "jpg" if media[0] == "jpeg" else media[0]
        sample.media = members[media[0]]
    return sample


def _read_parquet(path: Path, source: str, cfg: CurateConfig) -> Iterator[Sample | BadRecord]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    names = parquet.schema_arrow.names
    image_col = next((c for c in IMAGE_COLUMNS if c in names), None)
    if image_col is None:
        raise ValueError(
            f"input file {source} has no image column; expected one of {list(IMAGE_COLUMNS)}"
        )
    row = 0
    for batch in parquet.iter_batches(batch_size=64):
        for record in batch.to_pylist():
            key = str(
                record.get("key") or record.get("__key__") or record.get("id") or f"row{row:08d}"
            )
            row += 1
            media = record.get(image_col)
            ext = "jpg"
            if isinstance(media, dict):  # Hugging Face Image feature: {"bytes", "path"}
                ext = Path(media.get("path") or "x.jpg").suffix.lstrip(".").lower() or "jpg"
                media = media.get("bytes")
            fields = {k: record.get(k) for k in ("category", "qa", "metadata")}
            fields["text"] = next((record[c] for c in TEXT_COLUMNS if record.get(c)), "")
            try:
                sample = _sample_from_fields(key, source, fields, cfg)
            except (ValueError, TypeError) as err:
                yield BadRecord(key, source, Rejection("bad_record", f"row {row - 1}: {err}"))
                continue
            sample.media, sample.media_ext = media, "jpg" if ext == "jpeg" else ext
            yield sample


def _read_jsonl(path: Path, source: str, cfg: CurateConfig) -> Iterator[Sample | BadRecord]:
    """One JSON object per line; ``image`` is a path relative to the JSONL file (or absolute/S3)."""
    base = (
        source.rsplit("/", 1)[0]
        if storage.is_s3(source)
        else str(storage.local_path(source).parent)
    )
    with open(path, "rb") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError("line is not a JSON object")
                key = str(record.get("key") or f"line{line_no:08d}")
                sample = _sample_from_fields(key, source, record, cfg)
            except (ValueError, TypeError) as err:
                yield BadRecord(
                    f"line{line_no:08d}",
                    source,
                    Rejection("bad_record", f"line {line_no}: {err}"),
                    line,
                )
                continue
            ref = record.get("image") or record.get("video") or record.get("media")
            if ref:
                uri = ref if storage.is_s3(ref) or os.path.isabs(ref) else storage.join(base, ref)
                sample.media_ext = PurePosixPath(ref).suffix.lstrip(".").lower() or "jpg"
                sample.media_ext = "jpg" if sample.media_ext == "jpeg" else sample.media_ext
                try:
                    sample.media = storage.read_bytes(uri)
                except Exception as err:  # a missing file locally or on S3
                    yield BadRecord(
                        key,
                        source,
                        Rejection("media_missing", f"{uri}: {type(err).__name__}"),
                        line,
                    )
                    continue
            yield sample


def encode_rejected(
    key: str, source: str, category: str, rejection: Rejection, raw: bytes, max_bytes: int
) -> dict:
    """A rejected/ JSONL record; the original bytes ride along base64 when small."""
    record = {
        "key": key,
        "source": source,
        "category": category,
        "reason": rejection.reason,
        "detail": rejection.detail,
    }
    if raw and len(raw) <= max_bytes:
        record["bytes_b64"] = base64.b64encode(raw).decode("ascii")
    elif raw:
        record["bytes_len"] = len(raw)
    return record
