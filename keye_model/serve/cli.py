"""``keye deploy``: the serving deploy step from the command line."""

from __future__ import annotations

import argparse
import sys


def register(commands) -> None:
    """Attach ``keye deploy``."""
    from keye_model.cli import add_recipe_args

    parser = commands.top.add_parser(
        "deploy",
        help="Render + validate the keye-serve chart for a model; install it if a cluster is reachable.",
        description="Builds Helm values from --model and the recipe's serve section, renders the chart "
        "with the real helm binary, validates every object, logs the manifests to MLflow and, when a "
        "Kubernetes API server answers, runs helm upgrade --install and a chat smoke test.",
    )
    parser.add_argument(
        "--model", required=True, help="Model URI: s3://bucket/prefix or a local directory."
    )
    parser.add_argument(
        "--output", required=True, help="Directory for values.yaml, manifests.yaml, result.json."
    )
    add_recipe_args(parser)
    parser.set_defaults(func=_deploy)


def _deploy(args: argparse.Namespace) -> int:
    from keye_model.cli import recipe_from_args
    from keye_model.serve.deploy import deploy
    from keye_model.serve.smoke import SmokeTestError

    recipe = recipe_from_args(args)
    try:
        result = deploy(recipe.serve, args.model, args.output)
    except (SmokeTestError, TimeoutError) as err:
        # The release exists but does not answer: a clear one-line failure, not a traceback.
        print(f"keye deploy: {err}", file=sys.stderr)
        return 1
    print(result.to_json())
    return 0
