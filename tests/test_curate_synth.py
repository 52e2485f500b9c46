"""Synthetic VQA ground truth: every answer is re-derived here, independently, from the source
data the generator stored in the sample metadata."""

from __future__ import annotations

import io
from fractions import Fraction

import pytest
from PIL import Image

from keye_model.data.synth import GENERATORS, generate, generate_math_problems, generate_one


def derive_chart(table: dict, kind: str, args: dict) -> str:
    labels, values = table["labels"], table["values"]
    if kind == "lookup":
        return str(values[labels.index(args["label"])])
    if kind == "max":
        return labels[values.index(max(values))]
    if kind == "min":
        return labels[values.index(min(values))]
    if kind == "sum":
        return str(sum(values))
    if kind == "difference":
        return str(values[labels.index(args["a"])] - values[labels.index(args["b"])])
    if kind == "count":
        return str(len(labels))
    if kind == "trend":
        steps = [b - a for a, b in zip(values, values[1:])]
        return "increasing" if min(steps) > 0 else "decreasing" if max(steps) < 0 else "fluctuating"
    raise AssertionError(kind)


def derive_table(table: dict, kind: str, args: dict) -> str:
    rows, cols, cells = table["rows"], table["cols"], table["cells"]
    if kind == "cell":
        return str(cells[rows.index(args["row"])][cols.index(args["col"])])
    if kind == "row_sum":
        return str(sum(cells[rows.index(args["row"])]))
    column = [row[cols.index(args["col"])] for row in cells] if "col" in args else None
    if kind == "col_sum":
        return str(sum(column))
    if kind == "col_argmax":
        return rows[column.index(max(column))]
    raise AssertionError(kind)


def cents(value: int) -> str:
    return f"{value / 100:.2f}"


def derive_receipt(source: dict, kind: str, args: dict) -> str:
    items = source["items"]
    if kind == "total":
        return cents(sum(item["qty"] * item["unit_cents"] for item in items))
    if kind == "unit_price":
        return cents(next(item["unit_cents"] for item in items if item["name"] == args["item"]))
    if kind == "item_count":
        return str(len(items))
    raise AssertionError(kind)


def derive_math(problem: dict, statement: str) -> str:
    kind = problem["type"]
    if kind == "arithmetic":
        expr = statement.split(":", 1)[1].replace("x", "*")
        value = Fraction(eval(expr, {"__builtins__": {}}))  # the rendered statement itself
    elif kind == "linear":
        value = Fraction(problem["c"] - problem["b"], problem["a"])
        assert problem["a"] * value + problem["b"] == problem["c"]
    elif kind == "fraction":
        value = Fraction(problem["p"], problem["q"]) + Fraction(problem["r"], problem["s"])
    elif kind == "percent":
        value = Fraction(problem["pct"], 100) * problem["n"]
    elif kind == "rectangle":
        w, h = problem["w"], problem["h"]
        value = Fraction(w * h if problem["ask"] == "area" else w + w + h + h)
    else:
        raise AssertionError(kind)
    return (
        str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"
    )


def test_every_synthetic_answer_rederived_from_source_data():
    samples = list(generate(list(GENERATORS), n=200, seed=7, max_side=256))
    seen_kinds = set()
    for sample in samples:
        source = sample.metadata["source_data"]
        generator = sample.metadata["generator"]
        image = Image.open(io.BytesIO(sample.media))
        image.load()
        assert max(image.size) <= 256 and min(image.size) >= 28, (sample.key, image.size)
        for i, turn in enumerate(sample.qa):
            seen_kinds.add((generator, turn.kind))
            if generator == "arithmetic":  # a bare one-token answer, no chain of thought
                a, b = source["a"], source["b"]
                assert f"What is {a} + {b}?" in turn.question and turn.answer == str(a + b)
                continue
            assert turn.cot, sample.key
            if generator == "chart":
                expected = derive_chart(source["table"], turn.kind, source["args"][i])
            elif generator == "table":
                expected = derive_table(source["table"], turn.kind, source["args"][i])
            elif generator == "document":
                lines = source["lines"]
                if turn.kind == "transcribe":
                    expected = "\n".join(lines)
                else:
                    key = source["args"][i]["key"]
                    expected = source["fields"][key]
                    assert f"{key}: {expected}" in lines
            elif generator == "receipt":
                expected = derive_receipt(source, turn.kind, source["args"][i])
                if turn.kind == "total":
                    assert sample.text.splitlines()[-1].endswith(expected), (
                        "the TOTAL line shows the total"
                    )
            else:
                expected = derive_math(source["problem"], source["statement"])
                assert f"\\boxed{{{expected}}}" in turn.cot
            assert turn.answer == expected, (sample.key, turn.question, turn.answer, expected)
            if turn.kind != "transcribe":
                assert expected in turn.cot, (sample.key, turn.cot)
    chart_kinds = {k for g, k in seen_kinds if g == "chart"}
    assert chart_kinds == {"lookup", "max", "min", "sum", "difference", "trend", "count"}
    assert {s.metadata["source_data"]["chart_type"] for s in samples if s.category == "chart"} == {
        "bar",
        "line",
        "pie",
        "scatter",
    }


def test_math_answers_verify_with_math_verify():
    import math_verify

    for sample in generate_math_problems(n=25, seed=3):
        turn = sample.qa[0]
        gold = math_verify.parse(f"${turn.answer}$")
        assert math_verify.verify(gold, math_verify.parse(turn.cot)), (turn.answer, turn.cot)


def test_generators_are_deterministic_and_seeded():
    a = generate_one("chart", seed=1, index=5, max_side=200)
    b = generate_one("chart", seed=1, index=5, max_side=200)
    c = generate_one("chart", seed=2, index=5, max_side=200)
    assert a.media == b.media and a.qa == b.qa
    assert a.media != c.media
    held_out = generate_math_problems(n=20, seed=12345)
    train = generate_math_problems(n=20, seed=0)
    assert {s.metadata["source_data"]["statement"] for s in held_out} != {
        s.metadata["source_data"]["statement"] for s in train
    }
    with pytest.raises(ValueError, match="unknown synthetic kind"):
        generate_one("video", seed=0, index=0)
