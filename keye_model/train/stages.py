"""Entry functions of the gradient-training stages: align, pretrain, anneal and SFT.

    keye stage align    --model DIR --data DIR --output DIR   # only mlp_AR trains
    keye stage pretrain --model DIR --data DIR --output DIR   # everything trains
    keye stage anneal   --model DIR --data DIR --output DIR   # best data, LR -> 0
    keye stage sft      --model DIR --data DIR --output DIR   # assistant tokens, think modes

They differ only by their ``TrainConfig`` (recipe sections of the same names). With one local
process (``launch.nproc_per_node=1``, the tiny default) the loop runs in this process on a
1-rank gloo group; otherwise torchx launches ``keye_model.train.worker`` (torchrun on this machine
or a Volcano job on Kubernetes) and this function follows it and reads back rank 0's result.
"""

from __future__ import annotations

import json

from keye_model import storage
from keye_model.stage import StageResult
from keye_model.train.config import TrainConfig
from keye_model.train.engine import validate
from keye_model.train.worker import RESULT_FILE


def train_stage(
    stage: str,
    cfg: TrainConfig,
    *,
    output: str,
    model: str,
    data: str,
    max_steps: int | None = None,
    save_every: int | None = None,
    resume: bool = False,
) -> StageResult:
    """Run one training stage in process or through torchx, per ``cfg.launch``."""
    from keye_model.train.loop import Run, train

    validate(cfg, stage)
    steps = max_steps or cfg.max_steps
    run = Run(stage, cfg, output, model, data, steps, save_every or cfg.save_every, resume)
    if cfg.launch.scheduler == "local_cwd" and cfg.launch.nproc_per_node == 1:
        return train(run)
    from keye_model.config_utils import to_dict
    from keye_model.train.launch import launch

    argv = [
        "--stage", stage, "--config-json", json.dumps(to_dict(cfg)), "--output", output,
        "--model", model, "--data", data, "--max-steps", str(steps),
        "--save-every", str(run.save_every), *(["--resume"] if resume else []),
    ]  # fmt: skip
    launch(stage, cfg, argv)
    return StageResult(**json.loads(storage.read_text(storage.join(output, RESULT_FILE))))


def align(cfg: TrainConfig, **kwargs) -> StageResult:
    """Projector alignment: ViT and LM frozen, the new mlp_AR learns to speak the LM's language."""
    return train_stage("align", cfg, **kwargs)


def pretrain(cfg: TrainConfig, **kwargs) -> StageResult:
    """Full pretraining on the curated mixture (OCR, charts, tables, synthetic CoT)."""
    return train_stage("pretrain", cfg, **kwargs)


def anneal(cfg: TrainConfig, **kwargs) -> StageResult:
    """Annealing on the higher-quality mixture with the learning rate decaying to zero."""
    return train_stage("anneal", cfg, **kwargs)


def sft(cfg: TrainConfig, **kwargs) -> StageResult:
    """SFT: instructions mixed with long CoT, every thinking mode, loss on assistant tokens."""
    return train_stage("sft", cfg, **kwargs)
