"""Compile, submit, or run the recipe pipeline locally with ``kfp.local``.

Locally every step runs as a subprocess of this Python (``SubprocessRunner(use_venv=False)``),
MLflow writes to sqlite under ``$KEYE_HOME`` and storage is a local directory; on a cluster the
same pipeline is compiled to IR YAML and submitted with ``kfp.Client``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from keye_model import storage
from keye_model.log import get_logger
from keye_model.recipe import Recipe
from keye_model.stage import EVENTS_ENV, MANIFEST, StageResult, stage_output
from keye_model.stages import registered
from keye_model.tracking import keye_home, pipeline_run, tracking_uri

log = get_logger("pipeline")
STAGES = tuple(registered())
RECIPE_ARTIFACT = "recipe.json"
# Kubernetes service account of cluster runs (see README: the deploy step installs the chart).
DEPLOYER_SERVICE_ACCOUNT = "keye-pipeline"


@dataclass
class PipelineRequest:
    """Everything one pipeline run needs besides the recipe."""

    storage_root: str = ""
    run_id: str = ""
    curate_inputs: list[str] = field(default_factory=list)
    vision: str = ""
    lm: str = ""
    eval_data: str = ""
    curate_shards: int = 2
    eval_endpoint: str = ""
    pipeline: str = "keye-recipe"  # or a sub-pipeline: keye-pretrain, keye-post-train, keye-release
    model: str = ""  # a sub-pipeline's starting model URI
    data: str = ""  # curated data URI for keye-pretrain / keye-post-train

    def resolved(self, recipe: Recipe) -> PipelineRequest:
        """Fill defaults (a fresh run id, ``$KEYE_HOME/runs``) and check the sub-pipeline inputs."""
        from pipelines.keye_recipe import PIPELINES

        run_id = self.run_id or f"{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        root = self.storage_root or str(keye_home() / "runs")
        if self.curate_shards < 1:
            raise ValueError(f"--curate-shards must be >= 1, got {self.curate_shards}")
        if self.pipeline not in PIPELINES:
            raise ValueError(f"--pipeline {self.pipeline!r}: choose one of {sorted(PIPELINES)}")
        needs = {"keye-recipe": (), "keye-release": ("model",)}.get(
            self.pipeline, ("model", "data")
        )
        for name in needs:
            if not getattr(self, name):
                raise ValueError(f"--pipeline {self.pipeline} needs --{name} URI")
        return dataclasses.replace(self, storage_root=root, run_id=run_id)

    def arguments(self, recipe: Recipe, parent_run_id: str) -> dict:
        """The pipeline's parameters (only those the chosen pipeline declares)."""
        common = {
            "recipe_json": recipe.to_json(indent=None),  # one line: KFP echoes it in YAML comments
            "storage_root": self.storage_root,
            "run_id": self.run_id,
            "parent_run_id": parent_run_id,
        }
        if self.pipeline == "keye-release":
            return {
                **common,
                "model": self.model,
                "eval_data": self.eval_data,
                "eval_endpoint": self.eval_endpoint,
            }
        if self.pipeline != "keye-recipe":
            return {**common, "model": self.model, "data": self.data}
        return {
            **common,
            "curate_inputs": self.curate_inputs,
            "vision": self.vision,
            "lm": self.lm,
            "eval_data": self.eval_data,
            "curate_shards": list(range(self.curate_shards)),
            "eval_endpoint": self.eval_endpoint,
        }

    def function(self):
        """The ``@dsl.pipeline`` function this request runs."""
        from pipelines.keye_recipe import PIPELINES

        return PIPELINES[self.pipeline]


