"""Synthetic chart VQA: a sampled table rendered as a bar, line, pie or scatter chart.

Every question is computed from the table (lookup, extremum, sum, difference, trend, count) and
its chain of thought spells out the same computation. The table travels in the sample metadata
so the answer can be re-derived from it.
"""

from __future__ import annotations

import random

from PIL import Image

from keye_model.data.records import QA
from keye_model.data.synth import render

CHART_TYPES = ("bar", "line", "pie", "scatter")
STYLES = (
    "default",
    "ggplot",
    "bmh",
    "classic",
    "seaborn-v0_8-whitegrid",
    "fivethirtyeight",
    "grayscale",
)
LABELS = {
    "month": ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"],
    "year": [str(y) for y in range(2013, 2025)],
    "fruit": ["Apple", "Banana", "Cherry", "Grape", "Lemon", "Mango", "Peach", "Pear"],
    "city": ["Paris", "Tokyo", "Lima", "Cairo", "Oslo", "Delhi", "Quito", "Seoul"],
    "team": ["Red", "Blue", "Green", "Gold", "Gray", "Teal", "Pink"],
}
ORDERED = ("month", "year")  # label sets with an order, so a line and a trend make sense
QUESTION_KINDS = {
    "bar": ("lookup", "max", "min", "sum", "difference", "count"),
    "line": ("lookup", "max", "min", "difference", "trend", "count"),
    "pie": ("lookup", "max", "min", "sum", "count"),
    "scatter": ("lookup", "max", "min", "count"),
}


def sample_table(rng: random.Random, chart_type: str) -> dict:
    """A small table: distinct integer values per label (unique extremes by construction)."""
    noun = rng.choice(ORDERED if chart_type == "line" else tuple(LABELS))
    k = rng.randint(3, 7)
    if noun in ORDERED:
        start = rng.randint(0, len(LABELS[noun]) - k)
        labels = LABELS[noun][start : start + k]
    else:
        labels = rng.sample(LABELS[noun], k)
    values = rng.sample(range(2, 100), k)
    if chart_type == "line":
        trend = rng.choice(("increasing", "decreasing", "fluctuating"))
        values.sort(reverse=trend == "decreasing")
        if trend == "fluctuating":  # down then up: not monotonic for any k >= 3
            values[0], values[1] = values[1], values[0]
    table = {"noun": noun, "labels": labels, "values": values}
    if chart_type == "scatter":
        table["noun"] = "point"
        table["labels"] = [f"P{i + 1}" for i in range(k)]
        table["x"] = rng.sample(range(0, 50), k)
    return table


def trend_of(values: list[int]) -> str:
    """'increasing' / 'decreasing' when strictly monotonic, else 'fluctuating'."""
    pairs = list(zip(values, values[1:]))
    if all(b > a for a, b in pairs):
        return "increasing"
    if all(b < a for a, b in pairs):
        return "decreasing"
    return "fluctuating"


def ask(table: dict, chart_type: str, kind: str, rng: random.Random) -> tuple[QA, dict]:
    """One question of ``kind`` about ``table``, with its answer, CoT and arguments."""
    labels, values = table["labels"], table["values"]
    noun = table["noun"]
    reading = ", ".join(f"{lab} = {val}" for lab, val in zip(labels, values))
    what = "y value" if chart_type == "scatter" else "value"
    if kind == "lookup":
        i = rng.randrange(len(labels))
        q = f"What is the {what} of {labels[i]} in the chart?"
        cot = f"Locate {labels[i]} in the chart; its label reads {values[i]}."
        return QA(q, str(values[i]), cot, kind), {"label": labels[i]}
    if kind in ("max", "min"):
        pick = max if kind == "max" else min
        i = values.index(pick(values))
        word = "highest" if kind == "max" else "lowest"
        q = f"Which {noun} has the {word} {what}?"
        cot = f"Reading every {noun}: {reading}. The {word} is {values[i]}, at {labels[i]}."
        return QA(q, labels[i], cot, kind), {}
    if kind == "sum":
        total = sum(values)
        q = "What is the sum of all values shown in the chart?"
        cot = f"Reading every {noun}: {reading}. Adding: {' + '.join(map(str, values))} = {total}."
        return QA(q, str(total), cot, kind), {}
    if kind == "difference":
        i, j = rng.sample(range(len(labels)), 2)
        q = f"What is the {what} of {labels[i]} minus the {what} of {labels[j]}?"
        diff = values[i] - values[j]
        cot = f"{labels[i]} reads {values[i]} and {labels[j]} reads {values[j]}; {values[i]} - {values[j]} = {diff}."
        return QA(q, str(diff), cot, kind), {"a": labels[i], "b": labels[j]}
    if kind == "trend":
        answer = trend_of(values)
        q = f"From {labels[0]} to {labels[-1]}, is the series increasing, decreasing, or fluctuating?"
        steps = ", ".join(f"{a} -> {b}" for a, b in zip(values, values[1:]))
        cot = f"Consecutive values: {steps}. Every step {'rises' if answer == 'increasing' else 'falls' if answer == 'decreasing' else 'does not move the same way'}, so the series is {answer}."
        return QA(q, answer, cot, kind), {}
    if kind == "count":
        shape = {"bar": "bars", "line": "data points", "pie": "slices", "scatter": "points"}[
            chart_type
        ]
        q = f"How many {shape} are shown in the chart?"
        cot = f"Counting the {shape}: {', '.join(labels)}. That is {len(labels)}."
        return QA(q, str(len(labels)), cot, kind), {}
    raise ValueError(f"unknown chart question kind {kind!r}")


