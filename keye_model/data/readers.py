"""Input discovery, up-front validation and streaming readers (WebDataset tar, Parquet, JSON).

``plan_units`` expands input URIs (files or prefixes, local or ``s3://``) into work units and
checks every file's format from its first bytes *before* any sample is processed, so a wrong
path fails in seconds with the file named. ``read_unit`` then streams one unit's samples; a record
that cannot even be parsed becomes a ``bad_record`` rejection instead of vanishing.

The container comes from the file name (``.tar``, ``.parquet``, ``.jsonl`` = one record a line,
``.json`` = one array of records); the record schema of JSON files (keye, Data-Juicer, LLaVA; see
``keye_model.data.formats``) from the fields of the first record. Parquet files are read as the
Hugging Face ``datasets`` library writes them: image columns of ``{bytes, path}`` structs (or
lists of them), found by name or by type. A WebDataset sample may hold several images as
``<key>.<ext>``, ``<key>.1.<ext>``, ``<key>.2.<ext>``, ...
"""

from __future__ import annotations

import base64
import io
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
from keye_model.data.formats import (
    CONVERTERS,
    FORMAT_HINT,
    KEYE,
    llava_record,
    record_format,
    record_key,
    sample_from_fields,
)
from keye_model.data.operators import Rejection, is_media_ext
from keye_model.data.records import Media, Sample, media_marker_error, safe_key, split_member_name

FORMATS = {".tar": "tar", ".parquet": "parquet", ".jsonl": "jsonl", ".json": "json"}
IMAGE_COLUMNS = ("image", "images", "jpg", "png", "jpeg", "webp", "image_bytes")
TEXT_COLUMNS = ("text", "caption", "txt")
JSON_CHUNK = 1 << 20  # characters read at a time from a JSON array


@dataclass(frozen=True)
class WorkUnit:
    """One independently processable slice of the input: a file, or a synthetic block."""

    index: int
    kind: str  # tar | parquet | jsonl (keye records) | data_juicer | llava | synthetic
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


def parquet_schema(uri: str) -> Any:
    """The Arrow schema from a Parquet footer alone (two range reads on S3, no full download)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tail = storage.read_tail(uri, 8)
    if len(tail) < 8 or tail[4:] != b"PAR1":
        raise ValueError(f"input file {uri} is not Parquet (no trailing PAR1 magic)")
    footer_len = int.from_bytes(tail[:4], "little")
    footer = storage.read_tail(uri, footer_len + 8)
    # A stand-in file holding only the footer: enough for pyarrow to parse the schema.
    stub = b"PAR1" + footer
    return pq.read_schema(pa.BufferReader(stub))


def _is_image_struct(arrow_type: Any) -> bool:
    """A Hugging Face ``Image`` feature on disk: ``struct<bytes: binary, path: string>``."""
    import pyarrow as pa

    return pa.types.is_struct(arrow_type) and {"bytes", "path"} <= {
        arrow_type.field(i).name for i in range(arrow_type.num_fields)
    }


def image_column(schema: Any) -> str | None:
    """The column holding images: a known name, else any image struct (or list of them)."""
    import pyarrow as pa

    names = schema.names
    named = next((c for c in IMAGE_COLUMNS if c in names), None)
    if named is not None:
        return named
    for field in schema:
        kind = field.type
        if pa.types.is_list(kind) or pa.types.is_large_list(kind):
            kind = kind.value_type
        if _is_image_struct(kind):
            return field.name
    return None


def _first_json_record(uri: str, head: bytes) -> Any:
    """The first record of a JSON Lines file or JSON array, parsed from the file's head."""
    text = head.decode("utf-8-sig", errors="ignore")  # a cut multi-byte character at the end
    truncated = len(head) == HEAD_BYTES
    if _format_of(uri) == "jsonl":
        first, newline, _ = text.lstrip().partition("\n")
        if not newline and truncated:
            raise ValueError(
                f"input file {uri}: first line longer than {HEAD_BYTES} bytes; not JSONL"
            )
        try:
            return json.loads(first)
        except ValueError as err:
            raise ValueError(f"input file {uri}: first line is not JSON ({err})") from err
    try:
        for _, record, _ in iter_json_array(io.StringIO(text)):
            return record
    except ValueError as err:
        more = f"; or a first record over {HEAD_BYTES} bytes" if truncated else ""
        raise ValueError(f"input file {uri}: not a JSON array of records ({err}{more})") from err
    raise ValueError(f"input file {uri}: an empty JSON array")


