"""One storage API for local directories and S3 (or any S3-compatible endpoint).

A URI is either a local path (``/data/x``, ``file:///data/x``) or ``s3://bucket/key``.
S3 access goes through boto3; the endpoint comes from the standard ``AWS_ENDPOINT_URL``
(or ``AWS_ENDPOINT_URL_S3``) variable, so MinIO, Ceph or a local moto server work unchanged.
Large files go through boto3's managed transfer, which switches to multipart uploads above
``multipart_threshold``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

MULTIPART_THRESHOLD = 8 * 1024 * 1024


def is_s3(uri: str) -> bool:
    """True for ``s3://`` URIs."""
    return uri.startswith("s3://")


def local_path(uri: str) -> Path:
    """The filesystem path of a local URI (``file://`` prefix allowed)."""
    if is_s3(uri):
        raise ValueError(f"{uri!r} is an S3 URI, not a local path")
    return Path(uri[len("file://") :] if uri.startswith("file://") else uri)


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a local path or an S3 prefix."""
    if is_s3(uri):
        return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])
    return str(local_path(uri).joinpath(*parts))


def _split(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if not parsed.netloc:
        raise ValueError(f"S3 URI {uri!r} has no bucket; expected s3://bucket/key")
    return parsed.netloc, parsed.path.lstrip("/")


def s3_client():
    """A boto3 S3 client honouring AWS_ENDPOINT_URL(_S3) and the usual AWS credential chain."""
    import boto3

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return boto3.client("s3", endpoint_url=endpoint or None)


def _transfer_config():
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_THRESHOLD
    )


def exists(uri: str) -> bool:
    """Whether a file exists at ``uri``."""
    if not is_s3(uri):
        return local_path(uri).exists()
    from botocore.exceptions import ClientError

    bucket, key = _split(uri)
    try:
        s3_client().head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise


def read_bytes(uri: str) -> bytes:
    """Read a whole file."""
    if not is_s3(uri):
        return local_path(uri).read_bytes()
    bucket, key = _split(uri)
    return s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()


def read_head(uri: str, length: int) -> bytes:
    """The first ``length`` bytes of a file (an S3 range request; no full download)."""
    if not is_s3(uri):
        with local_path(uri).open("rb") as handle:
            return handle.read(length)
    bucket, key = _split(uri)
    return (
        s3_client().get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{length - 1}")["Body"].read()
    )


def read_tail(uri: str, length: int) -> bytes:
    """The last ``length`` bytes of a file (whole file if shorter); S3 uses a suffix range."""
    if not is_s3(uri):
        with local_path(uri).open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - length))
            return handle.read()
    bucket, key = _split(uri)
    return s3_client().get_object(Bucket=bucket, Key=key, Range=f"bytes=-{length}")["Body"].read()


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole file atomically (local: temp file + rename)."""
    if is_s3(uri):
        bucket, key = _split(uri)
        s3_client().put_object(Bucket=bucket, Key=key, Body=data)
        return
    path = local_path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    tmp.replace(path)


def delete(uri: str) -> None:
    """Remove one file (missing files are fine)."""
    if is_s3(uri):
        bucket, key = _split(uri)
        s3_client().delete_object(Bucket=bucket, Key=key)
        return
    local_path(uri).unlink(missing_ok=True)


def read_text(uri: str) -> str:
    """Read a UTF-8 text file."""
    return read_bytes(uri).decode("utf-8")


def write_text(uri: str, text: str) -> None:
    """Write a UTF-8 text file."""
    write_bytes(uri, text.encode("utf-8"))


def upload(src: str | Path, uri: str) -> None:
    """Copy a local file to ``uri`` (multipart for large files on S3)."""
    if is_s3(uri):
        bucket, key = _split(uri)
        s3_client().upload_file(str(src), bucket, key, Config=_transfer_config())
        return
    dst = local_path(uri)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if Path(src).resolve() != dst.resolve():
        tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
        shutil.copyfile(src, tmp)
        tmp.replace(dst)


def download(uri: str, dst: str | Path) -> Path:
    """Copy the file at ``uri`` to the local path ``dst``."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if is_s3(uri):
        bucket, key = _split(uri)
        s3_client().download_file(bucket, key, str(dst), Config=_transfer_config())
    elif local_path(uri).resolve() != dst.resolve():
        shutil.copyfile(local_path(uri), dst)
    return dst


def list_files(prefix: str) -> Iterator[str]:
    """Yield the URIs of all files under ``prefix`` (recursively), sorted."""
    if not is_s3(prefix):
        root = local_path(prefix)
        if root.is_file():
            yield str(root)
            return
        yield from (str(p) for p in sorted(root.rglob("*")) if p.is_file())
        return
    bucket, key = _split(prefix)
    paginator = s3_client().get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=key):
        for obj in page.get("Contents", []):
            yield f"s3://{bucket}/{obj['Key']}"


def sync_down(prefix: str, dst: str | Path) -> Path:
    """Mirror every file under ``prefix`` into the local directory ``dst``."""
    dst = Path(dst)
    if not is_s3(prefix):
        src = local_path(prefix)
        if src.resolve() != dst.resolve():
            shutil.copytree(src, dst, dirs_exist_ok=True)
        return dst
    _, key = _split(prefix)
    for uri in list_files(prefix):
        rel = _split(uri)[1][len(key) :].lstrip("/")
        download(uri, dst / rel)
    return dst


def sync_up(src: str | Path, prefix: str) -> None:
    """Mirror every file in the local directory ``src`` under ``prefix``."""
    src = Path(src)
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        upload(path, join(prefix, str(path.relative_to(src))))
