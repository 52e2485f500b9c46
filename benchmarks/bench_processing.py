"""Image preprocessing throughput: our ``KeyeImageProcessor`` vs the released keye-vl-utils path.

Both sides start from the same decoded PIL images in memory (the real fixtures) and end with
the same tensor: normalised float32 patches (N, 3, 14, 14) in raster order plus the grid; the
script checks the outputs agree before timing. Settings match (max 20480 tokens as in
keye-vl-utils, alpha dropped as its ``convert("RGB")`` does).

Baseline (what the released stack does for an image): ``keye_vl_utils.fetch_image`` (RGB
convert, ``smart_resize``, Pillow bicubic resize), then the steps of the released Keye image
processor: its own resize to the (already reached) target size, ``np.array``, rescale by 1/255
(float64 -> float32), subtract mean, divide by std, HWC -> CHW, reshape/transpose into
(t*h*w, C, 14, 14) patches. Its per-patch list building (``pixel_values.extend``) and the random
training augmentation are left out, which favours the baseline.

Ours: ``KeyeImageProcessor.__call__`` - the same Pillow resize, then a strided uint8 patch view
multiplied straight into contiguous float32 and one in-place add (no float64 temporaries).

Rounds alternate baseline/ours so machine load hits both alike; the median round is reported.

    .venv/bin/python benchmarks/bench_processing.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from keye_model.processing import KeyeImageProcessor
from keye_model.processing.image import KEYE_VL_UTILS_MAX_PIXELS

# The keye-vl-utils loader is test code (tests/peer.py), not part of the installed package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.peer import load_keye_vl_utils  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "real"
MEAN = STD = (0.5, 0.5, 0.5)
PATCH = 14


def load_images(folder: Path) -> list[Image.Image]:
    """Every fixture image, decoded into memory."""
    images = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in (".jpg", ".jpeg", ".png"):
            with Image.open(path) as opened:
                opened.load()
                images.append(opened)
    return images


def baseline_one(kv, image: Image.Image) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """keye-vl-utils fetch_image + the released Keye image processor's normalise/patchify."""
    resized = kv.fetch_image({"image": image})
    width, height = resized.size
    resized = resized.resize((width, height), resample=Image.Resampling.BICUBIC)
    array = np.array(resized)
    array = (array * (1 / 255)).astype(np.float32)
    array -= np.array(MEAN, dtype=np.float32)
    array /= np.array(STD, dtype=np.float32)
    chw = array.transpose(2, 0, 1)[None]  # (t=1, C, H, W)
    gh, gw = height // PATCH, width // PATCH
    patches = chw.reshape(1, 1, 3, gh, PATCH, gw, PATCH).transpose(0, 3, 5, 2, 1, 4, 6)
    return torch.from_numpy(patches.reshape(gh * gw, 3, PATCH, PATCH)), (1, gh, gw)


def main() -> None:
    """Print images/s of both pipelines and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="alternating timing rounds")
    parser.add_argument("--fixtures", type=Path, default=FIXTURES)
    args = parser.parse_args()

    kv = load_keye_vl_utils()
    images = load_images(args.fixtures)
    ours = KeyeImageProcessor(max_pixels=KEYE_VL_UTILS_MAX_PIXELS, alpha_mode="drop")
    pixels = 0
    for image in images:
        ref, grid = baseline_one(kv, image)
        out = ours([image])
        assert out["image_grid_thw"][0].tolist() == list(grid)
        torch.testing.assert_close(out["pixel_values"], ref, atol=1e-5, rtol=0)
        pixels += grid[1] * grid[2] * PATCH * PATCH
    print(f"{len(images)} images, {pixels / 1e6:.1f} Mpx after resize, outputs match")

    base_rates, our_rates = [], []
    for _ in range(args.rounds):
        start = time.perf_counter()
        for image in images:
            baseline_one(kv, image)
        base_rates.append(len(images) / (time.perf_counter() - start))
        start = time.perf_counter()
        for image in images:
            ours([image])
        our_rates.append(len(images) / (time.perf_counter() - start))
    base, mine = statistics.median(base_rates), statistics.median(our_rates)
    print(f"keye-vl-utils + released normalise/patchify: {base:7.2f} images/s")
    print(f"keye_model KeyeImageProcessor:               {mine:7.2f} images/s")
    print(f"ratio ours/baseline: {mine / base:.2f}x (goal >= 1.5x)")


if __name__ == "__main__":
    main()
