"""Configuration of the serving deploy step (owned by ``keye_model.serve``).

The chart (``helm/keye-serve``) holds the full SGLang/Kubernetes settings; this config holds what
the deploy step decides per run (release, layout, where the model comes from) plus chart files
and ``--set`` overrides for everything else, so the chart stays the one source of defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

from keye_model.config_utils import field

MODEL_SOURCES = ("auto", "pvc", "hostPath", "s3")


@dataclass
class ServeConfig:
    """Serving with SGLang on a LeaderWorkerSet (REFERENCE §4)."""

    release: str = field("keye-serve", help="Helm release name.")
    namespace: str = field("default", help="Kubernetes namespace of the release.")
    nodes: int = field(2, help="Pods per LeaderWorkerSet group (one per node).")
    gpus_per_node: int = field(
        8, help="GPUs per pod; tensor parallel size = nodes x gpus_per_node."
    )
    replicas: int = field(1, help="LeaderWorkerSet groups (model instances) to run.")
    chart: str = field(
        "",
        help="Chart directory; '' = $KEYE_SERVE_CHART, else helm/keye-serve beside the keye_model package.",
    )
    values_file: str = field(
        "",
        help="Extra values file: a name inside the chart (e.g. values-4x8-deepep.yaml, Kwai's "
        "4 x 8 DP-attention/DeepEP recipe; then set nodes=4) or a path. '' = the chart defaults "
        "(the published 2 x 8, TP 16 command).",
    )
    set_values: list[str] = field(
        default_factory=list,
        help="Helm --set expressions applied last, e.g. ['sglang.extraArgs={--enable-metrics}'].",
    )
    sglang_version: str = field(
        "0.5.2",
        help="SGLang version in the serve image; picks flag spellings (Kwai's keye branch is 0.5.2).",
    )
    image: str = field("", help="Serve image as repository:tag; '' = the chart's default image.")
    model_source: str = field(
        "auto",
        help="auto | pvc | hostPath | s3. auto: s3:// URIs download through the init container, "
        "local paths use local_model_source.",
    )
    local_model_source: str = field(
        "pvc",
        help="pvc | hostPath: how pods see a local model path (the path's parent is mounted).",
    )
    pvc_claim: str = field(
        "keye-models", help="PersistentVolumeClaim whose root holds the model directory."
    )
    s3_endpoint: str = field("", help="S3 endpoint URL as seen from the pods ('' = AWS).")
    s3_credentials_secret: str = field(
        "",
        help="Secret with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY for the download ('' = pod identity).",
    )
    s3_cache: str = field(
        "emptyDir",
        help="emptyDir | hostPath: where S3 downloads land (hostPath survives pod re-creation).",
    )
    api_key_secret: str = field(
        "",
        help="Existing Secret (key 'api-key') whose value SGLang requires as --api-key ('' = no key).",
    )
    kubernetes_version: str = field(
        "1.30", help="Kubernetes version the manifests are validated against."
    )
    lws_crd: str = field(
        "",
        help="LeaderWorkerSet CRD YAML to validate against; '' = $KEYE_LWS_CRD, else the cluster's "
        "installed CRD when one answers, else the copy shipped in keye_model/k8s/ (lws, controller-gen v0.17.2).",
    )
    install: bool = field(
        True, help="helm upgrade --install when a cluster is reachable (False: render only)."
    )
    helm_timeout: str = field(
        "120m", help="helm --wait timeout (loading the 671B takes many minutes)."
    )
    ready_timeout_s: float = field(
        7200.0, help="Seconds to wait for every group's leader pod to be Ready."
    )
    endpoint: str = field(
        "", help="Base URL for the smoke test; '' = the leader Service's in-cluster DNS name."
    )
    smoke_timeout_s: float = field(1800.0, help="Seconds the smoke chat request may take.")
    cluster_probe_timeout_s: float = field(
        5.0, help="Seconds to wait for the Kubernetes API to answer."
    )
