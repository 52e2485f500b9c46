"""Component: serving deploy (``keye stage deploy``)."""

from kfp import dsl
from kfp.dsl import Artifact, Output

from components.images import TOOLS_IMAGE


@dsl.component(base_image=TOOLS_IMAGE, install_kfp_package=False)
def deploy(
    recipe_json: str,
    storage_root: str,
    run_id: str,
    parent_run_id: str,
    model: str,
    release: Output[Artifact],
) -> str:
    """Render, validate and (with a reachable cluster) helm-install keye-serve; returns the manifests URI."""
    from keye_model.stages import run_step

    result = run_step(
        "deploy", recipe_json, storage_root, run_id, parent_run_id, release, model=model
    )
    return result.outputs["manifests"]
