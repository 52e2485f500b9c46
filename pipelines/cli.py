"""``keye run`` (the recipe locally with kfp.local) and ``keye pipeline compile|submit``."""

from __future__ import annotations

import argparse
import re
import sys


def _add_request_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storage-root",
        default="",
        help="Local dir or s3:// prefix for stage payloads (default: $KEYE_HOME/runs).",
    )
    parser.add_argument(
        "--run-id",
        default="",
        help="Run id (default: <preset>-<timestamp>); names the storage folder and MLflow run.",
    )
    parser.add_argument(
        "--input",
        dest="curate_inputs",
        action="append",
        default=[],
        metavar="URI",
        help="Curation input (WebDataset/Parquet/JSONL, local or s3://); repeatable. None: synthetic data.",
    )
    parser.add_argument(
        "--vision", default="", help="Vision checkpoint for model init (default: random)."
    )
    parser.add_argument(
        "--lm", default="", help="DeepSeek-V3 checkpoint for model init (default: random)."
    )
    parser.add_argument(
        "--eval-endpoint",
        default="",
        help="OpenAI-compatible server that answers the evaluation (required for models too big "
        "to run in the step, e.g. a keye-serve release of the 671B).",
    )
    parser.add_argument(
        "--curate-shards",
        type=int,
        default=2,
        help="Parallel curation scan tasks (a KFP ParallelFor) before the global dedup pass (default: 2).",
    )
    parser.add_argument(
        "--eval-data", default="", help="Benchmark files root (default: held-out synthetic sets)."
    )
    parser.add_argument(
        "--pipeline",
        default="keye-recipe",
        help="keye-recipe (all stages; default) or a sub-pipeline: keye-pretrain (align..anneal), "
        "keye-post-train (sft..gspo), keye-release (evaluate + deploy).",
    )
    parser.add_argument("--model", default="", help="Sub-pipelines: the model URI to start from.")
    parser.add_argument(
        "--data", default="", help="keye-pretrain/keye-post-train: the curated data URI."
    )


def _request(args: argparse.Namespace):
    from pipelines.run import PipelineRequest

    return PipelineRequest(
        storage_root=args.storage_root,
        run_id=args.run_id,
        curate_inputs=args.curate_inputs,
        vision=args.vision,
        lm=args.lm,
        eval_data=args.eval_data,
        curate_shards=args.curate_shards,
        eval_endpoint=args.eval_endpoint,
        pipeline=args.pipeline,
        model=args.model,
        data=args.data,
    )


def register(commands) -> None:
    from keye_model.cli import add_recipe_args

    run = commands.top.add_parser(
        "run",
        help="Run the whole recipe pipeline locally with kfp.local (tiny: minutes on 2 CPU cores).",
        description="Run every stage of the recipe as a KFP pipeline on this machine: kfp.local "
        "subprocesses, MLflow in $MLFLOW_TRACKING_URI (default sqlite under $KEYE_HOME), local storage.",
    )
    add_recipe_args(run)
    _add_request_args(run)
    run.add_argument(
        "--workdir",
        default="",
        help="Folder for the run's storage (unless --storage-root), kfp.local state and logs "
        "(default: $KEYE_HOME, ./.keye).",
    )
    run.add_argument(
        "--tracking-uri",
        default="",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite under $KEYE_HOME).",
    )
    run.add_argument(
        "--from-mlflow",
        metavar="RUN_ID",
        default="",
        help="Re-run the exact recipe of an earlier pipeline run (its parent MLflow run id); "
        "--set still overrides fields.",
    )
    run.set_defaults(func=_run)

    pipeline = commands.top.add_parser(
        "pipeline", help="Compile or submit the recipe pipeline to Kubeflow Pipelines."
    )
    sub = pipeline.add_subparsers(dest="pipeline_command", metavar="ACTION")
    compile_ = sub.add_parser("compile", help="Write the pipeline IR YAML.")
    compile_.add_argument("--output", default="keye_recipe.yaml", help="Where to write the YAML.")
    compile_.add_argument(
        "--pipeline",
        default="keye-recipe",
        help="keye-recipe, keye-pretrain, keye-post-train or keye-release.",
    )
    compile_.set_defaults(func=_compile)
    submit = sub.add_parser("submit", help="Submit a run to a KFP endpoint (kfp.Client).")
    submit.add_argument(
        "--host", required=True, help="KFP API endpoint, e.g. http://ml-pipeline-ui.kubeflow:80."
    )
    submit.add_argument("--experiment", default="keye", help="KFP experiment name.")
    submit.add_argument(
        "--service-account",
        default="keye-pipeline",
        help="Service account of the run's pods; the deploy step installs the chart with it.",
    )
    submit.add_argument(
        "--namespace", default=None, help="Kubeflow profile namespace (multi-user installs)."
    )
    add_recipe_args(submit)
    _add_request_args(submit)
    submit.set_defaults(func=_submit)
    pipeline.set_defaults(func=lambda _a: pipeline.print_help() or 2)


def _run(args: argparse.Namespace) -> int:
    import os

    from keye_model.cli import recipe_from_args
    from keye_model.config_utils import parse_assignments
    from keye_model.stages import get, headline
    from keye_model.tracking import tracking_uri
    from pipelines.run import recipe_from_mlflow, run_local

    if args.tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri
    if args.from_mlflow:
        recipe = recipe_from_mlflow(args.from_mlflow)
        if args.overrides:
            recipe = recipe.override(parse_assignments(args.overrides))
    else:
        recipe = recipe_from_args(args)
    run = run_local(recipe, _request(args), workdir=args.workdir or None)
    out = sys.stdout
    if run.error:
        error = re.sub(r"\x1b\[[0-9;]*m", "", run.error)  # kfp.local colours its messages
        out.write(f"\nkeye run {run.run_id} FAILED in stage {run.failed}: {error}\n")
        tail = run.log_path.read_text(errors="replace").splitlines()[-25:]
        out.write("last lines of the log:\n" + "\n".join(f"  {line}" for line in tail) + "\n")
        out.write(f"full log: {run.log_path}\n")
        return 1
    out.write(f"\n{'stage':<11}{'status':<8}{'seconds':>8}  result\n")
    for stage, result in run.results.items():
        seconds = run.timings.get(stage, float("nan"))
        out.write(f"{stage:<11}{'ok':<8}{seconds:>8.1f}  {headline(get(stage), result)}\n")
    uri = tracking_uri()
    out.write(f"\nMLflow tracking URI: {uri}   parent run: {run.parent_run_id}\n")
    if uri.startswith("sqlite:///"):
        out.write(f"open the UI: mlflow ui --backend-store-uri {uri}\n")
    out.write(f"logs: {run.log_path}\n")
    return 0


def _compile(args: argparse.Namespace) -> int:
    from pipelines.run import compile_pipeline

    print(f"wrote {compile_pipeline(args.output, args.pipeline)}")
    return 0


def _submit(args: argparse.Namespace) -> int:
    from keye_model.cli import recipe_from_args
    from pipelines.run import submit

    run_id = submit(
        args.host,
        recipe_from_args(args),
        _request(args),
        args.experiment,
        args.namespace,
        service_account=args.service_account,
    )
    print(f"submitted KFP run {run_id}")
    return 0
