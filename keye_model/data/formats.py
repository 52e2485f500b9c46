"""Record schemas of curation inputs: keye's own, Data-Juicer's and LLaVA's, as plain conversions.

Each converter turns one parsed JSON record (or Parquet row) into a ``Sample`` without media
plus the media references in text order; the reader loads the bytes. A record that does not
fit its schema raises ``ValueError`` with the field named, which the reader turns into a
``bad_record`` rejection. Placeholders of the source format become keye's chat placeholders
(see ``keye_model.data.records``), one per media item:

- keye: ``{"image": "a.jpg" | [...], "video": ..., "text", "qa", "category", "metadata"}``;
- Data-Juicer: ``{"text": "<__dj__image> ... <|__dj__eoc|>", "images": [...], "videos": [...]}``,
  the n-th ``<__dj__image>`` standing for ``images[n]``; chunk ends become line breaks;
- LLaVA: ``{"id", "image": "a.jpg" | [...], "conversations": [{"from": "human", "value":
  "<image>\\nQ"}, {"from": "gpt", "value": "A"}, ...]}``, each human/gpt pair one QA turn.

A format is told apart by the first record's fields (``record_format``); a text without any
placeholder keeps its media in front, as LLaVA and Data-Juicer both read it.
"""

from __future__ import annotations

import json
import re
from typing import Any

from keye_model.data.config import CurateConfig
from keye_model.data.records import QA, Sample
from keye_model.processing.chat import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER

KEYE, DATA_JUICER, LLAVA = "jsonl", "data_juicer", "llava"
DJ_TOKENS = {"image": "<__dj__image>", "video": "<__dj__video>"}
DJ_END_OF_CHUNK = "<|__dj__eoc|>"
LLAVA_TOKENS = {"image": "<image>", "video": "<video>"}
QUESTION_ROLES = ("human", "user")
ANSWER_ROLES = ("gpt", "assistant")
KEYE_MARKERS = {"image": IMAGE_PLACEHOLDER, "video": VIDEO_PLACEHOLDER}
FORMAT_HINT = (
    "expected 'image'/'video' paths (keye), 'images'/'videos' lists (Data-Juicer) "
    "or 'conversations' (LLaVA)"
)


def record_format(record: Any) -> str | None:
    """Which schema a record follows (``jsonl`` = keye, ``data_juicer``, ``llava``), or None."""
    if not isinstance(record, dict):
        return None
    if "conversations" in record:
        return LLAVA
    if isinstance(record.get("images"), list) or isinstance(record.get("videos"), list):
        return DATA_JUICER
    if {"image", "video", "media"} & set(record):
        return KEYE
    return None


def sample_from_fields(
    key: str, source: str, fields: dict[str, Any], cfg: CurateConfig, media_count: int = 1
) -> Sample:
    """A media-less sample from keye's field names; several media and no category: interleaved."""
    qa = fields.get("qa") or []
    if isinstance(qa, str):
        qa = json.loads(qa)
    metadata = fields.get("metadata") or {}
    if isinstance(metadata, str):
        metadata = json.loads(metadata)
    default = "interleaved" if media_count > 1 else cfg.default_category
    return Sample(
        key=key,
        source=source,
        category=fields.get("category") or default,
        text=fields.get("text") or fields.get("caption") or "",
        qa=[
            QA(**{k: v for k, v in turn.items() if k in ("question", "answer", "cot", "kind")})
            for turn in qa
        ],
        metadata=dict(metadata),
    )


def record_key(record: dict, fallback: str) -> str:
    """The record's own id (``key``, else ``id``), else ``fallback``."""
    for name in ("key", "id"):
        if record.get(name) not in (None, ""):
            return str(record[name])
    return fallback


def ref_list(record: dict, name: str) -> list[str]:
    """A media field as a list of path strings (a single string, a list, or absent)."""
    value = record.get(name)
    if value in (None, "", []):
        return []
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
        raise ValueError(f"'{name}' must be a path or a list of paths, got {value!r:.80}")
    return values


