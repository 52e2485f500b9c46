"""Configuration of the data curation stage (owned by ``keye_model.data``)."""

from __future__ import annotations

from dataclasses import dataclass

from keye_model.config_utils import field


@dataclass
class CurateConfig:
    """Data curation: filtering, dedup, re-sampling and synthesis (REFERENCE §2.1)."""

    num_synthetic: int = field(2000, help="Samples drawn from the built-in synthesizers when no input is given.")
    shard_size: int = field(1000, help="Samples per output WebDataset shard.")
    seed: int = field(0, help="Seed for synthesis and re-sampling; a run is reproducible from it.")
