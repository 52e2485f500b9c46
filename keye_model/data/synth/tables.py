"""Synthetic table VQA: a grid of integers rendered with PIL, questions on cells and aggregates.

Questions: cell lookup, row total, column total and the row holding a column's maximum; the CoT
lists the cells read and the arithmetic done. The table is kept in the metadata.
"""

from __future__ import annotations

import random

from PIL import Image

from keye_model.data.records import QA
from keye_model.data.synth import render

ROW_NAMES = ["North", "South", "East", "West", "Central", "Coast", "Hills", "Lakes", "Plains"]
COL_NAMES = ["Q1", "Q2", "Q3", "Q4", "Sales", "Cost", "Units", "Stock", "Visits"]
QUESTION_KINDS = ("cell", "row_sum", "col_sum", "col_argmax")


def sample_table(rng: random.Random) -> dict:
    """Rows x columns of integers; each column's values are distinct so argmax is unique."""
    rows = rng.sample(ROW_NAMES, rng.randint(3, 6))
    cols = rng.sample(COL_NAMES, rng.randint(2, 4))
    columns = [rng.sample(range(1, 500), len(rows)) for _ in cols]
    cells = [[columns[c][r] for c in range(len(cols))] for r in range(len(rows))]
    return {"rows": rows, "cols": cols, "cells": cells}


def ask(table: dict, kind: str, rng: random.Random) -> tuple[QA, dict]:
    """One question of ``kind`` with answer, CoT and arguments."""
    rows, cols, cells = table["rows"], table["cols"], table["cells"]
    r, c = rng.randrange(len(rows)), rng.randrange(len(cols))
    if kind == "cell":
        q = f"In the table, what is the value for {rows[r]} in column {cols[c]}?"
        cot = f"Find row {rows[r]}, then column {cols[c]}: the cell reads {cells[r][c]}."
        return QA(q, str(cells[r][c]), cot, kind), {"row": rows[r], "col": cols[c]}
    if kind == "row_sum":
        row = cells[r]
        q = f"What is the total of all columns in row {rows[r]}?"
        cot = (
            f"Row {rows[r]}: "
            + ", ".join(f"{n} = {v}" for n, v in zip(cols, row))
            + f". Sum: {' + '.join(map(str, row))} = {sum(row)}."
        )
        return QA(q, str(sum(row)), cot, kind), {"row": rows[r]}
    column = [cells[i][c] for i in range(len(rows))]
    if kind == "col_sum":
        q = f"What is the sum of column {cols[c]}?"
        cot = (
            f"Column {cols[c]}: "
            + ", ".join(f"{n} = {v}" for n, v in zip(rows, column))
            + f". Sum: {' + '.join(map(str, column))} = {sum(column)}."
        )
        return QA(q, str(sum(column)), cot, kind), {"col": cols[c]}
    if kind == "col_argmax":
        best = column.index(max(column))
        q = f"Which row has the largest value in column {cols[c]}?"
        cot = (
            f"Column {cols[c]}: "
            + ", ".join(f"{n} = {v}" for n, v in zip(rows, column))
            + f". The largest is {column[best]}, in row {rows[best]}."
        )
        return QA(q, rows[best], cot, kind), {"col": cols[c]}
    raise ValueError(f"unknown table question kind {kind!r}")


def render_table(table: dict, rng: random.Random, max_side: int) -> Image.Image:
    """Draw the grid with a random font, size, header colour and zebra striping."""
    rows, cols, cells = table["rows"], table["cols"], table["cells"]
    size = rng.randint(max(10, max_side // 40), max(12, max_side // 25))
    font = render.pick_font(rng, size)
    pad = rng.randint(4, 10)
    first_w = int(max(font.getlength(t) for t in ["", *rows])) + 2 * pad
    col_w = int(max(font.getlength(t) for t in [*cols, "0000"])) + 2 * pad
    row_h = size + 2 * pad
    width, height = first_w + col_w * len(cols) + 2 * pad, row_h * (len(rows) + 1) + 2 * pad
    image, draw = render.new_canvas(rng, width, height)
    ink, accent = rng.choice(render.INKS), rng.choice(render.ACCENTS)
    zebra = rng.random() < 0.5
    x0 = y0 = pad
    draw.rectangle([x0, y0, width - pad, y0 + row_h], fill=tuple(min(255, a + 120) for a in accent))
    for i, name in enumerate(cols):
        draw.text((x0 + first_w + i * col_w + pad, y0 + pad), name, font=font, fill=ink)
    for r, name in enumerate(rows):
        y = y0 + (r + 1) * row_h
        if zebra and r % 2:
            draw.rectangle([x0, y, width - pad, y + row_h], fill=(232, 232, 232))
        draw.text((x0 + pad, y + pad), name, font=font, fill=ink)
        for c, value in enumerate(cells[r]):
            draw.text((x0 + first_w + c * col_w + pad, y + pad), str(value), font=font, fill=ink)
    for r in range(len(rows) + 2):
        draw.line([x0, y0 + r * row_h, width - pad, y0 + r * row_h], fill=ink, width=1)
    for c in range(len(cols) + 2):
        x = x0 + (0 if c == 0 else first_w + (c - 1) * col_w)
        draw.line([x, y0, x, y0 + row_h * (len(rows) + 1)], fill=ink, width=1)
    scale = min(1.0, max_side / max(width, height))
    if scale < 1.0:
        image = image.resize(
            (max(1, int(width * scale)), max(1, int(height * scale))), Image.LANCZOS
        )
    return image


def make_table(rng: random.Random, max_side: int) -> dict:
    """One table sample as a dict of image, QA turns and source data."""
    table = sample_table(rng)
    kinds = rng.sample(QUESTION_KINDS, 3)
    turns, specs = zip(*(ask(table, kind, rng) for kind in kinds))
    image = render.degrade(render_table(table, rng, max_side), rng)
    return {
        "category": "table",
        "image": image,
        "qa": list(turns),
        "source_data": {"table": table, "args": list(specs)},
    }
