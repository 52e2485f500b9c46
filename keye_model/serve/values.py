"""Helm values for one deploy, built from a model URI and the recipe's ``ServeConfig``.

Only what the deploy decides is written here (layout, model source, image, API key); every
other setting keeps the chart default, a chart values file, or a ``--set`` override.
"""

from __future__ import annotations

import posixpath
from typing import Any

from keye_model import storage
from keye_model.serve.config import MODEL_SOURCES, ServeConfig


def model_source(cfg: ServeConfig, model_uri: str) -> str:
    """The chart's model.source for ``model_uri``: s3 for s3:// URIs under auto, else the config's choice."""
    if cfg.model_source not in MODEL_SOURCES:
        raise ValueError(
            f"serve.model_source must be one of {list(MODEL_SOURCES)}, got {cfg.model_source!r}"
        )
    if cfg.model_source != "auto":
        source = cfg.model_source
    elif storage.is_s3(model_uri):
        source = "s3"
    else:
        source = cfg.local_model_source
        if source not in ("pvc", "hostPath"):
            raise ValueError(f"serve.local_model_source must be pvc or hostPath, got {source!r}")
    if (source == "s3") != storage.is_s3(model_uri):
        raise ValueError(f"serve.model_source={source} does not fit the model URI {model_uri!r}")
    return source


def build_values(cfg: ServeConfig, model_uri: str) -> dict[str, Any]:
    """Chart values for serving ``model_uri`` with ``cfg`` (raises ValueError naming the bad field)."""
    if not model_uri:
        raise ValueError(
            "--model: a model URI (s3://bucket/prefix or a local directory) is required"
        )
    for name in ("nodes", "gpus_per_node"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"serve.{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.replicas < 0:
        raise ValueError(f"serve.replicas must be >= 0, got {cfg.replicas}")
    if cfg.s3_cache not in ("emptyDir", "hostPath"):
        raise ValueError(f"serve.s3_cache must be emptyDir or hostPath, got {cfg.s3_cache!r}")
    source = model_source(cfg, model_uri)
    if source == "s3":
        path = model_uri.rstrip("/")
        name = path.rsplit("/", 1)[-1]
        if path.count("/") < 3:
            raise ValueError(
                f"--model: {model_uri!r} needs a prefix under the bucket (s3://bucket/model-dir)"
            )
        model: dict[str, Any] = {
            "source": "s3",
            "name": name,
            "s3": {"uri": path + "/", "cache": cfg.s3_cache},
        }
        if cfg.s3_endpoint:
            model["s3"]["endpoint"] = cfg.s3_endpoint
        if cfg.s3_credentials_secret:
            model["s3"]["credentialsSecret"] = cfg.s3_credentials_secret
    else:
        # Pods see the model at the same path: its parent directory is the mount.
        path = posixpath.normpath(str(storage.local_path(model_uri)))
        if not path.startswith("/") or path == "/":
            raise ValueError(
                f"--model: {model_uri!r} must be an absolute directory path for {source}"
            )
        parent, name = posixpath.split(path)
        model = {"source": source, "name": name, "mountPath": parent}
        if source == "pvc":
            model["pvc"] = {"claimName": cfg.pvc_claim}
        else:
            model["hostPath"] = {"path": parent}
    values: dict[str, Any] = {
        "replicas": cfg.replicas,
        "nodes": cfg.nodes,
        "gpusPerNode": cfg.gpus_per_node,
        "sglang": {"version": cfg.sglang_version, "tp": cfg.nodes * cfg.gpus_per_node},
        "model": model,
    }
    if cfg.image:
        repository, sep, tag = cfg.image.rpartition(":")
        if not sep or not repository or "/" in tag:
            raise ValueError(f"serve.image must look like repository:tag, got {cfg.image!r}")
        values["image"] = {"repository": repository, "tag": tag}
    if cfg.api_key_secret:
        values["apiKey"] = {"enabled": True, "existingSecret": cfg.api_key_secret}
    return values
