"""The one benchmark registry: released files, required fields, official prompt, scorer, synthetic set.

Every benchmark is one ``Benchmark`` entry in ``BENCHMARKS``; the evaluation stage, ``score``,
``write_synthetic``, the recipe's benchmark list and the report all read it, so adding a
benchmark is adding one entry. The per-benchmark functions live below it and never import it:
prompt builders in ``keye_model.eval.prompts``, official scorers in ``keye_model.eval.scoring``,
held-out set writers in ``keye_model.eval.synthetic``.

A data root (local directory or ``s3://`` prefix) holds one folder per benchmark with the files
as released, media paths relative to that folder::

    DATA/mmbench_en/MMBench_DEV_EN.tsv          VLMEvalKit TSV, base64 images
    DATA/mmmu/validation.parquet|.jsonl|.json   MMMU HF records (image_1..image_7)
    DATA/mathvista/testmini.json + images/      MathVista annotations (dict pid -> record)
    DATA/olympiadbench/*.json                   OlympiadBench splits (images inline or paths)
    DATA/visulogic/data.jsonl + images/         VisuLogic records
    DATA/videomme/*.parquet|*.json + videos/    Video-MME records, videos/<videoID>.mp4
    DATA/mmvu/validation.json + videos/         MMVU records (video URL -> videos/<subject>/<n>.mp4)
    DATA/longvideobench/lvb_val.json + videos/  LongVideoBench records (video_path)

Each benchmark turns a record into one OpenAI chat request: the official prompt text with the
thinking suffix (``/think``, ``/no_think``, or none) and its images/videos as ``image_url`` /
``video_url`` parts. Images and videos both travel as ``file://`` URLs in the request (a path,
not the bytes), so building every request holds no media in memory. Images released inline
(base64 in VLMEvalKit TSVs, HF ``{"bytes"}`` dicts, base64 JSON fields) are decoded once, record
by record while loading, into a content-addressed media folder (``load_benchmark``'s
``media_dir``), and the record's field then names that file; images released as files are used
in place. The in-process backend reads those files directly; the HTTP backend inlines each file
as a base64 data URL only while sending its request (``inline_media``), or keeps ``file://`` for
a server on the same filesystem (``keye serve local``). The prediction-cache key
(``prompt_hash``) hashes media *content*, streamed in chunks (``media_digest``), so the key
survives moving the data root or the media folder, and changes when a file's bytes change.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import mimetypes
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from keye_model.eval import prompts as pr
from keye_model.eval import scoring as sc
from keye_model.eval import synthetic as syn
from keye_model.eval.prompts import Prompt, Record, data_url, image_to_file, sniff_image_mime
from keye_model.eval.scoring import CIRCULAR_OFFSET, Judge
from keye_model.log import get_logger

log = get_logger("evaluate")


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: its files, fields, id, official prompt and scorer, synthetic writer, 671B score.

    ``required`` is what a released record must hold to be asked (media included); ``scored``
    the subset the official scorer reads (``score()`` checks only those: media are not needed);
    ``images`` the fields that may carry an image (inline ones are decoded to files on loading);
    ``synthesize(folder, n, seed, offset)`` writes a held-out set in the released layout.
    """

    name: str
    patterns: tuple[str, ...]
    required: tuple[str, ...]
    key: str
    build: Callable[[Record, Path], Prompt]
    scorer: Callable[..., dict]
    synthesize: Callable[[Path, int, int, int], None]
    published: float | None = None  # Keye-VL-671B-A37B score (REFERENCE §2), percent
    scored: tuple[str, ...] = ()
    images: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------------
# the registry

_MCQ_FIELDS = ("index", "question", "answer", "image", "A", "B")
_MCQ_SCORED = ("index", "answer", "A", "B")

BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in [
        Benchmark(
            "mmbench_en",
            ("*.tsv",),
            _MCQ_FIELDS + ("category",),
            "index",
            pr.vlmeval_mcq_prompt,
            sc.score_mmbench,
            syn.write_mmbench_en,
            95.74,
            _MCQ_SCORED,
            ("image",),
        ),
        Benchmark(
            "mmbench_cn",
            ("*.tsv",),
            _MCQ_FIELDS + ("category",),
            "index",
            pr.vlmeval_mcq_prompt,
            sc.score_mmbench,
            syn.write_mmbench_cn,
            94.27,
            _MCQ_SCORED,
            ("image",),
        ),
        Benchmark(
            "mmmu",
            ("*.parquet", "*.jsonl", "*.json"),
            ("id", "question", "answer"),
            "id",
            pr.mmmu_prompt,
            sc.score_mmmu,
            syn.write_mmmu,
            83.78,
            ("id", "answer"),
            tuple(f"image_{k}" for k in range(1, 8)),
        ),
        Benchmark(
            "mmstar",
            ("*.tsv",),
            _MCQ_FIELDS,
            "index",
            pr.vlmeval_mcq_prompt,
            sc.score_vlmeval_mcq,
            syn.write_mmstar,
            86.67,
            _MCQ_SCORED,
            ("image",),
        ),
        Benchmark(
            "realworldqa",
            ("*.tsv",),
            _MCQ_FIELDS,
            "index",
            pr.vlmeval_mcq_prompt,
            sc.score_vlmeval_mcq,
            syn.write_realworldqa,
            86.54,
            _MCQ_SCORED,
            ("image",),
        ),
        Benchmark(
            "mathvista",
            ("*.json", "*.jsonl", "*.parquet"),
            ("pid", "question", "answer", "question_type", "answer_type"),
            "pid",
            pr.mathvista_prompt,
            sc.score_mathvista,
            syn.write_mathvista,
            86.2,
            ("pid", "answer", "question_type", "answer_type"),
            ("decoded_image", "image"),
        ),
        Benchmark(
            "visulogic",
            ("*.jsonl", "*.json"),
            ("id", "question", "label", "image_path"),
            "id",
            pr.visulogic_prompt,
            sc.score_visulogic,
            syn.write_visulogic,
            35.4,
            ("id", "label"),
            ("image_path",),
        ),
        Benchmark(
            "olympiadbench",
            ("*.json", "*.jsonl", "*.parquet"),
            ("id", "question", "final_answer"),
            "id",
            pr.olympiadbench_prompt,
            sc.score_olympiadbench,
            syn.write_olympiadbench,
            74.92,
            ("id", "final_answer"),
            tuple(f"image_{k}" for k in range(1, 6)),
        ),
        Benchmark(
            "mmvu",
            ("*.json", "*.jsonl"),
            ("id", "question", "answer", "question_type", "video"),
            "id",
            pr.mmvu_prompt,
            sc.score_mmvu,
            syn.write_mmvu,
            86.6,
            ("id", "question", "answer"),
        ),
        Benchmark(
            "longvideobench",
            ("*.json", "*.jsonl", "*.parquet"),
            ("id", "question", "candidates", "correct_choice"),
            "id",
            pr.longvideobench_prompt,
            sc.score_longvideobench,
            syn.write_longvideobench,
            79.0,
            ("id", "candidates", "correct_choice"),
        ),
        Benchmark(
            "videomme",
            ("*.parquet", "*.json", "*.jsonl"),
            ("question_id", "question", "options", "answer", "videoID"),
            "question_id",
            pr.videomme_prompt,
            sc.score_videomme,
            syn.write_videomme,
            79.0,
            ("question_id", "answer"),
        ),
    ]
}


def get_benchmark(name: str) -> Benchmark:
    """The benchmark called ``name`` (clear error naming the known ones)."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {sorted(BENCHMARKS)}")
    return BENCHMARKS[name]


def score(
    benchmark: str,
    items: Sequence[Mapping],
    responses: Sequence[str],
    seed: int = 0,
    judge: Judge | None = None,
) -> dict:
    """Score raw responses against official-schema items with the benchmark's official rule."""
    spec = get_benchmark(benchmark)
    items, responses = list(items), list(responses)
    if len(items) != len(responses):
        raise ValueError(f"{benchmark}: {len(items)} items but {len(responses)} responses")
    bad = [i for i, item in enumerate(items) if not isinstance(item, Mapping)]
    if bad:
        raise TypeError(
            f"{benchmark}: item {bad[0]} is {type(items[bad[0]]).__name__}, not a record"
        )
    validate(items, spec, f"{benchmark} items", fields=spec.scored)
    return spec.scorer(benchmark, items, responses, seed=seed, judge=judge)


