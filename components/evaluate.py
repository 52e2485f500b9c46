"""Component: evaluation (``keye stage evaluate``)."""

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
    from keye_model.stages import run_step

    result = run_step(
        "evaluate",
        recipe_json,
        storage_root,
        run_id,
        parent_run_id,
        report,
        model=model,
        endpoint=endpoint,
        data=data,
    )
    for name, value in result.metrics.items():
        report.log_metric(name, value)
