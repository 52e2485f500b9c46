"""``keye plan``: per-GPU memory, nodes and communication of every training stage of a recipe."""

from __future__ import annotations

import argparse


def register(commands) -> None:
    from keye_model.cli import add_recipe_args

    parser = commands.top.add_parser(
        "plan",
        help="Memory per GPU, nodes needed and traffic per step of each training stage (ZeRO).",
    )
    add_recipe_args(parser)
    parser.add_argument("--nodes", type=int, required=True, help="Nodes to plan for.")
    parser.add_argument(
        "--gpus-per-node", type=int, help="GPUs per node (default: the stage's launch config)."
    )
    parser.add_argument(
        "--gpu-mem-gb", type=float, help="Memory of one GPU in GB (default: launch config)."
    )
    parser.add_argument(
        "--link-gbps",
        type=float,
        default=None,
        help="Network bandwidth per GPU in Gb/s for the time column (default: 400).",
    )
    parser.add_argument(
        "--no-recompute",
        action="store_true",
        help="Count activations without per-layer activation checkpointing.",
    )
    parser.set_defaults(func=_plan)


def stage_configs(recipe) -> dict:
    """The recipe's training-stage configs, in recipe order (align, pretrain, anneal, sft)."""
    from keye_model.train.plan import STAGES

    stages = {name: getattr(recipe, name) for name in STAGES if hasattr(recipe, name)}
    if not stages:
        raise ValueError(f"recipe {recipe.name!r} has no training stages ({', '.join(STAGES)})")
    return stages


def model_preset(recipe) -> str:
    """The model preset a recipe builds (``init.preset``; older recipes: ``model``)."""
    init = getattr(recipe, "init", None)
    return init.preset if init is not None else recipe.model


def _plan(args: argparse.Namespace) -> int:
    from keye_model.cli import recipe_from_args
    from keye_model.model.configuration import KeyeVLMoeConfig
    from keye_model.train.plan import DEFAULT_LINK_GBPS, Hardware, format_plan, make_plan

    recipe = recipe_from_args(args)
    stages = stage_configs(recipe)
    launch = next(iter(stages.values())).launch
    hardware = Hardware(
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node or launch.gpus_per_node,
        gpu_mem_gb=args.gpu_mem_gb or launch.gpu_mem_gb,
        link_gbps=args.link_gbps or DEFAULT_LINK_GBPS,
    )
    preset = model_preset(recipe)
    plan = make_plan(
        stages,
        KeyeVLMoeConfig.from_preset(preset),
        hardware,
        model_name=preset,
        recompute=not args.no_recompute,
    )
    print(format_plan(plan))
    return 0
