"""The training loop every gradient stage shares (align, pretrain, anneal, SFT; cold-start's SFT).

Runs on every rank (collective); rank 0 talks to MLflow and writes the final model. Per optimizer
step, each rank takes its share of ``micro_batch_size * grad_accum * world`` packed rows from one
deterministic stream, so the step sees the same data for any split into micro-batches, ranks and
accumulation. The LM loss is the sum of token losses divided by the number of target tokens of
the whole accumulated batch on all ranks (not a mean of per-micro-batch means), so micro-batch 4
x accumulation 1 and micro-batch 1 x accumulation 4 give the same gradient.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from keye_model import storage
from keye_model.log import get_logger
from keye_model.stage import StageResult, local_output
from keye_model.train import checkpoint
from keye_model.train.attention import use_packed_attention
from keye_model.train.config import TrainConfig
from keye_model.train.data import IGNORE, Batch, ShardIndex, collate, iter_rows
from keye_model.train.engine import build_engine, freeze, init_distributed, validate
from keye_model.train.moe import RouterMonitor, load_balance


@dataclass
class Run:
    """Where one training run reads and writes, and how long it goes."""

    stage: str
    cfg: TrainConfig
    output: str
    model: str
    data: str
    max_steps: int
    save_every: int
    resume: bool = False
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def checkpoints(self) -> str:
        return storage.join(self.output, "checkpoints")


def lm_loss_sum(logits_BLV: torch.Tensor, labels_BL: torch.Tensor) -> torch.Tensor:
    """Sum of next-token cross-entropies over target positions (labels shifted by one)."""
    return F.cross_entropy(
        logits_BLV[:, :-1].flatten(0, 1).float(),
        labels_BL[:, 1:].flatten(),
        ignore_index=IGNORE,
        reduction="sum",
    )


def _all_reduce(value: torch.Tensor) -> torch.Tensor:
    value = value.clone()
    dist.all_reduce(value)
    return value


def measured_peak_flops(seconds: float = 0.2) -> float:
    """FLOP/s this process reaches on a large fp32 matmul: the MFU denominator on CPU.

    On a GPU the vendor's dense bf16 peak is used instead (``KEYE_PEAK_TFLOPS`` overrides both).
    """
    if os.environ.get("KEYE_PEAK_TFLOPS"):
        return float(os.environ["KEYE_PEAK_TFLOPS"]) * 1e12
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        return 989e12 if any(g in name for g in ("H100", "H200", "H800")) else 312e12
    a = torch.randn(512, 512)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ a
        done += 1
    return done * 2 * 512**3 / (time.perf_counter() - start)


def local_model_dir(model: str, scratch: Path) -> Path:
    """A local directory holding ``model`` (an s3:// model is downloaded into ``scratch``)."""
    if not storage.exists(storage.join(model, "config.json")):
        raise FileNotFoundError(
            f"--model {model}: no config.json (a Keye model directory is expected)"
        )
    return (
        storage.sync_down(model, scratch / "model")
        if storage.is_s3(model)
        else storage.local_path(model)
    )


def train(run: Run) -> StageResult:
    """Run the stage's optimizer steps on this rank; rank 0 returns the real result."""
    from keye_model import KeyeVLMoeForConditionalGeneration
    from keye_model.model.params import count_parameters
    from keye_model.processing.processor import KeyeProcessor
    from keye_model.tracking import scratch_dir, stage_run

    # The config as run: the step limits given on the command line are what MLflow records.
    cfg = dataclasses.replace(run.cfg, max_steps=run.max_steps, save_every=run.save_every)
    validate(cfg, run.stage)
    rank, world = init_distributed()
    log = get_logger(run.stage)
    scratch = scratch_dir(f"keye-{run.stage}-")
    model_dir = local_model_dir(run.model, scratch)
    index = ShardIndex(run.data, scratch / "shards")  # fails fast on a data folder without shards
    torch.manual_seed(cfg.seed)
    dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32
    model = KeyeVLMoeForConditionalGeneration.from_pretrained(model_dir, dtype=dtype)
    model.set_experts_implementation(cfg.experts_implementation)
    if cfg.packing and cfg.attention == "packed_sdpa":
        use_packed_attention(model)  # per-sample causal SDPA (flash-attn varlen when present)
    processor = KeyeProcessor.from_pretrained(model_dir)
    trainable = freeze(model, cfg.trainable)
    monitor = RouterMonitor(model, cfg.moe.seq_aux_loss_weight)
    engine = build_engine(model, cfg, run.max_steps)
    engine.train()
    active = count_parameters(model.config).active
    peak = measured_peak_flops()

    weights = cfg.categories or {r.category: 1.0 for r in index.refs}
    stats: dict[str, int] = {}
    rows = iter_rows(
        index,
        processor,
        weights=weights,
        seq_len=cfg.seq_len,
        packing=cfg.packing,
        loss_on=cfg.loss_on,
        think_mix=cfg.think_mix,
        long_cot_ratio=cfg.long_cot_ratio if run.stage == "sft" else None,
        seed=cfg.seed,
        stats=stats,
    )
    start_step, position = 0, 0
    if run.resume:
        state = checkpoint.load_latest(engine, run.checkpoints, scratch)
        if state is not None:
            start_step, position = state.step, state.data_position
            for _ in range(position):  # the stream is deterministic: skip what was consumed
                next(rows)
            checkpoint.set_rng_state(state.rng)
            log.info("resumed at step %d (data row %d)", start_step, position)
    pad_id = processor.tokenizer.pad_token_id
    per_step = cfg.micro_batch_size * cfg.grad_accum * world
    width = cfg.seq_len if cfg.packing else None

    tracking = stage_run(run.stage, cfg) if rank == 0 else contextlib.nullcontext()
    with tracking as tracker, local_output(run.output) as out_dir:
        if tracker:
            tracker.set_tags({"model_in": run.model, "data": run.data, "world_size": str(world)})
            tracker.log_params(
                {"trainable_params": sum(trainable.values()), "max_steps": run.max_steps}
            )
        for step in range(start_step, run.max_steps):
            started = time.perf_counter()
            step_rows = [next(rows) for _ in range(per_step)]
            position += per_step
            mine = [
                step_rows[(g * world + rank) * cfg.micro_batch_size :][: cfg.micro_batch_size]
                for g in range(cfg.grad_accum)
            ]
            batches = [collate(rows_, pad_id, width) for rows_ in mine]
            lr = engine.get_lr()[0]  # the LR this step uses (the scheduler moves after it)
            metrics = _step(engine, monitor, batches, cfg, world)
            load = _all_reduce(monitor.reset_load())
            if "model" in cfg.trainable:  # the routers belong to the LM: frozen LM, frozen routing
                monitor.apply_bias_update(load, cfg.moe.bias_update_rate)
            seconds = time.perf_counter() - started
            tokens = float(_all_reduce(torch.tensor(sum(b.real_tokens for b in batches))))
            slots = float(_all_reduce(torch.tensor(sum(b.input_ids.numel() for b in batches))))
            balance = load_balance(load) if load.numel() else torch.zeros(0)
            metrics.update(
                lr=lr,
                tokens_per_s=tokens / seconds,
                mfu=6 * active * tokens / seconds / (peak * world),
                packing_efficiency=tokens / slots,
                step_time_s=seconds,
                moe_balance_max=float(balance.max()) if balance.numel() else 1.0,
                moe_unused_experts=float((load == 0).sum()),
                **{f"moe_balance_layer{i}": float(b) for i, b in enumerate(balance)},
                samples_too_long=float(stats.get("too_long", 0)),
            )
            run.history.append({"step": step + 1, **metrics})
            if tracker and (step + 1) % cfg.log_every == 0:
                tracker.log_metrics(metrics, step=step + 1)
            if rank == 0:
                log.info(
                    "step %d/%d loss %.4f lr %.2e grad_norm %.3f tok/s %.0f packing %.1f%% moe max/mean %.2f",
                    step + 1,
                    run.max_steps,
                    metrics["loss"],
                    metrics["lr"],
                    metrics["grad_norm"],
                    metrics["tokens_per_s"],
                    100 * metrics["packing_efficiency"],
                    metrics["moe_balance_max"],
                )
            if (step + 1) % run.save_every == 0 or step + 1 == run.max_steps:
                state = checkpoint.TrainerState(step + 1, position, checkpoint.rng_state())
                checkpoint.save(engine, run.checkpoints, state, scratch, cfg.keep_last)
        result = _finish(run, engine, processor, out_dir, tracker, rank)
    monitor.remove()
    return result


def _step(
    engine, monitor: RouterMonitor, batches: list[Batch], cfg: TrainConfig, world: int
) -> dict[str, float]:
    """Forward/backward every micro-batch of one optimizer step; DeepSpeed steps at the boundary."""
    device = engine.device
    targets = float(_all_reduce(torch.tensor(sum(b.targets for b in batches), dtype=torch.float64)))
    if targets == 0:
        raise ValueError("an optimizer step has no target tokens: check loss_on and the data")
    # DeepSpeed divides by grad_accum and averages over ranks; undo both so the gradient is
    # d(sum of token losses over the global batch)/d(theta) / (global target tokens).
    scale = cfg.grad_accum * world / targets
    loss_sum, aux_sum = torch.zeros((), dtype=torch.float64), 0.0
    for batch in batches:
        monitor.segments = batch.segment_ids.flatten()
        inputs = {
            k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.model_inputs().items()
        }
        logits = engine(**inputs).logits
        token_loss = lm_loss_sum(logits, batch.labels.to(device))
        loss = token_loss * scale
        aux = monitor.aux_loss()
        if aux is not None:
            loss = loss + aux  # DeepSpeed's 1/grad_accum makes it the mean over micro-batches
            aux_sum += float(aux.detach())
        engine.backward(loss)
        engine.step()
        loss_sum += token_loss.detach().double().cpu()
    total = float(_all_reduce(loss_sum))
    grad_norm = engine.get_global_grad_norm()
    return {
        "loss": total / targets,
        "grad_norm": float(grad_norm) if grad_norm is not None else math.nan,
        "balance_loss": aux_sum / len(batches),
        "target_tokens": targets,
    }


def _finish(run: Run, engine, processor, out_dir: Path, tracker, rank: int) -> StageResult:
    """Write ``<output>/final`` (HF format, released names) and the loss curve; build the result."""
    save_model(engine, processor, out_dir / "final", run.cfg.launch.zero_stage, rank)
    dist.barrier()
    if rank != 0:
        return StageResult(stage=run.stage)
    history = run.history
    plot = out_dir / "loss.png"
    _plot_history(history, run.stage, plot)
    first, last = (history[0]["loss"], history[-1]["loss"]) if history else (math.nan, math.nan)
    metrics = {
        "loss_first": first,
        "loss_final": last,
        "steps": float(len(history)),
        "tokens_per_s": sum(h["tokens_per_s"] for h in history) / max(1, len(history)),
        "packing_efficiency": sum(h["packing_efficiency"] for h in history) / max(1, len(history)),
    }
    if tracker:
        tracker.log_metrics({f"final_{k}": v for k, v in metrics.items()})
        tracker.log_artifact(plot, "plots")
        tracker.set_tags({"model_uri": storage.join(run.output, "final")})
    return StageResult(
        stage=run.stage,
        outputs={
            "model": storage.join(run.output, "final"),
            "checkpoints": run.checkpoints,
            "loss_plot": storage.join(run.output, plot.name),
        },
        metrics=metrics,
        message=f"{len(history)} steps, loss {first:.3f} -> {last:.3f}; model in "
        f"{storage.join(run.output, 'final')}",
    )


def save_model(engine, processor, path: Path, zero_stage: int, rank: int) -> None:
    """The trained model in HF format (released weight names) at ``path``; collective under ZeRO-3."""
    gather = contextlib.nullcontext()
    if zero_stage == 3:
        import deepspeed

        gather = deepspeed.zero.GatheredParameters(
            list(engine.module.parameters()), modifier_rank=None
        )
    with gather:
        if rank == 0:
            engine.module.save_pretrained(path)
            processor.save_pretrained(path)


def _plot_history(history: list[dict[str, float]], stage: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(9, 3.2))
    steps = [h["step"] for h in history]
    ax_loss.plot(steps, [h["loss"] for h in history], marker=".")
    ax_loss.set(title=f"{stage}: LM loss", xlabel="step", ylabel="loss")
    ax_lr.plot(steps, [h["lr"] for h in history], color="tab:orange")
    ax_lr.set(title="learning rate", xlabel="step")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
