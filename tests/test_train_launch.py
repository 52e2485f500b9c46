"""Launching training through torchx: the Volcano job a kubernetes dry run renders, submit/follow
against a stand-in Kubernetes API, and a real 2-process torchrun on this machine (local_cwd).

No Kubernetes API server can run here: the submit/follow tests use ``tests/fake_kube_api.py`` (a
FastAPI app answering the Volcano Job, status and pod-log endpoints) behind the real ``kubernetes``
client and torchx's real scheduler. The local_cwd tests start real torchrun processes on gloo.
"""

from __future__ import annotations

import dataclasses
import shlex

import pytest
from kubernetes import client as k8s
from torchx.runner import get_runner

from keye_model.serve.validate import validate_object
from keye_model.train.config import LaunchConfig, TrainConfig
from keye_model.train.launch import (
    LaunchError,
    app_def,
    dryrun,
    job_object,
    submit_and_follow,
)
from tests.conftest import REPO
from tests.fake_kube_api import TIMESTAMP, FakeVolcano
from tests.servers import serve_app

ARGV = ["pretrain", "--preset", "keye-vl-671b-a37b", "--model", "s3://b/m", "--output", "s3://b/o"]


def _cluster_cfg(**launch) -> TrainConfig:
    base = dict(scheduler="kubernetes", nodes=4, gpus_per_node=8, shm_size="128Gi", queue="train")
    return TrainConfig(launch=dataclasses.replace(LaunchConfig(), **{**base, **launch}))


def _local_cfg(nproc: int = 2) -> TrainConfig:
    return TrainConfig(launch=dataclasses.replace(LaunchConfig(), nproc_per_node=nproc))


def _command(container: dict) -> list[str]:
    """The torchrun command line inside torchx's ``bash -c``."""
    assert container["command"][:2] == ["bash", "-c"]
    return shlex.split(container["command"][2])


def test_kubernetes_dry_run_renders_a_valid_volcano_job(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio.storage:9000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-for-the-job-object")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.kubeflow:5000")
    monkeypatch.setenv("KEYE_PARENT_RUN_ID", "abc123")
    cfg = _cluster_cfg()
    job = job_object(dryrun(app_def("pretrain", cfg, ARGV), cfg))

    # Volcano's own fields (a CRD: no offline schema, so asserted one by one).
    assert job["apiVersion"] == "batch.volcano.sh/v1alpha1" and job["kind"] == "Job"
    assert job["metadata"]["name"].startswith("keye-pretrain-")
    spec = job["spec"]
    assert spec["schedulerName"] == "volcano" and spec["queue"] == "train"
    assert spec["maxRetry"] == 0
    assert [t["name"] for t in spec["tasks"]] == [f"worker-{k}" for k in range(4)]
    assert all(t["replicas"] == 1 and t["minAvailable"] == 1 for t in spec["tasks"])  # gang

    for k, task in enumerate(spec["tasks"]):
        template = task["template"]
        # The pod template against Kubernetes' own schema (strict: unknown fields are errors).
        pod_template = {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": f"{job['metadata']['name']}-{task['name']}"},
            "template": template,
        }
        assert validate_object(pod_template, "1.30") == []

        pod = template["spec"]
        assert pod["restartPolicy"] == "Never"
        (container,) = pod["containers"]
        assert container["image"] == "ghcr.io/keye-project/keye-train:0.1.0"
        resources = container["resources"]
        assert (
            resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == "8"
        )
        assert resources["limits"]["cpu"] == "96000m"
        assert resources["limits"]["memory"] == "1600000M"
        (shm,) = [v for v in pod["volumes"] if v["name"] == "dshm"]
        assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "128Gi"}
        assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]

        argv = _command(container)
        assert argv[0] == "torchrun"
        opts = dict(zip(argv[1 : -len(ARGV) - 2 : 2], argv[2 : -len(ARGV) - 2 : 2]))
        assert opts["--nnodes"] == "4" and opts["--nproc_per_node"] == "8"
        assert argv[-len(ARGV) - 2 :] == ["-m", "keye_model.train.worker", *ARGV]
        # Rendezvous on node 0: localhost there, Volcano's host list env var elsewhere.
        assert opts["--rdzv_endpoint"] == "${VC_WORKER_0_HOSTS:=localhost}:29500" or k == 0
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE"] == "[rank${rank}]: "
        assert env["AWS_ENDPOINT_URL"] == "http://minio.storage:9000"
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow.kubeflow:5000"
        assert env["KEYE_PARENT_RUN_ID"] == "abc123"
        assert "AWS_SECRET_ACCESS_KEY" not in env and "PATH" not in env
        assert container["envFrom"] == [
            {"secretRef": {"name": "keye-s3", "optional": True}},
            {"secretRef": {"name": "keye-mlflow", "optional": True}},
        ]


def test_pod_template_validation_catches_a_broken_template():
    cfg = _cluster_cfg(nodes=1)
    template = job_object(dryrun(app_def("sft", cfg, ARGV), cfg))["spec"]["tasks"][0]["template"]
    template["spec"]["containers"][0]["resources"]["limit"] = {"cpu": "1"}  # typo of "limits"
    broken = {
        "apiVersion": "v1",
        "kind": "PodTemplate",
        "metadata": {"name": "x"},
        "template": template,
    }
    errors = validate_object(broken, "1.30")
    assert errors and "limit" in errors[0]


