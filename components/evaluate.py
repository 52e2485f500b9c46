"""Component: evaluation (``keye_model.eval.stage.evaluate``)."""

from kfp import dsl
from kfp.dsl import Input, Metrics, Model, Output

from components.images import TOOLS_IMAGE


@dsl.component(base_image=TOOLS_IMAGE, install_kfp_package=False)
def evaluate(
    recipe_json: str,
    storage_root: str,
    run_id: str,
    parent_run_id: str,
    data: str,
    endpoint: str,
    model: Input[Model],
    report: Output[Metrics],
):
    """Score the model on the recipe's benchmarks with each benchmark's official rules."""
    from keye_model.eval.stage import evaluate as run_stage
    from keye_model.recipe import Recipe
    from keye_model.stage import enter_pipeline_step, publish, read_manifest, stage_output

    enter_pipeline_step(parent_run_id, run_id)
    recipe = Recipe.from_json(recipe_json)
    model_uri = read_manifest(model).outputs["model"]
    output = stage_output(storage_root, run_id, "evaluate")
    result = run_stage(
        recipe.evaluate,
        model=model_uri,
        endpoint=endpoint or None,
        data=data or None,
        output=output,
    )
    publish(result, report, output)
    for name, value in result.metrics.items():
        report.log_metric(name, value)
