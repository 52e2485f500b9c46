"""The Keye-VL recipe as one KFP v2 pipeline.

    curate data -> init model (ViT + new projector + LM) -> evaluate -> deploy serving

Training stages (projector alignment, pretrain, anneal, SFT, cold-start, GSPO) slot in between
init and evaluate as they land. This module only wires steps and sets Kubernetes options
(resources, secrets, retries); every step's logic lives in ``keye_model``.
"""

from kfp import dsl, kubernetes

from components.curate import curate, curate_scan
from components.deploy import deploy
from components.evaluate import evaluate
from components.init_model import init_model

# Kubernetes Secrets the steps read on a cluster (ignored by kfp.local).
S3_SECRET = "keye-s3"  # keys: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL
MLFLOW_SECRET = "keye-mlflow"  # keys: MLFLOW_TRACKING_URI (+ MLFLOW_TRACKING_TOKEN if used)


def _cluster_settings(
    task: dsl.PipelineTask, cpu: str, memory: str, retries: int = 1
) -> dsl.PipelineTask:
    """Resources, retries and the S3/MLflow secrets every step needs on a cluster."""
    task.set_cpu_request(cpu).set_memory_request(memory).set_memory_limit(memory)
    task.set_retry(num_retries=retries, backoff_duration="60s")
    kubernetes.use_secret_as_env(
        task,
        secret_name=S3_SECRET,
        secret_key_to_env={
            k: k for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL")
        },
        optional=True,
    )
    kubernetes.use_secret_as_env(
        task,
        secret_name=MLFLOW_SECRET,
        secret_key_to_env={"MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI"},
        optional=True,
    )
    return task


@dsl.pipeline(
    name="keye-recipe", description="Keye-VL-671B-A37B recipe: curate, init, evaluate, deploy."
)
def keye_recipe(
    recipe_json: str,
    storage_root: str,
    run_id: str,
    parent_run_id: str = "",
    curate_inputs: list = [],  # noqa: B006 - KFP pipeline parameters take JSON defaults
    curate_shards: list = [0, 1],  # noqa: B006 - one scan task per item
    vision: str = "",
    lm: str = "",
    eval_data: str = "",
    eval_endpoint: str = "",
):
    """Run the recipe; ``recipe_json`` is a full ``keye_model.recipe.Recipe`` (reproducible from MLflow)."""
    common = dict(
        recipe_json=recipe_json,
        storage_root=storage_root,
        run_id=run_id,
        parent_run_id=parent_run_id,
    )
    # Scale-out curation: one scan task per shard, then one pass for global dedup, mixture and write.
    with dsl.ParallelFor(items=curate_shards, parallelism=16) as shard:
        scan = curate_scan(inputs=curate_inputs, shard_index=shard, shards=curate_shards, **common)
        _cluster_settings(scan.set_display_name("curate scan"), cpu="8", memory="32Gi")
    curated = curate(inputs=curate_inputs, **common).set_display_name("curate data").after(scan)
    _cluster_settings(curated, cpu="8", memory="32Gi")
    model = init_model(vision=vision, lm=lm, **common).set_display_name("init model")
    _cluster_settings(model, cpu="8", memory="64Gi")
    model.after(curated)
    scores = evaluate(
        data=eval_data, endpoint=eval_endpoint, model=model.outputs["model"], **common
    ).set_display_name("evaluate")
    _cluster_settings(scores, cpu="8", memory="64Gi")
    release = deploy(model=model.outputs["model"], evaluation=scores.outputs["report"], **common)
    _cluster_settings(release.set_display_name("deploy serving"), cpu="1", memory="2Gi", retries=0)