def _check_file(uri: str, fmt: str) -> str:
    """The unit kind of ``uri``; an error naming it unless it exists and reads as ``fmt``."""
    json_like = fmt in ("jsonl", "json")
    try:
        head = storage.read_head(uri, HEAD_BYTES if json_like else 4096)
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
            schema = parquet_schema(uri)
        except (OSError, ValueError) as err:  # pyarrow.ArrowInvalid is a ValueError
            raise ValueError(f"input file {uri}: unreadable Parquet footer ({err})") from err
        if image_column(schema) is None:
            raise ValueError(
                f"input file {uri} has no image column; expected one of {list(IMAGE_COLUMNS)} "
                f"or a {{bytes, path}} image struct, got {sorted(schema.names)}"
            )
    if json_like:
        record = _first_json_record(uri, head)
        kind = record_format(record)
        if kind is None:
            got = sorted(record)[:12] if isinstance(record, dict) else type(record).__name__
            raise ValueError(f"input file {uri}: records need media; {FORMAT_HINT}; got {got}")
        return kind
    return fmt


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
    kinds = [_check_file(uri, fmt) for uri, fmt in files]
    return [WorkUnit(i, kind, uri) for i, ((uri, _), kind) in enumerate(zip(files, kinds))]


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
    if unit.kind == "tar":
        items = _read_tar(path, unit.uri, cfg)
    elif unit.kind == "parquet":
        items = _read_parquet(path, unit.uri, cfg)
    else:
        items = _read_json(path, unit.uri, unit.kind, cfg)
    for item in items:
        if isinstance(item, Sample):
            item = _checked(item)
        item.key = f"{unit.name}/{safe_key(item.key)}"
        yield item


def _checked(sample: Sample) -> Sample | BadRecord:
    """The sample, or a bad record when its placeholders do not match its media."""
    error = media_marker_error(sample)
    if error is None:
        return sample
    return BadRecord(sample.key, sample.source, Rejection("bad_record", error))


def _base_of(source: str) -> str:
    """The folder of an input file: relative media paths start there."""
    if storage.is_s3(source):
        return source.rsplit("/", 1)[0]
    return str(storage.local_path(source).parent)


def _media_uri(ref: str, base: str) -> str:
    return ref if storage.is_s3(ref) or os.path.isabs(ref) else storage.join(base, ref)


def _norm_ext(ext: str) -> str:
    return "jpg" if ext == "jpeg" else ext


def _ext_of(name: str) -> str:
    return _norm_ext(PurePosixPath(name).suffix.lstrip(".").lower() or "jpg")


def _load_media(refs: list[str], base: str) -> list[Media] | Rejection:
    """The bytes of every referenced file, or a ``media_missing`` rejection naming the first gap."""
    items = []
    for i, ref in enumerate(refs):
        uri = _media_uri(ref, base)
        try:
            items.append(Media(_ext_of(ref), storage.read_bytes(uri)))
        except Exception as err:  # a missing file locally or on S3
            where = f"media {i + 1} of {len(refs)}: " if len(refs) > 1 else ""
            return Rejection("media_missing", f"{where}{uri}: {type(err).__name__}")
    return items


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
    media = _tar_media(members)
    if isinstance(media, Rejection):
        return BadRecord(key, source, media)
    fields: dict[str, Any] = {}
    try:
        if "json" in members:
            fields = json.loads(members["json"])
            if not isinstance(fields, dict):
                raise ValueError("json member is not an object")
        if "txt" in members and not fields.get("text"):
            fields["text"] = members["txt"].decode("utf-8")
        sample = sample_from_fields(key, source, fields, cfg, len(media))
    except (ValueError, TypeError, UnicodeDecodeError) as err:
        return BadRecord(
            key,
            source,
            Rejection("bad_record", f"unreadable json/txt: {err}"),
            members.get("json", b""),
        )
    sample.set_media(media)
    return sample


