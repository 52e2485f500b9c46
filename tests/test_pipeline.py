"""The recipe pipeline: KFP's own compiler, a fresh clone running the whole tiny recipe with
kfp.local on S3 (a local moto server), MLflow nesting, runs compare, submit and the stage CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import mlflow
import pytest
import yaml

from keye_model.recipe import load_recipe
from keye_model.stages import STAGES
from pipelines.run import PipelineRequest, compile_pipeline
from tests.conftest import REPO

STAGE_NAMES = [s.name for s in STAGES]
TRAINING = ("align", "pretrain", "anneal", "sft", "cold_start", "gspo")


def _all_tasks(spec: dict) -> list[tuple[str, dict]]:
    """(component name of the enclosing DAG, task) for the root DAG and every sub-DAG."""
    tasks = [("root", t) for t in spec["root"]["dag"]["tasks"].values()]
    for name, comp in spec["components"].items():
        tasks += [(name, t) for t in comp.get("dag", {}).get("tasks", {}).values()]
    return tasks


def test_pipeline_compiles_with_every_stage_and_cluster_settings(tmp_path):
    pipeline, platform = list(yaml.safe_load_all(compile_pipeline(tmp_path / "p.yaml").read_text()))
    root = pipeline["root"]["dag"]["tasks"]
    assert {"for-loop-1", "curate", "init-model", "keye-pretrain", "keye-post-train"} <= set(root)
    assert "keye-release" in root
    # Every registered stage is a component of the compiled pipeline: the six model stages as
    # the shared train component with their name as a constant, the others by component name.
    seen = set()
    for _, task in _all_tasks(pipeline):
        component = task["componentRef"]["name"]
        stage = task.get("inputs", {}).get("parameters", {}).get("stage", {})
        if "runtimeValue" in stage:
            seen.add(stage["runtimeValue"]["constant"])
        elif component.removeprefix("comp-") in ("curate", "init-model", "evaluate", "deploy"):
            seen.add(component.removeprefix("comp-").replace("init-model", "init"))
    assert seen == set(STAGE_NAMES), sorted(set(STAGE_NAMES) ^ seen)

    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    secrets = {s["secretName"] for e in executors.values() for s in e.get("secretAsEnv", [])}
    assert secrets == {"keye-s3", "keye-mlflow"}
    train_executors = [e for name, e in executors.items() if name.startswith("exec-train")]
    assert len(train_executors) == len(TRAINING)
    for executor in train_executors:
        assert executor["emptyDirMounts"] == [
            {"medium": "Memory", "mountPath": "/dev/shm", "sizeLimit": "64Gi", "volumeName": "dshm"}
        ]
        assert executor["tolerations"][0]["key"] == "nvidia.com/gpu"
        assert executor["nodeSelector"]["labels"] == {"nvidia.com/gpu.product": "NVIDIA-H800"}
        assert executor["activeDeadlineSeconds"] == str(14 * 24 * 3600)
    resources = [
        pipeline["deploymentSpec"]["executors"][name]["container"]["resources"]
        for name in executors
        if name.startswith("exec-train")
    ]
    assert all(r["accelerator"]["resourceType"] == "nvidia.com/gpu" for r in resources)
    assert all(r["accelerator"]["resourceCount"] == "8" for r in resources)
    # Each sub-pipeline compiles on its own too, taking a model URI.
    for name in ("keye-pretrain", "keye-post-train", "keye-release"):
        sub = next(
            yaml.safe_load_all(compile_pipeline(tmp_path / f"{name}.yaml", name).read_text())
        )
        assert "model" in sub["root"]["inputDefinitions"]["parameters"]


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """A git clone of the checkout under test, with nothing beside it (as a new user has it)."""
    where = tmp_path_factory.mktemp("fresh") / "keye"
    subprocess.run(["git", "clone", "-q", str(REPO), str(where)], check=True)
    return where


def test_fresh_clone_collects_the_whole_suite(clone):
    env = {**os.environ, "PYTHONPATH": str(clone)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=clone, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "error" not in proc.stdout.lower().split("\n")[-2]


def test_fresh_clone_runs_the_tiny_recipe_on_s3_with_nested_mlflow_runs(clone, s3_server, tmp_path):
    """`keye run --preset tiny` from a fresh clone, every payload on S3 (moto over HTTP)."""
    import boto3

    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="keye")
    home = tmp_path / "home"
    env = {
        **os.environ,
        "PYTHONPATH": str(clone),
        "KEYE_HOME": str(home),
        "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
        "KUBECONFIG": str(tmp_path / "no-kubeconfig"),  # no cluster here: deploy must say so
    }
    argv = [sys.executable, "-m", "keye_model.cli", "run", "--preset", "tiny", "--run-id", "e2e"]
    argv += ["--storage-root", "s3://keye/runs", "--set", "curate.num_synthetic=120"]
    argv += ["--set", "evaluate.limit=4"]
    proc = subprocess.run(argv, cwd=clone, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    # The console: one line per stage start and end, a summary, the MLflow pointers; no dumps.
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert len(lines) < 40, "\n".join(lines)
    assert not any(line.lstrip().startswith(("{", "}", '"')) for line in lines)
    for stage in STAGE_NAMES:
        assert any(f"{stage} " in line and "done in" in line for line in lines), stage
    assert any(
        line.startswith("open the UI: mlflow ui --backend-store-uri sqlite:///") for line in lines
    )
    assert (home / "logs" / "e2e" / "kfp-local.log").stat().st_size > 10_000  # the dumps went here

    s3 = boto3.client("s3", endpoint_url=s3_server)
    results = {}
    for stage in STAGE_NAMES:
        body = s3.get_object(Bucket="keye", Key=f"runs/e2e/{stage}/stage_result.json")["Body"]
        results[stage] = json.loads(body.read())
    assert results["curate"]["metrics"]["kept_samples"] > 0
    assert 0.0 <= results["evaluate"]["metrics"]["mean/overall"] <= 1.0
    assert results["deploy"]["metrics"]["deployed"] == 0
    assert results["gspo"]["outputs"]["model"] == "s3://keye/runs/e2e/gspo/final"

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    client = mlflow.MlflowClient()
    runs = mlflow.search_runs(experiment_names=["keye"], output_format="list")
    (parent,) = [r for r in runs if r.data.tags.get("stage") == "pipeline"]
    children = {
        r.data.tags["stage"]: r
        for r in runs
        if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    }
    assert set(STAGE_NAMES) <= set(children), sorted(children)
    assert all(r.info.status == "FINISHED" for r in children.values())
    assert all(r.data.tags["pipeline_run_id"] == "e2e" for r in children.values())
    for stage in ("align", "pretrain", "anneal", "sft"):
        assert len(client.get_metric_history(children[stage].info.run_id, "loss")) >= 2, stage
    assert "reward_mean" in children["gspo"].data.metrics
    # The evaluated model (GSPO's output) is registered with its scores.
    (version,) = client.search_model_versions("name='keye-vl'")
    assert version.source == "s3://keye/runs/e2e/gspo/final"
    assert float(version.tags["mean/overall"]) == results["evaluate"]["metrics"]["mean/overall"]

    # The parent run carries the recipe: --from-mlflow reproduces it exactly.
    os.environ["MLFLOW_TRACKING_URI"] = env["MLFLOW_TRACKING_URI"]
    from pipelines.run import recipe_from_mlflow

    sent = load_recipe("tiny", {"curate": {"num_synthetic": 120}, "evaluate": {"limit": 4}})
    assert recipe_from_mlflow(parent.info.run_id).to_json() == sent.to_json()

    # A sub-pipeline runs on its own from a model URI, and two real runs compare side by side.
    argv = [sys.executable, "-m", "keye_model.cli", "run", "--pipeline", "keye-release"]
    argv += ["--model", "s3://keye/runs/e2e/gspo/final", "--run-id", "release-only"]
    argv += ["--storage-root", "s3://keye/runs", "--set", "evaluate.limit=2"]
    proc = subprocess.run(argv, cwd=clone, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    plot = tmp_path / "compare.png"
    argv = [sys.executable, "-m", "keye_model.cli", "runs", "compare", "e2e", "release-only"]
    proc = subprocess.run(
        argv + ["--plot", str(plot)], cwd=clone, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = proc.stdout.splitlines()
    assert table[0].split()[-2:] == ["e2e", "release-only"]
    evaluate_row = next(line for line in table if line.startswith("evaluate") and "seconds" in line)
    assert len(evaluate_row.split()) == 4  # both runs evaluated
    pretrain_row = next(line for line in table if line.startswith("pretrain"))
    assert pretrain_row.split()[-1] == "-"  # only the full run pretrained
    assert plot.stat().st_size > 10_000


def test_every_stage_has_a_cli_with_help():
    for spec in STAGES:
        proc = subprocess.run(
            [sys.executable, "-m", "keye_model.cli", "stage", spec.cli_name, "--help"],
            cwd=REPO, capture_output=True, text=True,
        )  # fmt: skip
        assert proc.returncode == 0, spec.name
        assert "--output" in proc.stdout and spec.help.split(":")[0][:20] in " ".join(
            proc.stdout.split()
        )
        for item in spec.inputs:
            assert item.cli_flag in proc.stdout, (spec.name, item.cli_flag)


def test_pipeline_request_defaults_are_per_run():
    recipe = load_recipe("tiny")
    a = PipelineRequest().resolved(recipe)
    assert a.run_id.startswith("tiny-") and a.storage_root.endswith("runs")
    args = a.arguments(recipe, "parent")
    assert json.loads(args["recipe_json"])["name"] == "tiny" and args["parent_run_id"] == "parent"
    with pytest.raises(ValueError, match="keye-release needs --model"):
        PipelineRequest(pipeline="keye-release").resolved(recipe)
    with pytest.raises(ValueError, match="choose one of"):
        PipelineRequest(pipeline="keye-everything").resolved(recipe)


def test_submit_refuses_settings_a_cluster_cannot_use():
    from pipelines.run import submit

    recipe = load_recipe("tiny")
    with pytest.raises(ValueError, match="s3:// prefix"):
        submit("http://127.0.0.1:9", recipe, PipelineRequest(storage_root="/local/dir"))
    # A local sqlite store: cluster steps could not nest under the parent run.
    with pytest.raises(ValueError, match="MLFLOW_TRACKING_URI is 'sqlite"):
        submit("http://127.0.0.1:9", recipe, PipelineRequest(storage_root="s3://bucket/keye"))


def test_submit_builds_the_run_request(monkeypatch, tmp_path):
    """The KFP HTTP API is the one thing faked: a stand-in kfp.Client that compiles what it gets."""
    import kfp
    from kfp import compiler

    from pipelines.run import submit

    calls = {}

    class RecordingClient:
        def __init__(self, host, namespace=None):
            calls["host"], calls["namespace"] = host, namespace

        def create_run_from_pipeline_func(
            self, func, arguments, run_name, experiment_name, service_account
        ):
            path = tmp_path / "submitted.yaml"
            compiler.Compiler().compile(func, str(path), pipeline_parameters=arguments)
            calls.update(
                spec=next(yaml.safe_load_all(path.read_text())), arguments=arguments, run_name=run_name,
                experiment=experiment_name, service_account=service_account,
            )  # fmt: skip
            return type("Run", (), {"run_id": "kfp-run-1"})()

    # The parent MLflow run must live on a server the cluster reaches: a real one is not needed
    # to build the request, so an http URI plus a local store for the parent run itself.
    monkeypatch.setattr(kfp, "Client", RecordingClient)
    monkeypatch.setattr("pipelines.run.tracking_uri", lambda: "http://mlflow.mlflow:5000")
    recipe = load_recipe("keye-vl-671b-a37b")
    request = PipelineRequest(
        storage_root="s3://bucket/keye", run_id="r1", pipeline="keye-post-train",
        model="s3://bucket/keye/r0/anneal/final", data="s3://bucket/keye/r0/curate",
    )  # fmt: skip
    assert submit("http://kfp.kubeflow:8888", recipe, request, namespace="team") == "kfp-run-1"
    assert calls["host"] == "http://kfp.kubeflow:8888" and calls["namespace"] == "team"
    assert calls["service_account"] == "keye-pipeline" and calls["run_name"] == "r1"
    assert calls["arguments"]["model"] == "s3://bucket/keye/r0/anneal/final"
    assert json.loads(calls["arguments"]["recipe_json"])["name"] == "keye-vl-671b-a37b"
    assert calls["spec"]["pipelineInfo"]["name"] == "keye-post-train"
