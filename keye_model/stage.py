"""What every stage entry function returns, and the manifest that hands it to the next stage."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from keye_model import storage


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


def stage_output(storage_root: str, run_id: str, stage: str) -> str:
    """Where a stage of one pipeline run writes its payload: ``<root>/<run id>/<stage>``."""
    return storage.join(storage_root, run_id or "adhoc", stage)


def enter_pipeline_step(parent_run_id: str = "", run_id: str = "") -> None:
    """Inside a pipeline step: nest this stage's MLflow run under the pipeline's parent run."""
    import os

    if parent_run_id:
        os.environ["KEYE_PARENT_RUN_ID"] = parent_run_id
    if run_id:
        os.environ["KEYE_PIPELINE_RUN_ID"] = run_id


MANIFEST = "stage_result.json"


def publish(result: StageResult, artifact, output: str) -> None:
    """Write the stage's manifest into its KFP output artifact and beside its payload.

    The artifact's metadata carries the outputs and metrics so the KFP UI shows them; the copy at
    ``<output>/stage_result.json`` keeps the storage self-describing.
    """
    from pathlib import Path

    Path(artifact.path).parent.mkdir(parents=True, exist_ok=True)
    result.write(artifact.path)
    result.write(storage.join(output, MANIFEST))
    artifact.metadata.update({"message": result.message, **result.outputs, **result.metrics})


def read_manifest(artifact) -> StageResult:
    """The StageResult a previous step published into ``artifact``."""
    return StageResult.read(artifact.path)
