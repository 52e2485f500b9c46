"""Component: model assembly (``keye stage init``)."""

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
) -> str:
    """Assemble KeyeViT + a new mlp_AR projector + the DeepSeek-V3 LM; returns the model URI."""
    from keye_model.stages import run_step

    result = run_step(
        "init", recipe_json, storage_root, run_id, parent_run_id, model, vision=vision, lm=lm
    )
    return result.outputs["model"]
