"""Training data: curated WebDataset shards -> chat-formatted, tokenized samples -> packed batches.

Shape legend: B micro-batch rows, L tokens per row, N image patches, D patch dim (3*14*14).

- ``ShardIndex`` lists every curated sample (headers only) from ``<data>/shards/*.tar``, local
  or ``s3://`` (S3 shards are cached in a local folder first), and reads one sample on demand.
- ``render`` turns a sample into ChatML messages: QA turns become user/assistant turns in one of
  the thinking modes; caption/OCR samples become "describe"/"read" instructions.
- ``tokenize`` runs ``KeyeProcessor`` (vision pads expanded to the exact feature count) and marks
  the target tokens: everything the assistant says, through its ``<|im_end|>``.
- ``Packer`` fills rows of ``seq_len`` tokens with whole samples; ``collate`` restarts positions
  at 0 for every sample, which is what makes attention per-sample in the LM (transformers builds a
  block-diagonal causal mask from restarting position ids; flash-attn varlen on GPU), while the
  ViT always attends within one image (``grid_thw``).

The empty ``<think></think>`` of a non-thinking answer is a target like any other token: nothing
in the chat template inserts it, so the model must learn to emit it to say "I chose not to think"
(auto mode) and to keep one response format in every mode. Its 2-4 tokens count in the loss
normaliser like every other target token.
"""

from __future__ import annotations

import io
import json
import random
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from keye_model import storage
from keye_model.processing.tokens import IM_END, IM_START, THINK_END, THINK_START

IGNORE = -100
THINK_MODES = ("think", "no_think", "auto")
DESCRIBE = "Describe the image."
READ = "Read all the text in the image."
# Categories whose text is a transcription of the image rather than a description.
TRANSCRIPTION = ("ocr", "document")


@dataclass(frozen=True)
class SampleRef:
    """Where one curated sample lives, plus what the mixture needs to weigh it."""

    shard: str
    key: str
    category: str
    has_cot: bool


class ShardIndex:
    """Every sample of a curated dataset, listed from its shards; samples are read on demand."""

    def __init__(self, data: str, cache_dir: str | Path):
        shards_uri = storage.join(data, "shards")
        uris = [u for u in storage.list_files(shards_uri) if u.endswith(".tar")]
        if not uris:
            raise FileNotFoundError(
                f"--data {data}: no WebDataset shards under {shards_uri} (run keye stage curate first)"
            )
        self.local: dict[str, Path] = {}
        cache = Path(cache_dir)
        for uri in uris:
            self.local[uri] = (
                storage.download(uri, cache / Path(uri).name) if storage.is_s3(uri) else Path(uri)
            )
        self.refs: list[SampleRef] = []
        for uri, path in self.local.items():
            for key, members in _group_members(path).items():
                header = json.loads(members["json"])
                has_cot = any(turn.get("cot") for turn in header.get("qa", []))
                self.refs.append(SampleRef(uri, key, header.get("category", ""), has_cot))

    def read(self, ref: SampleRef) -> dict[str, Any]:
        """The sample's header plus ``images``: its media bytes in text order."""
        members = _group_members(self.local[ref.shard])[ref.key]
        header = json.loads(members.pop("json"))
        members.pop("txt", None)
        media = [members[k] for k in sorted(members, key=_media_order)]
        header["images"] = media
        return header


def _media_order(ext_key: str) -> tuple[int, str]:
    index, _, _ = ext_key.partition(".")
    return (int(index), ext_key) if index.isdigit() else (-1, ext_key)


_MEMBER_CACHE: dict[Path, dict[str, dict[str, bytes]]] = {}


def _group_members(path: Path) -> dict[str, dict[str, bytes]]:
    """``{key: {ext: bytes}}`` of one tar (multi-image members ``<key>.<i>.<ext>`` keep ``<i>.<ext>``)."""
    if path not in _MEMBER_CACHE:
        grouped: dict[str, dict[str, bytes]] = {}
        with tarfile.open(path) as archive:
            for member in archive:
                if not member.isfile():
                    continue
                key, _, ext = member.name.partition(".")
                grouped.setdefault(key, {})[ext] = archive.extractfile(member).read()
        _MEMBER_CACHE.clear()  # one shard at a time: memory stays bounded by the largest shard
        _MEMBER_CACHE[path] = grouped
    return {k: dict(v) for k, v in _MEMBER_CACHE[path].items()}


