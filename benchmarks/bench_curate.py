"""Curation throughput and near-duplicate index growth.

    .venv/bin/python benchmarks/bench_curate.py [--samples 240] [--quick]

1. Samples/s per core through the full per-sample chain (decode, size, text quality, language id,
   token counts, SHA-256 + 256-bit pHash + MinHash signatures) at two image sizes, one process.
2. The scan phase of the stage (real work units, forked worker processes) with 1 and with 2
   processes: the ratio is the multi-core scaling (2.0 is perfect; the machine is shared).
3. Multi-index-hash near-dup index: build + query time for 10k and 100k 256-bit codes (radius 18),
   against linear (10x) and quadratic (100x) growth, plus a brute-force scan at 10k as baseline.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import os
import random
import tempfile
import time
from pathlib import Path

from PIL import Image

from keye_model.data.config import CurateConfig
from keye_model.data.curate import _pool_map, _tokenizer_json, scan_sample, scan_unit
from keye_model.data.neardup import MultiIndexHash
from keye_model.data.operators import build_filters
from keye_model.data.readers import WorkUnit
from keye_model.data.records import Sample

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "real"
WORDS = "a photo of people walking along a river near old houses with trees and boats under a cloudy sky".split()


def make_samples(n: int, side: int, seed: int = 0) -> list[Sample]:
    """Real photos cropped/resized to ``side`` px and re-encoded, with varied English captions."""
    rng = random.Random(seed)
    photos = [Image.open(p).convert("RGB") for p in sorted(FIXTURES.glob("*.jpg"))]
    out = []
    for i in range(n):
        photo = photos[i % len(photos)]
        w, h = photo.size
        box = (
            rng.randint(0, w // 4),
            rng.randint(0, h // 4),
            w - rng.randint(0, w // 4),
            h - rng.randint(0, h // 4),
        )
        image = photo.crop(box).resize((side, side * 3 // 4))
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=rng.randint(70, 92))
        caption = " ".join(rng.choice(WORDS) for _ in range(rng.randint(12, 30)))
        out.append(
            Sample(
                key=f"s{i}", source="bench", category="caption", media=buf.getvalue(), text=caption
            )
        )
    return out


def bench_chain(cfg: CurateConfig, tokenizer_json: str, side: int, n: int) -> float:
    from tokenizers import Tokenizer

    samples = make_samples(n, side)
    filters, tokenizer = build_filters(cfg), Tokenizer.from_str(tokenizer_json)
    scan_sample(make_samples(1, side, seed=99)[0], cfg, filters, tokenizer)  # warm caches
    start = time.perf_counter()
    kept = sum(isinstance(scan_sample(s, cfg, filters, tokenizer), dict) for s in samples)
    elapsed = time.perf_counter() - start
    assert kept > 0.9 * n, f"only {kept}/{n} passed the chain"
    return n / elapsed


def write_units(root: Path, units: int, per_unit: int, side: int) -> list[WorkUnit]:
    import tarfile

    out = []
    for u in range(units):
        path = root / f"in-{u:03d}.tar"
        with tarfile.open(path, "w") as archive:
            for s in make_samples(per_unit, side, seed=u):
                for name, data in (
                    (f"{s.key}.jpg", s.media),
                    (f"{s.key}.json", json.dumps({"text": s.text}).encode()),
                ):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    archive.addfile(info, io.BytesIO(data))
        out.append(WorkUnit(u, "tar", str(path)))
    return out


def bench_scaling(
    cfg: CurateConfig, tokenizer_json: str, units: int, per_unit: int, side: int
) -> dict[int, tuple[float, float]]:
    """workers -> (samples/s wall, CPU ms per sample) for the scan phase."""
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        work_units = write_units(Path(tmp), units, per_unit, side)
        cfg_json = json.dumps(dataclasses.asdict(cfg), sort_keys=True)
        for workers in (1, 2):
            work = str(Path(tmp) / f"work{workers}")
            start = time.perf_counter()
            # Forked workers, as the stage runs them (start-up cost included).
            _pool_map(
                scan_unit,
                [(u, cfg_json, tokenizer_json, work) for u in work_units],
                workers,
                "scan",
            )
            n = units * per_unit
            rates[workers] = n / (time.perf_counter() - start)
    return rates


def bench_index(n: int, band_bits: int, radius: int = 18, seed: int = 0) -> float:
    """Seconds to query-then-insert ``n`` codes (10% planted near-duplicates)."""
    rng = random.Random(seed)
    codes = []
    for _ in range(n):
        if codes and rng.random() < 0.1:
            code = rng.choice(codes)
            for b in rng.sample(range(256), rng.randint(1, radius)):
                code ^= 1 << b
        else:
            code = rng.getrandbits(256)
        codes.append(code)
    index = MultiIndexHash(256, radius, band_bits)
    start = time.perf_counter()
    dups = sum(index.query_or_add(code, str(i)) is not None for i, code in enumerate(codes))
    elapsed = time.perf_counter() - start
    assert dups >= 0.09 * n, dups
    return elapsed


def bench_brute(n: int, radius: int = 18, seed: int = 0) -> float:
    rng = random.Random(seed)
    codes = [rng.getrandbits(256) for _ in range(n)]
    kept: list[int] = []
    start = time.perf_counter()
    for code in codes:
        if not any((code ^ k).bit_count() <= radius for k in kept):
            kept.append(code)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--samples", type=int, default=240, help="Samples per image size for the chain benchmark."
    )
    parser.add_argument("--quick", action="store_true", help="Smaller sizes (a smoke run).")
    args = parser.parse_args()
    n = 40 if args.quick else args.samples

    cfg = CurateConfig()
    tokenizer_json = _tokenizer_json(cfg)
    print("== full operator chain, 1 process (samples/s per core)")
    rates = {side: bench_chain(cfg, tokenizer_json, side, n) for side in (320, 1280)}
    for side, rate in rates.items():
        print(f"  {side}x{side * 3 // 4:<5} {rate:8.1f} samples/s")
    print(f"  ratio 320px / 1280px: {rates[320] / rates[1280]:.2f}x (pixel ratio 16x)")

    print("== scan phase scaling (work units across forked processes, 640x480)")
    units, per_unit = (4, 15) if args.quick else (8, 40)
    scaling = bench_scaling(cfg, tokenizer_json, units, per_unit, 640)
    for workers, rate in scaling.items():
        print(f"  {workers} process(es): {rate:8.1f} samples/s")
    print(f"  scaling 1 -> 2 processes: {scaling[2] / scaling[1]:.2f}x (ideal 2.00x)")
    load = os.getloadavg()[0]
    print(
        f"  load average {load:.1f} on {os.cpu_count()} cores: other load on the machine caps this ratio"
    )

    print("== near-dup index (multi-index hashing, 256-bit codes, radius 18; build + query)")
    small, large = (2_000, 20_000) if args.quick else (10_000, 100_000)
    brute = bench_brute(small)
    print(f"  brute-force scan baseline at {small}: {brute:6.2f} s")
    for band_bits in (16, CurateConfig().dedup.phash_band_bits):
        t_small, t_large = bench_index(small, band_bits), bench_index(large, band_bits)
        growth = t_large / t_small
        print(
            f"  {band_bits}-bit bands: {small} codes {t_small:6.2f} s ({brute / t_small:.0f}x faster than brute force), "
            f"{large} codes {t_large:6.2f} s"
        )
        print(
            f"    growth for 10x codes: {growth:.1f}x (linear 10x, quadratic 100x; exponent {math.log10(growth):.2f})"
        )


if __name__ == "__main__":
    main()
