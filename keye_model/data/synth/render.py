"""Rendering helpers shared by the synthesizers: offline fonts, colours, noise and encoding.

Fonts are the DejaVu faces bundled with matplotlib (always present, no download); styles vary
face, size, colours, JPEG/PNG encoding and noise so the model does not learn one look.
"""

from __future__ import annotations

import functools
import io
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter, ImageFont

FONT_FILES = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSansMono.ttf",
)
# Light backgrounds with dark inks, so every text stays legible whatever pair is drawn.
PAPERS = ((255, 255, 255), (250, 248, 240), (240, 244, 250), (245, 245, 245), (255, 252, 235))
INKS = ((0, 0, 0), (30, 30, 60), (50, 20, 20), (20, 50, 30), (60, 60, 60))
ACCENTS = (
    (70, 110, 200),
    (200, 90, 60),
    (60, 160, 110),
    (150, 90, 180),
    (220, 170, 40),
    (90, 90, 90),
)


@functools.cache
def font_dir() -> Path:
    """Directory of matplotlib's bundled DejaVu fonts."""
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@functools.cache
def load_font(name: str, size: int) -> ImageFont.FreeTypeFont:
    """A TrueType font from the bundled DejaVu family."""
    return ImageFont.truetype(str(font_dir() / name), size)


def pick_font(rng: random.Random, size: int) -> ImageFont.FreeTypeFont:
    """A random DejaVu face at ``size`` points."""
    return load_font(rng.choice(FONT_FILES), size)


def wrap_words(words: list[str], font: ImageFont.FreeTypeFont, width: int) -> list[str]:
    """Greedy line wrapping so each line fits ``width`` pixels in ``font``."""
    lines: list[str] = []
    line = ""
    for word in words:
        trial = f"{line} {word}" if line else word
        if line and font.getlength(trial) > width:
            lines.append(line)
            line = word
        else:
            line = trial
    if line:
        lines.append(line)
    return lines


def new_canvas(
    rng: random.Random, width: int, height: int
) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    """A blank RGB page in a random paper colour."""
    image = Image.new("RGB", (width, height), rng.choice(PAPERS))
    return image, ImageDraw.Draw(image)


def degrade(image: Image.Image, rng: random.Random) -> Image.Image:
    """Apply mild, legibility-preserving noise: blur, speckle or nothing."""
    choice = rng.random()
    if choice < 0.25:
        return image.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.3, 0.7)))
    if choice < 0.5:
        import numpy as np

        arr = np.asarray(image, dtype=np.int16)
        noise = np.random.default_rng(rng.getrandbits(32)).normal(0, rng.uniform(3, 8), arr.shape)
        return Image.fromarray(np.clip(arr + noise, 0, 255).astype("uint8"))
    return image


def encode(image: Image.Image, rng: random.Random) -> tuple[bytes, str]:
    """Encode as PNG or JPEG (random quality); returns (bytes, extension)."""
    buf = io.BytesIO()
    if rng.random() < 0.5:
        image.save(buf, "PNG", optimize=False)
        return buf.getvalue(), "png"
    image.convert("RGB").save(buf, "JPEG", quality=rng.randint(75, 95))
    return buf.getvalue(), "jpg"
