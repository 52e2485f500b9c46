"""``keye stage curate``: the command line of the data curation stage."""

from __future__ import annotations

import argparse


def register(commands) -> None:
    """Attach ``keye stage curate``."""
    from keye_model.cli import add_recipe_args

    parser = commands.stage.add_parser(
        "curate",
        help="Filter, de-duplicate, re-sample and synthesise training data into WebDataset shards.",
        description="Inputs: WebDataset .tar shards, .parquet with image bytes, .jsonl with image "
        "paths (files or prefixes, local or s3://). With no --input, the built-in synthesizers are "
        "the source. Sharded mode (KFP ParallelFor): run --shard-index i --num-shards n per task, then "
        "once without them for the global dedup and write phases.",
    )
    add_recipe_args(parser)
    parser.add_argument(
        "--input",
        dest="inputs",
        action="append",
        default=[],
        metavar="URI",
        help="Input file or prefix (repeatable).",
    )
    parser.add_argument(
        "--output", required=True, metavar="URI", help="Output directory or s3:// prefix."
    )
    parser.add_argument(
        "--shard-index",
        type=int,
        default=None,
        help="Scan only work units with index %% num-shards == this.",
    )
    parser.add_argument(
        "--num-shards",
        type=int,
        default=1,
        help="Number of parallel scan tasks (with --shard-index).",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from keye_model.cli import recipe_from_args
    from keye_model.data.curate import curate

    recipe = recipe_from_args(args)
    result = curate(
        recipe.curate,
        args.inputs,
        args.output,
        shard_index=args.shard_index,
        num_shards=args.num_shards,
    )
    print(result.to_json())
    return 0
