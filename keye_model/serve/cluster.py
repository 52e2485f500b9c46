"""The Kubernetes side of the deploy step, through the official ``kubernetes`` client.

Nothing here runs in the local tests beyond ``probe_cluster`` (no API server can run on this
machine); the rest is the real code path used when a cluster answers.
"""

from __future__ import annotations

import base64
import os
import time
from dataclasses import dataclass

from keye_model.log import get_logger

log = get_logger("deploy")


@dataclass
class ClusterProbe:
    """Whether a Kubernetes API server answered, and why not if it did not."""

    reachable: bool
    reason: str
    server: str = ""
    version: str = ""


def probe_cluster(timeout_s: float = 5.0) -> ClusterProbe:
    """Load in-cluster or kubeconfig credentials and ask the API server for its version."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    # Start from a blank default so an earlier probe's credentials cannot leak into this one.
    client.Configuration.set_default(client.Configuration())
    try:
        config.load_incluster_config()
    except ConfigException:
        try:
            # Read $KUBECONFIG now: the client captures it once at import time.
            config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None)
        except (ConfigException, OSError, TypeError, ValueError) as err:
            return ClusterProbe(
                False, f"no Kubernetes credentials ({str(err).splitlines()[0][:200]})"
            )
    cfg = client.Configuration.get_default_copy()
    # One quick attempt: the default urllib3 retries turn a dead endpoint into a long wait.
    cfg.retries = 0
    api = client.ApiClient(cfg)
    try:
        info = client.VersionApi(api).get_code(_request_timeout=timeout_s)
    except client.ApiException as err:
        return ClusterProbe(False, f"API server {cfg.host} answered HTTP {err.status}", cfg.host)
    except Exception as err:  # urllib3/socket errors differ by platform; all mean "not reachable"
        cause = getattr(err, "reason", None) or err
        return ClusterProbe(
            False, f"API server {cfg.host} not reachable ({str(cause)[-160:]})", cfg.host
        )
    finally:
        api.close()
    return ClusterProbe(True, "ok", cfg.host, info.git_version)


def _ready(pod) -> bool:
    return pod.status.phase == "Running" and any(
        c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or [])
    )


def wait_leaders_ready(
    namespace: str, lws_name: str, replicas: int, timeout_s: float, poll_s: float = 15.0
) -> float:
    """Block until every group's leader pod is Ready; returns the seconds waited."""
    from kubernetes import client

    core = client.CoreV1Api()
    selector = (
        f"leaderworkerset.sigs.k8s.io/name={lws_name},leaderworkerset.sigs.k8s.io/worker-index=0"
    )
    start = time.monotonic()
    while True:
        pods = core.list_namespaced_pod(namespace, label_selector=selector).items
        ready = sum(_ready(p) for p in pods)
        if ready >= replicas:
            return time.monotonic() - start
        waited = time.monotonic() - start
        if waited > timeout_s:
            states = (
                ", ".join(f"{p.metadata.name}={p.status.phase}" for p in pods) or "no leader pods"
            )
            raise TimeoutError(
                f"{ready}/{replicas} leaders of {lws_name} Ready after {waited:.0f} s ({states})"
            )
        log.info(
            "waiting for leaders of %s: %d/%d Ready (%.0f s)", lws_name, ready, replicas, waited
        )
        time.sleep(poll_s)


def read_secret_value(namespace: str, name: str, key: str) -> str:
    """The decoded value of one key of a Secret (the API key the smoke test must send)."""
    from kubernetes import client

    secret = client.CoreV1Api().read_namespaced_secret(name, namespace)
    if key not in (secret.data or {}):
        raise ValueError(f"serve.api_key_secret: Secret {namespace}/{name} has no key {key!r}")
    return base64.b64decode(secret.data[key]).decode()


def installed_crd(name: str = "leaderworkersets.leaderworkerset.x-k8s.io") -> dict | None:
    """The CRD object installed in the cluster (None if absent), to validate against what it serves."""
    from kubernetes import client

    try:
        crd = client.ApiextensionsV1Api().read_custom_resource_definition(name)
    except client.ApiException as err:
        if err.status == 404:
            return None
        raise
    return client.ApiClient().sanitize_for_serialization(crd)
