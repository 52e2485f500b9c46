"""The recipe pipeline: KFP's own compiler, and a whole kfp.local run with nested MLflow runs."""

from __future__ import annotations

import json
import subprocess
import sys

import mlflow
import pytest
import yaml

from keye_model.recipe import load_recipe
from pipelines.run import STAGES, PipelineRequest, compile_pipeline
from tests.conftest import REPO


def test_pipeline_compiles_to_kfp_ir_with_cluster_settings(tmp_path):
    spec = yaml.safe_load_all(compile_pipeline(tmp_path / "p.yaml").read_text())
    pipeline, platform = list(spec)
    tasks = pipeline["root"]["dag"]["tasks"]
    assert set(tasks) == {"for-loop-1", "curate", "init-model", "evaluate", "deploy"}
    loop = tasks["for-loop-1"]["parameterIterator"]["items"]["inputParameter"]
    assert loop == "pipelinechannel--curate_shards"
    assert "for-loop-1" in tasks["curate"]["dependentTasks"]
    assert (
        tasks["evaluate"]["inputs"]["artifacts"]["model"]["taskOutputArtifact"]["producerTask"]
        == "init-model"
    )
    assert "curate" in tasks["init-model"]["dependentTasks"]
    params = pipeline["root"]["inputDefinitions"]["parameters"]
    assert {"recipe_json", "storage_root", "run_id", "parent_run_id"} <= set(params)
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    secrets = {s["secretName"] for e in executors.values() for s in e.get("secretAsEnv", [])}
    assert secrets == {"keye-s3", "keye-mlflow"}


def test_keye_run_executes_every_stage_with_kfp_local_and_nests_mlflow_runs(tmp_path):
    """`keye run --preset tiny` (what `make run` does), in a subprocess like a user would run it."""
    home = tmp_path / "home"
    env = {
        **__import__("os").environ,
        "KEYE_HOME": str(home),
        "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
        "KUBECONFIG": str(tmp_path / "no-kubeconfig"),  # no cluster here: deploy must say so
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "keye_model.cli",
            "run",
            "--preset",
            "tiny",
            "--run-id",
            "e2e",
            "--set",
            "curate.num_synthetic=120",
            "--set",
            "evaluate.limit=4",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "keye run finished" in proc.stdout

    root = home / "runs" / "e2e"
    results = {s: json.loads((root / s / "stage_result.json").read_text()) for s in STAGES}
    assert results["curate"]["metrics"]["kept_samples"] > 0
    assert (root / "init" / "config.json").exists() and (root / "init" / "tokenizer.json").exists()
    assert 0.0 <= results["evaluate"]["metrics"]["mean/overall"] <= 1.0
    assert (
        results["deploy"]["metrics"]["deployed"] == 0
        and "not deployed" in results["deploy"]["message"]
    )

    mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["keye"], output_format="list")
    parents = [r for r in runs if r.data.tags.get("stage") == "pipeline"]
    assert len(parents) == 1 and parents[0].data.params["name"] == "tiny"
    children = {
        r.data.tags["stage"]: r
        for r in runs
        if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id
    }
    assert set(STAGES) <= set(children), sorted(children)
    assert all(r.data.tags["pipeline_run_id"] == "e2e" for r in children.values())
    # The evaluated model is registered with its scores; the weights stay in the run's storage.
    (version,) = mlflow.MlflowClient().search_model_versions("name='keye-vl'")
    assert (
        version.source == str(root / "init") and version.run_id == children["evaluate"].info.run_id
    )
    assert float(version.tags["mean/overall"]) == results["evaluate"]["metrics"]["mean/overall"]


def test_pipeline_request_defaults_are_per_run():
    recipe = load_recipe("tiny")
    a = PipelineRequest().resolved(recipe)
    assert a.run_id.startswith("tiny-") and a.storage_root.endswith("runs")
    args = a.arguments(recipe, "parent")
    assert json.loads(args["recipe_json"])["name"] == "tiny" and args["parent_run_id"] == "parent"


def test_submit_refuses_settings_a_cluster_cannot_use(monkeypatch):
    from pipelines.run import submit

    recipe = load_recipe("tiny")
    with pytest.raises(ValueError, match="s3:// prefix"):
        submit("http://127.0.0.1:9", recipe, PipelineRequest(storage_root="/local/dir"))
    # A local sqlite store: cluster steps could not nest under the parent run.
    with pytest.raises(ValueError, match="MLFLOW_TRACKING_URI is 'sqlite"):
        submit("http://127.0.0.1:9", recipe, PipelineRequest(storage_root="s3://bucket/keye"))