def write_synthetic(root: str | Path, benchmarks: Sequence[str], n: int, seed: int) -> Path:
    """Write held-out synthetic sets for ``benchmarks`` under ``root/<benchmark>/``."""
    root = Path(root)
    specs = [get_benchmark(name) for name in benchmarks]  # every name checked before writing
    for b_index, spec in enumerate(specs):
        folder = root / spec.name
        folder.mkdir(parents=True, exist_ok=True)
        # Disjoint sample ranges per benchmark so no two sets share a question.
        spec.synthesize(folder, n, seed, b_index * 100_000)
        log.info(
            "wrote held-out synthetic %s (%d questions, seed %d) to %s", spec.name, n, seed, folder
        )
    return root


# ---------------------------------------------------------------------------------------------
# loading released files


def _read_tsv(path: Path, to_file: Callable[[Any], Any]) -> list[Record]:
    csv.field_size_limit(sys.maxsize)
    rows: list[Record] = []
    stored: set[str] = set()  # indices of rows whose own image was inline (now a file)
    with path.open(newline="", encoding="utf-8") as f:
        # Row by row, so at most one row's base64 image is held at a time.
        for raw in csv.DictReader(f, delimiter="\t"):
            row = dict(raw)
            image = row.get("image")
            if isinstance(image, str) and len(image) > 64:
                row["image"] = to_file(image)
                stored.add(str(row.get("index")))
            rows.append(row)
    # VLMEvalKit stores an image once; other rows may hold the index of the row that has it.
    by_index = {str(r.get("index")): r.get("image") for r in rows}
    for row in rows:
        image = row.get("image") or ""
        if str(row.get("index")) in stored:
            continue
        if image and len(image) <= 64 and image in stored:
            row["image"] = by_index[image]
        elif image:
            row["image"] = to_file(image)
    return rows


def _iter_records(path: Path) -> Iterator[Record]:
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)
        return
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        # Batch by batch: inline image bytes of the whole file are never held at once.
        for batch in pq.ParquetFile(path).iter_batches(batch_size=64):
            yield from batch.to_pylist()
        return
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, Mapping):  # MathVista: {pid: record}
        yield from ({"pid": str(k), **v} if "pid" not in v else dict(v) for k, v in data.items())
        return
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list or object of records")
    yield from data


def _read_records(path: Path, bench: Benchmark, media_dir: Path) -> list[Record]:
    """Records of one released file, inline images decoded to files in ``media_dir`` as read."""
    folder = path.parent

    def to_file(value: Any) -> Any:
        return image_to_file(value, folder, media_dir)

    if path.suffix == ".tsv":
        return _read_tsv(path, to_file)
    out = []
    for rec in _iter_records(path):
        if isinstance(rec, dict):
            for name in bench.images:
                if rec.get(name) is not None:
                    rec[name] = to_file(rec[name])
        out.append(rec)
    return out


def find_files(root: Path, bench: Benchmark) -> list[Path]:
    """Released record files of ``bench`` under its folder (first matching pattern wins)."""
    folder = root / bench.name
    if not folder.is_dir():
        raise FileNotFoundError(f"benchmark folder not found: {folder} (expected {bench.patterns})")
    for pattern in bench.patterns:
        files = sorted(p for p in folder.glob(pattern) if p.is_file())
        if files:
            return files
    raise FileNotFoundError(f"{folder}: no file matching {bench.patterns}")


def validate(
    records: list[Record], bench: Benchmark, where: str, fields: tuple[str, ...] | None = None
) -> None:
    """Reject records lacking a field (default ``bench.required``) or with duplicate ids, naming both."""
    seen: set[str] = set()
    for i, rec in enumerate(records):
        missing = [f for f in (fields or bench.required) if f not in rec or rec[f] is None]
        if missing:
            raise ValueError(
                f"{where}: record {i} ({bench.key}={rec.get(bench.key)!r}) lacks field(s) {missing}"
            )
        key = str(rec[bench.key])
        if key in seen:
            raise ValueError(f"{where}: duplicate {bench.key} {key!r}")
        seen.add(key)


