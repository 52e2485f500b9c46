"""Curation on a Kubernetes cluster: a KubeRay ``RayJob`` that runs ``keye stage curate`` on Ray.

KubeRay (``ray.io/v1``) creates a Ray cluster (one head, ``rayjob.workers`` worker pods), runs
the entrypoint on it through a submitter Job and tears the cluster down when the job ends. No
Ray SDK is involved: ``rayjob_object`` builds the object, ``validate_rayjob`` checks it offline
against the RayJob CRD shipped in ``keye_model/k8s/`` (KubeRay v1.7.0), and ``submit_and_follow``
creates it with the kubernetes client, follows ``status.jobDeploymentStatus`` /
``status.jobStatus`` and streams the submitter pod's log (the Ray job's driver output).

The entrypoint is the same stage command with ``curate.ray_address=auto`` (join the RayJob's
cluster), so it writes ``<output>/stage_result.json`` like any other run; the KFP component
reads that back and publishes it (``run_step_on_cluster``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from keye_model.data.config import RayJobConfig
from keye_model.log import get_logger

log = get_logger("curate")
GROUP, VERSION, PLURAL = "ray.io", "v1", "rayjobs"
RAYJOB_CRD = Path(__file__).resolve().parents[1] / "k8s" / "ray.io_rayjobs.yaml"
# KubeRay derives the cluster and submitter names from the RayJob's and refuses longer ones.
MAX_NAME = 47
TERMINAL = ("Complete", "Failed")
TAIL_LINES = 40


class RayJobError(RuntimeError):
    """The RayJob did not succeed (or could not be created, or ran past its deadline)."""


def job_name(run_id: str) -> str:
    """A DNS-safe RayJob name for one pipeline run, unique per run id, at most 47 characters."""
    slug = re.sub(r"[^a-z0-9-]+", "-", run_id.lower()).strip("-")[:24].strip("-") or "adhoc"
    digest = hashlib.sha1(run_id.encode()).hexdigest()[:8]
    return f"keye-curate-{slug}-{digest}"


def pod_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """S3/MLflow settings the Ray pods need, without credentials (those come from Secrets)."""
    from keye_model.train.launch import PASSTHROUGH_ENV, SECRET_ENV

    environ = os.environ if environ is None else environ
    env = {name: environ[name] for name in PASSTHROUGH_ENV if environ.get(name)}
    env.update(
        {
            name: value
            for name, value in environ.items()
            if name.startswith("AWS_") and value and not SECRET_ENV.match(name)
        }
    )
    return dict(sorted(env.items()))


def entrypoint(recipe_json: str, inputs: list[str], output: str) -> str:
    """The shell command the RayJob runs: this stage on the job's own Ray cluster."""
    argv = ["keye", "stage", "curate", "--recipe-json", recipe_json, "--output", output]
    for uri in inputs:
        argv += ["--input", uri]
    argv += ["--set", "curate.ray_address=auto", "--set", "curate.rayjob.enabled=false"]
    return shlex.join(argv)


def _image(cfg: RayJobConfig) -> str:
    from components.images import TOOLS_IMAGE

    return cfg.image or TOOLS_IMAGE


def _pod(cfg: RayJobConfig, role: str, cpu: str, memory: str, env: dict[str, str]) -> dict:
    container: dict[str, Any] = {
        "name": f"ray-{role}",
        "image": _image(cfg),
        "env": [{"name": name, "value": value} for name, value in env.items()],
        "resources": {
            "requests": {"cpu": cpu, "memory": memory},
            "limits": {"cpu": cpu, "memory": memory},
        },
    }
    if cfg.env_secrets:
        container["envFrom"] = [
            {"secretRef": {"name": name, "optional": True}} for name in cfg.env_secrets
        ]
    spec: dict[str, Any] = {"containers": [container]}
    if cfg.service_account:
        spec["serviceAccountName"] = cfg.service_account
    return {"metadata": {"labels": {"app.kubernetes.io/part-of": "keye"}}, "spec": spec}


