"""Throughput of ``keye serve local`` under the evaluation client: requests/s at concurrency 1, 8, 32.

Starts the server (real uvicorn on 127.0.0.1, a tiny random model written by ``keye init``'s
assembler) once per batching mode and sends distinct held-out MMStar-style image questions (an
evaluation never repeats a prompt) through ``OpenAIBackend`` at each concurrency. It prints
requests/s and the ratio to concurrency 1 of the same mode, the baseline measured in the same
run:

- ``exact``: only prompts of equal token length share a batch (answers never depend on batch
  neighbours, the default, and what the parity test checks);
- ``padded``: any queued prompts are left-padded into one batch.

Each level gets an untimed pass first, then the best of ``REPEATS`` timed passes (the CPU is
shared with other work, so single passes are noisy; the fastest pass is the least disturbed). About one and a half to two minutes on 2 CPU cores.

    .venv/bin/python benchmarks/bench_eval.py [--requests 32] [--max-new-tokens 16]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPEATS = 3
LEVELS = (1, 8, 32)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(model: Path, batching: str, requests, work: Path, count: int) -> dict[int, float]:
    """Requests/s per concurrency level against a fresh server in ``batching`` mode."""
    from keye_model.eval.backends import OpenAIBackend, wait_healthy

    port = _free_port()
    log = open(work / f"server-{batching}.log", "w")
    cmd = [sys.executable, "-m", "keye_model.cli", "serve", "local", "--model", str(model)]
    cmd += ["--port", str(port), "--max-batch", "32", "--batching", batching]
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "KEYE_NO_PROGRESS": "1"}
    )
    url = f"http://127.0.0.1:{port}"
    rates: dict[int, float] = {}
    try:
        wait_healthy(url, timeout_s=180, alive=lambda: proc.poll() is None)
        for concurrency in LEVELS:
            client = OpenAIBackend(url, concurrency=concurrency, timeout_s=600)
            client.run(requests(), lambda r, t: None)  # untimed: first-use costs
            elapsed = []
            for _ in range(REPEATS):
                answers: list[str] = []
                start = time.perf_counter()
                client.run(requests(), lambda r, t, out=answers: out.append(t))
                elapsed.append(time.perf_counter() - start)
                assert len(answers) == count
            rates[concurrency] = count / min(elapsed)
            print(
                f"[{batching:>6}] concurrency {concurrency:>2}: {rates[concurrency]:6.2f} requests/s "
                f"(best of {REPEATS} x {count} requests: {min(elapsed):.2f} s), "
                f"ratio to concurrency 1: {rates[concurrency] / rates[1]:.2f}x",
                flush=True,
            )
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    return rates


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=32, help="Distinct requests per pass.")
    parser.add_argument(
        "--max-new-tokens", type=int, default=16, help="Completion budget per request."
    )
    args = parser.parse_args()

    from keye_model.eval.backends import Request
    from keye_model.eval.benchmarks import (
        get_benchmark,
        load_benchmark,
        prompt_hash,
        to_messages,
        write_synthetic,
    )
    from keye_model.model.assembly import assemble

    work = Path(tempfile.mkdtemp(prefix="bench-eval-"))
    model = work / "model"
    assemble("tiny", str(model), seed=0)
    write_synthetic(work / "data", ["mmstar"], n=args.requests, seed=900_001)
    records, media = load_benchmark(work / "data", "mmstar")
    spec = get_benchmark("mmstar")
    pool = [to_messages(spec.build(r, media), "/no_think") for r in records]

    def requests() -> list[Request]:
        return [
            Request("bench", str(i), prompt_hash(m, args.max_new_tokens), m, args.max_new_tokens)
            for i, m in enumerate(pool)
        ]

    for batching in ("exact", "padded"):
        measure(model, batching, requests, work, len(pool))
    return 0


if __name__ == "__main__":
    sys.exit(main())
