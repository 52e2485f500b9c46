"""Built-in synthesizers of structured VQA with ground truth (charts, tables, OCR, math).

    from keye_model.data.synth import generate, generate_math_problems
    samples = list(generate(["chart", "table"], n=100, seed=0))
    held_out = generate_math_problems(n=200, seed=12345)   # evaluation: a different seed

Each sample is a function of ``(kind, seed, index)`` only, so any block of a stream can be
regenerated on its own (work units in parallel, resumed runs). ``metadata["source_data"]`` holds
the table / fields / problem each answer was computed from.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

from keye_model.data.records import Sample
from keye_model.data.synth import render
from keye_model.data.synth.arithmetic import make_arithmetic
from keye_model.data.synth.charts import make_chart
from keye_model.data.synth.documents import make_document, make_receipt
from keye_model.data.synth.math_problems import make_math
from keye_model.data.synth.tables import make_table

GENERATORS = {
    "chart": make_chart,
    "table": make_table,
    "document": make_document,
    "receipt": make_receipt,
    "math": make_math,
    "arithmetic": make_arithmetic,
}


def generate_one(kind: str, seed: int, index: int, max_side: int = 640) -> Sample:
    """Sample ``index`` of the ``kind`` stream for ``seed`` (deterministic)."""
    if kind not in GENERATORS:
        raise ValueError(f"unknown synthetic kind {kind!r}; known: {sorted(GENERATORS)}")
    # A string seed is hashed with SHA-512 by random.Random: stable across runs and processes.
    rng = random.Random(f"keye-synth:{kind}:{seed}:{index}")
    item = GENERATORS[kind](rng, max_side)
    media, ext = render.encode(item["image"], rng)
    return Sample(
        key=f"synth-{kind}-s{seed}-{index:08d}",
        source=f"synthetic:{kind}",
        category=item["category"],
        media=media,
        media_ext=ext,
        text=item.get("text", ""),
        qa=item["qa"],
        metadata={
            "synthetic": True,
            "generator": kind,
            "seed": seed,
            "index": index,
            "source_data": item["source_data"],
        },
    )


def generate(
    kinds: Sequence[str], n: int, seed: int, max_side: int = 640, start: int = 0
) -> Iterator[Sample]:
    """Samples ``start .. start+n-1`` of a round-robin stream over ``kinds``."""
    for i in range(start, start + n):
        yield generate_one(kinds[i % len(kinds)], seed, i, max_side)


def generate_math_problems(n: int, seed: int, max_side: int = 448) -> list[Sample]:
    """``n`` rendered math problems with verifiable answers (cold-start, GSPO, held-out eval)."""
    return [generate_one("math", seed, i, max_side) for i in range(n)]
