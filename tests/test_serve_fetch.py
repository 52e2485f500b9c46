"""The S3 model download of the chart's init container, against a real moto S3 server on 127.0.0.1."""

from __future__ import annotations

import json

import pytest

from keye_model import storage
from keye_model.serve import fetch


@pytest.fixture
def s3(s3_bucket):
    return f"{s3_bucket}/keye/final"


def _upload(prefix: str, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        storage.write_bytes(f"{prefix}/{rel}", data)


def test_fetch_downloads_once_then_skips(s3, tmp_path):
    files = {
        "config.json": b'{"a": 1}',
        "model-00001.safetensors": b"x" * 5000,
        "sub/tok.json": b"{}",
    }
    _upload(s3, files)
    storage.write_bytes(s3 + "-other/config.json", b"not part of the prefix")
    dest = tmp_path / "model"

    first = fetch.fetch_model(s3, dest)
    assert (first.files, first.downloaded, first.up_to_date) == (3, 3, False)
    assert first.bytes_downloaded == sum(len(v) for v in files.values())
    for rel, data in files.items():
        assert (dest / rel).read_bytes() == data
    marker = json.loads((dest / fetch.MARKER).read_text())
    assert marker["digest"] == fetch.listing_digest(fetch.remote_listing(s3))

    # A restart finds the marker and downloads nothing.
    second = fetch.fetch_model(s3 + "/", dest)
    assert (second.downloaded, second.up_to_date) == (0, True)

    # A changed remote file invalidates the marker; only that file is fetched again.
    storage.write_bytes(f"{s3}/config.json", b'{"a": 2, "b": 3}')
    third = fetch.fetch_model(s3, dest)
    assert (third.downloaded, third.skipped) == (1, 2)
    assert (dest / "config.json").read_bytes() == b'{"a": 2, "b": 3}'


def test_fetch_resumes_after_an_interrupted_run(s3, tmp_path):
    _upload(s3, {"a.bin": b"a" * 100, "b.bin": b"b" * 200})
    dest = tmp_path / "model"
    fetch.fetch_model(s3, dest)
    # Simulate a crash after the first file: no marker, b.bin truncated.
    (dest / fetch.MARKER).unlink()
    (dest / "b.bin").write_bytes(b"b" * 50)
    result = fetch.fetch_model(s3, dest)
    assert (result.downloaded, result.skipped) == (1, 1)
    assert (dest / "b.bin").read_bytes() == b"b" * 200


def test_fetch_rejects_bad_input(s3, tmp_path, capsys):
    bucket = s3.split("/")[2]
    with pytest.raises(ValueError, match="no objects"):
        fetch.fetch_model(f"s3://{bucket}/empty", tmp_path / "m")
    with pytest.raises(ValueError, match="s3://"):
        fetch.fetch_model(str(tmp_path), tmp_path / "m")
    storage.write_bytes(f"s3://{bucket}/evil/x/../../escape.txt", b"!")
    with pytest.raises(ValueError, match="escapes"):
        fetch.fetch_model(f"s3://{bucket}/evil", tmp_path / "m")
    assert not (tmp_path / "escape.txt").exists()
    assert fetch.main(["--uri", f"s3://{bucket}/empty", "--dest", str(tmp_path / "m")]) == 2
    assert "no objects" in capsys.readouterr().err
