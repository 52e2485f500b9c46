"""``keye runs compare RUN RUN...``: two or more pipeline runs side by side, from MLflow alone.

A run is named by its parent MLflow run id or its pipeline run id (``keye run --run-id``). For each
stage the table shows its duration and headline metric; the final evaluation scores follow. The
plot puts per-stage durations, training loss curves and scores next to each other.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class RunView:
    """One pipeline run as MLflow recorded it."""

    name: str
    parent_id: str
    stages: dict[str, object] = field(default_factory=dict)  # stage -> mlflow Run

    def seconds(self, stage: str) -> float | None:
        run = self.stages.get(stage)
        if run is None or not run.info.end_time:
            return None
        return (run.info.end_time - run.info.start_time) / 1000


def load_run(client, experiment_ids: list[str], ref: str) -> RunView:
    """Find a pipeline run by parent run id or ``pipeline_run_id`` tag, with its stage runs."""
    parents = client.search_runs(
        experiment_ids, f"tags.stage = 'pipeline' and tags.pipeline_run_id = '{ref}'"
    )
    if not parents:
        try:
            parents = [client.get_run(ref)]
        except Exception as err:
            raise ValueError(
                f"no pipeline run {ref!r} in MLflow (run id or --run-id name)"
            ) from err
    parent = parents[0]
    children = client.search_runs(
        experiment_ids, f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    view = RunView(parent.data.tags.get("pipeline_run_id", ref), parent.info.run_id)
    for child in sorted(children, key=lambda r: r.info.start_time):
        view.stages[child.data.tags.get("stage", child.info.run_name)] = child
    return view


def compare(refs: list[str], plot: Path) -> str:
    """The comparison table as text; writes the plot to ``plot``."""
    import mlflow

    from keye_model.stages import STAGES, StageSpec
    from keye_model.tracking import tracking_uri

    if len(refs) < 2:
        raise ValueError("give two or more runs to compare")
    mlflow.set_tracking_uri(tracking_uri())
    client = mlflow.MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments()]
    views = [load_run(client, experiments, ref) for ref in refs]
    specs: dict[str, StageSpec] = {s.name: s for s in STAGES}
    width = max(14, *(len(v.name) + 2 for v in views))
    lines = [f"{'stage':<12}{'metric':<22}" + "".join(f"{v.name:>{width}}" for v in views)]
    for stage in specs:
        if not any(stage in v.stages for v in views):
            continue
        seconds = [v.seconds(stage) for v in views]
        lines.append(f"{stage:<12}{'seconds':<22}" + "".join(_cell(s, width) for s in seconds))
        metric = specs[stage].headline
        values = [
            v.stages[stage].data.metrics.get(metric) if stage in v.stages else None for v in views
        ]
        if any(x is not None for x in values):
            lines.append(f"{'':<12}{metric:<22}" + "".join(_cell(x, width) for x in values))
    scores = sorted(
        {
            k
            for v in views
            if "evaluate" in v.stages
            for k in v.stages["evaluate"].data.metrics
            if k.endswith("/overall")
        }
    )
    for key in scores:
        values = [
            v.stages["evaluate"].data.metrics.get(key) if "evaluate" in v.stages else None
            for v in views
        ]
        lines.append(f"{'score':<12}{key:<22}" + "".join(_cell(x, width) for x in values))
    _plot(client, views, scores, plot)
    lines.append(f"\nplot: {plot}")
    return "\n".join(lines)


def _cell(value, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.4g}"


def _plot(client, views: list[RunView], scores: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_time, ax_loss, ax_score) = plt.subplots(1, 3, figsize=(15, 4))
    stages = [s for s in dict.fromkeys(k for v in views for k in v.stages)]
    bar = 0.8 / len(views)
    for i, view in enumerate(views):
        ax_time.bar(
            [j + i * bar for j in range(len(stages))],
            [view.seconds(s) or 0 for s in stages],
            bar,
            label=view.name,
        )
        for stage in ("align", "pretrain", "anneal", "sft"):
            if stage in view.stages:
                history = client.get_metric_history(view.stages[stage].info.run_id, "loss")
                ax_loss.plot(
                    [f"{stage}:{m.step}" for m in history],
                    [m.value for m in history],
                    marker=".",
                    label=f"{view.name} {stage}",
                )
        if "evaluate" in view.stages:
            metrics = view.stages["evaluate"].data.metrics
            ax_score.bar(
                [j + i * bar for j in range(len(scores))],
                [metrics.get(k, 0) for k in scores],
                bar,
                label=view.name,
            )
    ax_time.set(title="seconds per stage", xticks=range(len(stages)))
    ax_time.set_xticklabels(stages, rotation=45, ha="right")
    ax_loss.set(title="training loss")
    ax_loss.tick_params(axis="x", labelrotation=90, labelsize=6)
    ax_score.set(title="evaluation (overall)", xticks=range(len(scores)))
    ax_score.set_xticklabels([k.split("/")[0] for k in scores], rotation=45, ha="right")
    for ax in (ax_time, ax_score):
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def register(commands) -> None:
    """Attach ``keye runs compare``."""
    runs = commands.top.add_parser("runs", help="Inspect pipeline runs recorded in MLflow.")
    sub = runs.add_subparsers(dest="runs_command", metavar="ACTION")
    cmp = sub.add_parser(
        "compare",
        help="Table and plot of two or more pipeline runs (per-stage time, metrics, scores).",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmp.add_argument(
        "runs", nargs="+", metavar="RUN", help="Parent MLflow run id or pipeline run id."
    )
    cmp.add_argument("--plot", default="keye-compare.png", help="Where to write the plot (PNG).")
    cmp.set_defaults(func=lambda a: sys.stdout.write(compare(a.runs, Path(a.plot)) + "\n") and 0)
    runs.set_defaults(func=lambda _a: runs.print_help() or 2)
