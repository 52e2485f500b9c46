"""Component: serving deploy (``keye stage deploy``)."""

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
    from keye_model.stages import run_step

    del evaluation  # only orders the step after evaluation: release what was scored
    run_step("deploy", recipe_json, storage_root, run_id, parent_run_id, release, model=model)
