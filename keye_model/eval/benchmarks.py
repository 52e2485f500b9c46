"""The ten benchmarks: where their released files live, what a record must hold, the official prompt.

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
Prompt wording follows each benchmark's official template; where the official one is not
public or depends on a GPT judge we note it as *inferred*.
"""

from __future__ import annotations

import base64
import csv
import functools
import hashlib
import json
import mimetypes
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from keye_model.eval.extract import parse_gold_list
from keye_model.eval.scoring import CIRCULAR_OFFSET, OPTION_LETTERS, mcq_options

Record = dict[str, Any]


@dataclass(frozen=True)
class Prompt:
    """One question as the model sees it: text plus media files (images, videos)."""

    text: str
    images: tuple[Path, ...] = ()
    videos: tuple[Path, ...] = ()


@dataclass(frozen=True)
class Benchmark:
    """A benchmark's file patterns, required record fields, id field and prompt builder.

    ``required`` is what a released record must hold to be asked (media included); ``scored``
    the subset the official scorer reads (``score()`` checks only those: media are not needed);
    ``images`` the fields that may carry an image (inline ones are decoded to files on loading).
    """

    name: str
    patterns: tuple[str, ...]
    required: tuple[str, ...]
    key: str
    build: Callable[[Record, Path], Prompt]
    published: float | None = None  # Keye-VL-671B-A37B score (REFERENCE §2), percent
    scored: tuple[str, ...] = ()
    images: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------------
# media helpers


