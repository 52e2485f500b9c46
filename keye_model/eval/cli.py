"""``keye serve local``: the OpenAI-compatible CPU server (``keye stage evaluate`` comes from the stage registry)."""

from __future__ import annotations

import argparse


def register(commands) -> None:
    """Attach ``keye serve local``."""
    serve = _serve_group(commands)
    local = serve.add_parser(
        "local",
        help="OpenAI-compatible server for a model directory on CPU (127.0.0.1).",
        description="Serves what SGLang's OpenAI-compatible server accepts from the model card's "
        "client: /v1/chat/completions (image_url/video_url parts as base64 data or file URLs; "
        "stream, n, stop, ignore_eos, skip_special_tokens, top_k, seed), /v1/models, /health, "
        "/health_generate and SGLang's weight refresh (/pause_generation, /flush_cache, "
        "/update_weights_from_disk, /continue_generation). Greedy decoding; concurrent requests "
        "are batched.",
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
