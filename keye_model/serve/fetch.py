"""Download a model from S3 once per volume: the chart's init container (``python -m keye_model.serve.fetch``).

A restart must not pull ~700 GB again. Each finished file is appended to a progress journal
(relative path, size, ETag); a complete download writes a marker holding the digest of the
remote listing. On start, a marker whose digest matches the current listing (and files with the
recorded sizes) means nothing to do; otherwise only files missing from the journal, or whose
size/ETag changed, are fetched.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from keye_model import storage
from keye_model.log import get_logger

MARKER = ".keye-fetch-complete.json"
JOURNAL = ".keye-fetch-progress.jsonl"


@dataclass
class FetchResult:
    """What one fetch did."""

    files: int
    downloaded: int
    skipped: int
    bytes_downloaded: int
    up_to_date: bool


def remote_listing(uri: str) -> list[dict]:
    """Every object under an s3:// prefix as ``{"path", "size", "etag"}``, sorted by path."""
    if not storage.is_s3(uri):
        raise ValueError(f"--uri must be an s3://bucket/prefix URI, got {uri!r}")
    parsed = urlparse(uri)
    bucket, prefix = parsed.netloc, parsed.path.lstrip("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    # storage.list_files gives URIs only; the marker also needs sizes and ETags from the listing.
    paginator = storage.s3_client().get_paginator("list_objects_v2")
    files = []
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(prefix) :]
            if ".." in rel.split("/") or rel.startswith("/"):
                # A key like a/../../etc would write outside the model directory.
                raise ValueError(
                    f"--uri: object key {obj['Key']!r} escapes the destination directory"
                )
            if rel and not rel.endswith("/"):
                files.append(
                    {"path": rel, "size": int(obj["Size"]), "etag": obj["ETag"].strip('"')}
                )
    return sorted(files, key=lambda f: f["path"])


def listing_digest(files: list[dict]) -> str:
    """sha256 of the canonical JSON of a listing (changes when any file is added, removed or rewritten)."""
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def _journal(dest: Path) -> dict[str, dict]:
    done: dict[str, dict] = {}
    path = dest / JOURNAL
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
                done[entry["path"]] = entry
            except (ValueError, KeyError):
                continue  # a line cut short by a crash: that file is fetched again
    return done


def _present(dest: Path, entry: dict) -> bool:
    path = dest / entry["path"]
    return path.is_file() and path.stat().st_size == entry["size"]


def fetch_model(uri: str, dest: str | Path) -> FetchResult:
    """Mirror the s3:// prefix ``uri`` into ``dest``, skipping what a previous run completed."""
    log = get_logger("fetch")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    files = remote_listing(uri)
    if not files:
        raise ValueError(f"--uri: no objects under {uri}")
    digest = listing_digest(files)
    marker = dest / MARKER
    if marker.is_file():
        try:
            recorded = json.loads(marker.read_text())
        except ValueError:
            recorded = {}
        if recorded.get("digest") == digest and all(_present(dest, f) for f in files):
            log.info(
                "up to date: %d files in %s match %s (marker %s)",
                len(files),
                dest,
                uri,
                digest[:12],
            )
            return FetchResult(len(files), 0, len(files), 0, True)
        marker.unlink()
    done = _journal(dest)
    todo = [f for f in files if done.get(f["path"]) != f or not _present(dest, f)]
    total = sum(f["size"] for f in todo)
    log.info(
        "fetching %d of %d files (%.2f GB) from %s to %s",
        len(todo),
        len(files),
        total / 1e9,
        uri,
        dest,
    )
    start, moved = time.monotonic(), 0
    with (dest / JOURNAL).open("a") as journal:
        for i, entry in enumerate(todo, 1):
            storage.download(storage.join(uri, entry["path"]), dest / entry["path"])
            if not _present(dest, entry):
                raise OSError(
                    f"{dest / entry['path']}: size differs from the listing after download"
                )
            journal.write(json.dumps(entry, sort_keys=True) + "\n")
            journal.flush()
            moved += entry["size"]
            rate = moved / max(time.monotonic() - start, 1e-6) / 1e6
            log.info("[%d/%d] %s (%.1f MB/s)", i, len(todo), entry["path"], rate)
    storage.write_text(
        str(marker), json.dumps({"uri": uri, "digest": digest, "files": files}, indent=1)
    )
    return FetchResult(len(files), len(todo), len(files) - len(todo), moved, False)


def main(argv: list[str] | None = None) -> int:
    """CLI of the init container."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uri", required=True, help="s3://bucket/prefix of the model files.")
    parser.add_argument("--dest", required=True, help="Local directory the files land in.")
    args = parser.parse_args(argv)
    try:
        result = fetch_model(args.uri, args.dest)
    except ValueError as err:
        print(f"fetch: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result.__dict__))
    return 0


if __name__ == "__main__":
    sys.exit(main())