def _b64decode(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


_BASE64 = re.compile(r"[A-Za-z0-9+/=\s]+")
_IMAGE_EXT = {"image/png": ".png", "image/gif": ".gif", "image/webp": ".webp", "image/jpeg": ".jpg"}


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # e.g. a base64 string taken for a path: name too long
        return False


def store_image(data: bytes, media_dir: Path) -> Path:
    """Write image bytes once to ``media_dir`` under their content hash; the file's path."""
    name = hashlib.sha256(data).hexdigest()[:32] + _IMAGE_EXT[sniff_image_mime(data)]
    path = media_dir / name
    if not path.is_file():
        media_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{name}.{os.getpid()}.tmp")  # atomic: never a half-written image
        tmp.write_bytes(data)
        tmp.replace(path)
    return path.absolute()


def image_to_file(value: Any, folder: Path, media_dir: Path) -> Any:
    """An image field with inline bytes/base64 replaced by the path of its decoded file.

    Paths (to files under ``folder``) are kept; a value that is neither is returned unchanged,
    for the prompt builder to reject naming its record.
    """
    if isinstance(value, Mapping):
        if value.get("bytes"):
            return str(store_image(bytes(value["bytes"]), media_dir))
        return value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return str(store_image(bytes(value), media_dir))
    if not isinstance(value, str) or not value.strip():
        return value
    if len(value) < 512 and _is_file(folder / value):
        return value
    if not _BASE64.fullmatch(value):
        return value
    try:
        return str(store_image(_b64decode(value), media_dir))
    except ValueError:
        return value


def image_path(value: Any, root: Path, where: str) -> Path:
    """The image file an image field names: a path relative to ``root`` (or absolute)."""
    if isinstance(value, Mapping):
        value = value.get("path")
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: empty or inline image field (load records with load_benchmark)")
    if len(value) < 4096 and _is_file(root / value):
        return (root / value).absolute()
    raise ValueError(f"{where}: image is neither a file under {root} nor base64")


def video_path(root: Path, candidates: list[str], where: str) -> Path:
    """The first existing local video among candidate relative paths (nothing is downloaded)."""
    for rel in candidates:
        if rel and (root / rel).is_file():
            return root / rel
    raise FileNotFoundError(
        f"{where}: video not found under {root} (looked for {candidates}); place released videos there"
    )


def data_url(data: bytes, mime: str) -> str:
    """A ``data:`` URL carrying ``data`` base64-encoded."""
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def sniff_image_mime(data: bytes) -> str:
    """MIME type of image bytes from their magic number (PNG, JPEG, GIF, WebP; default JPEG)."""
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data[:3] == b"GIF":
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "image/jpeg"


# ---------------------------------------------------------------------------------------------
# prompt builders


def _vlmeval_mcq(item: Record, root: Path) -> Prompt:
    """VLMEvalKit ImageMCQ prompt: Hint, Question, Options, the selection instruction."""
    text = ""
    hint = item.get("hint")
    if hint is not None and str(hint).strip() and str(hint).lower() != "nan":
        text += f"Hint: {hint}\n"
    text += f"Question: {item['question']}\n"
    options = mcq_options(item)
    if options:
        text += "Options:\n" + "".join(f"{k}. {v}\n" for k, v in options.items())
        text += "Please select the correct answer from the options above. \n"
    return Prompt(text, (image_path(item["image"], root, f"index {item.get('index')}"),))


def _numbered_images(item: Record, root: Path, prefix: str, count: int) -> tuple[Path, ...]:
    out = []
    for k in range(1, count + 1):
        value = item.get(f"{prefix}{k}")
        if value is not None and value != "" and value != {}:
            out.append(image_path(value, root, f"{item.get('id')} {prefix}{k}"))
    return tuple(out)


def _mmmu(item: Record, root: Path) -> Prompt:
    """MMMU official: question, ``(A) option`` lines, letter instruction; open: short phrase."""
    images = _numbered_images(item, root, "image_", 7)
    if item.get("question_type", "multiple-choice") == "multiple-choice":
        options = parse_gold_list(item.get("options") or [])
        lines = "".join(f"({OPTION_LETTERS[i]}) {opt}\n" for i, opt in enumerate(options))
        text = f"{item['question']}\n\n{lines}\nAnswer with the option's letter from the given choices directly."
    else:
        text = f"{item['question']}\n\nAnswer the question using a single word or phrase."
    return Prompt(text, images)


def _mathvista(item: Record, root: Path) -> Prompt:
    """MathVista: the released ``query`` field is the official prompt (hint + question + choices)."""
    text = item.get("query")
    if not text:
        # Built like the released queries when a record lacks one (*inferred* wording).
        choices = item.get("choices") or []
        if item.get("question_type") == "multi_choice":
            hint = "Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end."
        elif item.get("answer_type") == "integer":
            hint = "Please answer the question requiring an integer answer and provide the final value, e.g., 1, 2, 3, at the end."
        elif item.get("answer_type") == "float":
            digits = int(item.get("precision") or 1)
            hint = (
                f"Please answer the question requiring a floating-point number with {digits} decimal "
                "place(s) and provide the final value at the end."
            )
        else:
            hint = "Please answer the question and provide the final answer at the end."
        text = f"Hint: {hint}\nQuestion: {item['question']}"
        if choices:
            text += "\nChoices:\n" + "\n".join(
                f"({OPTION_LETTERS[i]}) {c}" for i, c in enumerate(choices)
            )
    image = item.get("decoded_image") or item.get("image")
    return Prompt(text, (image_path(image, root, f"pid {item.get('pid')}"),))


def _olympiadbench(item: Record, root: Path) -> Prompt:
    """OlympiadBench official English prompt structure (paraphrased): boxed final answer."""
    subject = str(item.get("subject", "Math")).lower()
    subject = "mathematics" if subject.startswith("math") else subject
    multiple = str(item.get("is_multiple_answer", False)).lower() in ("true", "1")
    if multiple:
        answer_rule = (
            "The problem has multiple answers. Please end your solution with "
            '"So the final answer is \\boxed{answers separated by commas}." '
        )
    else:
        answer_rule = 'Please end your solution with "So the final answer is \\boxed{answer}." '
    text = (
        f"The following is an open-ended problem from an International {subject} competition. "
        "Please calculate the answer according to the given requirements and the information "
        "provided. Please use LaTeX format to represent the variables and formulas used in the "
        f"solution process and results. {answer_rule}and give the result explicitly.\n\n"
    )
    if item.get("context"):
        text += f"{item['context']}\n"
    text += str(item["question"])
    return Prompt(text, _numbered_images(item, root, "image_", 5))


def _videomme(item: Record, root: Path) -> Prompt:
    """Video-MME official prompt: best-answer instruction, question, options, 'The best answer is:'."""
    options = item["options"]
    if isinstance(options, str):
        options = parse_gold_list(options)
    text = (
        "Select the best answer to the following multiple-choice question based on the video. "
        "Respond with only the letter (A, B, C, or D) of the correct option.\n"
        f"{item['question']}\n" + "\n".join(str(o) for o in options) + "\nThe best answer is:"
    )
    vid = str(item.get("videoID") or item.get("video_id"))
    path = video_path(
        root,
        [f"videos/{vid}.mp4", f"data/{vid}.mp4", f"{vid}.mp4"],
        f"question {item.get('question_id')}",
    )
    return Prompt(text, (), (path,))


def _mmvu(item: Record, root: Path) -> Prompt:
    """MMVU official chain-of-thought prompt (multiple-choice or open-ended)."""
    if item.get("question_type") == "multiple-choice":
        options = "\n".join(f"{k}: {v}" for k, v in (item.get("choices") or {}).items() if v)
        text = (
            f"Question: {item['question']}\n{options}\n\n"
            "Answer the given multiple-choice question step by step. Begin by explaining your "
            "reasoning process clearly. Conclude by stating the final answer using the following "
            "format: 'Therefore, the final answer is: $LETTER' (without quotes), where $LETTER is "
            "one of the options. Think step by step before answering."
        )
    else:
        text = (
            f"Question: {item['question']}\n\n"
            "Answer the given question step by step. Begin by explaining your reasoning process "
            "clearly. Conclude by stating the final answer using the following format: "
            "'Therefore, the final answer is: 'Answer: $ANSWER' (without quotes), where $ANSWER "
            "is the final answer of the question. Think step by step before answering."
        )
    video = str(item.get("video", ""))
    rel = video.split("/resolve/main/", 1)[-1] if "/resolve/main/" in video else video
    path = video_path(root, [rel, f"videos/{Path(rel).name}"], f"id {item.get('id')}")
    return Prompt(text, (), (path,))


def _longvideobench(item: Record, root: Path) -> Prompt:
    """LongVideoBench prompt: question, ``A. candidate`` lines, answer-letter instruction."""
    options = "".join(f"{OPTION_LETTERS[i]}. {c}\n" for i, c in enumerate(item["candidates"]))
    text = f"{item['question']}\n{options}Answer with the option's letter from the given choices directly.\n"
    rel = str(item.get("video_path", ""))
    path = video_path(
        root, [rel, f"videos/{rel}", f"videos/{item.get('video_id')}.mp4"], f"id {item.get('id')}"
    )
    return Prompt(text, (), (path,))


def _visulogic(item: Record, root: Path) -> Prompt:
    """VisuLogic: the question (options inside) plus the step-by-step boxed-letter instruction."""
    text = (
        f"{item['question']}\nSolve the complex visual logical reasoning problem through "
        "step-by-step reasoning. Think about the reasoning process first and answer the question "
        "following this format: Answer: \\boxed{$LETTER}"
    )
    return Prompt(text, (image_path(item["image_path"], root, f"id {item.get('id')}"),))


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
            _vlmeval_mcq,
            95.74,
            _MCQ_SCORED,
            ("image",),
        ),
        Benchmark(
            "mmbench_cn",
            ("*.tsv",),
            _MCQ_FIELDS + ("category",),
            "index",
            _vlmeval_mcq,
            94.27,
            _MCQ_SCORED,
            ("image",),
        ),
        Benchmark(
            "mmmu",
            ("*.parquet", "*.jsonl", "*.json"),
            ("id", "question", "answer"),
            "id",
            _mmmu,
            83.78,
            ("id", "answer"),
            tuple(f"image_{k}" for k in range(1, 8)),
        ),
        Benchmark(
            "mmstar",
            ("*.tsv",),
            _MCQ_FIELDS,
            "index",
            _vlmeval_mcq,
            86.67,
            _MCQ_SCORED,
            ("image",),
        ),
        Benchmark(
            "realworldqa",
            ("*.tsv",),
            _MCQ_FIELDS,
            "index",
            _vlmeval_mcq,
            86.54,
            _MCQ_SCORED,
            ("image",),
        ),
        Benchmark(
            "mathvista",
            ("*.json", "*.jsonl", "*.parquet"),
            ("pid", "question", "answer", "question_type", "answer_type"),
            "pid",
            _mathvista,
            86.2,
            ("pid", "answer", "question_type", "answer_type"),
            ("decoded_image", "image"),
        ),
        Benchmark(
            "visulogic",
            ("*.jsonl", "*.json"),
            ("id", "question", "label", "image_path"),
            "id",
            _visulogic,
            35.4,
            ("id", "label"),
            ("image_path",),
        ),
        Benchmark(
            "olympiadbench",
            ("*.json", "*.jsonl", "*.parquet"),
            ("id", "question", "final_answer"),
            "id",
            _olympiadbench,
            74.92,
            ("id", "final_answer"),
            tuple(f"image_{k}" for k in range(1, 6)),
        ),
        Benchmark(
            "mmvu",
            ("*.json", "*.jsonl"),
            ("id", "question", "answer", "question_type", "video"),
            "id",
            _mmvu,
            86.6,
            ("id", "question", "answer"),
        ),
        Benchmark(
            "longvideobench",
            ("*.json", "*.jsonl", "*.parquet"),
            ("id", "question", "candidates", "correct_choice"),
            "id",
            _longvideobench,
            79.0,
            ("id", "candidates", "correct_choice"),
        ),
        Benchmark(
            "videomme",
            ("*.parquet", "*.json", "*.jsonl"),
            ("question_id", "question", "options", "answer", "videoID"),
            "question_id",
            _videomme,
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
