"""Wall time of the whole tiny recipe under kfp.local, per stage, and the orchestration overhead.

    .venv/bin/python benchmarks/bench_pipeline.py [--set curate.num_synthetic=120 ...]

Runs ``keye run --preset tiny`` exactly as ``make run`` does (a subprocess, a fresh workdir),
then reads the stage start/end events the steps wrote. A stage's time is its entry function's
time; the overhead is the share of the wall time spent outside every stage function (process
start-up, imports, kfp.local bookkeeping, MLflow parent run). Goals: whole recipe <= 300 s on
2 cores, overhead <= 15%. Baseline for the ratio: the sum of the stage functions' own time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def union_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end] intervals (parallel scan tasks overlap)."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if start > end:
            total += stop - start
            end = stop
        elif stop > end:
            total += stop - end
            end = stop
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="F=V")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        work = Path(tmp)
        env = {
            **os.environ,
            "KEYE_HOME": str(work),
            "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
            "KUBECONFIG": str(work / "none"),
        }
        argv = [
            sys.executable,
            "-m",
            "keye_model.cli",
            "run",
            "--preset",
            "tiny",
            "--run-id",
            "bench",
        ]
        for item in args.overrides:
            argv += ["--set", item]
        started = time.perf_counter()
        proc = subprocess.run(argv, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if proc.returncode:
            sys.exit(f"keye run failed:\n{proc.stdout[-3000:]}")
        events = [json.loads(line) for line in (work / "logs" / "bench" / "events.jsonl").open()]
    starts: dict[tuple[str, str], float] = {}
    intervals, per_stage = [], {}
    for event in events:
        key = (event["stage"], event.get("part", ""))
        if event["event"] == "start":
            starts[key] = event["time"]
        elif event["event"] == "end":
            intervals.append((starts[key], event["time"]))
            name = event["stage"] + (f" ({event['part']})" if event.get("part") else "")
            per_stage[name] = event["seconds"]
    inside = union_seconds(intervals)
    print(f"{'stage':<24}{'seconds':>9}")
    for name, seconds in per_stage.items():
        print(f"{name:<24}{seconds:>9.1f}")
    overhead = 1 - inside / wall
    print(f"\nwhole recipe: {wall:.1f} s wall (goal <= 300 s); stage functions {inside:.1f} s")
    print(f"orchestration overhead: {100 * overhead:.1f}% of the wall time (goal <= 15%)")
    print(f"wall / stage-function time: {wall / inside:.2f}x")


if __name__ == "__main__":
    main()
