"""Shared test fixtures: paths to the real fixtures, isolated KEYE_HOME / MLflow store per test."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Real photos, charts, a screenshot and two videos (origins in tests/fixtures/README.md).
FIXTURES = REPO / "tests" / "fixtures" / "real"
TEST_DATA = REPO / "tests" / "data"

DIST_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")

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
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))  # gettempdir() caches its first answer
    monkeypatch.delenv("KEYE_PARENT_RUN_ID", raising=False)
    # An in-process training run (a 1-rank gloo group) leaves RANK/MASTER_PORT/... in os.environ
    # (DeepSpeed writes them too); a stage started as a subprocess must not inherit them.
    for name in DIST_ENV:
        monkeypatch.delenv(name, raising=False)
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


@pytest.fixture
def s3_server(monkeypatch) -> str:
    """A real S3 endpoint: moto's threaded server over HTTP on 127.0.0.1, reached via AWS_ENDPOINT_URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_server) -> str:
    """A fresh bucket on the local S3 server, as ``s3://name`` (moto keeps buckets process-wide)."""
    import uuid

    from keye_model import storage

    name = f"keye-{uuid.uuid4().hex[:12]}"
    storage.s3_client().create_bucket(Bucket=name)
    return f"s3://{name}"
