"""Typed-config helpers: overrides from dicts/YAML/``a.b=c`` strings, JSON round trips.

Configs are plain dataclasses whose fields carry ``metadata={"help": ...}``; these helpers keep
YAML files and CLI flags as *overrides* of a preset, never a second source of truth.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def field(
    default: Any = dataclasses.MISSING, *, help: str, default_factory: Any = dataclasses.MISSING
):
    """A dataclass field with help text (shown by ``keye recipe show --help-fields``)."""
    kwargs: dict[str, Any] = {"metadata": {"help": help}}
    if default is not dataclasses.MISSING:
        kwargs["default"] = default
    if default_factory is not dataclasses.MISSING:
        kwargs["default_factory"] = default_factory
    return dataclasses.field(**kwargs)


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except (TypeError, ValueError):
                continue
        raise ValueError(f"{where}: cannot interpret {value!r} as {annotation}")
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        return apply_overrides(annotation(), value, prefix=f"{where}.")
    if origin in (list, tuple):
        if isinstance(value, str):
            value = (
                json.loads(value)
                if value.strip().startswith("[")
                else [v for v in value.split(",") if v]
            )
        item_type = args[0] if args else Any
        items = [_coerce(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if isinstance(value, str):
            value = json.loads(value)
        return dict(value)
    if annotation is bool:
        if isinstance(value, str):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"{where}: expected a boolean, got {value!r}")
        return bool(value)
    if annotation in (int, float, str):
        if annotation is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        try:
            return annotation(value)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: expected {annotation.__name__}, got {value!r}") from err
    return value


def apply_overrides(config: T, overrides: dict[str, Any], prefix: str = "") -> T:
    """Return a copy of ``config`` with nested ``overrides`` applied; unknown keys are errors."""
    hints = typing.get_type_hints(type(config))
    names = {f.name for f in dataclasses.fields(config)}
    changes: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in names:
            raise ValueError(f"unknown config field {prefix}{key!r}; known: {sorted(names)}")
        current = getattr(config, key)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            changes[key] = apply_overrides(current, value, prefix=f"{prefix}{key}.")
        else:
            changes[key] = _coerce(value, hints[key], f"{prefix}{key}")
    return dataclasses.replace(config, **changes)


def parse_assignments(assignments: list[str]) -> dict[str, Any]:
    """Turn ``["a.b=1", "c=x"]`` into ``{"a": {"b": "1"}, "c": "x"}``."""
    out: dict[str, Any] = {}
    for item in assignments:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like field.path=value")
        path, value = item.split("=", 1)
        node = out
        *parents, leaf = path.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def load_overrides(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON overrides file."""
    import yaml

    text = Path(path).read_text()
    data = yaml.safe_load(text) if str(path).endswith((".yaml", ".yml")) else json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of config fields at the top level")
    return data


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a dataclass config."""
    return dataclasses.asdict(config)


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build ``cls`` from a dict (as written by ``to_dict``), validating every field."""
    return apply_overrides(cls(), data)
