"""Component: one model-to-model stage (align, pretrain, anneal, sft, cold_start, gspo).

The six stages share one signature (model + data in, model out), so one component serves them
all; ``stage`` picks the entry function from ``keye_model.stages``. With the recipe's
``launch.scheduler = kubernetes`` the step submits a torchx (Volcano) job and follows it, so its
status and logs appear in this step's log.
"""

from kfp import dsl
from kfp.dsl import Model, Output

from components.images import TRAIN_IMAGE


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def train(
    stage: str,
    recipe_json: str,
    storage_root: str,
    run_id: str,
    parent_run_id: str,
    model: str,
    data: str,
    trained: Output[Model],
) -> str:
    """Run ``stage`` on ``model`` with ``data``; returns the trained model's URI."""
    from keye_model.stages import run_step

    result = run_step(
        stage, recipe_json, storage_root, run_id, parent_run_id, trained, model=model, data=data
    )
    return result.outputs["model"]