def render_chart(table: dict, chart_type: str, rng: random.Random, max_side: int) -> Image.Image:
    """Draw ``table`` with matplotlib (Agg, no pyplot state) in a random style."""
    import matplotlib
    import matplotlib.style
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    width = rng.randint(int(max_side * 0.7), max_side)
    height = int(width * rng.uniform(0.6, 0.85))
    fontsize = max(6.0, width / rng.uniform(45, 60))
    labels, values = table["labels"], table["values"]
    with matplotlib.rc_context():
        matplotlib.style.use(rng.choice(STYLES))
        matplotlib.rcParams.update(
            {
                "font.family": rng.choice(("DejaVu Sans", "DejaVu Serif", "DejaVu Sans Mono")),
                "font.size": fontsize,
            }
        )
        fig = Figure(figsize=(width / 100, height / 100), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        color = "#{:02x}{:02x}{:02x}".format(*rng.choice(render.ACCENTS))
        if chart_type == "bar":
            bars = ax.bar(labels, values, color=color)
            ax.bar_label(bars, fontsize=fontsize)
            ax.set_ylim(0, max(values) * 1.18)
        elif chart_type == "line":
            ax.plot(labels, values, marker="o", color=color)
            for x, y in zip(labels, values):
                ax.annotate(
                    str(y),
                    (x, y),
                    textcoords="offset points",
                    xytext=(0, 4),
                    ha="center",
                    fontsize=fontsize,
                )
            ax.set_ylim(0, max(values) * 1.2)
        elif chart_type == "pie":
            ax.pie(
                values,
                labels=[f"{lab}: {v}" for lab, v in zip(labels, values)],
                textprops={"fontsize": fontsize},
            )
        elif chart_type == "scatter":
            ax.scatter(table["x"], values, color=color)
            for name, x, y in zip(labels, table["x"], values):
                ax.annotate(
                    f"{name} ({x}, {y})",
                    (x, y),
                    textcoords="offset points",
                    xytext=(3, 3),
                    fontsize=fontsize * 0.9,
                )
            ax.set_xlim(-5, 75)  # room for the rightmost point's label
            ax.set_ylim(0, 110)
        if chart_type != "pie":
            ax.tick_params(labelsize=fontsize * 0.9)
        ax.set_title(f"{table['noun'].title()} values", fontsize=fontsize * 1.1)
        # Fixed margins: tight_layout would double the render time for no legibility gain.
        fig.subplots_adjust(left=0.13, right=0.97, bottom=0.14, top=0.88)
        fig.canvas.draw()
        image = Image.frombuffer(
            "RGBA", fig.canvas.get_width_height(), fig.canvas.buffer_rgba()
        ).convert("RGB")
    return image


def make_chart(rng: random.Random, max_side: int) -> dict:
    """One chart sample as a dict of image, QA turns and source data."""
    chart_type = rng.choice(CHART_TYPES)
    table = sample_table(rng, chart_type)
    kinds = rng.sample(QUESTION_KINDS[chart_type], 3)
    turns, specs = zip(*(ask(table, chart_type, kind, rng) for kind in kinds))
    image = render.degrade(render_chart(table, chart_type, rng, max_side), rng)
    return {
        "category": "chart",
        "image": image,
        "qa": list(turns),
        "source_data": {"chart_type": chart_type, "table": table, "args": list(specs)},
    }
