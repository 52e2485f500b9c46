"""The Keye-VL recipe as KFP v2 pipelines: the whole recipe and three sub-pipelines.

    keye-recipe:    curate -> init -> [keye-pretrain] -> [keye-post-train] -> [keye-release]
    keye-pretrain:  align -> pretrain -> anneal                  (model URI + data URI in)
    keye-post-train: sft -> cold-start -> gspo                   (model URI + data URI in)
    keye-release:   evaluate -> deploy                           (model URI in)

Each sub-pipeline runs on its own from a model URI (``keye pipeline submit --pipeline
keye-post-train --model s3://...``). This module only wires steps and sets Kubernetes options
(GPUs, node selectors, tolerations, /dev/shm, secrets, retries, timeouts); every step's logic
lives in ``keye_model`` behind the stage registry.
"""

from kfp import dsl, kubernetes

from components.curate import curate, curate_scan
from components.deploy import deploy
from components.evaluate import evaluate
from components.init_model import init_model
from components.train import train

# Kubernetes Secrets the steps read on a cluster (ignored by kfp.local).
S3_SECRET = "keye-s3"  # keys: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL
MLFLOW_SECRET = "keye-mlflow"  # keys: MLFLOW_TRACKING_URI (+ MLFLOW_TRACKING_TOKEN if used)
# GPU steps: one 8-GPU node per step pod (multi-node jobs are torchx/Volcano jobs it submits).
GPU_RESOURCE = "nvidia.com/gpu"
GPUS_PER_STEP = 8
GPU_NODE_SELECTOR = {"nvidia.com/gpu.product": "NVIDIA-H800"}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
SHM_SIZE = "64Gi"
TRAIN_TIMEOUT_S = 14 * 24 * 3600


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


def _gpu_settings(task: dsl.PipelineTask, name: str) -> dsl.PipelineTask:
    """A GPU node for the step: accelerators, node selector, toleration, /dev/shm, a long timeout.

    A resumed step continues from its newest checkpoint (``--resume`` is implicit in retries:
    the stage finds its own checkpoints under the run's storage).
    """
    _cluster_settings(task.set_display_name(name), cpu="64", memory="1000Gi", retries=2)
    task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(GPUS_PER_STEP)
    for key, value in GPU_NODE_SELECTOR.items():
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    kubernetes.add_toleration(task, **GPU_TOLERATION)
    kubernetes.empty_dir_mount(
        task, volume_name="dshm", mount_path="/dev/shm", medium="Memory", size_limit=SHM_SIZE
    )
    kubernetes.set_timeout(task, TRAIN_TIMEOUT_S)
    return task


def _common(recipe_json, storage_root, run_id, parent_run_id) -> dict:
    """The four parameters every step takes: the recipe and where this run lives."""
    return dict(
        recipe_json=recipe_json,
        storage_root=storage_root,
        run_id=run_id,
        parent_run_id=parent_run_id,
    )


def _train(stage: str, model, data, common: dict) -> dsl.PipelineTask:
    task = train(stage=stage, model=model, data=data, **common)
    return _gpu_settings(task, stage.replace("_", "-"))


@dsl.pipeline(name="keye-pretrain", description="Projector alignment, full pretrain, annealing.")
def pretrain_pipeline(
    recipe_json: str, storage_root: str, run_id: str, parent_run_id: str, model: str, data: str
) -> str:
    """align -> pretrain -> anneal, from a model URI; returns the annealed model's URI."""
    common = _common(recipe_json, storage_root, run_id, parent_run_id)
    aligned = _train("align", model, data, common)
    pretrained = _train("pretrain", aligned.outputs["Output"], data, common)
    annealed = _train("anneal", pretrained.outputs["Output"], data, common)
    return annealed.outputs["Output"]


@dsl.pipeline(name="keye-post-train", description="SFT, cold-start filtering + SFT, GSPO.")
def post_train_pipeline(
    recipe_json: str, storage_root: str, run_id: str, parent_run_id: str, model: str, data: str
) -> str:
    """sft -> cold_start -> gspo, from a model URI; returns the RL-trained model's URI."""
    common = _common(recipe_json, storage_root, run_id, parent_run_id)
    tuned = _train("sft", model, data, common)
    filtered = _train("cold_start", tuned.outputs["Output"], data, common)
    reinforced = _train("gspo", filtered.outputs["Output"], data, common)
    return reinforced.outputs["Output"]


@dsl.pipeline(name="keye-release", description="Evaluate a model, then deploy it with keye-serve.")
def release_pipeline(
    recipe_json: str,
    storage_root: str,
    run_id: str,
    parent_run_id: str,
    model: str,
    eval_data: str = "",
    eval_endpoint: str = "",
) -> str:
    """evaluate -> deploy, from a model URI; returns the rendered manifests' URI."""
    common = _common(recipe_json, storage_root, run_id, parent_run_id)
    scored = evaluate(model=model, data=eval_data, endpoint=eval_endpoint, **common)
    _cluster_settings(scored.set_display_name("evaluate"), cpu="8", memory="64Gi")
    release = deploy(model=scored.outputs["Output"], **common)
    _cluster_settings(release.set_display_name("deploy serving"), cpu="1", memory="2Gi", retries=0)
    return release.outputs["Output"]


@dsl.pipeline(
    name="keye-recipe",
    description="Keye-VL-671B-A37B recipe: curate, init, align, pretrain, anneal, SFT, cold-start, "
    "GSPO, evaluate, deploy.",
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
    common = _common(recipe_json, storage_root, run_id, parent_run_id)
    # Scale-out curation: one scan task per shard, then one pass for global dedup, mixture and write.
    with dsl.ParallelFor(items=curate_shards, parallelism=16) as shard:
        scan = curate_scan(inputs=curate_inputs, shard_index=shard, shards=curate_shards, **common)
        _cluster_settings(scan.set_display_name("curate scan"), cpu="8", memory="32Gi")
    curated = curate(inputs=curate_inputs, **common).set_display_name("curate data").after(scan)
    _cluster_settings(curated, cpu="8", memory="32Gi")
    model = init_model(vision=vision, lm=lm, **common).set_display_name("init model")
    _cluster_settings(model, cpu="8", memory="64Gi")
    model.after(curated)
    data = curated.outputs["Output"]
    pretrained = pretrain_pipeline(model=model.outputs["Output"], data=data, **common)
    post_trained = post_train_pipeline(model=pretrained.output, data=data, **common)
    release_pipeline(
        model=post_trained.output, eval_data=eval_data, eval_endpoint=eval_endpoint, **common
    )


PIPELINES = {
    "keye-recipe": keye_recipe,
    "keye-pretrain": pretrain_pipeline,
    "keye-post-train": post_train_pipeline,
    "keye-release": release_pipeline,
}
