"""The deploy step without a cluster: real helm render, offline validation, MLflow, a plain "not deployed".

No Kubernetes API server can run here, so KUBECONFIG points at a 127.0.0.1 port with nothing
listening: the kubernetes client loads it, the API call is refused at once, and the step must
report that nothing was deployed. The install/wait/smoke path needs a cluster and is not run.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import pytest
import yaml

from keye_model.config_utils import apply_overrides
from keye_model.recipe import Recipe
from keye_model.serve import cluster, helm
from keye_model.serve.config import ServeConfig
from keye_model.serve.validate import (
    K8S_SCHEMAS,
    LWS_CRD_NAME,
    load_documents,
    validate_manifests,
)
from keye_model.stage import MANIFEST
from keye_model.stages import run_stage

REPO = Path(__file__).resolve().parents[1]
LWS_CRD = K8S_SCHEMAS / LWS_CRD_NAME


@pytest.fixture
def no_cluster(tmp_path, monkeypatch):
    """A kubeconfig whose API server is a closed 127.0.0.1 port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "dead", "cluster": {"server": f"https://127.0.0.1:{port}"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "dead", "context": {"cluster": "dead", "user": "u"}}],
        "current-context": "dead",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(kubeconfig))
    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KEYE_LWS_CRD", str(LWS_CRD))
    return port


def test_probe_reports_unreachable_quickly(no_cluster, monkeypatch, tmp_path):
    probe = cluster.probe_cluster(timeout_s=2)
    assert not probe.reachable and f"127.0.0.1:{no_cluster}" in probe.reason
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    probe = cluster.probe_cluster(timeout_s=2)
    assert not probe.reachable and "no Kubernetes credentials" in probe.reason


def test_deploy_without_cluster_renders_validates_and_says_not_deployed(no_cluster, tmp_path):
    import mlflow

    out = tmp_path / "deploy"
    cfg = ServeConfig(s3_endpoint="http://minio.storage:9000", api_key_secret="keye-api-key")
    result = run_stage(
        "deploy", Recipe(serve=cfg), str(out), {"model": "s3://models/keye/run-7/final/"}
    )

    assert result.metrics["deployed"] == 0
    assert result.message.startswith("not deployed: no cluster reachable")
    assert "endpoint" not in result.outputs
    assert json.loads((out / MANIFEST).read_text())["metrics"]["deployed"] == 0
    manifests = (out / "manifests.yaml").read_text()
    assert validate_manifests(manifests, "1.30", LWS_CRD) == []
    docs = load_documents(manifests)
    (lws,) = [d for d in docs if d["kind"] == "LeaderWorkerSet"]
    leader = lws["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"]
    init = leader["initContainers"][0]["command"]
    assert init[init.index("--uri") + 1] == "s3://models/keye/run-7/final/"
    args = leader["containers"][0]["args"]
    assert args[args.index("--model-path") + 1] == "/models/final"
    assert args[args.index("--api-key") + 1] == "$(SGLANG_API_KEY)"
    values = yaml.safe_load((out / "values.yaml").read_text())
    assert values["model"]["source"] == "s3" and values["sglang"]["tp"] == 16

    run = mlflow.get_run(result.details["mlflow_run_id"])
    assert run.data.metrics["deployed"] == 0
    assert run.data.params["release"] == "keye-serve"
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "deploy")}
    assert artifacts == {"deploy/manifests.yaml", "deploy/values.yaml"}


def test_cli_deploy_local_model_with_recipe_file(no_cluster, tmp_path, capsys):
    from keye_model.cli import main

    model = tmp_path / "models" / "keye-final"
    model.mkdir(parents=True)
    out = tmp_path / "out"
    argv = ["deploy", "--model", str(model), "--output", str(out), "--preset", "keye-vl-671b-a37b"]
    argv += ["--set", "serve.nodes=4", "--set", "serve.values_file=values-4x8-deepep.yaml"]
    argv += [
        "--set",
        "serve.local_model_source=hostPath",
        "--set",
        "serve.image=registry.local/keye-serve:abc",
    ]
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith("deploy: not deployed: no cluster reachable")
    result = json.loads((out / MANIFEST).read_text())
    assert result["metrics"]["deployed"] == 0 and "not deployed" in result["message"]
    docs = load_documents((out / "manifests.yaml").read_text())
    (lws,) = [d for d in docs if d["kind"] == "LeaderWorkerSet"]
    assert lws["spec"]["leaderWorkerTemplate"]["size"] == 4
    worker = lws["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]
    c = worker["containers"][0]
    assert c["image"] == "registry.local/keye-serve:abc"
    assert c["args"][c["args"].index("--tp-size") + 1] == "32"
    assert c["args"][c["args"].index("--model-path") + 1] == str(model)
    assert next(v for v in worker["volumes"] if v["name"] == "model")["hostPath"]["path"] == str(
        model.parent
    )


@pytest.mark.parametrize(
    ("overrides", "model", "needle"),
    [
        ({"model_source": "nfs"}, "s3://b/m", "serve.model_source"),
        ({"model_source": "s3"}, "/models/x", "does not fit the model URI"),
        ({"local_model_source": "nfs"}, "/models/x", "serve.local_model_source"),
        ({"nodes": 0}, "s3://b/m", "serve.nodes"),
        ({"image": "no-tag"}, "s3://b/m", "serve.image"),
        ({}, "s3://bucket-only", "needs a prefix"),
        ({}, "", "--model"),
        ({"values_file": "missing.yaml"}, "s3://b/m", "serve.values_file"),
        (
            {"set_values": ["sglang.tp=3"]},
            "s3://b/m",
            "sglang.tp (3) must equal nodes (2) x gpusPerNode (8)",
        ),
        ({"set_values": ["shm.size=-1Gi"]}, "s3://b/m", "shm.size"),
    ],
)
def test_bad_input_fails_before_anything_is_deployed(
    no_cluster, tmp_path, overrides, model, needle
):
    cfg = apply_overrides(ServeConfig(), overrides)
    with pytest.raises((ValueError, FileNotFoundError)) as err:
        run_stage("deploy", Recipe(serve=cfg), str(tmp_path / "out"), {"model": model})
    assert needle in str(err.value)
    assert not (tmp_path / "out" / MANIFEST).exists()


def test_missing_helm_says_run_make_setup(monkeypatch, tmp_path):
    monkeypatch.delenv("KEYE_HELM", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(helm, "REPO_ROOT", tmp_path)
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="make setup"):
        helm.find_helm()