def choose_mode(rng: random.Random, think_mix: Sequence[float]) -> str:
    """A thinking mode drawn with the configured shares (think, no_think, auto)."""
    return rng.choices(THINK_MODES, weights=think_mix)[0]


def assistant_text(answer: str, cot: str, mode: str) -> str:
    """The assistant turn: ``<think>cot</think>`` then the answer; an empty block when not thinking."""
    thinks = cot and mode in ("think", "auto")
    reasoning = f"\n{cot.strip()}\n" if thinks else "\n\n"
    return f"{THINK_START}{reasoning}{THINK_END}\n\n{answer.strip()}"


def render(sample: dict[str, Any], mode: str) -> list[dict[str, Any]]:
    """ChatML messages of one curated sample; images go with the first user turn."""
    images = [{"type": "image"} for _ in sample.get("images", [])]
    turns = sample.get("qa") or []
    if not turns:
        instruction = READ if sample.get("category") in TRANSCRIPTION else DESCRIBE
        turns = [{"question": instruction, "answer": sample.get("text", ""), "cot": ""}]
    suffix = {"think": "/think", "no_think": "/no_think", "auto": ""}[mode]
    messages: list[dict[str, Any]] = []
    for index, turn in enumerate(turns):
        text = {"type": "text", "text": turn["question"].strip() + suffix}
        content = [*images, text] if index == 0 else [text]
        messages.append({"role": "user", "content": content})
        messages.append(
            {
                "role": "assistant",
                "content": assistant_text(turn["answer"], turn.get("cot", ""), mode),
            }
        )
    return messages


def target_mask(input_ids: Sequence[int], tokenizer, loss_on: str) -> list[bool]:
    """Which tokens are predicted: assistant turns (through ``<|im_end|>``), or all text tokens.

    A role header is ``<|im_start|>role\\n``; the tokens after an assistant header up to and
    including the next ``<|im_end|>`` are targets. With ``loss_on="all"`` every token but vision
    pads and the first token (nothing predicts it) is a target.
    """
    if loss_on not in ("assistant", "all"):
        raise ValueError(f"loss_on must be 'assistant' or 'all', got {loss_on!r}")
    im_start = tokenizer.convert_tokens_to_ids(IM_START)
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    if loss_on == "all":
        vision = set(tokenizer.convert_tokens_to_ids(_vision_tokens()))
        return [i > 0 and tok not in vision for i, tok in enumerate(input_ids)]
    mask = [False] * len(input_ids)
    i = 0
    while i < len(input_ids):
        if input_ids[i] != im_start:
            i += 1
            continue
        header_end = i + 1
        while header_end < len(input_ids) and "\n" not in tokenizer.decode(
            input_ids[i + 1 : header_end + 1]
        ):
            header_end += 1
        role = tokenizer.decode(input_ids[i + 1 : header_end + 1]).strip()
        j = header_end + 1
        while j < len(input_ids) and input_ids[j] != im_end:
            if role == "assistant":
                mask[j] = True
            j += 1
        if role == "assistant" and j < len(input_ids):
            mask[j] = True  # <|im_end|>: the model must learn to stop
        i = j + 1
    return mask


def _vision_tokens() -> list[str]:
    from keye_model.processing import tokens

    return [tokens.IMAGE_PAD, tokens.VIDEO_PAD, tokens.FAST_VIDEO_PAD]


@dataclass
class Tokenized:
    """One sample ready for packing: token ids, labels, patches and their grids."""

    input_ids: list[int]
    labels: list[int]
    pixel_values: torch.Tensor | None  # (N, D)
    grid_thw: torch.Tensor | None  # (images, 3)
    key: str = ""

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def targets(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE)


