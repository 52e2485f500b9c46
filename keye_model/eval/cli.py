"""``keye stage evaluate`` and ``keye serve local``: the evaluation stage and the CPU server."""

from __future__ import annotations

import argparse


def register(commands) -> None:
    """Attach ``keye stage evaluate`` and ``keye serve local``."""
    from keye_model.cli import add_recipe_args

    ev = commands.stage.add_parser(
        "evaluate",
        help="Score a model on the recipe's benchmarks with their official rules.",
        description="Builds official prompts, queries a model in process (--model) or an OpenAI-compatible "
        "server (--endpoint), caches predictions (a killed run resumes), scores with each benchmark's "
        "official rule, and writes JSON/Markdown reports, a comparison plot and MLflow metrics. Without "
        "--data (tiny preset only) it runs on held-out synthetic sets in the official schemas.",
    )
    ev.add_argument(
        "--model",
        help="Model directory or s3:// prefix: answered in-process, or, with --endpoint, the "
        "checkpoint the endpoint serves (recorded in the MLflow registry with the scores).",
    )
    ev.add_argument(
        "--endpoint",
        help="OpenAI-compatible base URL that answers, e.g. http://127.0.0.1:8000 (SGLang, keye serve local).",
    )
    ev.add_argument(
        "--benchmarks", help="Comma list overriding evaluate.benchmarks, e.g. mmbench_en,mmmu."
    )
    ev.add_argument(
        "--data",
        help="Root of the released benchmark files (local or s3://), one folder per benchmark.",
    )
    ev.add_argument(
        "--output",
        required=True,
        help="Output directory or s3:// prefix (reports, cache, results).",
    )
    add_recipe_args(ev)
    ev.set_defaults(func=_evaluate)

    serve = _serve_group(commands)
    local = serve.add_parser(
        "local",
        help="OpenAI-compatible server for a model directory on CPU (127.0.0.1).",
        description="Serves /v1/chat/completions (image_url/video_url parts as base64 data or file URLs), "
        "/v1/models and /health with greedy decoding; concurrent requests are batched.",
    )
    local.add_argument("--model", required=True, help="Model directory or s3:// prefix.")
    local.add_argument("--host", default="127.0.0.1", help="Bind address (default 127.0.0.1).")
    local.add_argument("--port", type=int, default=8000, help="Port (default 8000).")
    local.add_argument("--max-new-tokens", type=int, default=256, help="Default completion budget.")
    local.add_argument("--max-batch", type=int, default=8, help="Most requests generated together.")
    local.add_argument(
        "--batching",
        choices=("exact", "padded"),
        default="exact",
        help="exact: batch equal-length prompts only (answers independent of neighbours); padded: any.",
    )
    local.add_argument(
        "--name", help="Model name reported by /v1/models (default: directory name)."
    )
    local.set_defaults(func=_serve_local)


def _serve_group(commands) -> argparse._SubParsersAction:
    """The ``keye serve`` sub-command group, created here unless another module made it first."""
    existing = commands.top.choices.get("serve")
    if existing is not None:
        for action in existing._actions:
            if isinstance(action, argparse._SubParsersAction):
                return action
        raise RuntimeError("'keye serve' exists without sub-commands; cannot add 'local'")
    parser = commands.top.add_parser("serve", help="Serve a model locally (OpenAI-compatible API).")
    group = parser.add_subparsers(dest="serve_command", metavar="ACTION")
    parser.set_defaults(func=lambda _a: parser.print_help() or 2)
    return group


def _evaluate(args: argparse.Namespace) -> int:
    from keye_model.cli import recipe_from_args
    from keye_model.config_utils import apply_overrides
    from keye_model.eval.stage import evaluate

    recipe = recipe_from_args(args)
    cfg = recipe.evaluate
    if args.benchmarks:
        cfg = apply_overrides(cfg, {"benchmarks": args.benchmarks}, prefix="evaluate.")
    if args.data is None and recipe.name != "tiny":
        raise ValueError(
            f"--data is required for preset {recipe.name!r} (held-out synthetic sets are for tiny)"
        )
    result = evaluate(
        cfg, model=args.model, endpoint=args.endpoint, data=args.data, output=args.output
    )
    print(result.to_json())
    return 0


def _serve_local(args: argparse.Namespace) -> int:
    from keye_model.serve.local import serve

    if args.host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"--host {args.host!r}: keye serve local binds loopback only (127.0.0.1)")
    serve(
        args.model,
        host=args.host,
        port=args.port,
        max_new_tokens=args.max_new_tokens,
        max_batch=args.max_batch,
        model_name=args.name,
        batching=args.batching,
    )
    return 0
