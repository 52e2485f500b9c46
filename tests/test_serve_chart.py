"""The keye-serve chart, rendered by the real helm binary and validated offline.

Every rendered object must pass kubernetes-validate --strict (built-in kinds) or the CRD /
shape schemas (LeaderWorkerSet, ServiceMonitor); the default launch command must equal the
published two-node command modulo the LWS variables; bad values must fail naming the field.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path

import pytest

from keye_model.serve import helm
from keye_model.serve.validate import (
    K8S_SCHEMAS,
    LWS_CRD_NAME,
    crd_schemas,
    load_documents,
    strict_schema,
    validate_manifests,
    validate_object,
)
from tests.conftest import TEST_DATA

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "helm" / "keye-serve"
# The model card text with the two-node SGLang commands (tests/fixtures/README.md names its source).
SEED = TEST_DATA / "keye_model_card_serving.txt"
LWS_CRD = K8S_SCHEMAS / LWS_CRD_NAME
VALUES_FILES = sorted(CHART.glob("values-*.yaml")) + sorted((CHART / "ci").glob("*.yaml"))
K8S = "1.30"


def render(*args: str, values_files: tuple[Path, ...] = ()) -> list[dict]:
    """Render the chart with ``--set`` expressions ``args`` and return its objects."""
    return load_documents(
        helm.template(CHART, "keye-serve", "serving", list(values_files), list(args))
    )


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def pod_specs(docs: list[dict]) -> tuple[dict, dict]:
    """(leader pod spec, worker pod spec) of the single LeaderWorkerSet."""
    (lws,) = by_kind(docs, "LeaderWorkerSet")
    tpl = lws["spec"]["leaderWorkerTemplate"]
    return tpl["leaderTemplate"]["spec"], tpl["workerTemplate"]["spec"]


def test_shared_inputs_present():
    """The model card text and the LWS CRD ship inside the repository."""
    assert SEED.is_file(), f"missing {SEED}"
    assert LWS_CRD.is_file(), f"missing {LWS_CRD}"
    assert len(VALUES_FILES) >= 3


def test_helm_lint_default_and_every_values_file():
    helm.lint(CHART)
    for path in VALUES_FILES:
        helm.lint(CHART, [path])


@pytest.mark.parametrize(
    "values_file", [None, *VALUES_FILES], ids=lambda p: p.name if p else "default"
)
def test_every_rendered_object_validates(values_file):
    files = (values_file,) if values_file else ()
    docs = render(values_files=files)
    assert validate_manifests(docs, K8S, LWS_CRD) == []
    kinds = {d["kind"] for d in docs}
    assert {"LeaderWorkerSet", "Service", "Pod"} <= kinds


def test_default_lws_layout():
    docs = render()
    (lws,) = by_kind(docs, "LeaderWorkerSet")
    assert lws["apiVersion"] == "leaderworkerset.x-k8s.io/v1"
    spec = lws["spec"]
    assert spec["replicas"] == 1
    assert spec["startupPolicy"] == "LeaderCreated"
    assert spec["leaderWorkerTemplate"]["size"] == 2
    assert spec["leaderWorkerTemplate"]["restartPolicy"] == "RecreateGroupOnPodRestart"
    leader, worker = pod_specs(docs)
    for pod in (leader, worker):
        (c,) = pod["containers"]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == 8
        assert c["securityContext"]["privileged"] is False
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
        assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "64Gi"}
        assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
        # Launch waits for the leader's DNS name, then execs the args.
        assert 'getent hosts "$0"' in c["command"][2] and 'exec "$@"' in c["command"][2]
        assert c["args"][:3] == ["python3", "-m", "sglang.launch_server"]
        anti = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
            0
        ]
        assert anti["topologyKey"] == "kubernetes.io/hostname"
        assert anti["matchLabelKeys"] == ["leaderworkerset.sigs.k8s.io/group-key"]
    # Probes only on the leader, and the startup probe allows a long 671B load.
    lc, wc = leader["containers"][0], worker["containers"][0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert probe in lc and probe not in wc
    startup = lc["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 3600
    assert lc["readinessProbe"]["httpGet"]["path"] == "/health_generate"
    (svc,) = by_kind(docs, "Service")
    assert svc["spec"]["ports"][0]["port"] == 30000
    assert svc["spec"]["selector"]["app.kubernetes.io/component"] == "leader"
    assert not by_kind(docs, "ServiceMonitor") and not by_kind(docs, "NetworkPolicy")


def _seed_commands() -> tuple[dict[str, str], list[list[str]]]:
    """Shell variables and the two launch_server argv lists of the seed (node 1, node 2)."""
    text = SEED.read_text()
    variables = dict(re.findall(r"^(MODEL_PATH|DIST_INIT_ADDR|PORT)=(\S+)", text, flags=re.M))
    variables = {k: shlex.split(v)[0] for k, v in variables.items()}
    commands = []
    for block in re.findall(r"python3 -m sglang\.launch_server \\\n(.*?\}')", text, flags=re.S):
        argv = shlex.split(block.replace("\\\n", " "))
        commands.append([variables.get(a[1:], a) if a.startswith("$") else a for a in argv])
    return variables, commands


def _pairs(argv: list[str]) -> list[tuple[str, object]]:
    """Flag/value pairs in order; boolean flags get None, JSON values are parsed."""
    out, i = [], 0
    while i < len(argv):
        flag = argv[i]
        assert flag.startswith("--"), f"expected a flag at {argv[i:]}"
        if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            value: object = argv[i + 1]
            if isinstance(value, str) and value.startswith("{"):
                value = json.loads(value)
            out.append((flag, value))
            i += 2
        else:
            out.append((flag, None))
            i += 1
    return out


def test_default_command_equals_seed_modulo_lws_variables():
    variables, (seed_leader, seed_worker) = _seed_commands()
    assert variables["PORT"] == "30000" and variables["DIST_INIT_ADDR"].endswith(":29500")
    leader, worker = pod_specs(render())
    master_ip = variables["DIST_INIT_ADDR"].split(":")[0]
    for pod, seed, rank in ((leader, seed_leader, "0"), (worker, seed_worker, "1")):
        args = pod["containers"][0]["args"]
        assert args[:3] == ["python3", "-m", "sglang.launch_server"]
        # What LWS injects for this pod of a 2-pod group whose leader is MASTER_NODE_IP.
        lws_env = {"LWS_LEADER_ADDRESS": master_ip, "LWS_GROUP_SIZE": "2", "LWS_WORKER_INDEX": rank}
        expanded = [
            re.sub(r"\$\((LWS_[A-Z_]+)\)", lambda m, env=lws_env: env[m.group(1)], a)
            for a in args[3:]
        ]
        rendered = _pairs(expanded)
        model_path = dict(rendered)["--model-path"]
        assert model_path == "/models/Keye-VL-671B-A37B"
        rendered = [(f, variables["MODEL_PATH"] if f == "--model-path" else v) for f, v in rendered]
        assert rendered == _pairs(seed)


@pytest.mark.parametrize(
    ("version", "flag"),
    [
        ("0.5.2", "--cuda-graph-max-bs"),
        ("0.5.19", "--cuda-graph-max-bs"),
        ("0.5.20", "--cuda-graph-max-bs-decode"),
        ("0.6.1", "--cuda-graph-max-bs-decode"),
    ],
)
def test_cuda_graph_flag_follows_sglang_version(version, flag):
    leader, _ = pod_specs(render(f"sglang.version={version}"))
    args = leader["containers"][0]["args"]
    assert args[args.index(flag) + 1] == "64"
    other = {"--cuda-graph-max-bs", "--cuda-graph-max-bs-decode"} - {flag}
    assert not other & set(args)


@pytest.mark.parametrize(
    ("sets", "needle"),
    [
        (["nodes=-1"], "nodes"),
        (["gpusPerNode=0"], "gpusPerNode"),
        (["replicas=-2"], "replicas"),
        (["shm.size=-1Gi"], "shm.size"),
        (["model.s3.cacheSizeLimit=-5Gi"], "model.s3.cacheSizeLimit"),
        (["resources.requests.memory=-4Gi"], "resources.requests"),
        (["model.source=nfs"], "model.source"),
        (["sglang.port=70000"], "sglang.port"),
        (["sglang.memFractionStatic=1.5"], "sglang.memFractionStatic"),
        (["sglang.tpp=16"], "tpp"),
        (["sglang.tp=8"], "sglang.tp (8) must equal nodes (2) x gpusPerNode (8)"),
        (["nodes=4"], "sglang.tp (16) must equal nodes (4) x gpusPerNode (8)"),
        (["sglang.dp=3"], "sglang.dp (3) must divide sglang.tp (16)"),
        (["sglang.enableDpAttention=true"], "sglang.enableDpAttention needs sglang.dp > 1"),
        (["model.source=s3"], "model.s3.uri must be an s3://"),
        (["apiKey.enabled=true"], "apiKey.enabled needs apiKey.existingSecret or apiKey.value"),
        (["sglang.distInitPort=30000"], "sglang.distInitPort (30000) must differ"),
    ],
)
def test_bad_values_fail_naming_the_field(sets, needle):
    with pytest.raises(ValueError) as err:
        render(*sets)
    assert needle in str(err.value)


def test_s3_source_downloads_in_init_container():
    path = CHART / "ci" / "s3-secured-values.yaml"
    leader, worker = pod_specs(render(values_files=(path,)))
    for pod in (leader, worker):
        (init,) = pod["initContainers"]
        cmd = init["command"]
        assert cmd[:3] == ["python3", "-m", "keye_model.serve.fetch"]
        assert cmd[cmd.index("--uri") + 1] == "s3://models/keye/Keye-VL-671B-A37B/"
        model_path = pod["containers"][0]["args"][
            pod["containers"][0]["args"].index("--model-path") + 1
        ]
        assert cmd[cmd.index("--dest") + 1] == model_path
        env = {e["name"]: e for e in init["env"]}
        assert env["AWS_ENDPOINT_URL"]["value"] == "http://minio.storage.svc:9000"
        assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "keye-s3"
        model_vol = next(v for v in pod["volumes"] if v["name"] == "model")
        assert model_vol["hostPath"] == {
            "path": "/var/cache/keye-models",
            "type": "Directory",
        }


def test_optional_objects_and_api_key():
    docs = render(values_files=(CHART / "ci" / "s3-secured-values.yaml",))
    (lws,) = by_kind(docs, "LeaderWorkerSet")
    assert lws["spec"]["replicas"] == 2
    leader, worker = pod_specs(docs)
    args = leader["containers"][0]["args"]
    assert "--enable-metrics" in args  # forced on by serviceMonitor.enabled
    assert args[args.index("--api-key") + 1] == "$(SGLANG_API_KEY)"
    key_env = next(e for e in leader["containers"][0]["env"] if e["name"] == "SGLANG_API_KEY")
    assert key_env["valueFrom"]["secretKeyRef"] == {"name": "keye-api-key", "key": "api-key"}
    assert not by_kind(docs, "Secret")  # existingSecret: the chart must not create one
    assert leader["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H800"}
    assert leader["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert "nodeAffinity" in leader["affinity"] and "podAntiAffinity" in leader["affinity"]
    (sm,) = by_kind(docs, "ServiceMonitor")
    assert sm["spec"]["endpoints"][0] == {"port": "http", "path": "/metrics", "interval": "30s"}
    assert sm["metadata"]["labels"]["release"] == "prometheus"
    (np,) = by_kind(docs, "NetworkPolicy")
    peers, clients = np["spec"]["ingress"]
    # Pod-to-pod: any TCP port between pods of the set (SGLang opens many).
    assert (
        peers["from"][0]["podSelector"]["matchLabels"] == np["spec"]["podSelector"]["matchLabels"]
    )
    assert peers["ports"] == [{"protocol": "TCP"}]
    assert clients["ports"] == [{"protocol": "TCP", "port": 30000}]
    (test_pod,) = by_kind(docs, "Pod")
    assert "--api-key-env" in test_pod["spec"]["containers"][0]["command"]


def test_chart_created_secret_and_hostpath():
    docs = render(values_files=(CHART / "ci" / "hostpath-values.yaml",))
    (secret,) = by_kind(docs, "Secret")
    assert set(secret["data"]) == {"api-key"}
    leader, _ = pod_specs(docs)
    model_vol = next(v for v in leader["volumes"] if v["name"] == "model")
    assert model_vol["hostPath"] == {"path": "/mnt/nvme/models", "type": "Directory"}
    assert "affinity" not in leader


def test_released_4x8_recipe():
    docs = render(values_files=(CHART / "values-4x8-deepep.yaml",))
    (lws,) = by_kind(docs, "LeaderWorkerSet")
    assert lws["spec"]["leaderWorkerTemplate"]["size"] == 4
    leader, worker = pod_specs(docs)
    pairs = dict(_pairs(leader["containers"][0]["args"][3:]))
    assert pairs["--tp-size"] == pairs["--dp-size"] == pairs["--ep-size"] == "32"
    assert "--enable-dp-attention" in pairs and pairs["--moe-a2a-backend"] == "deepep"
    assert pairs["--mem-fraction-static"] == "0.7"
    assert pairs["--watchdog-timeout"] == "1000000"  # not 1e+06: Helm floats would print that
    assert "--cuda-graph-max-bs" not in pairs
    c = worker["containers"][0]
    assert "IPC_LOCK" in c["securityContext"]["capabilities"]["add"]
    assert c["resources"]["limits"]["rdma/rdma_shared_device_a"] == 1
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["NCCL_SOCKET_IFNAME"] == env["GLOO_SOCKET_IFNAME"] == "bond0"
    assert env["NCCL_IB_GID_INDEX"] == "3"
    assert worker["hostNetwork"] is True and worker["dnsPolicy"] == "ClusterFirstWithHostNet"


def test_helm_test_pod_runs_the_smoke_client():
    docs = render()
    (pod,) = by_kind(docs, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    cmd = pod["spec"]["containers"][0]["command"]
    assert cmd[:3] == ["python", "-m", "keye_model.serve.smoke"]
    assert cmd[cmd.index("--url") + 1] == "http://keye-serve-api:30000"
    assert pod["spec"]["restartPolicy"] == "Never"


def test_validator_rejects_broken_objects():
    """The validator is not a rubber stamp: typos, bad enums and unknown kinds fail."""
    docs = render(values_files=(CHART / "ci" / "s3-secured-values.yaml",))
    schemas = crd_schemas(load_documents(LWS_CRD.read_text())[0])
    (lws,) = by_kind(docs, "LeaderWorkerSet")
    assert validate_object(lws, K8S, schemas) == []

    bad = copy.deepcopy(lws)
    bad["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]["containers"][0][
        "imagePullPolicyy"
    ] = "Always"
    bad["spec"]["leaderWorkerTemplate"]["restartPolicy"] = "Sometimes"
    errors = "\n".join(validate_object(bad, K8S, schemas))
    assert "imagePullPolicyy" in errors and "Sometimes" in errors

    svc = copy.deepcopy(by_kind(docs, "Service")[0])
    svc["spec"]["portz"] = []
    assert any("portz" in e for e in validate_object(svc, K8S, schemas))
    svc = copy.deepcopy(by_kind(docs, "Service")[0])
    svc["metadata"]["name"] = "Bad_Name"
    assert any("metadata.name" in e for e in validate_object(svc, K8S, schemas))

    sm = copy.deepcopy(by_kind(docs, "ServiceMonitor")[0])
    sm["spec"]["endpoints"][0]["intervall"] = "30s"
    assert any("intervall" in e for e in validate_object(sm, K8S, schemas))

    unknown = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    assert validate_object(unknown, K8S, schemas), "custom kinds without a schema must not pass"
    assert validate_object(lws, K8S, None), "an LWS without its CRD schema must not pass"


def test_strict_schema_keeps_preserve_unknown_fields_open():
    schema = {
        "type": "object",
        "properties": {
            "a": {"type": "object", "properties": {"b": {"type": "string"}}},
            "free": {
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": True,
                "properties": {},
            },
            "list": {
                "type": "array",
                "items": {"type": "object", "properties": {"c": {"type": "integer"}}},
            },
        },
    }
    strict = strict_schema(schema)
    assert strict["additionalProperties"] is False
    assert strict["properties"]["a"]["additionalProperties"] is False
    assert "additionalProperties" not in strict["properties"]["free"]
    assert strict["properties"]["list"]["items"]["additionalProperties"] is False
    assert "additionalProperties" not in schema  # the input is not modified


def test_leader_dns_wait_script_runs():
    """Run the rendered container command with bash: exec the args once the name resolves, else fail."""
    import os
    import subprocess

    leader, _ = pod_specs(render("leaderDnsTimeoutSeconds=2"))
    command = leader["containers"][0]["command"]
    assert command[:2] == ["/bin/bash", "-c"]
    env = {**os.environ, "LWS_LEADER_ADDRESS": "localhost"}
    ok = subprocess.run(
        [*command, "echo", "launched"], env=env, capture_output=True, text=True, timeout=30
    )
    assert ok.returncode == 0 and ok.stdout.strip() == "launched", ok.stderr
    env["LWS_LEADER_ADDRESS"] = "keye-leader.invalid"
    bad = subprocess.run(
        [*command, "echo", "launched"], env=env, capture_output=True, text=True, timeout=30
    )
    assert bad.returncode == 1 and "launched" not in bad.stdout
    assert "leader keye-leader.invalid did not resolve within 2 s" in bad.stderr


def test_notes_render_with_the_endpoint(tmp_path):
    """NOTES.txt through helm's own tpl (helm template skips NOTES; install needs a cluster)."""
    import shutil

    chart = tmp_path / "keye-serve"
    shutil.copytree(CHART, chart)
    shutil.copy(chart / "templates" / "NOTES.txt", chart / "notes.txt")
    (chart / "templates" / "notes-check.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\n"
        'data:\n  notes: {{ tpl (.Files.Get "notes.txt") . | quote }}\n'
    )
    docs = load_documents(
        helm.template(chart, "keye-serve", "serving", [], ["apiKey.enabled=true", "apiKey.value=k"])
    )
    notes = next(d for d in docs if d["kind"] == "ConfigMap")["data"]["notes"]
    assert "port-forward svc/keye-serve-api 30000:30000" in notes
    assert "/v1/chat/completions" in notes and "image_url" in notes
    assert "Authorization: Bearer" in notes
    assert "http://keye-serve-api.serving.svc:30000" in notes
    assert "helm test keye-serve -n serving" in notes