def rayjob_object(
    cfg: RayJobConfig, name: str, command: str, env: Mapping[str, str] | None = None
) -> dict:
    """The RayJob: a head (driver only, no Ray tasks) and ``cfg.workers`` identical workers."""
    env = pod_env() if env is None else dict(env)
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "RayJob",
        "metadata": {
            "name": name,
            "namespace": cfg.namespace,
            "labels": {"app.kubernetes.io/part-of": "keye", "keye/stage": "curate"},
        },
        "spec": {
            "entrypoint": command,
            "submissionMode": "K8sJobMode",
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": 3600,  # logs stay readable for an hour after the end
            "activeDeadlineSeconds": int(cfg.timeout_s),
            "backoffLimit": 0,  # a failed run resumes from its done markers when rerun
            "rayClusterSpec": {
                "rayVersion": cfg.ray_version,
                "headGroupSpec": {
                    # The head holds the GCS and the driver (connected components of the edges):
                    # no Ray tasks land there.
                    "rayStartParams": {"num-cpus": "0"},
                    "template": _pod(cfg, "head", cfg.head_cpu, cfg.head_memory, env),
                },
                "workerGroupSpecs": [
                    {
                        "groupName": "curate",
                        "replicas": cfg.workers,
                        "minReplicas": cfg.workers,
                        "maxReplicas": cfg.workers,
                        "rayStartParams": {},
                        "template": _pod(cfg, "worker", cfg.worker_cpu, cfg.worker_memory, env),
                    }
                ],
            },
        },
    }


def validate_rayjob(obj: dict, crd: str | Path = RAYJOB_CRD) -> list[str]:
    """Errors of a RayJob against the CRD's strict openAPIV3Schema (empty list = valid)."""
    from keye_model.serve.validate import crd_schemas_from_file, name_errors, schema_errors

    where = f"RayJob/{(obj.get('metadata') or {}).get('name', '?')}"
    errors = name_errors(obj, where)
    name = (obj.get("metadata") or {}).get("name", "")
    if len(name) > MAX_NAME:
        errors.append(f"{where}: metadata.name is longer than KubeRay's {MAX_NAME} characters")
    schemas = crd_schemas_from_file(str(crd))
    api = obj.get("apiVersion", "?")
    if api not in schemas:
        return errors + [f"{where}: apiVersion {api} is not served by the CRD ({sorted(schemas)})"]
    return errors + schema_errors(schemas[api], obj, where)


def _log_lines(core, namespace: str, name: str) -> list[str]:
    """The submitter pod's log so far (the Ray job's driver output); none while it starts."""
    from kubernetes.client import ApiException

    try:
        pods = core.list_namespaced_pod(namespace, label_selector=f"job-name={name}").items
        if not pods:
            return []
        pod = sorted(pods, key=lambda p: p.metadata.name)[-1]
        return core.read_namespaced_pod_log(pod.metadata.name, namespace).splitlines()
    except ApiException as err:
        if err.status in (400, 404):  # container still creating, or pod gone: try again later
            return []
        raise


