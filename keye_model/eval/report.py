"""Evaluation report: JSON and Markdown tables, MLflow metric names, and the comparison plot.

The plot puts this run's per-benchmark scores next to the published Keye-VL-671B-A37B scores
(REFERENCE §2) and the latest earlier ``evaluate`` runs found in MLflow.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from keye_model.eval.benchmarks import BENCHMARKS


def metric_name(*parts: str) -> str:
    """An MLflow-safe metric name (letters, digits, ``_ - . /`` only)."""
    return "/".join(
        re.sub(r"[^A-Za-z0-9_\-. ]", "_", str(p)).strip().replace(" ", "_") for p in parts
    )


def flat_metrics(results: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """``{bench}/overall`` and ``{bench}/cat/{category}`` metrics (fractions in [0, 1])."""
    out: dict[str, float] = {}
    for bench, res in results.items():
        out[metric_name(bench, "overall")] = float(res["overall"])
        for cat, value in res.get("per_category", {}).items():
            out[metric_name(bench, "cat", cat)] = float(value)
    if results:
        out["mean/overall"] = sum(float(r["overall"]) for r in results.values()) / len(results)
    return out


def summary(results: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The JSON report: per benchmark overall, categories, counts, seed, fallbacks, published."""
    out: dict[str, Any] = {}
    for bench, res in results.items():
        out[bench] = {
            "overall": res["overall"],
            "per_category": res.get("per_category", {}),
            **{k: res[k] for k in ("per_l2_category", "per_duration", "per_skill") if res.get(k)},
            "n": res["n"],
            **({"answered": res["answered"]} if "answered" in res else {}),
            **({"n_questions": res["n_questions"]} if "n_questions" in res else {}),
            "seed": res["seed"],
            "random_fallbacks": len(res.get("random_fallbacks", [])),
            "published_671b": BENCHMARKS[bench].published,
        }
    return out


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def markdown(results: Mapping[str, Mapping[str, Any]], title: str = "Evaluation") -> str:
    """Markdown: one overview table, then a category table per benchmark."""
    lines = [
        f"# {title}",
        "",
        "| benchmark | score (%) | Keye-VL-671B (%) | questions | random fallbacks |",
        "|---|---:|---:|---:|---:|",
    ]
    for bench, res in results.items():
        published = BENCHMARKS[bench].published
        lines.append(
            f"| {bench} | {_pct(res['overall'])} | {'-' if published is None else f'{published:.2f}'} "
            f"| {res.get('n_questions', res['n'])} | {len(res.get('random_fallbacks', []))} |"
        )
    for bench, res in results.items():
        lines += ["", f"## {bench}", ""]
        if "answered" in res:
            lines += [
                f"Answered {res['answered']} of {res['n']} (accuracy over answered questions, official rule).",
                "",
            ]
        cats = res.get("per_category", {})
        if not cats:
            lines.append("(no categories in this benchmark's records)")
            continue
        lines += ["| category | score (%) |", "|---|---:|"]
        lines += [f"| {cat} | {_pct(v)} |" for cat, v in cats.items()]
    return "\n".join(lines) + "\n"


def previous_runs(experiment: str | None, limit: int) -> list[tuple[str, dict[str, float]]]:
    """(run name, {bench: overall}) of the latest finished ``evaluate`` runs in MLflow."""
    import os

    import mlflow

    from keye_model.tracking import DEFAULT_EXPERIMENT, tracking_uri

    if limit <= 0:
        return []
    mlflow.set_tracking_uri(tracking_uri())
    name = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_EXPERIMENT)
    if mlflow.get_experiment_by_name(name) is None:
        return []
    frame = mlflow.search_runs(
        experiment_names=[name],
        filter_string="tags.stage = 'evaluate' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=limit,
    )
    runs = []
    for _, row in frame.iterrows():
        scores = {
            col[len("metrics.") : -len("/overall")]: float(row[col])
            for col in frame.columns
            if col.startswith("metrics.") and col.endswith("/overall") and row[col] == row[col]
        }
        scores.pop("mean", None)
        if scores:
            runs.append((str(row.get("tags.mlflow.runName") or row["run_id"][:8]), scores))
    return runs[::-1]  # oldest first, so bars read left to right in time


def comparison_figure(
    results: Mapping[str, Mapping[str, Any]],
    earlier: Sequence[tuple[str, Mapping[str, float]]] = (),
):
    """Grouped bars per benchmark: earlier runs, this run, published 671B (percent)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    benches = list(results)
    series: list[tuple[str, list[float | None]]] = [
        (name, [scores.get(b) * 100 if scores.get(b) is not None else None for b in benches])
        for name, scores in earlier
    ]
    series.append(("this run", [results[b]["overall"] * 100 for b in benches]))
    series.append(("Keye-VL-671B (published)", [BENCHMARKS[b].published for b in benches]))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(benches) + 2), 4))
    for s_index, (label, values) in enumerate(series):
        xs = [i + (s_index - (len(series) - 1) / 2) * width for i in range(len(benches))]
        heights = [v if v is not None else 0.0 for v in values]
        ax.bar(xs, heights, width=width, label=label)
    ax.set_xticks(range(len(benches)))
    ax.set_xticklabels(benches, rotation=30, ha="right")
    ax.set_ylabel("score (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Evaluation vs published Keye-VL-671B-A37B and earlier runs")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig
