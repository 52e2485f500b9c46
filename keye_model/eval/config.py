"""Configuration of the evaluation stage (owned by ``keye_model.eval``)."""

from __future__ import annotations

from dataclasses import dataclass

from keye_model.config_utils import field


@dataclass
class EvalConfig:
    """Evaluation on the recipe's benchmarks (REFERENCE §2.8, §5)."""

    benchmarks: list[str] = field(
        default_factory=lambda: ["mmbench_en", "mathvista"],
        help="Benchmarks to run, by name.",
    )
    thinking: str = field("no_think", help="Thinking mode suffix: think | no_think | auto.")
    max_new_tokens: int = field(64, help="Generation budget per question.")
    seed: int = field(0, help="Seed of any random fallback (MMMU parser); recorded in the report.")
