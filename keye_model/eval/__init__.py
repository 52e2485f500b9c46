"""Evaluation stage: the ten benchmarks of the recipe, scored by their official rules (REFERENCE §5).

``score(benchmark, items, responses)`` is the public scoring function; ``evaluate`` is the stage
entry function behind ``keye stage evaluate``.
"""

from __future__ import annotations

from keye_model.eval.scoring import SCORERS, score

__all__ = ["SCORERS", "score", "evaluate"]


def __getattr__(name: str):
    # The stage entry pulls in storage/tracking; imported on first use so ``score`` stays light.
    if name == "evaluate":
        from keye_model.eval.stage import evaluate

        return evaluate
    raise AttributeError(name)