def test_launch_settings_are_checked_before_anything_runs():
    with pytest.raises(ValueError, match="launch.scheduler"):
        app_def("align", _cluster_cfg(scheduler="slurm"), ARGV)
    with pytest.raises(ValueError, match="launch.nodes"):
        app_def("align", _cluster_cfg(scheduler="local_cwd", nodes=2), ARGV)
    with pytest.raises(ValueError, match="launch.shm_size"):
        app_def("align", _cluster_cfg(shm_size="lots"), ARGV)
    with pytest.raises(ValueError, match="launch.gpus_per_node"):
        app_def("align", _cluster_cfg(gpus_per_node=0), ARGV)


def _fake_runner(url: str):
    configuration = k8s.Configuration()
    configuration.host = url
    return get_runner(client=k8s.ApiClient(configuration))


def test_submit_and_follow_streams_every_node_and_succeeds():
    fake = FakeVolcano(
        phases=["Pending"] * 2 + ["Running"] * 30 + ["Completed"],
        logs={0: "[rank0]: step 1 loss 2.5\n[rank3]: ready\n", 1: "[rank8]: step 1 loss 2.5\n"},
        refuse_logs=2,  # the first log reads find containers still starting: retried, not lost
    )
    cfg = _cluster_cfg(nodes=2)
    lines: list[str] = []
    with serve_app(fake.app()) as url, _fake_runner(url) as runner:
        handle = submit_and_follow(
            app_def("pretrain", cfg, ARGV), cfg, runner=runner, emit=lines.append, poll_s=0.01
        )
    (created,) = fake.created
    assert created["namespace"] == "kubeflow"
    assert handle == f"kubernetes://torchx/kubeflow:{created['body']['metadata']['name']}"
    # What was submitted is the patched dry run: sized /dev/shm on every pod.
    volumes = [t["template"]["spec"]["volumes"] for t in created["body"]["spec"]["tasks"]]
    assert all(
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "128Gi"}} in v
        for v in volumes
    )
    # Logs were read once pods ran, followed, for both nodes, retried while refused.
    assert {r["pod"].rsplit("-", 2)[-2] for r in fake.log_requests} == {"0", "1"}
    assert len(fake.log_requests) == 2 + 2
    assert all(r["follow"].lower() == "true" for r in fake.log_requests)
    assert sorted(lines) == sorted(
        [
            f"[node0] {TIMESTAMP} [rank0]: step 1 loss 2.5",
            f"[node0] {TIMESTAMP} [rank3]: ready",
            f"[node1] {TIMESTAMP} [rank8]: step 1 loss 2.5",
        ]
    )
    assert not fake.deleted


TORCHRUN_FAILURE = """[rank9]: loading shard 3
[rank8]: step 7 loss 2.1
[rank9]: RuntimeError: CUDA out of memory
Root Cause (first observed failure):
[0]:
  time      : 2026-01-01_00:00:00
  host      : worker-1
  rank      : 9 (local_rank: 1)
  exitcode  : 1 (pid: 42)
"""


def test_submit_and_follow_names_the_failing_rank_and_its_last_lines():
    fake = FakeVolcano(
        phases=["Running", "Failed"], logs={0: "[rank0]: step 7\n", 1: TORCHRUN_FAILURE}
    )
    cfg = _cluster_cfg(nodes=2)
    with serve_app(fake.app()) as url, _fake_runner(url) as runner:
        with pytest.raises(LaunchError) as err:
            submit_and_follow(
                app_def("pretrain", cfg, ARGV), cfg, runner=runner, emit=lambda _: None, poll_s=0.01
            )
    message = str(err.value)
    assert "ended FAILED" in message and "rank 9 failed first" in message
    assert "[rank9]: RuntimeError: CUDA out of memory" in message
    assert "[rank9]: loading shard 3" in message
    assert "[rank8]" not in message and "[rank0]" not in message


def test_submit_and_follow_cancels_a_job_past_its_timeout():
    fake = FakeVolcano(phases=["Pending"])
    cfg = _cluster_cfg(nodes=1, timeout_s=0.2)
    with serve_app(fake.app()) as url, _fake_runner(url) as runner:
        with pytest.raises(LaunchError, match=r"still PENDING after launch.timeout_s=0.2s"):
            submit_and_follow(
                app_def("sft", cfg, ARGV), cfg, runner=runner, emit=lambda _: None, poll_s=0.05
            )
    assert fake.deleted == [f"kubeflow:{fake.created[0]['body']['metadata']['name']}"]


@pytest.mark.timeout(120)
def test_local_cwd_runs_a_two_process_gloo_all_reduce(monkeypatch):
    monkeypatch.chdir(REPO)
    cfg = _local_cfg(nproc=2)
    app = app_def("test", cfg, ["--x", "1"], module="tests.torchrun_allreduce")
    lines: list[str] = []
    submit_and_follow(app, cfg, emit=lines.append, poll_s=0.1)
    # Ranks 1 and 2 contribute 1 + 2 = 3; each line carries its rank prefix.
    assert "[rank0]: rank 0/2 all_reduce sum=3 args=['--x', '1']" in lines
    assert "[rank1]: rank 1/2 all_reduce sum=3 args=['--x', '1']" in lines


@pytest.mark.timeout(120)
def test_local_cwd_failure_reports_the_failing_rank(monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("KEYE_TEST_FAIL_RANK", "1")
    cfg = _local_cfg(nproc=2)
    app = app_def("test", cfg, [], module="tests.torchrun_allreduce")
    with pytest.raises(LaunchError) as err:
        submit_and_follow(app, cfg, emit=lambda _: None, poll_s=0.1)
    message = str(err.value)
    assert "ended FAILED" in message and "rank 1 failed first" in message
    assert "[rank1]: rank 1 failing on purpose" in message
    assert "[rank0]:" not in message
