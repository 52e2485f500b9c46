"""Line-oriented logging that reads well in ``kubectl logs``.

Every line carries time, level, stage and rank: ``2026-01-01T12:00:00 INFO [curate r0] kept 95/100``.
Progress bars (tqdm) are shown only when stderr is a terminal, so pod logs stay clean.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
_FORMAT = "%(asctime)s %(levelname)s [%(stage)s r%(rank)s] %(message)s"


class _StageFilter(logging.Filter):
    def __init__(self, stage: str):
        super().__init__()
        self.stage = stage

    def filter(self, record: logging.LogRecord) -> bool:
        record.stage = getattr(record, "stage", self.stage)
        record.rank = os.environ.get("RANK", "0")
        return True


def get_logger(stage: str) -> logging.Logger:
    """A logger for one stage, writing ``time LEVEL [stage rRANK] message`` lines to stderr."""
    logger = logging.getLogger(f"keye.{stage}")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%Y-%m-%dT%H:%M:%S"))
        handler.addFilter(_StageFilter(stage))
        logger.addHandler(handler)
        logger.setLevel(os.environ.get("KEYE_LOG_LEVEL", "INFO"))
        logger.propagate = False
    return logger


def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    """Wrap ``items`` in a tqdm bar when attached to a terminal; a plain iterator otherwise."""
    if not sys.stderr.isatty() or os.environ.get("KEYE_NO_PROGRESS"):
        yield from items
        return
    from tqdm.auto import tqdm

    yield from tqdm(items, desc=desc, total=total, dynamic_ncols=True)
