"""Synthetic math problems rendered as images, with verifiable answers and step-by-step CoT.

Problem types: arithmetic with precedence, linear equations with integer roots, fraction sums,
percentages and rectangle area/perimeter (drawn as a labelled figure). The question text is only
in the image; the answer is a plain string a math verifier can compare (``\\boxed{}`` in the CoT).
Cold-start and GSPO train on these; evaluation draws held-out sets with another seed.
"""

from __future__ import annotations

import math
import random
from fractions import Fraction

from PIL import Image

from keye_model.data.records import QA
from keye_model.data.synth import render

PROBLEM_TYPES = ("arithmetic", "linear", "fraction", "percent", "rectangle")
PROMPT = "Solve the math problem shown in the image. Put the final answer in \\boxed{}."


def fraction_text(value: Fraction) -> str:
    """'7/12', or '3' when the denominator is 1."""
    return (
        str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"
    )


def solve(problem: dict) -> tuple[str, list[str]]:
    """Answer and reasoning steps of a problem, computed from its parameters."""
    kind = problem["type"]
    if kind == "arithmetic":
        a, b, c = problem["a"], problem["b"], problem["c"]
        if problem["grouped"]:
            return str((a + b) * c), [
                f"Parentheses first: {a} + {b} = {a + b}.",
                f"Then {a + b} x {c} = {(a + b) * c}.",
            ]
        return str(a + b * c), [
            f"Multiplication first: {b} x {c} = {b * c}.",
            f"Then {a} + {b * c} = {a + b * c}.",
        ]
    if kind == "linear":
        a, b, c = problem["a"], problem["b"], problem["c"]
        x = Fraction(c - b, a)
        return fraction_text(x), [
            f"Subtract {b} from both sides: {a}x = {c - b}.",
            f"Divide by {a}: x = {fraction_text(x)}.",
        ]
    if kind == "fraction":
        p, q, r, s = problem["p"], problem["q"], problem["r"], problem["s"]
        total = Fraction(p, q) + Fraction(r, s)
        common = q * s // math.gcd(q, s)
        return fraction_text(total), [
            f"Common denominator of {q} and {s} is {common}.",
            f"{p}/{q} = {p * common // q}/{common} and {r}/{s} = {r * common // s}/{common}.",
            f"Sum: {p * common // q + r * common // s}/{common} = {fraction_text(total)}.",
        ]
    if kind == "percent":
        pct, n = problem["pct"], problem["n"]
        value = Fraction(pct * n, 100)
        return fraction_text(value), [f"{pct}% of {n} is {pct}/100 x {n} = {fraction_text(value)}."]
    if kind == "rectangle":
        w, h = problem["w"], problem["h"]
        if problem["ask"] == "area":
            return str(w * h), [f"The rectangle is {w} by {h}.", f"Area = {w} x {h} = {w * h}."]
        return str(2 * (w + h)), [
            f"The rectangle is {w} by {h}.",
            f"Perimeter = 2 x ({w} + {h}) = {2 * (w + h)}.",
        ]
    raise ValueError(f"unknown math problem type {kind!r}")


def sample_problem(rng: random.Random, kind: str) -> dict:
    """Random parameters for one problem of ``kind``."""
    if kind == "arithmetic":
        return {
            "type": kind,
            "a": rng.randint(1, 50),
            "b": rng.randint(2, 12),
            "c": rng.randint(2, 12),
            "grouped": rng.random() < 0.5,
        }
    if kind == "linear":
        a, x = rng.randint(2, 9), rng.randint(-10, 15)
        b = rng.randint(-20, 20)
        return {"type": kind, "a": a, "b": b, "c": a * x + b}
    if kind == "fraction":
        return {
            "type": kind,
            "p": rng.randint(1, 5),
            "q": rng.randint(2, 9),
            "r": rng.randint(1, 5),
            "s": rng.randint(2, 9),
        }
    if kind == "percent":
        return {
            "type": kind,
            "pct": rng.choice((5, 10, 15, 20, 25, 30, 40, 50, 75)),
            "n": rng.randint(2, 60) * 4,
        }
    if kind == "rectangle":
        return {
            "type": kind,
            "w": rng.randint(2, 30),
            "h": rng.randint(2, 30),
            "ask": rng.choice(("area", "perimeter")),
        }
    raise ValueError(f"unknown math problem type {kind!r}")


def statement(problem: dict) -> str:
    """The problem as text (what the image shows)."""
    kind = problem["type"]
    if kind == "arithmetic":
        a, b, c = problem["a"], problem["b"], problem["c"]
        expr = f"({a} + {b}) x {c}" if problem["grouped"] else f"{a} + {b} x {c}"
        return f"Compute: {expr}"
    if kind == "linear":
        b = problem["b"]
        sign = f"+ {b}" if b >= 0 else f"- {-b}"
        return f"Solve for x: {problem['a']}x {sign} = {problem['c']}"
    if kind == "fraction":
        return f"Add and simplify: {problem['p']}/{problem['q']} + {problem['r']}/{problem['s']}"
    if kind == "percent":
        return f"What is {problem['pct']}% of {problem['n']}?"
    return f"Find the {problem['ask']} of the rectangle."


def render_problem(problem: dict, rng: random.Random, max_side: int) -> Image.Image:
    """Draw the statement (and the labelled rectangle for geometry problems)."""
    size = rng.randint(max(12, max_side // 30), max(14, max_side // 18))
    font = render.pick_font(rng, size)
    text = statement(problem)
    margin = rng.randint(10, 24)
    text_w = int(font.getlength(text))
    fig_h = int(max_side * 0.45) if problem["type"] == "rectangle" else 0
    width = max(text_w, fig_h) + 2 * margin
    height = size + 2 * margin + fig_h
    image, draw = render.new_canvas(rng, width, height)
    ink = rng.choice(render.INKS)
    draw.text((margin, margin), text, font=font, fill=ink)
    if fig_h:
        w, h = problem["w"], problem["h"]
        scale = (fig_h - 3 * size) / max(w, h)
        x0, y0 = margin + size * 2, margin + size * 2
        x1, y1 = x0 + max(8, int(w * scale)), y0 + max(8, int(h * scale))
        draw.rectangle([x0, y0, x1, y1], outline=rng.choice(render.ACCENTS), width=2)
        draw.text(((x0 + x1) // 2 - size // 2, y1 + 2), str(w), font=font, fill=ink)
        draw.text((x1 + 4, (y0 + y1) // 2 - size // 2), str(h), font=font, fill=ink)
    scale = min(1.0, max_side / max(width, height))
    if scale < 1.0:
        image = image.resize(
            (max(1, int(width * scale)), max(1, int(height * scale))), Image.LANCZOS
        )
    return image


def make_math(rng: random.Random, max_side: int) -> dict:
    """One math problem sample: image, prompt, CoT ending in \\boxed{answer}, and parameters."""
    problem = sample_problem(rng, rng.choice(PROBLEM_TYPES))
    answer, steps = solve(problem)
    cot = " ".join(steps) + f" The answer is \\boxed{{{answer}}}."
    image = render.degrade(render_problem(problem, rng, max_side), rng)
    turn = QA(PROMPT, answer, cot, problem["type"])
    return {
        "category": "math_cot",
        "image": image,
        "qa": [turn],
        "source_data": {"problem": problem, "statement": statement(problem)},
    }