def tokenize(
    processor, messages: list[dict], images: list[bytes], loss_on: str, key: str = ""
) -> Tokenized:
    """Chat template + ``KeyeProcessor`` (exact vision pads) + the target mask as labels."""
    from PIL import Image

    text = processor.apply_chat_template(messages, add_generation_prompt=False)
    pil = [Image.open(io.BytesIO(data)).convert("RGB") for data in images]
    batch = processor(text=text, images=pil or None, return_tensors="pt", padding=False)
    ids = batch["input_ids"][0].tolist()
    mask = target_mask(ids, processor.tokenizer, loss_on)
    labels = [tok if keep else IGNORE for tok, keep in zip(ids, mask)]
    return Tokenized(ids, labels, batch.get("pixel_values"), batch.get("image_grid_thw"), key)


@dataclass
class Batch:
    """One micro-batch of packed rows (tensors on CPU) plus bookkeeping for metrics."""

    input_ids: torch.Tensor  # (B, L)
    labels: torch.Tensor  # (B, L), IGNORE where no loss
    position_ids: torch.Tensor  # (B, L), restarting at 0 for every sample
    segment_ids: torch.Tensor  # (B, L), a distinct id per sample in the micro-batch, -1 for padding
    pixel_values: torch.Tensor | None  # (N, D)
    image_grid_thw: torch.Tensor | None  # (images, 3), in row-major token order
    real_tokens: int
    samples: int
    keys: list[str] = field(default_factory=list)

    @property
    def targets(self) -> int:
        return int((self.labels != IGNORE).sum())

    def model_inputs(self) -> dict[str, Any]:
        """Keyword arguments of ``KeyeVLMoeForConditionalGeneration.forward`` (no mask: packing)."""
        inputs = {
            "input_ids": self.input_ids,
            "position_ids": self.position_ids,
            "use_cache": False,
        }
        if self.pixel_values is not None:
            inputs["pixel_values"] = self.pixel_values
            inputs["image_grid_thw"] = self.image_grid_thw
        return inputs


def collate(rows: list[list[Tokenized]], pad_id: int, length: int | None = None) -> Batch:
    """Stack rows of samples into a micro-batch; pads go at the end of each row.

    ``length`` fixes L (packing: seq_len); None pads to the longest row (pad-to-longest).
    """
    width = length or max(sum(len(s) for s in row) for row in rows)
    ids, labels, positions, segments = [], [], [], []
    pixels, grids, keys = [], [], []
    segment = 0
    for row in rows:
        r_ids, r_labels, r_pos, r_seg = [], [], [], []
        for sample in row:
            r_ids += sample.input_ids
            r_labels += sample.labels
            r_pos += list(range(len(sample)))
            r_seg += [segment] * len(sample)
            segment += 1
            keys.append(sample.key)
            if sample.pixel_values is not None:
                pixels.append(sample.pixel_values)
                grids.append(sample.grid_thw)
        gap = width - len(r_ids)
        if gap < 0:
            raise ValueError(f"a row holds {len(r_ids)} tokens, more than its length {width}")
        # Padding continues the last sample's positions: a causal model never lets real tokens
        # see later pads, and continuing positions keeps pad-only tails out of the packed mask.
        start = r_pos[-1] + 1 if r_pos else 0
        ids.append(r_ids + [pad_id] * gap)
        labels.append(r_labels + [IGNORE] * gap)
        positions.append(r_pos + list(range(start, start + gap)))
        segments.append(r_seg + [-1] * gap)
    return Batch(
        input_ids=torch.tensor(ids, dtype=torch.long),
        labels=torch.tensor(labels, dtype=torch.long),
        position_ids=torch.tensor(positions, dtype=torch.long),
        segment_ids=torch.tensor(segments, dtype=torch.long),
        pixel_values=torch.cat(pixels) if pixels else None,
        image_grid_thw=torch.cat(grids) if grids else None,
        real_tokens=sum(len(s) for row in rows for s in row),
        samples=segment,
        keys=keys,
    )


