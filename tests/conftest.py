"""Shared test fixtures: paths to the real fixtures, isolated KEYE_HOME / MLflow store per test."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FIXTURES = SHARED / "fixtures" / "real"

os.environ.setdefault("KEYE_NO_PROGRESS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Each test gets its own KEYE_HOME and sqlite MLflow store, and its own TMPDIR."""
    home = tmp_path / "keye_home"
    home.mkdir()
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("KEYE_HOME", str(home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.delenv("KEYE_PARENT_RUN_ID", raising=False)
    yield


@pytest.fixture
def real_images(tmp_path) -> dict[str, Path]:
    """Copies of the real photos/charts/screenshots, keyed by file name."""
    out = tmp_path / "real"
    out.mkdir()
    copies = {}
    for src in sorted(FIXTURES.iterdir()):
        if src.suffix.lower() in (".jpg", ".jpeg", ".png"):
            copies[src.name] = Path(shutil.copy(src, out / src.name))
    return copies
