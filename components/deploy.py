"""Component: serving deploy (``keye_model.serve.deploy.deploy``)."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Metrics, Model, Output

from components.images import TOOLS_IMAGE


@dsl.component(base_image=TOOLS_IMAGE, install_kfp_package=False)
def deploy(
    recipe_json: str,
    storage_root: str,
    run_id: str,
    parent_run_id: str,
    model: Input[Model],
    evaluation: Input[Metrics],
    release: Output[Artifact],
):
    """Render, validate and (with a reachable cluster) helm-install keye-serve for the model."""
    from keye_model.recipe import Recipe
    from keye_model.serve.deploy import deploy as run_stage
    from keye_model.stage import enter_pipeline_step, publish, read_manifest, stage_output

    enter_pipeline_step(parent_run_id, run_id)
    recipe = Recipe.from_json(recipe_json)
    model_uri = read_manifest(model).outputs["model"]
    output = stage_output(storage_root, run_id, "deploy")
    result = run_stage(recipe.serve, model_uri, output)
    publish(result, release, output)
