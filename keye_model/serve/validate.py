"""Validate rendered Kubernetes manifests offline: one validator for the tests and the deploy step.

Built-in kinds go through ``kubernetes-validate`` in strict mode (unknown fields rejected) for a
pinned Kubernetes version. It only warns on custom resources, so the LeaderWorkerSet is checked
against the openAPIV3Schema of its CRD, made strict the way the API server prunes: every object
schema that lists properties and does not preserve unknown fields rejects other keys. The
ServiceMonitor (Prometheus Operator) gets a small shape check of the fields the chart uses.
"""

from __future__ import annotations

import copy
import functools
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

LWS_API = "leaderworkerset.x-k8s.io"
LWS_CRD_NAME = "leaderworkerset.x-k8s.io_leaderworkersets.yaml"
# CRDs shipped as package data, with their upstream source in keye_model/k8s/README.md.
K8S_SCHEMAS = Path(__file__).resolve().parents[1] / "k8s"
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# Kinds whose name becomes a DNS label (Service names, LWS pod hostnames).
_LABEL_NAMED = {"Service", "LeaderWorkerSet", "Pod"}

# The ServiceMonitor fields the chart renders (monitoring.coreos.com/v1); anything else is a typo.
SERVICE_MONITOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "jobLabel": {"type": "string"},
                "namespaceSelector": {"type": "object"},
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "minProperties": 1,
                    "properties": {
                        "matchLabels": {
                            "type": "object",
                            "additionalProperties": {"type": "string"},
                        },
                        "matchExpressions": {"type": "array"},
                    },
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "anyOf": [{"required": ["port"]}, {"required": ["targetPort"]}],
                        "properties": {
                            "port": {"type": "string", "minLength": 1},
                            "targetPort": {"type": ["string", "integer"]},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            "scrapeTimeout": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            "bearerTokenSecret": {"type": "object"},
                            "authorization": {"type": "object"},
                        },
                    },
                },
            },
        },
    },
}


def load_documents(text: str) -> list[dict[str, Any]]:
    """Parse a multi-document YAML stream, dropping empty documents."""
    import yaml

    # The libyaml loader parses the 1.3 MB LWS CRD in 0.2 s instead of 1 s.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return [doc for doc in yaml.load_all(text, Loader=loader) if doc]


def default_lws_crd() -> Path | None:
    """The LWS CRD file: ``$KEYE_LWS_CRD`` if set, else the copy shipped in ``keye_model/k8s/``."""
    override = os.environ.get("KEYE_LWS_CRD", "")
    if override:
        if not Path(override).is_file():
            raise FileNotFoundError(f"KEYE_LWS_CRD={override}: no such file")
        return Path(override)
    return K8S_SCHEMAS / LWS_CRD_NAME


def strict_schema(schema: Any) -> Any:
    """A copy of an OpenAPI v3 schema in which objects with listed properties reject unknown keys."""
    schema = copy.deepcopy(schema)

    def visit(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                visit(item)
            return
        if not isinstance(node, dict):
            return
        if (
            "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
        for key in ("properties", "patternProperties"):
            for child in node.get(key, {}).values():
                visit(child)
        for key in ("items", "additionalProperties", "not"):
            if isinstance(node.get(key), (dict, list)):
                visit(node[key])
        for key in ("allOf", "anyOf", "oneOf"):
            visit(node.get(key, []))

    visit(schema)
    return schema


def crd_schemas(crd: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"group/version": strict openAPIV3Schema}`` for every served version of a CRD object."""
    group = crd["spec"]["group"]
    return {
        f"{group}/{v['name']}": strict_schema(v["schema"]["openAPIV3Schema"])
        for v in crd["spec"]["versions"]
        if v.get("served", True)
    }


@functools.lru_cache(maxsize=4)
def crd_schemas_from_file(path: str) -> dict[str, dict[str, Any]]:
    """``crd_schemas`` of the first CustomResourceDefinition in a YAML file (cached by path)."""
    docs = load_documents(Path(path).read_text())
    crds = [d for d in docs if d.get("kind") == "CustomResourceDefinition"]
    if not crds:
        raise ValueError(f"{path}: no CustomResourceDefinition in the file")
    return crd_schemas(crds[0])


def schema_errors(schema: dict[str, Any], obj: dict[str, Any], where: str) -> list[str]:
    """Every violation of ``schema`` by ``obj``, each as ``<where>: <field.path>: <message>``."""
    import jsonschema

    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
    return [
        f"{where}: {'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
        for e in errors
    ]


def name_errors(obj: dict[str, Any], where: str) -> list[str]:
    """A missing or non-DNS ``metadata.name`` (a label for kinds whose name becomes a host)."""
    name = (obj.get("metadata") or {}).get("name", "")
    if not name:
        return [f"{where}: metadata.name is missing"]
    pattern, limit = (_DNS_LABEL, 63) if obj.get("kind") in _LABEL_NAMED else (_DNS_SUBDOMAIN, 253)
    if len(name) > limit or not pattern.match(name):
        return [f"{where}: metadata.name {name!r} is not a valid DNS name (<= {limit} chars)"]
    return []


def validate_object(
    obj: dict[str, Any],
    k8s_version: str = "1.30",
    lws_schemas: dict[str, dict[str, Any]] | None = None,
) -> list[str]:
    """Errors for one object (empty list = valid); custom kinds without a schema are errors."""
    import kubernetes_validate

    kind, api = obj.get("kind", "?"), obj.get("apiVersion", "?")
    where = f"{kind}/{(obj.get('metadata') or {}).get('name', '?')}"
    errors = name_errors(obj, where)
    if api.startswith(f"{LWS_API}/"):
        if lws_schemas is None:
            return errors + [
                f"{where}: no LeaderWorkerSet CRD to validate against (set serve.lws_crd or $KEYE_LWS_CRD)"
            ]
        if api not in lws_schemas:
            return errors + [
                f"{where}: apiVersion {api} is not served by the CRD ({sorted(lws_schemas)})"
            ]
        return errors + schema_errors(lws_schemas[api], obj, where)
    if api.startswith("monitoring.coreos.com/"):
        return errors + schema_errors(SERVICE_MONITOR_SCHEMA, obj, where)
    try:
        kubernetes_validate.validate(obj, k8s_version, strict=True)
    except kubernetes_validate.ValidationError as err:
        path = ".".join(str(p) for p in err.path) or "<root>"
        errors.append(f"{where}: {path}: {err.message}")
    except kubernetes_validate.SchemaNotFoundError as err:
        errors.append(f"{where}: {err.message}")
    return errors


def validate_manifests(
    manifests: str | Iterable[dict[str, Any]],
    k8s_version: str = "1.30",
    lws_crd: str | Path | dict[str, Any] | None = None,
) -> list[str]:
    """Validate every object of a rendered chart; returns all errors (empty list = valid).

    ``lws_crd`` is a CRD YAML path or an already-loaded CRD object; None uses ``default_lws_crd()``.
    """
    docs = load_documents(manifests) if isinstance(manifests, str) else list(manifests)
    if isinstance(lws_crd, dict):
        schemas: dict[str, dict[str, Any]] | None = crd_schemas(lws_crd)
    else:
        path = Path(lws_crd) if lws_crd else default_lws_crd()
        if lws_crd and not Path(lws_crd).is_file():
            raise FileNotFoundError(f"serve.lws_crd: {lws_crd} does not exist")
        schemas = crd_schemas_from_file(str(path)) if path else None
    errors: list[str] = []
    for obj in docs:
        errors += validate_object(obj, k8s_version, schemas)
    return errors
