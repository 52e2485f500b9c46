"""Configuration of the serving deploy step (owned by ``keye_model.serve``)."""

from __future__ import annotations

from dataclasses import dataclass

from keye_model.config_utils import field


@dataclass
class ServeConfig:
    """Serving with SGLang on a LeaderWorkerSet (REFERENCE §4)."""

    release: str = field("keye-serve", help="Helm release name.")
    namespace: str = field("default", help="Kubernetes namespace of the release.")
    nodes: int = field(2, help="Pods per LeaderWorkerSet group (one per node).")
    gpus_per_node: int = field(8, help="GPUs per pod; tensor parallel size = nodes x gpus_per_node.")
