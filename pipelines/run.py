"""Compile, submit, or run the recipe pipeline locally with ``kfp.local``.

Locally every step runs as a subprocess of this Python (``SubprocessRunner(use_venv=False)``),
MLflow writes to sqlite under ``$KEYE_HOME`` and storage is a local directory; on a cluster the
same pipeline is compiled to IR YAML and submitted with ``kfp.Client``.
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from keye_model import storage
from keye_model.log import get_logger
from keye_model.recipe import Recipe
from keye_model.stage import MANIFEST, StageResult, stage_output
from keye_model.tracking import keye_home, pipeline_run, tracking_uri

log = get_logger("pipeline")
STAGES = ("curate", "init", "evaluate", "deploy")
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

    def resolved(self, recipe: Recipe) -> PipelineRequest:
        """Fill defaults: a fresh run id and ``$KEYE_HOME/runs`` as the storage root."""
        run_id = self.run_id or f"{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        root = self.storage_root or str(keye_home() / "runs")
        if self.curate_shards < 1:
            raise ValueError(f"--curate-shards must be >= 1, got {self.curate_shards}")
        return dataclasses.replace(self, storage_root=root, run_id=run_id)

    def arguments(self, recipe: Recipe, parent_run_id: str) -> dict:
        return {
            "recipe_json": recipe.to_json(),
            "storage_root": self.storage_root,
            "run_id": self.run_id,
            "parent_run_id": parent_run_id,
            "curate_inputs": self.curate_inputs,
            "vision": self.vision,
            "lm": self.lm,
            "eval_data": self.eval_data,
            "curate_shards": list(range(self.curate_shards)),
            "eval_endpoint": self.eval_endpoint,
        }


def compile_pipeline(path: str | Path) -> Path:
    """Write the pipeline's IR YAML (what ``kfp.Client`` or the KFP UI accepts)."""
    from kfp import compiler

    from pipelines.keye_recipe import keye_recipe

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(keye_recipe, str(path))
    return path


def run_local(recipe: Recipe, request: PipelineRequest | None = None) -> dict[str, StageResult]:
    """Run the whole pipeline with ``kfp.local``; return each stage's manifest."""
    from kfp import local

    from pipelines.keye_recipe import keye_recipe

    request = (request or PipelineRequest()).resolved(recipe)
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
        pipeline_root=str(keye_home() / "kfp-local"),
        raise_on_error=True,
    )
    log.info("run %s: storage %s", request.run_id, request.storage_root)
    with pipeline_run(request.run_id, recipe) as parent:
        parent.set_tags({"pipeline_run_id": request.run_id, "runner": "kfp.local"})
        keye_recipe(**request.arguments(recipe, parent.run_id))
        results = {}
        for stage in STAGES:
            manifest = storage.join(
                stage_output(request.storage_root, request.run_id, stage), MANIFEST
            )
            if storage.exists(manifest):
                results[stage] = StageResult.read(manifest)
        parent.log_dict(
            {k: json.loads(v.to_json()) for k, v in results.items()}, "pipeline_summary.json"
        )
    return results


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

    from pipelines.keye_recipe import keye_recipe

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
        run = client.create_run_from_pipeline_func(
            keye_recipe,
            arguments=request.arguments(recipe, parent.run_id),
            run_name=request.run_id,
            experiment_name=experiment,
            service_account=service_account,
        )
    return run.run_id