def _tar_media(members: dict[str, bytes]) -> list[Media] | Rejection:
    """Media members in order: ``<ext>`` first, then ``<i>.<ext>`` by ``i``."""
    found = []
    for name, data in members.items():
        index, _, ext = name.rpartition(".")
        if is_media_ext(ext) and (not index or index.isdigit()):
            found.append((int(index or -1), _norm_ext(ext), data))
    positions = [i for i, _, _ in found]
    if len(set(positions)) < len(positions):
        names = sorted(n for n in members if is_media_ext(n.rpartition(".")[2]))
        return Rejection("bad_record", f"media members {names} leave the image order ambiguous")
    return [Media(ext, data) for _, ext, data in sorted(found, key=lambda f: f[0])]


def _read_parquet(path: Path, source: str, cfg: CurateConfig) -> Iterator[Sample | BadRecord]:
    """Rows with image bytes or Hugging Face image structs; LLaVA ``conversations`` become QA."""
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    image_col = image_column(parquet.schema_arrow)
    if image_col is None:
        raise ValueError(f"input file {source} has no image column")
    base = _base_of(source)
    row = 0
    for batch in parquet.iter_batches(batch_size=64):
        for record in batch.to_pylist():
            key = str(
                record.get("key") or record.get("__key__") or record.get("id") or f"row{row:08d}"
            )
            row += 1
            try:
                sample = _parquet_sample(record, image_col, key, source, base, cfg)
            except (ValueError, TypeError, KeyError) as err:
                yield BadRecord(key, source, Rejection("bad_record", f"row {row - 1}: {err}"))
                continue
            yield sample


def _parquet_sample(
    record: dict, image_col: str, key: str, source: str, base: str, cfg: CurateConfig
) -> Sample | BadRecord:
    cell = record.get(image_col)
    cells = cell if isinstance(cell, list) else [] if cell is None else [cell]
    if record.get("conversations") is not None:
        # LLaVA turns in a row: the n-th <image> placeholder stands for the n-th image cell.
        conversation = {
            "conversations": record["conversations"],
            "image": [str(i) for i in range(len(cells))],
            "category": record.get("category"),
        }
        sample, order = llava_record(conversation, key, source, cfg)
        cells = [cells[int(i)] for i in order]
    else:
        fields = {k: record.get(k) for k in ("category", "qa", "metadata")}
        fields["text"] = next((record[c] for c in TEXT_COLUMNS if record.get(c)), "")
        sample = sample_from_fields(key, source, fields, cfg, len(cells))
    media = []
    for i, value in enumerate(cells):
        item = _parquet_media(value, base)
        if isinstance(item, Rejection):
            where = f"image {i + 1} of {len(cells)}: " if len(cells) > 1 else ""
            return BadRecord(key, source, Rejection(item.reason, where + item.detail))
        media.append(item)
    sample.set_media(media)
    return sample


def _parquet_media(value: Any, base: str) -> Media | Rejection:
    """One image cell: raw bytes, a path, or a ``{bytes, path}`` struct (bytes first, else the file)."""
    if isinstance(value, bytes):
        return Media("jpg", value)
    if isinstance(value, str):
        value = {"bytes": None, "path": value}
    if not isinstance(value, dict):
        raise ValueError(
            f"image cell is {type(value).__name__}, not bytes or a {{bytes, path}} struct"
        )
    path = value.get("path") or ""
    if value.get("bytes") is not None:
        return Media(_ext_of(path), value["bytes"])
    if not path:
        return Rejection("no_media", "image struct holds neither bytes nor a path")
    loaded = _load_media([path], base)
    return loaded if isinstance(loaded, Rejection) else loaded[0]


