"""Component: evaluation (``keye stage evaluate``)."""

from kfp import dsl
from kfp.dsl import Metrics, Output

from components.images import TOOLS_IMAGE


@dsl.component(base_image=TOOLS_IMAGE, install_kfp_package=False)
def evaluate(
    recipe_json: str,
    storage_root: str,
    run_id: str,
    parent_run_id: str,
    model: str,
    data: str,
    endpoint: str,
    report: Output[Metrics],
) -> str:
    """Score the model on the recipe's benchmarks with official rules; returns the scored model URI."""
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
    return model