def compile_pipeline(path: str | Path, pipeline: str = "keye-recipe") -> Path:
    """Write a pipeline's IR YAML (what ``kfp.Client`` or the KFP UI accepts)."""
    from kfp import compiler

    from pipelines.keye_recipe import PIPELINES

    if pipeline not in PIPELINES:
        raise ValueError(f"--pipeline {pipeline!r}: choose one of {sorted(PIPELINES)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(PIPELINES[pipeline], str(path))
    return path


@dataclass
class LocalRun:
    """What ``run_local`` leaves behind: each stage's manifest, the MLflow parent run, the logs."""

    run_id: str
    parent_run_id: str
    results: dict[str, StageResult]
    timings: dict[str, float]
    log_path: Path
    failed: str = ""
    error: str = ""


class _Console:
    """Prints one line per stage start/end from the events the steps append (``emit_event``)."""

    def __init__(self, events: Path, out):
        self.events, self.out = events, out
        self.timings: dict[str, float] = {}
        self.failed = ""
        self._offset = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> _Console:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._drain()

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            self._drain()

    def _drain(self) -> None:
        if not self.events.exists():
            return
        with self.events.open(encoding="utf-8") as handle:
            handle.seek(self._offset)
            chunk = handle.read()
        complete = chunk[: chunk.rfind("\n") + 1]
        self._offset += len(complete.encode("utf-8"))
        for line in complete.splitlines():
            self._print(json.loads(line))

    def _print(self, event: dict) -> None:
        stage, kind = event["stage"], event["event"]
        if event.get("part"):
            return  # a curation scan shard: the log has it; the console shows whole stages
        clock = time.strftime("%H:%M:%S", time.localtime(event["time"]))
        if kind == "start":
            text = f"{clock}  {stage:<16} started"
        elif kind == "end":
            self.timings[stage] = event["seconds"]
            text = f"{clock}  {stage:<16} done in {event['seconds']:6.1f} s  {event.get('headline', '')}"
        else:
            self.failed = self.failed or stage
            text = f"{clock}  {stage:<16} FAILED after {event['seconds']:.1f} s: {event.get('error', '')}"
        self.out.write(text.rstrip() + "\n")
        self.out.flush()


@contextlib.contextmanager
def _quiet_fds(log_path: Path) -> Iterator[object]:
    """Send fds 1 and 2 (this process and every kfp.local subprocess) to ``log_path``.

    kfp.local prints each task's executor input, command and output; that belongs in a log file.
    Yields a text stream on the original stdout for the console lines.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    console = os.fdopen(os.dup(saved[1]), "w", buffering=1)
    with log_path.open("ab") as log:
        for fd in (1, 2):
            os.dup2(log.fileno(), fd)
        try:
            yield console
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            console.close()


def run_local(
    recipe: Recipe, request: PipelineRequest | None = None, workdir: str | Path | None = None
) -> LocalRun:
    """Run the whole pipeline with ``kfp.local``, one console line per stage start and end.

    ``workdir`` (default ``$KEYE_HOME``) holds the run's storage (unless ``storage_root`` says
    otherwise), the kfp.local state and ``logs/<run id>/kfp-local.log`` with every task's output.
    """
    from kfp import local

    workdir = Path(workdir).absolute() if workdir else keye_home()
    workdir.mkdir(parents=True, exist_ok=True)
    request = request or PipelineRequest()
    if not request.storage_root:
        request = dataclasses.replace(request, storage_root=str(workdir / "runs"))
    request = request.resolved(recipe)
    logs = workdir / "logs" / request.run_id
    logs.mkdir(parents=True, exist_ok=True)
    log_path, events = logs / "kfp-local.log", logs / "events.jsonl"
    events.unlink(missing_ok=True)
    # kfp.local warns, for every task, that cluster-only settings (resources, display names, the
    # container image) do not apply to local subprocesses: expected here, so keep the log readable.
    warnings.filterwarnings(
        "ignore", message=r"Task '.*': settings .* have no effect", category=UserWarning
    )
    warnings.filterwarnings(
        "ignore",
        message=r"You may be attemping to run a task that uses custom",
        category=RuntimeWarning,
    )
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(workdir / "kfp-local"),
        raise_on_error=True,
    )
    previous = os.environ.get(EVENTS_ENV)
    os.environ[EVENTS_ENV] = str(events)
    error = ""
    try:
        with _quiet_fds(log_path) as out, _Console(events, out) as console:
            out.write(f"keye run {request.run_id}: storage {request.storage_root}\n")
            with pipeline_run(request.run_id, recipe) as parent:
                parent.set_tags({"pipeline_run_id": request.run_id, "runner": "kfp.local"})
                parent.log_text(recipe.to_json(), RECIPE_ARTIFACT)
                try:
                    pipeline = without_retries(request.function())
                    pipeline(**request.arguments(recipe, parent.run_id))
                except Exception as err:  # kfp.local: RuntimeError naming the failed task
                    error = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
                results = _read_results(request)
                parent.log_dict(
                    {k: json.loads(v.to_json()) for k, v in results.items()},
                    "pipeline_summary.json",
                )
                parent.log_metrics({f"{k}_seconds": v for k, v in console.timings.items()})
                if error:
                    parent.set_tags({"failed_stage": console.failed or "unknown"})
    finally:
        if previous is None:
            os.environ.pop(EVENTS_ENV, None)
        else:
            os.environ[EVENTS_ENV] = previous
    return LocalRun(
        run_id=request.run_id,
        parent_run_id=parent.run_id,
        results=results,
        timings=console.timings,
        log_path=log_path,
        failed=console.failed or ("pipeline" if error else ""),
        error=error,
    )


def without_retries(pipeline):
    """A copy of a compiled pipeline with every task's retry policy removed (kfp.local honours
    them, with their cluster backoff; locally a failed step fails the same way again)."""
    import copy

    pipeline = copy.deepcopy(pipeline)
    spec = pipeline.pipeline_spec
    dags = [spec.root.dag] + [c.dag for c in spec.components.values() if c.HasField("dag")]
    for dag in dags:
        for task in dag.tasks.values():
            task.ClearField("retry_policy")
    return pipeline


def _read_results(request: PipelineRequest) -> dict[str, StageResult]:
    results = {}
    for stage in STAGES:
        manifest = storage.join(stage_output(request.storage_root, request.run_id, stage), MANIFEST)
        if storage.exists(manifest):
            results[stage] = StageResult.read(manifest)
    return results


def recipe_from_mlflow(run_id: str) -> Recipe:
    """The exact recipe of an earlier pipeline run, from its parent MLflow run's artifact."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    try:
        text = mlflow.artifacts.load_text(f"runs:/{run_id}/{RECIPE_ARTIFACT}")
    except Exception as err:
        raise ValueError(
            f"--from-mlflow {run_id}: no {RECIPE_ARTIFACT} in that run on {tracking_uri()} ({err})"
        ) from err
    return Recipe.from_json(text)