def submit_and_follow(
    obj: dict,
    *,
    api_client=None,
    poll_s: float = 10.0,
    timeout_s: float | None = None,
    emit: Callable[[str], None] | None = None,
) -> dict:
    """Create the RayJob, stream its log, wait for the end; return its final ``status``.

    Raises ``RayJobError`` with the state, KubeRay's message and the log's last lines unless the
    job SUCCEEDED; past ``timeout_s`` (default: the object's activeDeadlineSeconds) the RayJob is
    deleted first.
    """
    from kubernetes import client

    emit = emit or (lambda line: print(line, flush=True))
    custom, core = client.CustomObjectsApi(api_client), client.CoreV1Api(api_client)
    namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
    timeout_s = timeout_s or obj["spec"].get("activeDeadlineSeconds") or 7 * 24 * 3600
    try:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, obj)
    except client.ApiException as err:
        raise RayJobError(
            f"creating RayJob {namespace}/{name}: HTTP {err.status} {err.reason}"
        ) from err
    log.info("submitted RayJob %s/%s", namespace, name)
    deadline = time.monotonic() + timeout_s
    lines: list[str] = []
    last = None
    while True:
        job = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        status = job.get("status") or {}
        state = (status.get("jobDeploymentStatus") or "New", status.get("jobStatus") or "-")
        if state != last:
            log.info("RayJob %s: deployment %s, job %s", name, *state)
            last = state
        lines = _emit_new(_log_lines(core, namespace, name), lines, emit)
        if state[0] in TERMINAL:
            break
        if time.monotonic() > deadline:
            custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            raise RayJobError(
                f"RayJob {name} still {state[0]}/{state[1]} after {timeout_s:g}s; deleted. "
                "Last lines:\n" + "\n".join(lines[-TAIL_LINES:])
            )
        time.sleep(poll_s)
    if state != ("Complete", "SUCCEEDED"):
        detail = status.get("message") or status.get("reason") or ""
        raise RayJobError(
            f"RayJob {name} ended {state[0]}/{state[1]}{': ' + detail if detail else ''}. "
            "Last lines:\n" + "\n".join(lines[-TAIL_LINES:])
        )
    return status


def _emit_new(current: list[str], seen: list[str], emit: Callable[[str], None]) -> list[str]:
    """Emit the lines of ``current`` past what was seen; keep the longer view."""
    if len(current) <= len(seen):
        return seen
    for line in current[len(seen) :]:
        emit(line)
    return current


def run_curate_step(
    recipe_json: str, storage_root: str, run_id: str, parent_run_id: str, artifact, inputs: list
):
    """The curate component's body: a KubeRay RayJob when ``curate.rayjob.enabled``, else this pod."""
    from keye_model.recipe import Recipe
    from keye_model.stages import run_step

    args = (recipe_json, storage_root, run_id, parent_run_id, artifact)
    if Recipe.from_json(recipe_json).curate.rayjob.enabled:
        return run_step_on_cluster(*args, inputs)
    return run_step("curate", *args, inputs=inputs)


def run_step_on_cluster(
    recipe_json: str,
    storage_root: str,
    run_id: str,
    parent_run_id: str,
    artifact=None,
    inputs: list[str] | None = None,
    *,
    api_client=None,
):
    """The curate component's body when ``curate.rayjob.enabled``: a RayJob runs the stage.

    Validates the RayJob before anything is created; afterwards reads the stage result the job
    wrote beside its payload and publishes it like ``keye_model.stages.run_step`` would.
    """
    from keye_model.recipe import Recipe
    from keye_model.stage import MANIFEST, StageResult, enter_pipeline_step, publish, stage_output

    enter_pipeline_step(parent_run_id, run_id)  # the pods nest their MLflow run under the parent
    recipe = Recipe.from_json(recipe_json)
    cfg = recipe.curate
    cfg.validate()
    output = stage_output(storage_root, run_id, "curate")
    obj = rayjob_object(
        cfg.rayjob, job_name(run_id), entrypoint(recipe_json, list(inputs or []), output)
    )
    errors = validate_rayjob(obj)
    if errors:
        raise ValueError("curate.rayjob: the RayJob does not validate:\n" + "\n".join(errors))
    if api_client is None:
        from kubernetes import client

        from keye_model.serve.cluster import probe_cluster

        probe = probe_cluster()
        if not probe.reachable:
            raise RayJobError(f"cannot submit the RayJob: {probe.reason}")
        api_client = client.ApiClient()
    submit_and_follow(obj, api_client=api_client, poll_s=cfg.rayjob.poll_s)
    from keye_model import storage

    result = StageResult.read(storage.join(output, MANIFEST))
    if artifact is not None:
        publish(result, artifact)
    log.info("curate on Ray: %s", json.dumps(result.metrics, sort_keys=True)[:300])
    return result
