"""The real ``helm`` binary: locate it, render the keye-serve chart, install a release.

The binary comes from ``make setup`` (``.venv/bin/helm``) or PATH; nothing here reimplements
Helm's templating, so what the tests validate is exactly what a cluster would receive.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import keye_model

REPO_ROOT = Path(keye_model.__file__).resolve().parents[1]


def find_helm() -> str:
    """Path of the helm binary: $KEYE_HELM, PATH, then the venv's .venv/bin/helm."""
    candidates = [os.environ.get("KEYE_HELM", ""), shutil.which("helm") or ""]
    candidates += [
        str(Path(sys.prefix) / "bin" / "helm"),
        str(REPO_ROOT / ".venv" / "bin" / "helm"),
    ]
    for path in candidates:
        if path and os.access(path, os.X_OK):
            return path
    raise FileNotFoundError(
        "helm binary not found on PATH or in .venv/bin; run `make setup` to install it"
    )


def chart_dir(chart: str = "") -> Path:
    """The keye-serve chart: ``chart`` if given, else $KEYE_SERVE_CHART, else helm/keye-serve in the repo."""
    path = Path(
        chart or os.environ.get("KEYE_SERVE_CHART", "") or REPO_ROOT / "helm" / "keye-serve"
    )
    if not (path / "Chart.yaml").is_file():
        raise FileNotFoundError(f"serve.chart: no Chart.yaml in {path}")
    return path


def _run(args: list[str], timeout: float | None = None) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        # Helm's own message names the failing value or template; pass it on unchanged.
        raise ValueError(
            f"{' '.join(args[:2])} failed: {proc.stderr.strip() or proc.stdout.strip()}"
        )
    return proc.stdout


def _value_args(values_files: list[str | Path], set_values: list[str]) -> list[str]:
    args: list[str] = []
    for path in values_files:
        args += ["-f", str(path)]
    for expr in set_values:
        args += ["--set", expr]
    return args


def lint(chart: str | Path, values_files: list[str | Path] = (), set_values: list[str] = ()) -> str:
    """``helm lint --strict``; raises ValueError with Helm's message on failure."""
    return _run(
        [
            find_helm(),
            "lint",
            "--strict",
            str(chart),
            *_value_args(list(values_files), list(set_values)),
        ]
    )


def template(
    chart: str | Path,
    release: str = "keye-serve",
    namespace: str = "default",
    values_files: list[str | Path] = (),
    set_values: list[str] = (),
) -> str:
    """Render the chart with ``helm template`` (hooks and test pods included) and return the YAML."""
    args = [find_helm(), "template", release, str(chart), "--namespace", namespace]
    return _run(args + _value_args(list(values_files), list(set_values)), timeout=120)


def upgrade_install(
    chart: str | Path,
    release: str,
    namespace: str,
    values_files: list[str | Path] = (),
    set_values: list[str] = (),
    timeout: str = "120m",
) -> str:
    """``helm upgrade --install --wait`` against the current kube context."""
    args = [find_helm(), "upgrade", "--install", release, str(chart), "--namespace", namespace]
    args += ["--create-namespace", "--wait", "--timeout", timeout]
    return _run(args + _value_args(list(values_files), list(set_values)))
