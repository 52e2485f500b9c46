"""The ``keye`` command line: one sub-command per stage, all calling the stage entry functions.

    keye run --preset tiny                 # the tiny recipe end to end, locally
    keye stage --help                      # every stage: curate, init, align, ..., deploy
    keye stage init --output DIR           # assemble a model from parts (or randomly)
    keye stage align --model DIR --data DIR --output DIR
    keye stage deploy --model URI --output DIR   # helm upgrade --install keye-serve
    keye serve local --model DIR           # OpenAI-compatible server on 127.0.0.1
    keye recipe show --preset tiny         # print the full recipe as JSON

Each command module exposes ``register(commands)``; the list below is the whole registry.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass

from keye_model.stage import StageFailed

# Modules that add sub-commands. Each defines ``register(commands: Commands) -> None``.
COMMAND_MODULES = [
    "keye_model.recipe_cli",
    "keye_model.stages_cli",
    "keye_model.eval.cli",
    "keye_model.train.plan_cli",
    "pipelines.cli",
    "pipelines.compare",
]


@dataclass
class Commands:
    """Where command modules attach their parsers: top level or under ``keye stage``."""

    top: argparse._SubParsersAction
    stage: argparse._SubParsersAction


def add_recipe_args(parser: argparse.ArgumentParser) -> None:
    """The flags every recipe-driven command takes: a preset plus overrides."""
    parser.add_argument(
        "--preset", default="tiny", help="Recipe preset: tiny | keye-vl-671b-a37b (default: tiny)."
    )
    parser.add_argument("--config", help="YAML/JSON file of recipe field overrides.")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="Override one recipe field, e.g. --set curate.shard_size=500 (repeatable).",
    )
    parser.add_argument(
        "--recipe-json",
        help="A whole recipe as JSON (what the pipeline passes); wins over --preset.",
    )


def recipe_from_args(args: argparse.Namespace):
    """Build the recipe named by ``add_recipe_args`` flags."""
    from keye_model.config_utils import load_overrides, parse_assignments
    from keye_model.recipe import Recipe, load_recipe

    if getattr(args, "recipe_json", None):
        recipe = Recipe.from_json(args.recipe_json)
    else:
        recipe = load_recipe(args.preset)
    if getattr(args, "config", None):
        recipe = recipe.override(load_overrides(args.config))
    if getattr(args, "overrides", None):
        recipe = recipe.override(parse_assignments(args.overrides))
    return recipe


def build_parser() -> argparse.ArgumentParser:
    """The full ``keye`` parser with every registered command."""
    parser = argparse.ArgumentParser(
        prog="keye",
        description="Train, evaluate and serve the Keye-VL recipe (tiny on a laptop, 671B on Kubernetes).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n")[1],
    )
    top = parser.add_subparsers(dest="command", metavar="COMMAND")
    stage_parser = top.add_parser("stage", help="Run one stage of the recipe.")
    stage = stage_parser.add_subparsers(dest="stage", metavar="STAGE")
    stage_parser.set_defaults(func=lambda _args: stage_parser.print_help() or 2)
    commands = Commands(top=top, stage=stage)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``keye`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except (ValueError, FileNotFoundError) as err:
        # Bad input: one clear line naming the field or file, no traceback.
        print(f"keye: error: {err}", file=sys.stderr)
        return 2
    except (TimeoutError, StageFailed) as err:
        # The work ran but did not succeed (e.g. a release that does not answer): say so plainly.
        print(f"keye: failed: {err}", file=sys.stderr)
        return 1
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
