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
