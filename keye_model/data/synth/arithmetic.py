"""Rendered one-digit additions: the verifiable task the tiny recipe's post-training measures.

The image shows "a + b" and the question repeats it in text, so a model the size of the tiny
preset can learn the task in CPU minutes from the text while the ViT still sees a real picture.
SFT teaches the answer format and part of the sums; cold-start then finds prompts of medium
pass rate, and GSPO has groups whose rewards differ. The answer is the bare number (no CoT):
one-token targets keep the pass rate measurable after a few hundred steps.
"""

from __future__ import annotations

import random

from keye_model.data.records import QA
from keye_model.data.synth import render

QUESTION = "What is {a} + {b}? Answer with the number."


def make_arithmetic(rng: random.Random, max_side: int) -> dict:
    """One rendered sum ``a + b`` with 0 <= a, b <= 9 and its answer."""
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    size = max(14, min(28, max_side // 8))
    font = render.pick_font(rng, size)
    text = f"{a} + {b}"
    width, height = max(56, int(font.getlength(text)) + 2 * size), max(56, 2 * size)
    image, draw = render.new_canvas(rng, width, height)
    draw.text((size, size // 2), text, font=font, fill=rng.choice(render.INKS))
    return {
        "category": "math_cot",
        "image": render.degrade(image, rng),
        "qa": [QA(QUESTION.format(a=a, b=b), str(a + b), "", "sum")],
        "source_data": {"a": a, "b": b},
    }
