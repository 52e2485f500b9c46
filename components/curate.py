"""Component: data curation (``keye_model.data.curate.curate``)."""

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
):
    """Filter, de-duplicate, re-sample and synthesize the training pool."""
    from keye_model.data.curate import curate as run_stage
    from keye_model.recipe import Recipe
    from keye_model.stage import enter_pipeline_step, publish, stage_output

    enter_pipeline_step(parent_run_id, run_id)
    recipe = Recipe.from_json(recipe_json)
    output = stage_output(storage_root, run_id, "curate")
    result = run_stage(recipe.curate, list(inputs), output)
    publish(result, curated, output)


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
    from keye_model.data.curate import curate as run_stage
    from keye_model.recipe import Recipe
    from keye_model.stage import enter_pipeline_step, stage_output

    enter_pipeline_step(parent_run_id, run_id)
    recipe = Recipe.from_json(recipe_json)
    output = stage_output(storage_root, run_id, "curate")
    return run_stage(
        recipe.curate, list(inputs), output, shard_index=shard_index, num_shards=len(shards)
    ).message
