"""Curation on a cluster: the KubeRay RayJob object, its validation, submission and following.

The manifest checks are real: the object is validated against the RayJob CRD shipped in
``keye_model/k8s/`` (KubeRay v1.7.0). No Kubernetes API server can run here (REFERENCE §6), so
submission and following talk HTTP, through the real ``kubernetes`` client, to a stand-in for the
few endpoints involved (``FakeKubeRay`` below): it stores the created RayJob, answers its status
from a scripted sequence, lists the submitter pod and serves its log.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from servers import serve_app

from components.images import TOOLS_IMAGE
from keye_model.data.rayjob import (
    RayJobError,
    entrypoint,
    job_name,
    rayjob_object,
    run_step_on_cluster,
    submit_and_follow,
    validate_rayjob,
)
from keye_model.recipe import Recipe, load_recipe
from keye_model.stage import StageResult, stage_output

RAYJOBS = "/apis/ray.io/v1/namespaces/{namespace}/rayjobs"


@dataclass
class FakeKubeRay:
    """Scripted RayJob states, one per status read (the last repeats), and a growing pod log."""

    states: list[tuple[str, str]]
    log: list[str] = field(default_factory=list)
    lines_per_read: int = 2
    message: str = ""
    on_complete: object = None  # called once when a read first reports Complete
    created: list[dict] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    reads: int = 0
    log_reads: int = 0

    def state(self) -> tuple[str, str]:
        return self.states[min(self.reads, len(self.states) - 1)]

    def app(self) -> FastAPI:
        api = FastAPI()

        @api.post(RAYJOBS)
        async def create(namespace: str, request: Request):
            self.created.append(await request.json())
            return JSONResponse(self.created[-1], status_code=201)

        @api.get(RAYJOBS + "/{name}")
        def get(namespace: str, name: str):
            deployment, job = self.state()
            self.reads += 1
            if deployment == "Complete" and self.on_complete:
                self.on_complete()
                self.on_complete = None
            status = {"jobDeploymentStatus": deployment, "jobStatus": job}
            if self.message:
                status["message"] = self.message
            return {**self.created[-1], "status": status}

        @api.delete(RAYJOBS + "/{name}")
        def delete(namespace: str, name: str):
            self.deleted.append(name)
            return {"kind": "Status", "status": "Success"}

        @api.get("/api/v1/namespaces/{namespace}/pods")
        def pods(namespace: str, labelSelector: str = ""):  # noqa: N803 - the API's own name
            name = labelSelector.removeprefix("job-name=")
            started = self.state()[0] not in ("New", "Initializing")
            items = [{"metadata": {"name": f"{name}-x7k2p", "namespace": namespace}}]
            return {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items * started}

        @api.get("/api/v1/namespaces/{namespace}/pods/{pod}/log")
        def pod_log(namespace: str, pod: str):
            self.log_reads += 1
            shown = self.log[: self.log_reads * self.lines_per_read]
            return PlainTextResponse("".join(line + "\n" for line in shown))

        return api


@pytest.fixture
def kube():
    """A kubernetes ApiClient pointed at a fresh ``FakeKubeRay`` (set its fields, then use)."""
    from kubernetes import client

    fake = FakeKubeRay(states=[("Initializing", "")])
    with serve_app(fake.app()) as url:
        configuration = client.Configuration()
        configuration.host = url
        api = client.ApiClient(configuration)
        yield fake, api
        api.close()


def ray_recipe(**rayjob) -> Recipe:
    recipe = load_recipe("tiny").override(
        {"curate": {"engine": "ray", "rayjob": {"enabled": True}}}
    )
    return recipe.override({"curate": {"rayjob": rayjob}}) if rayjob else recipe


def test_rayjob_manifest_validates_against_the_crd(monkeypatch):
    from keye_model.cli import build_parser, recipe_from_args

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.kubeflow:5000")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio.kubeflow:9000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "never-in-the-object")
    recipe = ray_recipe(workers=3, worker_cpu="15", worker_memory="60Gi", service_account="curator")
    command = entrypoint(recipe.to_json(), ["s3://raw/a/", "s3://raw/b.parquet"], "s3://cur/v1")
    obj = rayjob_object(recipe.curate.rayjob, job_name("run-2026-11-29/abc"), command)
    assert validate_rayjob(obj) == []

    spec = obj["spec"]["rayClusterSpec"]
    (workers,) = spec["workerGroupSpecs"]
    assert workers["replicas"] == workers["minReplicas"] == workers["maxReplicas"] == 3
    head = spec["headGroupSpec"]["template"]["spec"]
    worker = workers["template"]["spec"]
    assert worker["containers"][0]["resources"]["limits"] == {"cpu": "15", "memory": "60Gi"}
    assert worker["serviceAccountName"] == head["serviceAccountName"] == "curator"
    for pod in (head, worker):
        (container,) = pod["containers"]
        assert container["image"] == TOOLS_IMAGE
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow.kubeflow:5000"
        assert env["AWS_ENDPOINT_URL"] == "http://minio.kubeflow:9000"
        assert "AWS_SECRET_ACCESS_KEY" not in env  # credentials come from the Secrets
        assert [s["secretRef"]["name"] for s in container["envFrom"]] == ["keye-s3", "keye-mlflow"]
    assert len(obj["metadata"]["name"]) <= 47

    # The entrypoint is the stage's own command line; it joins the job's Ray and does not recurse.
    argv = shlex.split(obj["spec"]["entrypoint"])
    assert argv[:3] == ["keye", "stage", "curate"]
    args = build_parser().parse_args(argv[1:])
    inside = recipe_from_args(args).curate
    assert (inside.engine, inside.ray_address, inside.rayjob.enabled) == ("ray", "auto", False)
    assert args.inputs == ["s3://raw/a/", "s3://raw/b.parquet"] and args.output == "s3://cur/v1"
    assert dataclasses.replace(inside, ray_address="", rayjob=recipe.curate.rayjob) == recipe.curate


def test_bad_resource_value_is_rejected_naming_the_field(tmp_path, kube):
    fake, api = kube
    recipe = ray_recipe(worker_memory="32 GB")
    obj = rayjob_object(recipe.curate.rayjob, "keye-curate-x", "keye stage curate")
    errors = validate_rayjob(obj)
    assert errors and all("'32 GB' does not match" in e for e in errors)
    assert any(
        "spec.rayClusterSpec.workerGroupSpecs.0.template.spec.containers.0.resources.limits.memory"
        in e
        for e in errors
    )
    too_long = rayjob_object(ray_recipe().curate.rayjob, "k" * 48, "keye stage curate")
    assert any("longer than KubeRay's 47" in e for e in validate_rayjob(too_long))
    # The component refuses before it creates anything on the cluster.
    with pytest.raises(ValueError, match="resources.limits.memory"):
        run_step_on_cluster(recipe.to_json(), str(tmp_path), "run1", "", api_client=api)
    assert fake.created == []


def test_component_runs_the_stage_as_a_rayjob_and_publishes_its_result(
    tmp_path, kube, monkeypatch, capsys
):
    fake, api = kube
    monkeypatch.setenv("KEYE_PARENT_RUN_ID", "before")
    recipe = ray_recipe(poll_s=0.01)
    output = stage_output(str(tmp_path), "run7", "curate")
    expected = StageResult(
        stage="curate", outputs={"data": output}, metrics={"kept_samples": 290.0}, message="kept"
    )
    fake.states = [("Initializing", ""), ("Running", "PENDING")] + [("Running", "RUNNING")] * 3
    fake.states += [("Complete", "SUCCEEDED")]
    fake.log = [f"driver line {i}" for i in range(7)]
    # Stand-in for the entrypoint: the stage run on the cluster leaves its result beside the data.
    fake.on_complete = lambda: expected.write(f"{output}/stage_result.json")
    artifact = SimpleNamespace(path=str(tmp_path / "artifact" / "data"), metadata={})
    result = run_step_on_cluster(
        recipe.to_json(),
        str(tmp_path),
        "run7",
        "parent9",
        artifact,
        ["s3://raw/x/"],
        api_client=api,
    )
    assert result == expected
    assert json.loads((tmp_path / "artifact" / "data").read_text())["metrics"] == expected.metrics
    assert artifact.metadata["kept_samples"] == 290.0
    (created,) = fake.created
    assert validate_rayjob(created) == []
    assert created["metadata"]["name"] == job_name("run7")
    env = created["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {"name": "KEYE_PARENT_RUN_ID", "value": "parent9"} in env["env"]
    assert f"--output {output}" in created["spec"]["entrypoint"]
    assert capsys.readouterr().out.splitlines() == fake.log  # every log line once, in order
    assert fake.deleted == []


def test_a_failed_rayjob_raises_with_its_message_and_last_lines(kube):
    fake, api = kube
    fake.states = [("Running", "RUNNING"), ("Failed", "FAILED")]
    fake.message = "Job entrypoint command failed with exit code 1"
    fake.log = ["scan: 7 units", "Traceback (most recent call last):", "ValueError: bad shard"]
    fake.lines_per_read = 10
    obj = rayjob_object(ray_recipe().curate.rayjob, "keye-curate-f", "keye stage curate")
    with pytest.raises(RayJobError, match=r"Failed/FAILED: Job entrypoint.*\n(.*\n)*.*bad shard"):
        submit_and_follow(obj, api_client=api, poll_s=0.01, emit=lambda line: None)


def test_a_rayjob_past_its_deadline_is_deleted(kube):
    fake, api = kube
    fake.states = [("Running", "RUNNING")]
    obj = rayjob_object(ray_recipe().curate.rayjob, "keye-curate-slow", "keye stage curate")
    with pytest.raises(RayJobError, match="still Running/RUNNING after 0.2s; deleted"):
        submit_and_follow(obj, api_client=api, poll_s=0.05, timeout_s=0.2, emit=lambda line: None)
    assert fake.deleted == ["keye-curate-slow"]
