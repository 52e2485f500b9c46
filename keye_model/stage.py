"""The stage contract: what every stage entry function takes and returns, and where it writes.

Every stage of the recipe has ONE entry function of one shape, always called with keywords::

    entry(cfg, *, output: str, <named inputs>: str | list[str], <options>) -> StageResult

``cfg`` is the stage's typed section of the recipe, inputs are URIs (local paths or ``s3://``),
``output`` is the URI the stage owns. ``keye_model.stages`` lists every stage once; that registry
drives ``keye stage <name>``, the KFP components and the run summary. This module holds what the
registry's users share: the result manifest, local-vs-S3 output handling and progress events.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from keye_model import storage

MANIFEST = "stage_result.json"
# A JSON-lines file the pipeline runner tails to print one console line per stage start/end.
EVENTS_ENV = "KEYE_STAGE_EVENTS"


class StageFailed(RuntimeError):
    """A stage ran and did not succeed for a reason outside the input (the CLI exits 1, not 2)."""


@dataclass
class StageResult:
    """Output URIs and headline metrics of one stage run.

    ``outputs`` maps names to URIs (``{"data": "s3://.../curated"}``); ``metrics`` holds the
    numbers a person compares across runs; ``message`` is a one-line human summary.
    """

    stage: str
    outputs: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True, default=str)

    def write(self, uri: str) -> None:
        """Store as JSON (the small manifest a KFP artifact carries)."""
        storage.write_text(uri, self.to_json())

    @classmethod
    def read(cls, uri: str) -> StageResult:
        return cls(**json.loads(storage.read_text(uri)))


@contextlib.contextmanager
def local_output(output: str) -> Iterator[Path]:
    """A local directory for a stage's payload; for ``s3://`` outputs, a scratch copy uploaded on success.

    This is the one place that decides local versus S3 for stage payloads. The upload happens only
    when the block succeeds, and the stage's manifest is written after it (``run_stage``), so a
    reader that finds ``stage_result.json`` finds a complete payload. When the block fails, what
    it wrote is still uploaded (without a manifest) so rejected output can be inspected.
    """
    if not storage.is_s3(output):
        path = storage.local_path(output)
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    from keye_model.tracking import scratch_dir

    scratch = scratch_dir("keye-output-")
    try:
        yield scratch
    except BaseException:
        with contextlib.suppress(Exception):  # keep the evidence; the original error wins
            storage.sync_up(scratch, output)
        raise
    else:
        storage.sync_up(scratch, output)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def stage_output(storage_root: str, run_id: str, stage: str) -> str:
    """Where a stage of one pipeline run writes its payload: ``<root>/<run id>/<stage>``."""
    return storage.join(storage_root, run_id or "adhoc", stage)


def emit_event(stage: str, event: str, **fields: Any) -> None:
    """Append a start/end/fail event to ``$KEYE_STAGE_EVENTS`` (the pipeline runner prints them)."""
    path = os.environ.get(EVENTS_ENV)
    if not path:
        return
    record = {"stage": stage, "event": event, "time": time.time(), **fields}
    with open(path, "a", encoding="utf-8") as handle:  # one short line: atomic on POSIX
        handle.write(json.dumps(record, default=str) + "\n")


def enter_pipeline_step(parent_run_id: str = "", run_id: str = "") -> None:
    """Inside a pipeline step: nest this stage's MLflow run under the pipeline's parent run."""
    if parent_run_id:
        os.environ["KEYE_PARENT_RUN_ID"] = parent_run_id
    if run_id:
        os.environ["KEYE_PIPELINE_RUN_ID"] = run_id


def publish(result: StageResult, artifact) -> None:
    """Write the stage's manifest into its KFP output artifact, with outputs and metrics as metadata."""
    Path(artifact.path).parent.mkdir(parents=True, exist_ok=True)
    result.write(artifact.path)
    artifact.metadata.update({"message": result.message, **result.outputs, **result.metrics})


def read_manifest(artifact) -> StageResult:
    """The StageResult a previous step published into ``artifact``."""
    return StageResult.read(artifact.path)
