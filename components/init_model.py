"""Component: model assembly (``keye_model.model.assembly.init_model``)."""

from kfp import dsl
from kfp.dsl import Model, Output

from components.images import TOOLS_IMAGE


@dsl.component(base_image=TOOLS_IMAGE, install_kfp_package=False)
def init_model(
    recipe_json: str,
    storage_root: str,
    run_id: str,
    parent_run_id: str,
    vision: str,
    lm: str,
    model: Output[Model],
):
    """Assemble KeyeViT + a new mlp_AR projector + the DeepSeek-V3 LM (random parts where none given)."""
    from keye_model.model.assembly import init_model as run_stage
    from keye_model.recipe import Recipe
    from keye_model.stage import enter_pipeline_step, publish, stage_output

    enter_pipeline_step(parent_run_id, run_id)
    recipe = Recipe.from_json(recipe_json)
    output = stage_output(storage_root, run_id, "init")
    result = run_stage(recipe.model, output, vision=vision or None, lm=lm or None, seed=recipe.seed)
    publish(result, model, output)
