"""Training throughput on real curated data, side by side in one run.

    .venv/bin/python benchmarks/bench_train.py [--samples 160] [--steps 6] [--skip-zero]

1. Packing vs pad-to-longest on the same curated samples: share of real tokens in the batch
   (goal with packing: >= 97%) and real tokens/s of full training steps (forward, backward,
   AdamW through DeepSpeed). Baseline: pad-to-longest.
2. Step time per MoE expert kernel (eager baseline, grouped_mm, batched_mm) on packed batches.
3. ZeRO-2 vs ZeRO-3 step time with 2 CPU processes (torchx local_cwd -> torchrun, gloo):
   the real ``keye stage pretrain``, mean step time after the first step.

Inputs are made by the real curate and init stages (tiny preset) in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

import torch

from keye_model import KeyeVLMoeForConditionalGeneration
from keye_model.processing.processor import KeyeProcessor
from keye_model.recipe import load_recipe
from keye_model.stages import run_stage
from keye_model.train import moe
from keye_model.train.attention import use_packed_attention
from keye_model.train.config import TrainConfig
from keye_model.train.data import ShardIndex, collate, iter_rows
from keye_model.train.engine import build_engine
from keye_model.train.loop import _step


def make_inputs(root: Path, samples: int) -> tuple[str, str]:
    recipe = load_recipe("tiny", {"curate": {"num_synthetic": samples}})
    data = run_stage("curate", recipe, str(root / "data")).outputs["data"]
    model = run_stage("init", recipe, str(root / "init")).outputs["model"]
    return model, data


def batches(model_dir: str, data: str, cfg: TrainConfig, count: int, cache: Path) -> list:
    """``count`` micro-batches exactly as the trainer builds them."""
    processor = KeyeProcessor.from_pretrained(model_dir)
    index = ShardIndex(data, cache)
    rows = iter_rows(
        index, processor, weights={r.category: 1.0 for r in index.refs}, seq_len=cfg.seq_len,
        packing=cfg.packing, loss_on=cfg.loss_on, think_mix=cfg.think_mix, long_cot_ratio=None,
        seed=0, stats={},
    )  # fmt: skip
    pad = processor.tokenizer.pad_token_id
    width = cfg.seq_len if cfg.packing else None
    return [collate(list(islice(rows, cfg.micro_batch_size)), pad, width) for _ in range(count)]


def time_steps(model_dir: str, cfg: TrainConfig, micro_batches: list) -> tuple[float, float]:
    """(seconds per optimizer step, real tokens per second) after one warm-up step."""
    torch.manual_seed(0)
    model = KeyeVLMoeForConditionalGeneration.from_pretrained(model_dir).train()
    model.set_experts_implementation(cfg.experts_implementation)
    if cfg.packing:
        use_packed_attention(model)  # as the training loop does
    engine = build_engine(model, cfg, max_steps=len(micro_batches))
    monitor = moe.RouterMonitor(model, cfg.moe.seq_aux_loss_weight)
    _step(engine, monitor, micro_batches[:1], cfg, world=1)
    start = time.perf_counter()
    for batch in micro_batches[1:]:
        _step(engine, monitor, [batch], cfg, world=1)
    seconds = time.perf_counter() - start
    monitor.remove()
    steps = len(micro_batches) - 1
    return seconds / steps, sum(b.real_tokens for b in micro_batches[1:]) / seconds


def packing_vs_padding(model_dir: str, data: str, steps: int, cache: Path) -> None:
    print("\n1. packing vs pad-to-longest (micro-batch 4, seq_len 2048 when packed)")
    results = {}
    for packing in (False, True):
        cfg = TrainConfig(micro_batch_size=4, seq_len=2048, packing=packing)
        cfg.launch.zero_stage = 0
        micro = batches(model_dir, data, cfg, steps + 1, cache)
        real = sum(b.real_tokens for b in micro) / sum(b.input_ids.numel() for b in micro)
        step_s, tok_s = time_steps(model_dir, cfg, micro)
        results[packing] = (real, tok_s)
        name = "packed" if packing else "pad-to-longest"
        print(
            f"   {name:<15} real tokens {100 * real:5.1f}%   {tok_s:8.0f} real tok/s   {step_s:.3f} s/step"
        )
    print(
        f"   packing: {100 * results[True][0]:.1f}% real tokens (goal >= 97%), "
        f"{results[True][1] / results[False][1]:.2f}x the real tokens/s of pad-to-longest"
    )


def expert_kernels(model_dir: str, data: str, steps: int, cache: Path) -> None:
    print("\n2. MoE expert kernels (packed rows of 2048, micro-batch 2)")
    base = None
    for impl in ("eager", "grouped_mm", "batched_mm"):
        cfg = TrainConfig(micro_batch_size=2, seq_len=2048, experts_implementation=impl)
        cfg.launch.zero_stage = 0
        step_s, _ = time_steps(model_dir, cfg, batches(model_dir, data, cfg, steps + 1, cache))
        base = base or step_s
        print(f"   {impl:<11} {step_s:.3f} s/step   {base / step_s:.2f}x eager")


def zero_stages(model_dir: str, data: str, root: Path) -> None:
    print("\n3. ZeRO-2 vs ZeRO-3, 2 CPU processes via torchx (keye stage pretrain, 5 steps)")
    import mlflow

    times = {}
    for stage in (2, 3):
        out = root / f"zero{stage}"
        argv = [sys.executable, "-m", "keye_model.cli", "stage", "pretrain", "--model", model_dir]
        argv += ["--data", data, "--output", str(out), "--max-steps", "5"]
        for item in ("seq_len=1024", "micro_batch_size=1", f"launch.zero_stage={stage}",
                     "launch.nproc_per_node=2"):  # fmt: skip
            argv += ["--set", f"pretrain.{item}"]
        subprocess.run(
            argv, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
        )
        assert json.loads((out / "stage_result.json").read_text())["metrics"]["steps"] == 5
        runs = mlflow.search_runs(
            experiment_names=["keye"], filter_string="tags.stage = 'pretrain'",
            order_by=["start_time DESC"], output_format="list",
        )  # fmt: skip
        history = mlflow.MlflowClient().get_metric_history(runs[0].info.run_id, "step_time_s")
        later = [m.value for m in sorted(history, key=lambda m: m.step)[1:]]
        times[stage] = sum(later) / len(later)
        print(f"   ZeRO-{stage}: {times[stage]:.3f} s/step")
    print(f"   ZeRO-3 step time is {times[3] / times[2]:.2f}x ZeRO-2's")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=160, help="Synthetic samples to curate.")
    parser.add_argument("--steps", type=int, default=6, help="Timed optimizer steps per setting.")
    parser.add_argument("--skip-zero", action="store_true", help="Skip the 2-process ZeRO runs.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        root = Path(tmp)
        os.environ.setdefault("KEYE_HOME", str(root / "home"))
        os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'home' / 'mlflow.db'}")
        model_dir, data = make_inputs(root, args.samples)
        packing_vs_padding(model_dir, data, args.steps, root / "cache")
        expert_kernels(model_dir, data, args.steps, root / "cache")
        if not args.skip_zero:
            zero_stages(model_dir, data, root)


if __name__ == "__main__":
    main()
