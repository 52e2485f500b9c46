"""``keye recipe show``: print a preset with overrides applied, as the pipeline would receive it."""

from __future__ import annotations

import argparse


def register(commands) -> None:
    from keye_model.cli import add_recipe_args

    recipe = commands.top.add_parser("recipe", help="Inspect recipe presets.")
    sub = recipe.add_subparsers(dest="recipe_command", metavar="ACTION")
    show = sub.add_parser(
        "show",
        help="Print the full recipe JSON for a preset plus overrides, or every field's help.",
        description="Without --help-fields: the recipe JSON the pipeline would receive. With "
        "--help-fields [SECTION]: one line per field (name, value in this recipe, help text).",
    )
    add_recipe_args(show)
    show.add_argument(
        "--help-fields",
        nargs="?",
        const="",
        default=None,
        metavar="SECTION",
        help="List fields with their help text, optionally only under SECTION (e.g. sft.optim).",
    )
    show.set_defaults(func=_show)
    recipe.set_defaults(func=lambda _a: recipe.print_help() or 2)


def _show(args: argparse.Namespace) -> int:
    from keye_model.cli import recipe_from_args

    recipe = recipe_from_args(args)
    if args.help_fields is None:
        print(recipe.to_json())
        return 0
    rows = [row for row in field_help(recipe) if row[0].startswith(args.help_fields)]
    if not rows:
        raise ValueError(f"--help-fields {args.help_fields!r}: no such recipe section")
    width = max(len(name) for name, _, _ in rows)
    for name, value, text in rows:
        print(f"{name:<{width}}  = {value}\n{'':<{width}}    {text}")
    return 0


def field_help(obj, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted name, current value, help) for every leaf field of a config dataclass, in order."""
    import dataclasses
    import json

    rows = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            rows.append((name, "{...}", f.metadata.get("help", "")))
            rows += field_help(value, f"{name}.")
        else:
            rows.append((name, json.dumps(value, default=str), f.metadata.get("help", "")))
    return rows