def load_benchmark(
    root: str | Path, name: str, limit: int | None = None, media_dir: str | Path | None = None
) -> tuple[list[Record], Path]:
    """Records of benchmark ``name`` under a local data root, validated; and the media folder.

    Inline images are decoded once into ``media_dir`` (default ``<root>/<name>/.media``; the
    stage passes a scratch folder) and their fields replaced by the files' absolute paths.
    """
    bench = get_benchmark(name)
    root = Path(root)
    media_dir = Path(media_dir) if media_dir is not None else root / name / ".media"
    records: list[Record] = []
    files = find_files(root, bench)
    for path in files:
        records.extend(_read_records(path, bench, media_dir))
    validate(records, bench, ", ".join(str(p) for p in files))
    if limit is not None:
        records = _limit(records, bench, limit)
    return records, root / name


def _limit(records: list[Record], bench: Benchmark, limit: int) -> list[Record]:
    if bench.name.startswith("mmbench"):
        # Keep whole circular groups: the first ``limit`` questions with all their rotations.
        groups = sorted({int(float(r["index"])) % CIRCULAR_OFFSET for r in records})[:limit]
        keep = set(groups)
        return [r for r in records if int(float(r["index"])) % CIRCULAR_OFFSET in keep]
    return records[:limit]


# ---------------------------------------------------------------------------------------------
# requests


def to_messages(prompt: Prompt, suffix: str) -> list[dict]:
    """OpenAI chat messages: media parts first (as ``file://`` URLs), then text + suffix."""
    parts: list[dict] = []
    for path in prompt.images:
        parts.append({"type": "image_url", "image_url": {"url": Path(path).absolute().as_uri()}})
    for path in prompt.videos:
        parts.append({"type": "video_url", "video_url": {"url": Path(path).absolute().as_uri()}})
    parts.append({"type": "text", "text": prompt.text + suffix})
    return [{"role": "user", "content": parts}]


def file_url_path(url: str) -> Path | None:
    """The local path of a ``file://`` URL, None for any other URL."""
    return Path(unquote(urlparse(url).path)) if url.startswith("file://") else None


def _map_media_urls(messages: list[dict], fn: Callable[[str, str], str]) -> list[dict]:
    """A copy of ``messages`` with every media part's URL replaced by ``fn(kind, url)``."""
    out = []
    for message in messages:
        content = message.get("content")
        if not isinstance(content, list):
            out.append(message)
            continue
        parts = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in ("image_url", "video_url") and isinstance(part.get(kind), dict):
                url = part[kind].get("url", "")
                part = {**part, kind: {**part[kind], "url": fn(kind, url)}}
            parts.append(part)
        out.append({**message, "content": parts})
    return out


@functools.lru_cache(maxsize=4096)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    # Keyed by size and mtime too, so an edited file is hashed again within one process.
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def media_digest(path: str | Path) -> str:
    """SHA-256 of a media file's content, streamed in 1 MiB chunks (memory independent of size)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"media file not found: {path}")
    st = path.stat()
    return _file_digest(str(path), st.st_size, st.st_mtime_ns)


def inline_media(messages: list[dict]) -> list[dict]:
    """``messages`` with ``file://`` media read now and sent as base64 data URLs (one request's worth)."""

    def inline(kind: str, url: str) -> str:
        path = file_url_path(url)
        if path is None:
            return url
        if not path.is_file():
            raise FileNotFoundError(f"{kind} file not found: {path}")
        data = path.read_bytes()
        if kind == "image_url":
            return data_url(data, sniff_image_mime(data))
        return data_url(data, mimetypes.guess_type(path.name)[0] or "video/mp4")

    return _map_media_urls(messages, inline)


def prompt_hash(messages: list[dict], max_new_tokens: int) -> str:
    """Stable hash of a request (prompt, media content and budget): the prediction cache key."""

    def content(kind: str, url: str) -> str:
        path = file_url_path(url)
        return url if path is None else f"sha256:{media_digest(path)}"

    blob = json.dumps(
        {"messages": _map_media_urls(messages, content), "max_new_tokens": max_new_tokens},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
