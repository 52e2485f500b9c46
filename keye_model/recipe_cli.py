"""``keye recipe show``: print a preset with overrides applied, as the pipeline would receive it."""

from __future__ import annotations

import argparse


def register(commands) -> None:
    from keye_model.cli import add_recipe_args

    recipe = commands.top.add_parser("recipe", help="Inspect recipe presets.")
    sub = recipe.add_subparsers(dest="recipe_command", metavar="ACTION")
    show = sub.add_parser("show", help="Print the full recipe JSON for a preset plus overrides.")
    add_recipe_args(show)
    show.set_defaults(func=_show)
    recipe.set_defaults(func=lambda _a: recipe.print_help() or 2)


def _show(args: argparse.Namespace) -> int:
    from keye_model.cli import recipe_from_args

    print(recipe_from_args(args).to_json())
    return 0
