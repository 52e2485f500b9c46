"""``keye stage <name>``: one sub-command per registered stage, built from the stage registry.

Every stage takes the recipe flags (``--preset``, ``--config``, ``--set``), ``--output`` and one
flag per named input; the stage's section of the recipe is its config. ``keye init`` and
``keye deploy`` remain as aliases of ``keye stage init`` and ``keye stage deploy``.
"""

from __future__ import annotations

import argparse
import sys

ALIASES = ("init", "deploy")


def _add_stage_parser(subparsers, spec, name: str) -> None:
    from keye_model.cli import add_recipe_args

    parser = subparsers.add_parser(
        name,
        help=spec.help,
        description=f"{spec.help}\n\nConfigured by the recipe section '{spec.config}' "
        f"(keye recipe show --help-fields {spec.config}); writes <output>/stage_result.json.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_recipe_args(parser)
    parser.add_argument(
        "--output", required=True, metavar="URI", help="Output directory or s3:// prefix."
    )
    for item in spec.inputs:
        kwargs = {"dest": item.name, "metavar": "URI", "help": item.help}
        if item.many:
            parser.add_argument(item.cli_flag, action="append", default=[], **kwargs)
        else:
            parser.add_argument(item.cli_flag, required=item.required, **kwargs)
    for option in spec.options:
        if option.type is bool:
            parser.add_argument(option.cli_flag, action="store_true", help=option.help)
        else:
            parser.add_argument(
                option.cli_flag, type=option.type, default=option.default, help=option.help
            )
    parser.set_defaults(func=_run, stage_name=spec.name)


def register(commands) -> None:
    """Attach ``keye stage <name>`` for every registered stage, plus the top-level aliases."""
    from keye_model.stages import registered

    for spec in registered().values():
        _add_stage_parser(commands.stage, spec, spec.cli_name)
        if spec.name in ALIASES:
            _add_stage_parser(commands.top, spec, spec.name)


def _run(args: argparse.Namespace) -> int:
    from keye_model.cli import recipe_from_args
    from keye_model.stages import get, headline, run_stage

    spec = get(args.stage_name)
    recipe = recipe_from_args(args)
    inputs = {item.name: getattr(args, item.name) for item in spec.inputs}
    options = {option.name: getattr(args, option.name) for option in spec.options}
    options = {k: v for k, v in options.items() if v is not None and v is not False}
    result = run_stage(spec.name, recipe, args.output, inputs, options)
    summary = headline(spec, result)
    sys.stdout.write(f"{spec.name}: {result.message}{f' ({summary})' if summary else ''}\n")
    for key, uri in result.outputs.items():
        sys.stdout.write(f"  {key}: {uri}\n")
    return 0
