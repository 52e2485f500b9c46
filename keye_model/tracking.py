"""MLflow tracking shared by every stage.

One parent run per pipeline run, one nested run per stage. The parent run id travels between
KFP steps as ``KEYE_PARENT_RUN_ID`` (or an explicit argument); the tracking URI comes from
``MLFLOW_TRACKING_URI`` (an MLflow server in a cluster) and defaults to a local sqlite store
under ``$KEYE_HOME`` (``./.keye``), so the same code runs on a laptop and on a cluster.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

DEFAULT_EXPERIMENT = "keye"


def keye_home() -> Path:
    """Local working directory for stores and caches (``$KEYE_HOME``, default ``./.keye``)."""
    home = Path(os.environ.get("KEYE_HOME", ".keye")).absolute()
    home.mkdir(parents=True, exist_ok=True)
    return home


def tracking_uri() -> str:
    """The MLflow tracking URI: ``$MLFLOW_TRACKING_URI`` or a sqlite file under ``$KEYE_HOME``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{keye_home() / 'mlflow.db'}"


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten nested dataclasses/dicts into ``a.b.c`` keys (MLflow params are flat)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    if isinstance(obj, (list, tuple)):
        return {prefix[:-1]: json.dumps(obj, default=str)[:6000]}
    return {prefix[:-1]: obj}


def local_artifact_root(uri: str) -> str | None:
    """Artifact root beside a local sqlite store (MLflow would default to ``./mlruns`` in the cwd)."""
    if not uri.startswith("sqlite:///"):
        return None  # a tracking server decides where artifacts go
    db = Path(uri[len("sqlite:///") :])
    return (db.parent / "mlartifacts").absolute().as_uri()


def _use_experiment(name: str) -> None:
    """Select (creating if needed) the experiment, with local artifacts next to a sqlite store."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    if client.get_experiment_by_name(name) is None:
        try:
            client.create_experiment(name, artifact_location=local_artifact_root(tracking_uri()))
        except MlflowException:
            pass  # another pipeline step created it first
    mlflow.set_experiment(name)


class StageTracker:
    """Thin handle on the active MLflow run of one stage."""

    def __init__(self, run, stage: str):
        self.run = run
        self.stage = stage

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        import mlflow

        clean = {k: float(v) for k, v in metrics.items() if v is not None}
        mlflow.log_metrics(clean, step=step)

    def log_params(self, params: Mapping[str, Any]) -> None:
        import mlflow

        items = list(flatten(dict(params)).items())
        for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
            mlflow.log_params({k: str(v)[:6000] for k, v in items[i : i + 100]})

    def log_dict(self, data: Any, artifact_file: str) -> None:
        import mlflow

        mlflow.log_dict(data, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        import mlflow

        mlflow.log_text(text, artifact_file)

    def log_figure(self, figure, artifact_file: str) -> None:
        import mlflow

        mlflow.log_figure(figure, artifact_file)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        import mlflow

        path = Path(path)
        if path.is_dir():
            mlflow.log_artifacts(str(path), artifact_path)
        else:
            mlflow.log_artifact(str(path), artifact_path)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        import mlflow

        mlflow.set_tags(dict(tags))


@contextlib.contextmanager
def stage_run(
    stage: str,
    config: Any = None,
    parent_run_id: str | None = None,
    run_name: str | None = None,
    experiment: str | None = None,
) -> Iterator[StageTracker]:
    """Open the nested MLflow run of one stage, log its config as params, and yield a tracker."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    _use_experiment(experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_EXPERIMENT))
    parent = parent_run_id or os.environ.get("KEYE_PARENT_RUN_ID") or None
    tags = {
        "stage": stage,
        "pod": os.environ.get("HOSTNAME", socket.gethostname()),
        "pipeline_run_id": os.environ.get(
            "KFP_RUN_ID", os.environ.get("KEYE_PIPELINE_RUN_ID", "local")
        ),
    }
    if parent:
        tags["mlflow.parentRunId"] = parent
    with mlflow.start_run(
        run_name=run_name or stage, tags=tags, nested=mlflow.active_run() is not None
    ) as run:
        tracker = StageTracker(run, stage)
        if config is not None:
            tracker.log_params(flatten(config))
        yield tracker


@contextlib.contextmanager
def pipeline_run(
    name: str, recipe: Any = None, experiment: str | None = None
) -> Iterator[StageTracker]:
    """Open the parent run of one pipeline run; stages started inside nest under it."""
    with stage_run("pipeline", recipe, run_name=name, experiment=experiment) as tracker:
        previous = os.environ.get("KEYE_PARENT_RUN_ID")
        os.environ["KEYE_PARENT_RUN_ID"] = tracker.run_id
        try:
            yield tracker
        finally:
            if previous is None:
                os.environ.pop("KEYE_PARENT_RUN_ID", None)
            else:
                os.environ["KEYE_PARENT_RUN_ID"] = previous


def register_model(name: str, source: str, metrics: Mapping[str, float], run_id: str) -> str:
    """Record ``source`` (a model directory or s3:// prefix) as a new version of ``name``.

    The version's tags carry the evaluation metrics, so the MLflow UI lists every model with
    its scores; the weights stay where they are (a 671B checkpoint is not copied).
    Returns the new version number.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        client.create_registered_model(
            name, description="Keye-VL checkpoints with their evaluation scores"
        )
    except MlflowException:
        pass  # already registered
    tags = {key: f"{value:.6g}" for key, value in metrics.items()}
    version = client.create_model_version(name, source=source, run_id=run_id, tags=tags)
    return str(version.version)


def scratch_dir(prefix: str = "keye-") -> Path:
    """A fresh temporary directory (honours TMPDIR)."""
    return Path(tempfile.mkdtemp(prefix=prefix))
