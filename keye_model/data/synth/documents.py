"""Synthetic OCR data: documents (transcription, field lookup) and receipts (key lookup, totals).

Text is drawn with PIL in offline DejaVu faces at varied sizes and colours. A document holds a
title, ``Key: value`` fields and wrapped body text; a receipt holds items, quantities and prices
whose total is computed in integer cents. Source data stays in the metadata.
"""

from __future__ import annotations

import random

from PIL import Image

from keye_model.data.records import QA
from keye_model.data.synth import render

WORDS = (
    "the model reads every page of the report and writes a short summary for the team "
    "data quality matters more than volume when training vision language systems on documents "
    "each invoice lists the items sold with their price and the tax due by the end of the month "
    "please review the attached schedule before the meeting on friday and send comments early "
    "shipping costs rose in spring while the warehouse moved to a larger site near the harbour"
).split()
TITLES = ("Memo", "Notice", "Report", "Invoice", "Letter", "Minutes", "Summary")
FIELDS = ("Name", "Date", "Ref No", "Account", "Department", "Amount")
PEOPLE = (
    "Ada Lovelace",
    "Alan Turing",
    "Grace Hopper",
    "Claude Shannon",
    "Emmy Noether",
    "Kurt Godel",
)
DEPTS = ("Finance", "Research", "Sales", "Legal", "Operations")
ITEMS = (
    "Coffee",
    "Bagel",
    "Milk",
    "Bread",
    "Apples",
    "Rice",
    "Tea",
    "Cheese",
    "Eggs",
    "Soap",
    "Pasta",
)
STORES = ("Corner Market", "Green Grocer", "City Deli", "Harbor Foods", "Sun Cafe")


def field_value(name: str, rng: random.Random) -> str:
    """A plausible value for one document field."""
    if name == "Name":
        return rng.choice(PEOPLE)
    if name == "Date":
        return f"{rng.randint(2015, 2025)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    if name == "Ref No":
        return f"{rng.choice('ABCDEFGH')}{rng.randint(1000, 99999)}"
    if name == "Account":
        return f"{rng.randint(10, 99)}-{rng.randint(1000, 9999)}"
    if name == "Department":
        return rng.choice(DEPTS)
    return f"{rng.randint(1, 9999)}.{rng.randint(0, 99):02d}"


def money(cents: int) -> str:
    """Cents as a decimal string: 1250 -> '12.50'."""
    return f"{cents // 100}.{cents % 100:02d}"


def draw_lines(lines: list[str], rng: random.Random, max_side: int) -> Image.Image:
    """Render text lines top-down on a page in one random face; the page fits ``max_side``."""
    size = rng.randint(max(10, max_side // 45), max(12, max_side // 28))
    font = render.pick_font(rng, size)
    margin = rng.randint(8, 20)
    spacing = int(size * rng.uniform(1.3, 1.6))
    width = int(max(font.getlength(line) for line in lines)) + 2 * margin
    height = spacing * len(lines) + 2 * margin
    image, draw = render.new_canvas(rng, width, height)
    ink = rng.choice(render.INKS)
    for i, line in enumerate(lines):
        draw.text((margin, margin + i * spacing), line, font=font, fill=ink)
    scale = min(1.0, max_side / max(width, height))
    if scale < 1.0:
        image = image.resize(
            (max(1, int(width * scale)), max(1, int(height * scale))), Image.LANCZOS
        )
    return image


def make_document(rng: random.Random, max_side: int) -> dict:
    """A document page: transcription of the whole page and one field lookup."""
    title = rng.choice(TITLES)
    names = rng.sample(FIELDS, rng.randint(2, 4))
    fields = {name: field_value(name, rng) for name in names}
    start = rng.randrange(len(WORDS) - 30)
    body_words = WORDS[start : start + rng.randint(10, 28)]
    per_line = rng.randint(5, 8)
    body = [" ".join(body_words[i : i + per_line]) for i in range(0, len(body_words), per_line)]
    lines = [title.upper(), *(f"{k}: {v}" for k, v in fields.items()), *body]
    key = rng.choice(names)
    transcript = "\n".join(lines)
    turns = [
        QA(
            "Transcribe all the text in the image, line by line.",
            transcript,
            f"The page has {len(lines)} lines: a title, {len(fields)} fields and {len(body)} lines of body text. Reading them top to bottom.",
            "transcribe",
        ),
        QA(
            f"What is the {key} on this document?",
            fields[key],
            f"Find the line starting with '{key}:'; it reads '{key}: {fields[key]}'.",
            "field",
        ),
    ]
    image = render.degrade(draw_lines(lines, rng, max_side), rng)
    source = {"lines": lines, "fields": fields, "args": [{}, {"key": key}]}
    return {
        "category": "document",
        "image": image,
        "text": transcript,
        "qa": turns,
        "source_data": source,
    }


def make_receipt(rng: random.Random, max_side: int) -> dict:
    """A store receipt: total (with the addition as CoT), one item's price, and item count."""
    store = rng.choice(STORES)
    date = field_value("Date", rng)
    names = rng.sample(ITEMS, rng.randint(2, 5))
    items = [
        {"name": n, "qty": rng.randint(1, 4), "unit_cents": rng.randint(50, 1500)} for n in names
    ]
    total = sum(item["qty"] * item["unit_cents"] for item in items)
    width = 26
    lines = [store.upper(), f"Date: {date}", "-" * width]
    for item in items:
        left = f"{item['qty']} x {item['name']} @{money(item['unit_cents'])}"
        right = money(item["qty"] * item["unit_cents"])
        lines.append(left + " " * max(1, width - len(left) - len(right)) + right)
    lines += ["-" * width, "TOTAL" + " " * (width - 5 - len(money(total))) + money(total)]
    pick = rng.choice(items)
    line_totals = [
        f"{it['qty']} x {money(it['unit_cents'])} = {money(it['qty'] * it['unit_cents'])}"
        for it in items
    ]
    turns = [
        QA(
            "What is the total amount on this receipt?",
            money(total),
            "Line amounts: "
            + "; ".join(line_totals)
            + f". Their sum is {money(total)}, matching the TOTAL line.",
            "total",
        ),
        QA(
            f"What is the unit price of {pick['name']}?",
            money(pick["unit_cents"]),
            f"The {pick['name']} line reads '{pick['qty']} x {pick['name']} @{money(pick['unit_cents'])}', so the unit price is {money(pick['unit_cents'])}.",
            "unit_price",
        ),
        QA(
            "How many different items are listed?",
            str(len(items)),
            "Items: " + ", ".join(it["name"] for it in items) + f". That is {len(items)}.",
            "item_count",
        ),
    ]
    image = render.degrade(draw_lines(lines, rng, max_side), rng)
    source = {
        "store": store,
        "date": date,
        "items": items,
        "args": [{}, {"item": pick["name"]}, {}],
    }
    return {
        "category": "ocr",
        "image": image,
        "text": "\n".join(lines),
        "qa": turns,
        "source_data": source,
    }