class Packer:
    """First-fit packing of whole samples into rows of at most ``seq_len`` tokens.

    Up to ``open_rows`` rows stay open; a sample goes into the first open row with room, else it
    opens a new row, and when too many are open the fullest one is emitted. Deterministic for a
    given sample stream, so the data position is simply "rows emitted". Samples longer than
    ``seq_len`` are skipped and counted (``too_long``), never cut through an image.
    """

    def __init__(self, seq_len: int, packing: bool = True, open_rows: int = 8):
        self.seq_len = seq_len
        self.packing = packing
        self.open_rows = open_rows
        self.rows: list[list[Tokenized]] = []
        self.too_long = 0

    def add(self, sample: Tokenized) -> list[list[Tokenized]]:
        """Add a sample; return the rows it completed (none or one)."""
        if len(sample) > self.seq_len:
            self.too_long += 1
            return []
        if not self.packing:
            return [[sample]]
        for index, row in enumerate(self.rows):
            used = sum(len(s) for s in row)
            if used + len(sample) <= self.seq_len:
                row.append(sample)
                return [self.rows.pop(index)] if used + len(sample) == self.seq_len else []
        self.rows.append([sample])
        if len(self.rows) <= self.open_rows:
            return []
        fullest = max(range(len(self.rows)), key=lambda i: sum(len(s) for s in self.rows[i]))
        return [self.rows.pop(fullest)]


def epoch_order(
    refs: Sequence[SampleRef],
    weights: dict[str, float],
    long_cot_ratio: float | None,
    seed: int,
    epoch: int,
) -> list[int]:
    """Sample indices of one epoch: category weights as repeat counts, then a seeded shuffle.

    A weight w repeats a sample floor(w) times plus once more with probability frac(w) (seeded),
    so an epoch's mixture matches the weights in expectation. ``long_cot_ratio`` (SFT) reweighs
    samples with and without a chain of thought so that share of the epoch has one.
    """
    rng = random.Random(f"{seed}:{epoch}")
    scale = {True: 1.0, False: 1.0}
    if long_cot_ratio is not None:
        cot = sum(1 for r in refs if r.has_cot and weights.get(r.category, 0) > 0)
        plain = sum(1 for r in refs if not r.has_cot and weights.get(r.category, 0) > 0)
        if cot and plain:  # keep the epoch's size, move its share of CoT samples to the ratio
            scale = {
                True: long_cot_ratio * (cot + plain) / cot,
                False: (1 - long_cot_ratio) * (cot + plain) / plain,
            }
    order: list[int] = []
    for index, ref in enumerate(refs):
        weight = weights.get(ref.category, 0.0) * scale[ref.has_cot]
        copies = int(weight) + (1 if rng.random() < weight - int(weight) else 0)
        order += [index] * copies
    rng.shuffle(order)
    return order


def iter_rows(
    index: ShardIndex,
    processor,
    *,
    weights: dict[str, float],
    seq_len: int,
    packing: bool,
    loss_on: str,
    think_mix: Sequence[float],
    long_cot_ratio: float | None,
    seed: int,
    stats: dict[str, int],
) -> Iterator[list[Tokenized]]:
    """Endless stream of rows (lists of samples), epoch after epoch, fully determined by ``seed``."""
    if not any(weights.get(r.category, 0) > 0 for r in index.refs):
        raise ValueError(
            f"no curated sample belongs to the stage's categories {sorted(weights)}; "
            f"the data has {sorted({r.category for r in index.refs})}"
        )
    packer = Packer(seq_len, packing)
    epoch = 0
    while True:
        for i in epoch_order(index.refs, weights, long_cot_ratio, seed, epoch):
            ref = index.refs[i]
            rng = random.Random(f"{seed}:{epoch}:{ref.key}")
            sample = index.read(ref)
            mode = choose_mode(rng, think_mix)
            tokenized = tokenize(
                processor, render(sample, mode), sample["images"], loss_on, ref.key
            )
            stats["too_long"] = packer.too_long
            yield from packer.add(tokenized)
        epoch += 1
        stats["epochs"] = epoch
