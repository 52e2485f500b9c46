"""RL data: verifiable prompts read from curated shards, and the cold-start kept set written back.

Prompts come from the same WebDataset shards the training stages read (``keye_model.train.data
.ShardIndex``): the first QA turn of each sample is the question, its answer the reference (the
content of a ``\\boxed{}`` when the answer is written that way). Media are written once to a
folder and referenced by ``file://`` URLs, which both rollouts accept (the server rollout inlines
them as data URLs).

The cold-start kept set goes back out as shards of the same format (``<out>/shards/*.tar``), one
sample per kept response with the reasoning as ``cot``, so the SFT stage trains on it unchanged.
"""

from __future__ import annotations

import tarfile
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlparse

from keye_model.rl.sampling import RLPrompt

_VIDEO_EXTS = ("mp4", "webm", "mkv", "mov", "avi")


def load_prompts(
    data: str, media_dir: str | Path, cache_dir: str | Path, categories: Sequence[str] = ()
) -> list[RLPrompt]:
    """Every sample of ``data`` with a QA turn as an ``RLPrompt`` (media saved under ``media_dir``).

    ``categories`` keeps only samples of those curated categories (empty: all).
    """
    from keye_model.eval.extract import last_boxed
    from keye_model.train.data import ShardIndex

    index = ShardIndex(data, cache_dir)
    media_root = Path(media_dir)
    media_root.mkdir(parents=True, exist_ok=True)
    prompts = []
    for ref in index.refs:
        if categories and ref.category not in categories:
            continue
        sample = index.read(ref)
        turns = sample.get("qa") or []
        if not turns or not str(turns[0].get("answer", "")).strip():
            continue  # captions and transcriptions have nothing to verify
        turn = turns[0]
        exts = [sample.get("media_ext")] + list(sample.get("extra_media_ext") or [])
        parts = []
        for i, (blob, ext) in enumerate(zip(sample["images"], exts)):
            path = media_root / f"{ref.key}.{i}.{ext or 'bin'}"
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)  # keys carry their shard folder
                path.write_bytes(blob)
            kind = "video_url" if ext in _VIDEO_EXTS else "image_url"
            parts.append({"type": kind, kind: {"url": path.resolve().as_uri()}})
        question = str(turn["question"]).strip()
        answer = str(turn["answer"]).strip()
        messages = [{"role": "user", "content": [*parts, {"type": "text", "text": question}]}]
        gold = last_boxed(answer) or answer
        prompts.append(RLPrompt(ref.key, messages, question, gold))
    if not prompts:
        where = f" in categories {list(categories)}" if categories else ""
        raise ValueError(f"--data {data}: no sample{where} has a question with an answer to verify")
    return prompts


def _media_of(prompt: RLPrompt) -> list[tuple[str, bytes]]:
    """(extension, bytes) of every file:// media part of the prompt, in order."""
    out = []
    for message in prompt.messages:
        content = message.get("content")
        if isinstance(content, str) or content is None:
            continue
        for part in content:
            kind = part.get("type")
            if kind in ("image_url", "video_url"):
                value = part[kind]
                url = value["url"] if isinstance(value, dict) else value
                path = Path(unquote(urlparse(url).path))
                out.append((path.suffix.lstrip(".") or "bin", path.read_bytes()))
    return out


def write_sft_shards(
    examples: Sequence, out_dir: str | Path, category: str = "cold_start", shard_size: int = 1000
) -> list[Path]:
    """Write kept (prompt, response) pairs as curated-format shards under ``out_dir/shards``."""
    from keye_model.data.curate import add_member
    from keye_model.data.records import QA, Media, Sample
    from keye_model.processing import parse_thinking

    shard_dir = Path(out_dir) / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    archive = None
    try:
        for i, ex in enumerate(examples):
            if i % shard_size == 0:
                if archive is not None:
                    archive.close()
                paths.append(shard_dir / f"cold-start-{len(paths):05d}.tar")
                archive = tarfile.open(paths[-1], "w", format=tarfile.PAX_FORMAT)
            thinking, answer = parse_thinking(ex.response)
            sample = Sample(
                key=f"cs{i:08d}",
                source=f"cold_start:{ex.prompt.id}",
                category=category,
                qa=[QA(ex.prompt.question, answer, thinking or "")],
                metadata={"prompt_id": ex.prompt.id, "gold": ex.prompt.gold},
            )
            sample.set_media([Media(ext, blob) for ext, blob in _media_of(ex.prompt)])
            for name, blob in sample.members():
                add_member(archive, name, blob)
    finally:
        if archive is not None:
            archive.close()
    return paths