def place_media(
    texts: list[str], tokens: dict[str, str], refs: dict[str, list[str]]
) -> tuple[list[str], list[str]]:
    """Swap a format's placeholders for keye's; the media refs in placeholder order.

    ``tokens`` and ``refs`` map ``image``/``video`` to the format's placeholder and paths. The
    n-th placeholder of a kind (counted across ``texts`` in order) stands for the n-th path of
    that kind. Without any placeholder, images then videos are placed in front of the text.
    """
    counts = {kind: sum(t.count(token) for t in texts) for kind, token in tokens.items()}
    if not any(counts.values()):
        return texts, [*refs.get("image", []), *refs.get("video", [])]
    for kind, token in tokens.items():
        if counts[kind] != len(refs.get(kind, [])):
            raise ValueError(
                f"text holds {counts[kind]} {token} placeholders for "
                f"{len(refs.get(kind, []))} {kind} paths"
            )
    pattern = re.compile("|".join(re.escape(t) for t in tokens.values()))
    kind_of = {token: kind for kind, token in tokens.items()}
    queues = {kind: iter(refs.get(kind, [])) for kind in tokens}
    ordered: list[str] = []

    def swap(match: re.Match) -> str:
        kind = kind_of[match.group()]
        ordered.append(next(queues[kind]))
        return KEYE_MARKERS[kind]

    return [pattern.sub(swap, t) for t in texts], ordered


def keye_record(record: dict, key: str, source: str, cfg: CurateConfig) -> tuple[Sample, list[str]]:
    """keye's own record: ``image``/``video``/``media`` path(s) plus keye's text fields."""
    images = ref_list(record, "image") + ref_list(record, "media")
    refs = images + ref_list(record, "video")
    return sample_from_fields(key, source, record, cfg, len(refs)), refs


def data_juicer_record(
    record: dict, key: str, source: str, cfg: CurateConfig
) -> tuple[Sample, list[str]]:
    """A Data-Juicer record: ``text`` with ``<__dj__image>``/``<__dj__video>`` placeholders."""
    text = record.get("text", "")
    if not isinstance(text, str):
        raise ValueError(f"'text' must be a string, got {type(text).__name__}")
    if record.get("audios"):
        raise ValueError("'audios' are not curated: the model has no audio input")
    refs = {"image": ref_list(record, "images"), "video": ref_list(record, "videos")}
    (text,), ordered = place_media([text], DJ_TOKENS, refs)
    # A chunk end closes a semantic unit: a line break keeps the units apart in the prose.
    text = re.sub(rf"\s*{re.escape(DJ_END_OF_CHUNK)}\s*", "\n", text).strip()
    meta = record.get("meta") if isinstance(record.get("meta"), dict) else {}
    fields = {"text": text, "category": record.get("category"), "metadata": meta}
    return sample_from_fields(key, source, fields, cfg, len(ordered)), ordered


def llava_turns(conversations: Any) -> tuple[list[tuple[str, str]], str]:
    """(question, answer) pairs and the system prompt of a LLaVA ``conversations`` list."""
    if not isinstance(conversations, list):
        raise ValueError(f"'conversations' must be a list of turns, got {conversations!r:.80}")
    pairs: list[tuple[str, str]] = []
    system: list[str] = []
    question: str | None = None
    for i, turn in enumerate(conversations):
        where = f"conversations[{i}]"
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise ValueError(f"{where} needs 'from' and a string 'value', got {turn!r:.80}")
        role, value = turn.get("from"), turn["value"]
        if role == "system":
            system.append(value)
        elif role in QUESTION_ROLES:
            if question is not None:
                raise ValueError(f"{where}: a second question before the first was answered")
            question = value
        elif role in ANSWER_ROLES:
            if question is None:
                raise ValueError(f"{where}: an answer with no question before it")
            pairs.append((question, value))
            question = None
        else:
            raise ValueError(
                f"{where}.from is {role!r}; expected one of "
                f"{[*QUESTION_ROLES, *ANSWER_ROLES, 'system']}"
            )
    if question is not None:
        raise ValueError("the conversation ends with an unanswered question")
    if not pairs:
        raise ValueError("'conversations' holds no question/answer pair")
    return pairs, "\n".join(system)


def llava_record(
    record: dict, key: str, source: str, cfg: CurateConfig
) -> tuple[Sample, list[str]]:
    """A LLaVA record: ``image`` path(s) and human/gpt ``conversations`` -> QA turns."""
    pairs, system = llava_turns(record.get("conversations"))
    refs = {"image": ref_list(record, "image"), "video": ref_list(record, "video")}
    texts, ordered = place_media([t for pair in pairs for t in pair], LLAVA_TOKENS, refs)
    qa = [{"question": q, "answer": a} for q, a in zip(texts[::2], texts[1::2])]
    metadata = {"system": system} if system else {}
    fields = {"qa": qa, "category": record.get("category"), "metadata": metadata}
    return sample_from_fields(key, source, fields, cfg, len(ordered)), ordered


CONVERTERS = {KEYE: keye_record, DATA_JUICER: data_juicer_record, LLAVA: llava_record}