def _read_json(
    path: Path, source: str, kind: str, cfg: CurateConfig
) -> Iterator[Sample | BadRecord]:
    """Records of a JSON Lines file or a JSON array in one schema; media paths relative to the file."""
    convert, base = CONVERTERS[kind], _base_of(source)
    for label, fallback, record, raw in _json_records(path, source):
        if isinstance(record, Rejection):
            yield BadRecord(fallback, source, record, raw)
            continue
        key = fallback
        try:
            if not isinstance(record, dict):
                raise ValueError(f"{label} is not a JSON object")
            key = record_key(record, fallback)
            if kind != KEYE and record_format(record) not in (kind, None):
                raise ValueError(f"{label} is a {record_format(record)} record in a {kind} file")
            sample, refs = convert(record, key, source, cfg)
        except (ValueError, TypeError) as err:
            yield BadRecord(key, source, Rejection("bad_record", f"{label}: {err}"), raw)
            continue
        media = _load_media(refs, base)
        if isinstance(media, Rejection):
            yield BadRecord(key, source, media, raw)
            continue
        sample.set_media(media)
        yield sample


def _json_records(path: Path, source: str) -> Iterator[tuple[str, str, Any, bytes]]:
    """(label, fallback key, parsed record or Rejection, raw bytes) per record of the file."""
    if _format_of(source) == "jsonl":
        with open(path, "rb") as handle:
            for line_no, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                label, fallback = f"line {line_no}", f"line{line_no:08d}"
                try:
                    record = json.loads(line)
                except ValueError as err:
                    # One broken line loses only itself: the next line starts afresh.
                    record = Rejection("bad_record", f"{label}: {err}")
                yield label, fallback, record, line
        return
    with open(path, encoding="utf-8-sig") as handle:
        index = -1
        try:
            for index, record, raw in iter_json_array(handle):
                yield f"record {index}", f"item{index:08d}", record, raw.encode("utf-8")
        except ValueError as err:
            # Past a syntax error an array has no next element to find; the rest is one bad record.
            detail = f"JSON array unreadable after record {index}: {err}"
            yield "tail", "_damaged_tail", Rejection("bad_record", detail), b""


def iter_json_array(handle: Any) -> Iterator[tuple[int, Any, str]]:
    """(index, value, raw text) of each element of a top-level JSON array, read in chunks.

    Memory holds one element and one chunk, not the file: LLaVA instruction sets are single JSON
    files of a gigabyte. ``json``'s own decoder parses each element where it starts.
    """
    decoder = json.JSONDecoder()
    buf, pos, eof = "", 0, False

    def more() -> bool:
        nonlocal buf, pos, eof
        chunk = "" if eof else handle.read(JSON_CHUNK)
        eof = not chunk
        buf, pos = buf[pos:] + chunk, 0
        return bool(chunk)

    def peek() -> str:
        nonlocal pos
        while True:
            while pos < len(buf) and buf[pos].isspace():
                pos += 1
            if pos < len(buf) or not more():
                return buf[pos : pos + 1]

    if peek() != "[":
        raise ValueError(f"expected '[' at the start, got {peek()!r}")
    pos += 1
    if peek() == "]":
        return
    index = 0
    while True:
        peek()  # the decoder wants the value itself at ``pos``, not the blanks before it
        while True:
            try:
                value, end = decoder.raw_decode(buf, pos)
            except json.JSONDecodeError as err:
                if more():
                    continue
                raise ValueError(f"record {index}: {err}") from err
            # A number or literal that ends the buffer may continue in the next chunk.
            if end < len(buf) or not more():
                break
        yield index, value, buf[pos:end]
        pos, index = end, index + 1
        sep = peek()
        if sep == "]":
            return
        if sep != ",":
            raise ValueError(f"expected ',' or ']' after record {index - 1}, got {sep!r}")
        pos += 1


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
