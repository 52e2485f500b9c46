"""Evaluation stage: the benchmarks of the recipe, scored by their official rules (REFERENCE §5).

``BENCHMARKS`` is the one registry of benchmarks; ``score(benchmark, items, responses)`` the
public scoring function; ``evaluate`` the stage entry function behind ``keye stage evaluate``.
"""

from __future__ import annotations

from keye_model.eval.benchmarks import BENCHMARKS, score

__all__ = ["BENCHMARKS", "score", "evaluate"]


def __getattr__(name: str):
    # The stage entry pulls in storage/tracking; imported on first use so ``score`` stays light.
    if name == "evaluate":
        from keye_model.eval.stage import evaluate

        return evaluate
    raise AttributeError(name)
