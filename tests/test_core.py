"""Shared core: recipe overrides, MLflow tracking (sqlite and a real server), CLI errors."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request

import mlflow
import pytest

from keye_model.cli import main
from keye_model.config_utils import parse_assignments
from keye_model.recipe import Recipe, load_recipe
from keye_model.tracking import pipeline_run, stage_run
from tests.servers import free_port


def test_recipe_overrides_are_typed_and_unknown_fields_are_named():
    recipe = load_recipe(
        "tiny", parse_assignments(["curate.shard_size=7", "evaluate.benchmarks=mmmu,mathvista"])
    )
    assert recipe.curate.shard_size == 7 and recipe.evaluate.benchmarks == ["mmmu", "mathvista"]
    assert Recipe.from_json(recipe.to_json()) == recipe
    with pytest.raises(ValueError, match=r"curate\.'bogus'"):
        load_recipe("tiny", {"curate": {"bogus": 1}})
    with pytest.raises(ValueError, match=r"curate.shard_size: expected int, got 'many'"):
        load_recipe("tiny", {"curate": {"shard_size": "many"}})
    with pytest.raises(ValueError, match="synthetic_seed .* must differ from curate.seed"):
        load_recipe("tiny", {"curate": {"seed": 900_001}})
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        load_recipe("huge")


def test_cli_reports_bad_overrides_in_one_line(capsys):
    assert main(["recipe", "show", "--set", "serve.nodes=two"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("keye: error: serve.nodes") and "Traceback" not in err


def test_stage_runs_nest_under_the_pipeline_run_and_keep_artifacts_out_of_cwd(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    with pipeline_run("run-1", load_recipe("tiny")) as parent:
        with stage_run("curate", {"x": 1}) as stage:
            stage.log_metrics({"kept": 3}, step=0)
            stage.log_dict({"ok": True}, "report.json")
    runs = {
        r.info.run_id: r
        for r in mlflow.search_runs(experiment_names=["keye"], output_format="list")
    }
    child = runs[stage.run_id]
    assert child.data.tags["mlflow.parentRunId"] == parent.run_id
    assert child.data.tags["stage"] == "curate" and child.data.metrics["kept"] == 3
    assert runs[parent.run_id].data.params["curate.shard_size"] == str(
        load_recipe("tiny").curate.shard_size
    )
    assert not (tmp_path / "mlruns").exists()  # artifacts live beside the sqlite store
    assert child.info.artifact_uri.startswith(f"file://{os.environ['KEYE_HOME']}")


def _start_mlflow_server(tmp_path):
    """`mlflow server` on a free 127.0.0.1 port; retried if another process takes the port first."""
    for _attempt in range(3):
        port = free_port()
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--backend-store-uri",
                f"sqlite:///{tmp_path / 'server.db'}",
                "--artifacts-destination",
                str(tmp_path / "artifacts"),
                "--workers",
                "1",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 90
        while time.time() < deadline and server.poll() is None:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                return server, port
            except OSError:
                time.sleep(1)
        server.kill()
        server.wait(timeout=30)
    pytest.fail("mlflow server did not become healthy (3 attempts)")


def test_tracking_against_a_real_mlflow_server(tmp_path, monkeypatch):
    """What a cluster does: MLFLOW_TRACKING_URI points at an `mlflow server`."""
    server, port = _start_mlflow_server(tmp_path)
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
        with stage_run("evaluate", {"benchmarks": ["mmmu"]}) as tracker:
            tracker.log_metrics({"mmmu/overall": 0.5})
            tracker.log_dict({"rows": 1}, "report.json")
        client = mlflow.MlflowClient(f"http://127.0.0.1:{port}")
        run = client.get_run(tracker.run_id)
        assert run.data.metrics["mmmu/overall"] == 0.5
        assert [a.path for a in client.list_artifacts(tracker.run_id)] == ["report.json"]
        assert list(
            (tmp_path / "artifacts").rglob("report.json")
        )  # stored by the server, not locally
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_local_output_uploads_on_success_and_keeps_failed_payloads_without_a_manifest(s3_server):
    """The one place that decides local vs S3 for stage payloads (keye_model.stage.local_output)."""
    import boto3

    from keye_model import storage
    from keye_model.stage import local_output

    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="out")
    with local_output("s3://out/ok") as folder:
        (folder / "a.txt").write_text("done")
    assert storage.read_text("s3://out/ok/a.txt") == "done"
    assert not folder.exists()  # the scratch copy is gone
    with pytest.raises(RuntimeError, match="boom"):
        with local_output("s3://out/failed") as folder:
            (folder / "rejected.jsonl").write_text("{}\n")
            raise RuntimeError("boom")
    assert list(storage.list_files("s3://out/failed")) == ["s3://out/failed/rejected.jsonl"]
    assert not folder.exists()
