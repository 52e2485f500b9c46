"""Configuration of the init stage: which model preset to assemble and how to seed new weights."""

from __future__ import annotations

from dataclasses import dataclass

from keye_model.config_utils import field


@dataclass
class InitConfig:
    """Model assembly (``keye stage init``): the architecture and the seed of new weights."""

    preset: str = field(
        "tiny",
        help="Model preset (KeyeVLMoeConfig.from_preset name): tiny | keye-vl-671b-a37b.",
    )
    seed: int = field(
        0,
        help="Seed of every randomly initialised part (always the projector; ViT/LM if not given).",
    )