def submit(
    host: str,
    recipe: Recipe,
    request: PipelineRequest,
    experiment: str = "keye",
    namespace: str | None = None,
    service_account: str | None = DEPLOYER_SERVICE_ACCOUNT,
) -> str:
    """Submit the pipeline to Kubeflow Pipelines at ``host``; return the KFP run id.

    The run's pods use ``service_account``: the deploy step needs rights to manage
    LeaderWorkerSets, Services, Secrets and NetworkPolicies in the serving namespace.
    """
    import kfp

    if not request.storage_root or not storage.is_s3(request.storage_root):
        raise ValueError(
            "--storage-root must be an s3:// prefix every step of the cluster can reach"
        )
    if not tracking_uri().startswith(("http://", "https://", "databricks")):
        raise ValueError(
            f"MLFLOW_TRACKING_URI is {tracking_uri()!r}: the pipeline's parent run must live on the "
            "MLflow server the cluster steps log to; set MLFLOW_TRACKING_URI=http(s)://..."
        )
    request = request.resolved(recipe)
    client = kfp.Client(host=host, namespace=namespace)
    with pipeline_run(request.run_id, recipe) as parent:
        parent.set_tags({"pipeline_run_id": request.run_id, "runner": "kfp", "kfp_host": host})
        parent.log_text(recipe.to_json(), RECIPE_ARTIFACT)
        run = client.create_run_from_pipeline_func(
            request.function(),
            arguments=request.arguments(recipe, parent.run_id),
            run_name=request.run_id,
            experiment_name=experiment,
            service_account=service_account,
        )
    return run.run_id
