"""Resumable checkpoints: DeepSpeed state plus what DeepSpeed does not save (RNG, data position).

Layout under ``<output>/checkpoints/`` (local or ``s3://``)::

    step-00000040/            DeepSpeed save_checkpoint (model, optimizer, scheduler per rank)
    step-00000040/trainer_rank{r}.pt   step, data position, python/numpy/torch(/cuda) RNG of rank r
    step-00000040/COMPLETE    written last: a checkpoint without it is never picked up

Every rank writes into a local staging folder; after a barrier, rank 0 publishes it: a rename on
local disk (atomic), an upload then the marker on S3 (boto3 multipart for large files). The
newest ``keep_last`` complete checkpoints are kept, older ones deleted.
"""

from __future__ import annotations

import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from keye_model import storage

COMPLETE = "COMPLETE"
_STEP = re.compile(r"step-(\d{8})$")


def step_name(step: int) -> str:
    return f"step-{step:08d}"


def rng_state() -> dict[str, Any]:
    """Every RNG a training step touches: python, numpy, torch CPU and (when present) CUDA."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` captured."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class TrainerState:
    """What a resumed run needs besides DeepSpeed's own state."""

    step: int
    data_position: int  # rows of the data stream consumed (every rank sees the same stream)
    rng: dict[str, Any]


def complete_steps(root: str) -> list[int]:
    """Steps with a complete checkpoint under ``root``, ascending."""
    steps = set()
    for uri in storage.list_files(root) if _exists_dir(root) else []:
        parts = uri.rstrip("/").split("/")
        if parts[-1] == COMPLETE and _STEP.match(parts[-2]):
            steps.add(int(_STEP.match(parts[-2]).group(1)))
    return sorted(steps)


def _exists_dir(root: str) -> bool:
    return storage.is_s3(root) or storage.local_path(root).is_dir()


def save(engine, root: str, state: TrainerState, staging: Path, keep_last: int) -> str:
    """Write a complete checkpoint of ``state.step`` (collective: every rank calls it)."""
    rank = dist.get_rank()
    name = step_name(state.step)
    local_root = storage.local_path(root) if not storage.is_s3(root) else staging
    tmp = local_root / f".tmp-{name}"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    dist.barrier()
    engine.save_checkpoint(str(tmp), tag="state", save_latest=False)
    torch.save(
        {"step": state.step, "data_position": state.data_position, "rng": state.rng},
        tmp / f"trainer_rank{rank}.pt",
    )
    dist.barrier()
    if rank == 0:
        target = storage.join(root, name)
        if storage.is_s3(root):
            storage.sync_up(tmp, target)
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            final = local_root / name
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)  # atomic on one filesystem
        storage.write_text(storage.join(target, COMPLETE), f"{state.step}\n")
        _prune(root, keep_last)
    dist.barrier()
    return storage.join(root, name)


def _prune(root: str, keep_last: int) -> None:
    steps = complete_steps(root)
    for step in steps[:-keep_last] if keep_last else []:
        target = storage.join(root, step_name(step))
        # The marker goes first: a half-deleted checkpoint is never taken for a complete one.
        if storage.is_s3(root):
            for uri in [storage.join(target, COMPLETE)] + list(storage.list_files(target)):
                storage.delete(uri)
        else:
            (storage.local_path(target) / COMPLETE).unlink(missing_ok=True)
            shutil.rmtree(storage.local_path(target), ignore_errors=True)


def load_latest(engine, root: str, staging: Path) -> TrainerState | None:
    """Load the newest complete checkpoint into ``engine``; None when there is none."""
    steps = complete_steps(root)
    if not steps:
        return None
    rank = dist.get_rank()
    uri = storage.join(root, step_name(steps[-1]))
    if storage.is_s3(root):
        local = staging / f"resume-{step_name(steps[-1])}"
        if rank == 0 or not local.exists():
            storage.sync_down(uri, local)
        dist.barrier()
    else:
        local = storage.local_path(uri)
    engine.load_checkpoint(str(local), tag="state", load_module_strict=True)
    saved = torch.load(local / f"trainer_rank{rank}.pt", weights_only=False)
    return TrainerState(saved["step"], saved["data_position"], saved["rng"])
