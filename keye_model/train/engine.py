"""DeepSpeed around a Keye model: process group, freezing, AdamW, the LR schedule, ZeRO config.

The model stays plain PyTorch on one device; everything about parallelism happens here.
On CPU the process group is gloo (one process works too: a 1-rank group on 127.0.0.1); on GPUs
it is NCCL. A plain ``torch.optim.AdamW`` avoids compiling DeepSpeed's fused Adam on CPU.
"""

from __future__ import annotations

import math
import os
import socket

import torch
from torch import nn

from keye_model.train.config import MODULES, PRECISIONS, SCHEDULES, OptimConfig, TrainConfig


def lr_multiplier(step: int, max_steps: int, optim: OptimConfig) -> float:
    """LR as a share of the peak at optimizer step ``step`` (0-based).

    warmup: ``(step + 1) / warmup_steps``; then
    - constant: 1;
    - cosine: ``m + (1 - m) * (1 + cos(pi * p)) / 2`` with p the post-warmup progress in [0, 1];
    - wsd: 1 until the last ``decay_fraction`` of steps, then linear from 1 to m;
    where m = ``min_lr_ratio`` and the last step reaches m exactly (0 for annealing).
    """
    if optim.schedule not in SCHEDULES:
        raise ValueError(f"optim.schedule must be one of {SCHEDULES}, got {optim.schedule!r}")
    if step < optim.warmup_steps:
        return (step + 1) / optim.warmup_steps
    span = max(1, max_steps - 1 - optim.warmup_steps)
    progress = min(1.0, (step - optim.warmup_steps) / span)
    floor = optim.min_lr_ratio
    if optim.schedule == "constant":
        return 1.0
    if optim.schedule == "cosine":
        return floor + (1 - floor) * (1 + math.cos(math.pi * progress)) / 2
    decay_steps = max(1, round(optim.decay_fraction * max_steps))
    decay_start = max_steps - decay_steps
    if step < decay_start:
        return 1.0
    return 1.0 - (1.0 - floor) * min(1.0, (step - decay_start + 1) / decay_steps)


def validate(cfg: TrainConfig, stage: str) -> None:
    """Reject bad training settings with the field named, before any model is loaded."""
    where = f"{stage}."
    unknown = sorted(set(cfg.trainable) - set(MODULES))
    if unknown or not cfg.trainable:
        raise ValueError(
            f"{where}trainable: {cfg.trainable} must be a non-empty subset of {MODULES}"
        )
    if cfg.precision not in PRECISIONS:
        raise ValueError(f"{where}precision must be one of {PRECISIONS}, got {cfg.precision!r}")
    if cfg.loss_on not in ("assistant", "all"):
        raise ValueError(f"{where}loss_on must be 'assistant' or 'all', got {cfg.loss_on!r}")
    for name in (
        "max_steps",
        "micro_batch_size",
        "grad_accum",
        "seq_len",
        "save_every",
        "keep_last",
    ):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{where}{name} must be >= 1, got {getattr(cfg, name)}")
    if len(cfg.think_mix) != 3 or abs(sum(cfg.think_mix) - 1) > 1e-6 or min(cfg.think_mix) < 0:
        raise ValueError(
            f"{where}think_mix must be 3 non-negative shares summing to 1, got {cfg.think_mix}"
        )
    if not 0 <= cfg.long_cot_ratio <= 1:
        raise ValueError(f"{where}long_cot_ratio must lie in [0, 1], got {cfg.long_cot_ratio}")
    if cfg.optim.schedule not in SCHEDULES:
        raise ValueError(
            f"{where}optim.schedule must be one of {SCHEDULES}, got {cfg.optim.schedule!r}"
        )
    if not 0 <= cfg.optim.min_lr_ratio <= 1:
        raise ValueError(
            f"{where}optim.min_lr_ratio must lie in [0, 1], got {cfg.optim.min_lr_ratio}"
        )
    if cfg.experts_implementation not in ("eager", "grouped_mm", "batched_mm"):
        raise ValueError(
            f"{where}experts_implementation must be eager, grouped_mm or batched_mm, "
            f"got {cfg.experts_implementation!r}"
        )
    if cfg.attention not in ("packed_sdpa", "sdpa"):
        raise ValueError(f"{where}attention must be packed_sdpa or sdpa, got {cfg.attention!r}")
    if cfg.launch.zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"{where}launch.zero_stage must be 0-3, got {cfg.launch.zero_stage}")
    if cfg.moe.bias_update_rate < 0 or cfg.moe.seq_aux_loss_weight < 0:
        raise ValueError(f"{where}moe rates must be >= 0")
    for category, weight in cfg.categories.items():
        if weight < 0:
            raise ValueError(f"{where}categories.{category} must be >= 0, got {weight}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_distributed() -> tuple[int, int]:
    """Join (or create) the process group; returns (rank, world size).

    Under torchrun the env says who we are; alone, a 1-rank gloo group on a free local port.
    """
    import deepspeed
    import torch.distributed as dist

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if "RANK" not in os.environ:
        os.environ.update(
            RANK="0",
            LOCAL_RANK="0",
            WORLD_SIZE="1",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(_free_port()),
        )
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def freeze(model: nn.Module, trainable: list[str]) -> dict[str, int]:
    """Train only the named top-level modules; returns trainable parameter counts per module."""
    counts = {}
    for name in MODULES:
        module = getattr(model, name)
        train = name in trainable
        for param in module.parameters():
            param.requires_grad_(train)
        counts[name] = sum(p.numel() for p in module.parameters()) if train else 0
    return counts


def deepspeed_config(cfg: TrainConfig, world: int) -> dict:
    """The DeepSpeed JSON config of a stage (ZeRO stage, precision, clipping, batch geometry)."""
    zero: dict = {"stage": cfg.launch.zero_stage}
    if cfg.launch.zero_stage == 3:
        # Tiny layers are gathered whole; big ones stream. Leaf MoE blocks gather all experts.
        zero.update(stage3_param_persistence_threshold=0, stage3_prefetch_bucket_size=5e7)
    return {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "train_batch_size": cfg.micro_batch_size * cfg.grad_accum * world,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": cfg.precision == "bf16"},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,  # we log ourselves, one line per step
        "wall_clock_breakdown": False,
    }


def build_engine(model: nn.Module, cfg: TrainConfig, max_steps: int):
    """``deepspeed.initialize`` with AdamW on the trainable parameters and the LR schedule."""
    import deepspeed

    _, world = init_distributed()
    if cfg.launch.zero_stage == 3:
        from deepspeed.utils import set_z3_leaf_modules

        from keye_model.train.moe import moe_block_class

        # Otherwise ranks whose tokens miss an expert wait forever for its gather (DeepSpeed #4808).
        set_z3_leaf_modules(model, [moe_block_class(model)])
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]  # norms and biases: no weight decay
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.optim.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.optim.lr,
        betas=tuple(cfg.optim.betas),
        eps=cfg.optim.eps,
    )

    def scheduler(
        wrapped,
    ):  # built on DeepSpeed's (ZeRO-wrapped) optimizer, stepped per optimizer step
        return torch.optim.lr_scheduler.LambdaLR(
            wrapped, lambda step: lr_multiplier(step, max_steps, cfg.optim)
        )

    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=deepspeed_config(cfg, world),
    )
    return engine
