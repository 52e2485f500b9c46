"""Throughput of ``keye serve local`` under the evaluation client: requests/s at concurrency 1, 8, 32.

Starts the server (real uvicorn on 127.0.0.1, a tiny random model written by ``keye init``'s
assembler) and sends the same held-out MMBench-style questions through ``OpenAIBackend`` at each
concurrency; prints requests/s and the ratio to concurrency 1 (the baseline measured in the
same run). Concurrent requests with equal prompt lengths are generated as one batch by the
server, which is where a ratio above 1 comes from. Each level gets an untimed pass first (the model pays a one-off cost per new input shape), then a timed
one. Takes about a minute on 2 CPU cores.

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=32, help="Requests per concurrency level.")
    parser.add_argument(
        "--max-new-tokens", type=int, default=16, help="Completion budget per request."
    )
    args = parser.parse_args()

    from keye_model.eval.backends import OpenAIBackend, Request, wait_healthy
    from keye_model.eval.benchmarks import get_benchmark, load_benchmark, prompt_hash, to_messages
    from keye_model.eval.synthetic import write_synthetic
    from keye_model.model.assembly import assemble
    from keye_model.processing import KeyeProcessor, build_tiny_tokenizer

    work = Path(tempfile.mkdtemp(prefix="bench-eval-"))
    model = work / "model"
    assemble("tiny", str(model), seed=0)
    if not (model / "processor_config.json").is_file():
        KeyeProcessor(build_tiny_tokenizer()).save_pretrained(model)
    # MMStar-style TSV (no circular copies): one image question per request.
    write_synthetic(work / "data", ["mmstar"], n=8, seed=900_001)
    records, media = load_benchmark(work / "data", "mmstar")
    spec = get_benchmark("mmstar")
    pool = [to_messages(spec.build(r, media), "/no_think") for r in records]

    def requests(tag: str) -> list[Request]:
        out = []
        for i in range(args.requests):
            messages = pool[i % len(pool)]
            out.append(
                Request(
                    tag,
                    str(i),
                    prompt_hash(messages, args.max_new_tokens),
                    messages,
                    args.max_new_tokens,
                )
            )
        return out

    port = _free_port()
    log = open(work / "server.log", "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "keye_model.cli",
            "serve",
            "local",
            "--model",
            str(model),
            "--port",
            str(port),
            "--max-batch",
            "32",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "KEYE_NO_PROGRESS": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, timeout_s=180, alive=lambda: proc.poll() is None)
        rates: dict[int, float] = {}
        for concurrency in (1, 8, 32):
            client = OpenAIBackend(url, concurrency=concurrency, timeout_s=600)
            # An untimed pass first: the model pays a one-off cost per new input shape.
            client.run(requests(f"warm{concurrency}"), lambda r, t: None)
            start = time.perf_counter()
            answers: list[str] = []
            client.run(requests(f"c{concurrency}"), lambda r, t, out=answers: out.append(t))
            elapsed = time.perf_counter() - start
            rates[concurrency] = args.requests / elapsed
            print(
                f"concurrency {concurrency:>2}: {rates[concurrency]:6.2f} requests/s "
                f"({args.requests} requests in {elapsed:.1f} s), ratio to concurrency 1: {rates[concurrency] / rates[1]:.2f}x",
                flush=True,
            )
            assert len(answers) == args.requests
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
