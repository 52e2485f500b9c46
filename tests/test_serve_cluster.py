"""The Kubernetes-client side of the deploy step against a fake API server on 127.0.0.1.

No kube-apiserver can run on this machine, so a small http.server answers the few REST calls
the deploy step makes (/version, leader pods, a Secret, the LWS CRD) in the API's JSON format.
What is under test is our use of the official kubernetes client: credentials loading, readiness
polling, Secret decoding, and validating against a CRD as the cluster returns it.
"""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

from keye_model.serve import cluster, helm
from keye_model.serve.validate import (
    K8S_SCHEMAS,
    LWS_CRD_NAME,
    load_documents,
    validate_manifests,
)

REPO = Path(__file__).resolve().parents[1]
LWS_CRD = K8S_SCHEMAS / LWS_CRD_NAME
CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/leaderworkersets.leaderworkerset.x-k8s.io"


def _pod(name: str, ready: bool) -> dict:
    return {
        "metadata": {"name": name, "namespace": "serving"},
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


class FakeApiServer:
    """Answers GETs from a path -> JSON map; pods turn Ready after ``ready_after`` listings."""

    def __init__(self, ready_after: int = 2, with_crd: bool = True):
        self.calls: list[str] = []
        self.pod_listings = 0
        crd = load_documents(LWS_CRD.read_text())[0] if with_crd else None
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                url = urlparse(self.path)._replace(path=urlparse(self.path).path.rstrip("/"))
                outer.calls.append(self.path)
                if url.path == "/version":
                    body = {
                        "major": "1",
                        "minor": "30",
                        "gitVersion": "v1.30.4",
                        "gitCommit": "0" * 40,
                        "gitTreeState": "clean",
                        "buildDate": "2024-08-14T19:00:00Z",
                        "goVersion": "go1.22.5",
                        "compiler": "gc",
                        "platform": "linux/amd64",
                    }
                elif url.path == "/api/v1/namespaces/serving/pods":
                    outer.selector = parse_qs(url.query)["labelSelector"][0]
                    outer.pod_listings += 1
                    ready = outer.pod_listings > ready_after
                    items = [_pod("keye-serve-0", ready), _pod("keye-serve-1", ready)]
                    body = {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}
                elif url.path == "/api/v1/namespaces/serving/secrets/keye-api-key":
                    data = {"api-key": base64.b64encode(b"s3cret").decode()}
                    body = {
                        "kind": "Secret",
                        "apiVersion": "v1",
                        "metadata": {"name": "keye-api-key"},
                        "data": data,
                    }
                elif url.path == CRD_PATH and crd is not None:
                    body = crd
                else:
                    body = {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "status": "Failure",
                        "code": 404,
                        "reason": "NotFound",
                    }
                    return self._send(404, body)
                self._send(200, body)

            def _send(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def api(tmp_path, monkeypatch, request):
    server = FakeApiServer(**getattr(request, "param", {}))
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": server.url}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [
            {"name": "fake", "context": {"cluster": "fake", "user": "u", "namespace": "serving"}}
        ],
        "current-context": "fake",
    }
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump(kubeconfig))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    yield server
    server.close()


def test_probe_wait_and_secret(api):
    probe = cluster.probe_cluster(timeout_s=5)
    assert probe.reachable and probe.version == "v1.30.4" and probe.server == api.url
    waited = cluster.wait_leaders_ready(
        "serving", "keye-serve", replicas=2, timeout_s=30, poll_s=0.05
    )
    assert api.pod_listings == 3 and waited >= 0.1
    assert (
        api.selector
        == "leaderworkerset.sigs.k8s.io/name=keye-serve,leaderworkerset.sigs.k8s.io/worker-index=0"
    )
    assert cluster.read_secret_value("serving", "keye-api-key", "api-key") == "s3cret"
    with pytest.raises(ValueError, match="has no key 'token'"):
        cluster.read_secret_value("serving", "keye-api-key", "token")


@pytest.mark.parametrize("api", [{"ready_after": 10**6}], indirect=True)
def test_wait_times_out_with_pod_states(api):
    cluster.probe_cluster(timeout_s=5)
    with pytest.raises(TimeoutError, match="0/1 leaders of keye-serve Ready"):
        cluster.wait_leaders_ready("serving", "keye-serve", replicas=1, timeout_s=0.2, poll_s=0.05)


def test_validate_against_the_crd_the_cluster_serves(api):
    """The CRD after the client's model round trip still validates the chart and rejects typos."""
    cluster.probe_cluster(timeout_s=5)
    crd = cluster.installed_crd()
    assert crd["spec"]["group"] == "leaderworkerset.x-k8s.io"
    docs = load_documents(helm.template(helm.chart_dir(), "keye-serve", "serving"))
    assert validate_manifests(docs, "1.30", crd) == []
    lws = next(d for d in docs if d["kind"] == "LeaderWorkerSet")
    lws["spec"]["leaderWorkerTemplate"]["sise"] = 2
    errors = validate_manifests([lws], "1.30", crd)
    assert len(errors) == 1 and "sise" in errors[0]


@pytest.mark.parametrize("api", [{"with_crd": False}], indirect=True)
def test_missing_crd_is_none(api):
    cluster.probe_cluster(timeout_s=5)
    assert cluster.installed_crd() is None
