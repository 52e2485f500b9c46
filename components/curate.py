"""Components: data curation (``keye stage curate``), as parallel scan tasks plus one global pass."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from components.images import TOOLS_IMAGE


@dsl.component(base_image=TOOLS_IMAGE, install_kfp_package=False)
def curate(
    recipe_json: str,
    storage_root: str,
    run_id: str,
    parent_run_id: str,
    inputs: list,
    curated: Output[Dataset],
) -> str:
    """Filter, de-duplicate, re-sample and synthesize the training pool; returns the data URI.

    With ``curate.rayjob.enabled`` the stage runs as a KubeRay RayJob that this step follows.
    """
    from keye_model.data.rayjob import run_curate_step

    args = (recipe_json, storage_root, run_id, parent_run_id, curated, inputs)
    result = run_curate_step(*args)
    return result.outputs["data"]


@dsl.component(base_image=TOOLS_IMAGE, install_kfp_package=False)
def curate_scan(
    recipe_json: str,
    storage_root: str,
    run_id: str,
    parent_run_id: str,
    inputs: list,
    shard_index: int,
    shards: list,
) -> str:
    """Scan one shard of the inputs (filters, token counts, dedup signatures); a ParallelFor task."""
    from keye_model.stages import run_step

    options = {"shard_index": shard_index, "num_shards": len(shards)}
    return run_step(
        "curate", recipe_json, storage_root, run_id, parent_run_id, options=options, inputs=inputs
    ).message
