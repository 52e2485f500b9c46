"""``keye init``: assemble a Keye-VL model directory from parts, or initialise it randomly."""

from __future__ import annotations

import argparse


def register(commands) -> None:
    parser = commands.top.add_parser(
        "init",
        help="Assemble a model from a vision checkpoint, a DeepSeek-V3 LM and a new projector.",
        description=(
            "Write a Keye-VL model directory (config, safetensors in the released Keye weight names, "
            "processor). --vision takes a SigLIP or KeyeViT checkpoint; --lm a DeepSeek-V3 HF checkpoint "
            "(FP8 block-scaled weights are dequantised to bf16). Parts not given are initialised "
            "randomly; the projector always is."
        ),
    )
    parser.add_argument(
        "--preset", default="tiny", help="Model preset: tiny | keye-vl-671b-a37b (default: tiny)."
    )
    parser.add_argument(
        "--output", required=True, help="Directory (or s3:// prefix) to write the model into."
    )
    parser.add_argument("--vision", help="Vision checkpoint directory or .safetensors file.")
    parser.add_argument("--lm", help="DeepSeek-V3 checkpoint directory.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the random initialisation.")
    parser.set_defaults(func=_init)


def _init(args: argparse.Namespace) -> int:
    from keye_model.model.assembly import init_model

    result = init_model(args.preset, args.output, vision=args.vision, lm=args.lm, seed=args.seed)
    print(result.to_json())
    return 0
