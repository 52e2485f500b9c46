"""End-to-end tests of ``keye stage curate``: messy corpus, bad inputs, S3 (moto), kill + resume,
sharded mode, the tiny preset through the CLI, MLflow logging and WebDataset compatibility."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from curate_corpus import build_corpus, encode, noise_image, write_tar

from keye_model import storage
from keye_model.data.config import CurateConfig
from keye_model.data.curate import curate
from keye_model.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]


def corpus_config(**changes) -> CurateConfig:
    """Full operator chain, mixture off so every kept sample is emitted exactly once."""
    cfg = CurateConfig(shard_size=8, num_workers=1)
    cfg = dataclasses.replace(cfg, mixture=dataclasses.replace(cfg.mixture, enabled=False))
    return dataclasses.replace(cfg, **changes)


def read_rejected(output: Path) -> dict[str, dict]:
    records = {}
    for path in sorted((output / "rejected").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            records[record["key"]] = record
    return records


def shard_keys(output: Path) -> list[str]:
    import webdataset as wds

    urls = [str(p) for p in sorted((output / "shards").glob("*.tar"))]
    return [sample["__key__"] for sample in wds.WebDataset(urls, shardshuffle=False)]


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every output file but the staging area and the stage's result (it holds timings)."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "work" not in p.parts and p.name != "stage_result.json"
    }


def test_messy_corpus_every_sample_accounted(tmp_path):
    inputs, expected = build_corpus(tmp_path / "raw")
    output = tmp_path / "out"
    result = curate(corpus_config(), inputs, str(output))
    manifest = json.loads((output / "manifest.json").read_text())
    counts = manifest["counts"]

    # Every corruption kind is at least 10% of the corpus.
    kinds = {}
    for reason in expected.values():
        kinds[reason] = kinds.get(reason, 0) + 1
    bad_kinds = (
        "truncated_image",
        "empty_file",
        "not_an_image",
        "decompression_bomb",
        "too_small",
        "extreme_aspect",
        "exact_duplicate",
        "near_duplicate_image",
    )
    assert all(kinds[k] >= 0.1 * len(expected) for k in bad_kinds)
    assert sum(
        kinds[k] for k in ("text_repetitive", "text_low_alnum", "language", "text_too_short")
    ) >= 0.1 * len(expected)

    assert counts["input"] == len(expected)
    assert counts["input"] == counts["kept"] + counts["rejected"]
    rejected = read_rejected(output)
    kept = shard_keys(output)  # read back with the webdataset library itself
    assert len(rejected) == counts["rejected"] and len(kept) == counts["kept"]
    assert not set(rejected) & set(kept)
    for key, record in rejected.items():
        assert record["reason"], key
        assert expected[key.split("/", 1)[1]] == record["reason"], (key, record)
    assert sorted(k.split("/", 1)[1] for k in kept) == sorted(
        k for k, r in expected.items() if r == "kept"
    )
    # img_pair_1/2 are two different photos (4 of 64 bits apart in a 64-bit pHash): both survive.
    from curate_corpus import PHOTOS

    pair_keys = {f"00000/photo_{PHOTOS.index(n):02d}" for n in ("img_pair_1.jpg", "img_pair_2.jpg")}
    assert pair_keys <= set(kept)
    # Small rejected samples keep their original bytes for inspection.
    assert "bytes_b64" in rejected[next(k for k in rejected if "notimg" in k)]
    assert manifest["rejected_by_reason"] == {r: n for r, n in kinds.items() if r != "kept"}
    assert sum(v["input"] for v in manifest["by_source"].values()) == counts["input"]
    assert manifest["tokens"]["image"] > 0 and manifest["tokens"]["text"] > 0
    assert result.metrics["kept_samples"] == counts["kept"]


def test_bad_input_files_fail_fast_naming_the_file(tmp_path):
    cfg = corpus_config()
    missing = tmp_path / "nope.tar"
    with pytest.raises(FileNotFoundError, match="nope.tar"):
        curate(cfg, [str(missing)], str(tmp_path / "o1"))
    fake_tar = tmp_path / "fake.tar"
    fake_tar.write_bytes(b"definitely not a tar archive" * 40)
    with pytest.raises(ValueError, match="fake.tar.*not a tar"):
        curate(cfg, [str(fake_tar)], str(tmp_path / "o2"))
    bad_jsonl = tmp_path / "x.jsonl"
    bad_jsonl.write_text('{"text": "no image field"}\n')
    with pytest.raises(ValueError, match="x.jsonl"):
        curate(cfg, [str(bad_jsonl)], str(tmp_path / "o3"))
    bad_parquet = tmp_path / "y.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"caption": ["a"]}), bad_parquet)
    with pytest.raises(ValueError, match="y.parquet.*no image column"):
        curate(cfg, [str(bad_parquet)], str(tmp_path / "o4"))
    with pytest.raises(ValueError, match="curate.operators"):
        curate(dataclasses.replace(cfg, operators=["decode", "sharpen"]), [], str(tmp_path / "o5"))
    # Nothing was written for any of them: the checks ran before the work.
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 5))


@pytest.fixture
def moto_s3(s3_server):
    storage.s3_client().create_bucket(Bucket="raw")
    storage.s3_client().create_bucket(Bucket="cur")
    return storage.s3_client()


def test_s3_inputs_and_outputs_with_multipart(tmp_path, moto_s3):
    # Three ~4.5 MB noise photos: the output shard is > 8 MiB, above storage.MULTIPART_THRESHOLD.
    samples = [
        (
            f"big_{i}",
            "png",
            encode(noise_image(i, 1500, 1000)),
            {"text": f"Random colourful noise picture number {i} for the upload test."},
        )
        for i in range(3)
    ]
    local = tmp_path / "big.tar"
    write_tar(local, samples)
    storage.upload(local, "s3://raw/in/big-000.tar")
    jsonl = tmp_path / "rec.jsonl"
    (tmp_path / "small.png").write_bytes(encode(noise_image(9, 80, 60)))
    storage.upload(tmp_path / "small.png", "s3://raw/in/img/small.png")
    jsonl.write_text(
        json.dumps(
            {"key": "s1", "image": "img/small.png", "text": "A small noise picture stored on S3."}
        )
        + "\n"
    )
    storage.upload(jsonl, "s3://raw/in/rec.jsonl")

    import pyarrow as pa
    import pyarrow.parquet as pq

    row = {
        "key": "p1",
        "image": encode(noise_image(11, 90, 70)),
        "caption": "A noise picture stored in a Parquet file.",
    }
    pq.write_table(pa.Table.from_pylist([row]), tmp_path / "part.parquet")
    storage.upload(tmp_path / "part.parquet", "s3://raw/in/part.parquet")
    pq.write_table(pa.table({"caption": ["no image column here"]}), tmp_path / "nocol.parquet")
    storage.upload(tmp_path / "nocol.parquet", "s3://raw/bad/nocol.parquet")

    # Bad inputs on S3 fail before any work, naming the object (the footer is read by range).
    with pytest.raises(FileNotFoundError, match="s3://raw/missing.tar"):
        curate(corpus_config(), ["s3://raw/missing.tar"], "s3://cur/never")
    with pytest.raises(ValueError, match="s3://raw/bad/nocol.parquet has no image column"):
        curate(corpus_config(), ["s3://raw/in/", "s3://raw/bad/"], "s3://cur/never")
    assert not list(storage.list_files("s3://cur/never"))

    result = curate(corpus_config(shard_size=10), ["s3://raw/in/"], "s3://cur/v1")
    manifest = json.loads(storage.read_text("s3://cur/v1/manifest.json"))
    assert manifest["counts"] == {"input": 5, "kept": 5, "rejected": 0, "emitted": 5}
    assert result.outputs["manifest"] == "s3://cur/v1/manifest.json"
    head = moto_s3.head_object(Bucket="cur", Key="v1/shards/00000-000.tar")
    assert head["ContentLength"] > storage.MULTIPART_THRESHOLD
    assert "-" in head["ETag"], "a shard above the threshold must arrive as a multipart upload"
    listed = sorted(storage.list_files("s3://cur/v1/"))
    assert "s3://cur/v1/rejected/00001.jsonl" in listed
    assert not any("/work/" in uri for uri in listed), "the staging area is removed after success"
    local_shard = storage.download("s3://cur/v1/shards/00000-000.tar", tmp_path / "check.tar")
    import webdataset as wds

    keys = [s["__key__"] for s in wds.WebDataset(str(local_shard), shardshuffle=False)]
    assert keys == ["00000/big_0", "00000/big_1", "00000/big_2"]


def _cli(args: list[str], env: dict, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "keye_model.cli", "stage", "curate", *args],
        env=env,
        cwd=REPO,
        **kwargs,
    )


def slow_run(output: Path, args: list[str], pauses: dict[str, float], **kwargs) -> subprocess.Popen:
    """The stage in a subprocess (own session, so it can be killed with its workers), pausing
    after the given progress events (tests/curate_slow_run.py)."""
    after = [arg for event, s in pauses.items() for arg in ("--after", f"{event}={s}")]
    return subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "curate_slow_run.py"), str(output), *args, *after],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        **kwargs,
    )


def test_kill_and_resume_reproduces_uninterrupted_output(tmp_path):
    sets = [
        "--set",
        "curate.num_synthetic=84",
        "--set",
        "curate.shard_size=12",
        "--set",
        "curate.synthetic_max_side=160",
        "--set",
        "curate.keep_work=true",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = tmp_path / "killed"
    proc = slow_run(out, sets, {"write_done": 0.6})
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "work" / "write").glob("*.done"))) < 2:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = sorted(p.stem for p in (out / "work" / "write").glob("*.done"))
    assert 2 <= len(done) < 7, done
    assert not (out / "manifest.json").exists()
    finished = {
        p: (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in (out / "shards").glob("*.tar")
        if p.name.split("-")[0] in done
    }
    scanned = {
        p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (out / "work" / "scan").glob("*.tar")
    }
    assert finished and len(scanned) == 7

    stale = out / "shards" / ".00006-000.tar.tmp99999"  # what a kill mid-write leaves behind
    stale.write_bytes(b"partial")
    resumed = _cli(
        ["--preset", "tiny", "--output", str(out), *sets],
        env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stdout, stderr = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, stderr.decode()[-3000:]
    assert f"write: 7 units ({len(done)} already done)" in stderr.decode()
    assert "dedup: already done" in stderr.decode()  # the global pass is not redone either
    assert not stale.exists()
    for path, stat in {**finished, **scanned}.items():
        assert (path.stat().st_ino, path.stat().st_mtime_ns) == stat, f"{path} was redone"

    # Reference: the same recipe, uninterrupted, in sharded (ParallelFor) mode plus the final pass.
    cfg = (
        load_recipe("tiny")
        .override({"curate": {"num_synthetic": 84, "shard_size": 12, "synthetic_max_side": 160}})
        .curate
    )
    cfg = dataclasses.replace(cfg, num_workers=2)  # forked workers must give the same bytes
    ref = tmp_path / "reference"
    for i in range(3):
        partial = curate(cfg, [], str(ref), shard_index=i, num_shards=3)
        assert "scanned shard" in partial.message
    assert not (ref / "shards").exists()
    curate(cfg, [], str(ref))
    assert tree_bytes(out) == tree_bytes(ref)
    assert not (ref / "work").exists()
    # A different config cannot resume into the same work directory.
    with pytest.raises(ValueError, match="different config"):
        curate(dataclasses.replace(cfg, seed=1), [], str(out))


def test_kill_during_scan_discards_partial_unit_and_resumes_identically(tmp_path):
    overrides = {"num_synthetic": 40, "shard_size": 8, "synthetic_max_side": 128, "keep_work": True}
    sets = [arg for k, v in overrides.items() for arg in ("--set", f"curate.{k}={v}".lower())]
    # A pause per sample keeps each unit in flight ~1 s, so the kill lands inside one.
    out = tmp_path / "killed"
    scan = out / "work" / "scan"
    proc = slow_run(out, [*sets, "--set", "curate.num_workers=2"], {"scan_sample": 0.12})

    def in_flight() -> list[Path]:
        done = {p.stem for p in scan.glob("*.done")}
        temps = list(scan.glob(".*.tmp*"))
        return temps if len(done) >= 2 and any(t.name[1:6] not in done for t in temps) else []

    deadline = time.time() + 120
    while time.time() < deadline and not in_flight():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = sorted(p.stem for p in scan.glob("*.done"))
    partial = sorted(p.name for p in scan.glob(".*.tmp*"))
    assert 2 <= len(done) < 5, done
    assert any(name[1:6] not in done for name in partial), (partial, done)
    assert not (out / "work" / "write").exists() and not (out / "manifest.json").exists()
    finished = {
        p: (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in scan.iterdir()
        if p.name.split(".")[0] in done
    }
    assert len(finished) == 4 * len(done)  # .tar, .sig.jsonl, .rejected.jsonl, .done

    cfg = load_recipe("tiny").override({"curate": overrides}).curate
    curate(cfg, [], str(out))  # resume in-process: the fingerprint check proves the same config
    assert not list(out.rglob(".*.tmp*")), "partial scan files were not discarded"
    for path, stat in finished.items():
        assert (path.stat().st_ino, path.stat().st_mtime_ns) == stat, f"{path} was redone"
    assert len(list(scan.glob("*.done"))) == 5

    ref = tmp_path / "reference"
    curate(cfg, [], str(ref))  # uninterrupted, same config
    everything = {
        str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()
    }
    assert everything == {
        str(p.relative_to(ref)): p.read_bytes() for p in sorted(ref.rglob("*")) if p.is_file()
    }
    assert any(name.startswith("shards/") for name in everything)


def test_tiny_preset_cli_mixture_and_mlflow(tmp_path):
    import mlflow

    from keye_model.cli import main

    out = tmp_path / "tiny"
    assert main(["stage", "curate", "--preset", "tiny", "--output", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    counts = manifest["counts"]
    assert counts["input"] == 300 and counts["input"] == counts["kept"] + counts["rejected"]
    mix = manifest["mixture"]
    assert set(mix["target_share"]) == {"chart", "table", "document", "ocr", "math_cot"}
    assert mix["unavailable"] == ["caption", "interleaved", "video"]
    for cat, share in mix["target_share"].items():
        # Scarce categories are capped at max_repeat; the rest land near their target.
        if mix["repeat_factor"][cat] < load_recipe("tiny").curate.mixture.max_repeat:
            assert abs(mix["achieved_share"][cat] - share) < 0.06, (cat, mix)
    assert len(shard_keys(out)) == counts["emitted"]

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    runs = mlflow.search_runs(experiment_names=["keye"], filter_string="tags.stage = 'curate'")
    assert len(runs) == 1
    run_id = runs.iloc[0]["run_id"]
    assert runs.iloc[0]["metrics.samples_input"] == 300
    assert runs.iloc[0]["metrics.dedup_capped_buckets"] == manifest["dedup"]["capped_buckets"]
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id, "curate")}
    assert {
        "curate/rejection_reasons.png",
        "curate/category_shares.png",
        "curate/image_sizes.png",
        "curate/manifest.json",
    } <= artifacts


def test_scan_and_write_memory_does_not_grow_with_sample_count(tmp_path):
    import tracemalloc

    from keye_model.data.curate import _tokenizer_json, scan_unit, write_unit
    from keye_model.data.readers import WorkUnit

    cfg = corpus_config()
    cfg_json = json.dumps(dataclasses.asdict(cfg), sort_keys=True)
    tokenizer_json = _tokenizer_json(cfg)
    peaks, sizes = {}, {}
    for n in (25, 200):
        samples = [
            (
                f"n{i:04d}",
                "png",
                encode(noise_image(i, 160, 120)),
                {"text": f"Noise picture {i} with a plain English caption for scanning."},
            )
            for i in range(n)
        ]
        write_tar(tmp_path / f"in{n}.tar", samples)
        unit = WorkUnit(0, "tar", str(tmp_path / f"in{n}.tar"))
        sizes[n] = (tmp_path / f"in{n}.tar").stat().st_size
        scan_unit(unit, cfg_json, tokenizer_json, str(tmp_path / f"work{n}"))  # warm caches
        tracemalloc.start()
        scan_unit(unit, cfg_json, tokenizer_json, str(tmp_path / f"work{n}b"))
        write_unit(
            unit,
            cfg_json,
            str(tmp_path / f"work{n}b"),
            str(tmp_path / f"out{n}"),
            {},
            {"caption": 1.0},
        )
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert len(shard_keys(tmp_path / f"out{n}")) == n
    # 8x the samples (~10 MB more input), about the same peak: samples stream through.
    assert sizes[200] - sizes[25] > 8_000_000
    assert peaks[200] - peaks[25] < 0.1 * (sizes[200] - sizes[25]), (peaks, sizes)


def _fail_on_call(fn, n: int):
    """``fn`` that raises on its ``n``-th call (0-based): an operator crashing mid-unit."""
    calls = iter(range(10**9))

    def wrapper(*args, **kwargs):
        if next(calls) == n:
            raise RuntimeError("injected failure")
        return fn(*args, **kwargs)

    return wrapper


def test_a_failing_unit_leaves_no_scratch_dirs_or_partial_files(tmp_path, monkeypatch):
    import tempfile

    from keye_model.data import curate as curate_mod
    from keye_model.data.readers import WorkUnit

    cfg = corpus_config(shard_size=4)
    cfg_json = json.dumps(dataclasses.asdict(cfg), sort_keys=True)
    tokenizer_json = curate_mod._tokenizer_json(cfg)
    samples = [
        (f"n{i:02d}", "png", encode(noise_image(i, 96, 64)), {"text": f"Noise picture {i}."})
        for i in range(12)
    ]
    write_tar(tmp_path / "in.tar", samples)
    unit = WorkUnit(0, "tar", str(tmp_path / "in.tar"))
    work, out = tmp_path / "work", tmp_path / "out"
    scratch_root = Path(tempfile.gettempdir())  # where mkdtemp puts scratch dirs in this process

    def scratch_dirs() -> set[Path]:
        return set(scratch_root.glob("keye-curate-*"))

    def files(root: Path) -> list[str]:
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

    before = scratch_dirs()
    scan_sample = curate_mod.scan_sample
    monkeypatch.setattr(curate_mod, "scan_sample", _fail_on_call(scan_sample, 5))
    with pytest.raises(RuntimeError, match="injected"):
        curate_mod.scan_unit(unit, cfg_json, tokenizer_json, str(work))
    assert scratch_dirs() == before
    assert files(work) == []  # no partial staging files, no done marker

    monkeypatch.setattr(curate_mod, "scan_sample", scan_sample)
    curate_mod.scan_unit(unit, cfg_json, tokenizer_json, str(work))
    repeats = curate_mod.repeats
    # Call 5 adds the 6th sample: shard 000 (4 samples) is published, shard 001 is half written.
    monkeypatch.setattr(curate_mod, "repeats", _fail_on_call(repeats, 5))
    with pytest.raises(RuntimeError, match="injected"):
        curate_mod.write_unit(unit, cfg_json, str(work), str(out), {}, {"caption": 1.0})
    assert scratch_dirs() == before
    assert files(out) == ["shards/00000-000.tar"]  # no temp files, no rejected log
    assert not (work / "write").exists()

    monkeypatch.setattr(curate_mod, "repeats", repeats)
    curate_mod.write_unit(unit, cfg_json, str(work), str(out), {}, {"caption": 1.0})
    assert scratch_dirs() == before
    assert len(shard_keys(out)) == 12


def test_a_crashed_curation_leaves_a_failed_mlflow_run(tmp_path):
    import mlflow

    inputs, _ = build_corpus(tmp_path / "raw")

    def crash(event: str, unit: str) -> None:
        if event == "write_done":
            raise RuntimeError("node lost")

    with pytest.raises(RuntimeError, match="node lost"):
        curate(corpus_config(), inputs, str(tmp_path / "out"), on_event=crash)
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    runs = mlflow.search_runs(experiment_names=["keye"], filter_string="tags.stage = 'curate'")
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["status"] == "FAILED"
    assert run["params.shard_size"] == "8" and run["tags.curate.engine"] == "local"
    assert not (tmp_path / "out" / "manifest.json").exists()
