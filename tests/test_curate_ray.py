"""The Ray engine of the curate stage against the local one, and the shared dedup decisions.

One local Ray (2 CPUs, no dashboard) serves the whole test session. ``curate.engine=ray`` and
``engine=local`` must keep the same samples and write byte-identical output on a messy corpus,
whatever the number of Ray workers; a killed Ray run resumes without redoing finished units.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from curate_corpus import FIXTURES, build_corpus, encode, write_tar
from PIL import Image, ImageDraw

from keye_model.data.config import CurateConfig
from keye_model.data.curate import curate
from keye_model.data.dedup import (
    DedupPlan,
    Edges,
    kind_edges,
    members_of,
    resolve,
    route_rows,
    take,
)
from keye_model.data.neardup import components
from keye_model.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def ray_address(tmp_path_factory) -> str:
    """One local Ray for the session (~5 s to start); yields its address for other drivers."""
    import ray

    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        logging_level="WARNING",
        _temp_dir=str(tmp_path_factory.mktemp("ray")),
    )
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def corpus_config(**changes) -> CurateConfig:
    """Full operator chain, mixture off so every kept sample is emitted exactly once."""
    cfg = CurateConfig(shard_size=8, num_workers=1)
    cfg = dataclasses.replace(cfg, mixture=dataclasses.replace(cfg.mixture, enabled=False))
    return dataclasses.replace(cfg, **changes)


def outputs(root: Path) -> dict[str, bytes]:
    """Every output file but the staging area."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "work" not in p.parts
    }


def rejected(root: Path) -> dict[str, dict]:
    records = {}
    for path in sorted((root / "rejected").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            records[record["key"].split("/", 1)[1]] = record
    return records


def smooth_picture(seed: int, size: tuple[int, int] = (640, 480)) -> Image.Image:
    """A gradient with a few coloured ellipses: distinct per seed, stable under resizing."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 1, size[0])[None, :, None]
    y = np.linspace(0, 1, size[1])[:, None, None]
    image = Image.fromarray(((rng.random(3) * 255 * x + rng.random(3) * 255 * y) / 2).astype("u1"))
    draw = ImageDraw.Draw(image)
    for _ in range(8):
        x0, y0 = rng.integers(0, size[0] - 100), rng.integers(0, size[1] - 100)
        w, h = rng.integers(40, 200, 2)
        draw.ellipse([x0, y0, x0 + w, y0 + h], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    return image


def reencoded_video(data: bytes, scale: int) -> bytes:
    """The same clip re-encoded at 1/``scale`` of its size (other codec settings, other bytes)."""
    import av

    source = av.open(io.BytesIO(data))
    stream = source.streams.video[0]
    out = io.BytesIO()
    with av.open(out, "w", format="mp4") as target:
        copy = target.add_stream("mpeg4", rate=stream.average_rate)
        copy.width, copy.height = stream.width // scale // 2 * 2, stream.height // scale // 2 * 2
        copy.pix_fmt = "yuv420p"
        for frame in source.decode(stream):
            small = frame.reformat(width=copy.width, height=copy.height, format="yuv420p")
            for packet in copy.encode(small):
                target.mux(packet)
        for packet in copy.encode():
            target.mux(packet)
    source.close()
    return out.getvalue()


def cluster_inputs(root: Path) -> list[str]:
    """A near-duplicate cluster of three (copies first, original last) and a smaller re-encoded
    copy of the messy corpus's video (listed before it when these inputs come first)."""
    original = smooth_picture(1)
    samples = [
        ("cl_recompressed", "jpg", encode(original, "JPEG", quality=20), "its recompressed copy"),
        ("cl_resized", "png", encode(original.resize((320, 240)), "PNG"), "its half-size copy"),
        ("cl_original", "png", encode(original, "PNG"), "the original of two copies"),
        ("cl_other", "png", encode(smooth_picture(2), "PNG"), "a different picture entirely"),
    ]
    tar = root / "cluster.tar"
    write_tar(
        tar,
        [
            (key, ext, data, {"text": f"Coloured ellipses on a gradient background, {what}."})
            for key, ext, data, what in samples
        ],
    )
    media = root / "videos"
    media.mkdir()
    clip = (FIXTURES / "video1.mp4").read_bytes()
    (media / "copy.mp4").write_bytes(reencoded_video(clip, 2))
    (media / "other.mp4").write_bytes((FIXTURES / "video4.mp4").read_bytes())
    records = [
        ("vid_copy", "copy.mp4", "A smaller re-encoded copy of an outdoor clip with movement."),
        ("vid_other", "other.mp4", "Another short video of a different scene and subject."),
    ]
    jsonl = root / "videos.jsonl"
    jsonl.write_text(
        "".join(
            json.dumps({"key": k, "image": f"videos/{f}", "text": t, "category": "video"}) + "\n"
            for k, f, t in records
        )
    )
    return [str(tar), str(jsonl)]


def test_ray_and_local_engines_write_identical_output(tmp_path, ray_address):
    inputs, expected = build_corpus(tmp_path / "raw")
    inputs = cluster_inputs(tmp_path / "raw") + inputs  # copies before their originals
    cfg = corpus_config()
    curate(cfg, inputs, str(tmp_path / "local"))
    # Shuffled dedup (ray_shuffle_min 0) with 2 and 1 workers, in shuffle rounds of a few
    # bands (ray_round_bytes 30 kB: 2-3 rounds per kind here), and the one-task dedup that the
    # default picks for a corpus this small.
    runs = {
        "ray2": {"num_workers": 2, "ray_shuffle_min": 0},
        "ray1": {"num_workers": 1, "ray_shuffle_min": 0},
        "ray2-rounds": {"num_workers": 2, "ray_shuffle_min": 0, "ray_round_bytes": 30_000},
        "ray2-one-task": {"num_workers": 2},
    }
    for name, changes in runs.items():
        run = dataclasses.replace(cfg, engine="ray", **changes)
        result = curate(run, inputs, str(tmp_path / name))
    local = outputs(tmp_path / "local")
    assert any(name.startswith("shards/") for name in local)
    for name in runs:  # shards, rejected logs and manifest, bytewise
        assert outputs(tmp_path / name) == local, name
    assert result.metrics["kept_samples"] == json.loads(local["manifest.json"])["counts"]["kept"]

    # The messy corpus: every expectation holds, duplicates of photos included.
    drops = rejected(tmp_path / "local")
    for key, reason in expected.items():
        assert drops[key]["reason"] if reason != "kept" else key not in drops, key
        if reason != "kept":
            assert drops[key]["reason"] == reason, (key, drops[key])
    # The cluster of three keeps the original although it comes last; the copies name it.
    assert "cl_original" not in drops and "cl_other" not in drops
    for copy in ("cl_recompressed", "cl_resized"):
        assert drops[copy]["reason"] == "near_duplicate_image"
        assert drops[copy]["detail"].endswith("/cl_original")
    # Video near-duplicates from frame hashes: the larger original stays.
    assert drops["vid_copy"]["reason"] == "near_duplicate_video"
    assert drops["vid_copy"]["detail"].endswith("/video_00")
    assert "video_00" not in drops and "vid_other" not in drops
    manifest = json.loads(local["manifest.json"])
    assert manifest["dedup"]["components"] >= 14 + 2 and manifest["dedup"]["capped_buckets"] == 0
    assert manifest["config"]["engine"] is None  # runtime settings are not part of the output


def random_signatures(n: int, seed: int) -> dict[str, np.ndarray]:
    """Signatures with planted exact copies, image and text near-duplicates and random sizes."""
    rng = random.Random(seed)
    codes: list[int] = []
    texts: list[np.ndarray] = []
    shas: list[bytes] = []
    for i in range(n):
        code, text, sha = rng.getrandbits(256), None, i.to_bytes(16, "big")
        if codes and rng.random() < 0.3:
            j = rng.randrange(len(codes))
            what = rng.choice(["image", "text", "exact"])
            if what == "image":  # 0..24 flipped bits: within the radius of 18 or not
                code = codes[j]
                for bit in rng.sample(range(256), rng.randint(0, 24)):
                    code ^= 1 << bit
            elif what == "text":  # 0..20 of 64 MinHash values replaced: Jaccard ~ 1 .. 0.69
                text = texts[j].copy()
                for pos in rng.sample(range(64), rng.randint(0, 20)):
                    text[pos] = rng.getrandbits(32)
            else:
                sha = shas[j]
        codes.append(code)
        texts.append(
            np.array([rng.getrandbits(32) for _ in range(64)], "<u4") if text is None else text
        )
        shas.append(sha)

    def column(values):
        out = np.empty(n, dtype=object)
        out[:] = values
        return out

    return {
        "node": (np.arange(n, dtype=np.int64) // 100 << 32) + np.arange(n, dtype=np.int64) % 100,
        "key": column([f"{i // 100:05d}/k{i}" for i in range(n)]),
        "category": column(["caption"] * n),
        "text_tokens": np.ones(n, dtype=np.int64),
        "image_tokens": np.ones(n, dtype=np.int64),
        "width": np.array([rng.choice([64, 128]) for _ in range(n)], dtype=np.int64),
        "height": np.full(n, 64, dtype=np.int64),
        "bytes": np.array([rng.randint(1, 99) for _ in range(n)], dtype=np.int64),
        "sha": column(shas),
        "phash": column([c.to_bytes(32, "big") for c in codes]),
        "frames": column([b""] * n),
        "minhash": column([t.tobytes() for t in texts]),
    }


def brute_force(sigs: dict[str, np.ndarray], plan: DedupPlan) -> dict[str, tuple]:
    """The reference: every sample, larger / more bytes / earlier first, against every kept one.

    Text follows the LSH definition both engines share: a shared band, then the Jaccard check.
    """
    radius, threshold = plan.radius, plan.threshold
    n = len(sigs["node"])
    order = sorted(
        range(n),
        key=lambda i: (-sigs["width"][i] * sigs["height"][i], -sigs["bytes"][i], sigs["node"][i]),
    )
    image = [int.from_bytes(c, "big") for c in sigs["phash"]]
    text = [np.frombuffer(m, "<u4") for m in sigs["minhash"]]
    rules = [
        ("exact_duplicate", lambda i, k: sigs["sha"][i] == sigs["sha"][k]),
        ("near_duplicate_image", lambda i, k: (image[i] ^ image[k]).bit_count() <= radius),
        (
            "near_duplicate_text",
            lambda i, k: (
                any((text[i][a:b] == text[k][a:b]).all() for a, b in plan.lsh)
                and np.mean(text[i] == text[k]) >= threshold
            ),
        ),
    ]
    kept: list[int] = []
    drops = {}
    for i in order:
        for reason, rule in rules:
            hit = next((k for k in kept if rule(i, k)), None)
            if hit is not None:
                drops[sigs["key"][i]] = (reason, sigs["key"][hit])
                break
        else:
            kept.append(i)
    return drops


def decide(
    sigs: dict, plan: DedupPlan, partitions: int, seed: int, rounds: int = 1
) -> tuple[dict, Edges]:
    """The dedup steps with route rows in ``rounds`` shuffles, each dealt to ``partitions``
    groups (as Ray workers get them)."""
    rng = np.random.default_rng(seed)
    found = []
    for kind, r in itertools.product(plan.kinds, range(rounds)):
        rows = route_rows(sigs, plan, kind, (r, rounds))
        routes = np.unique(rows["route"])
        part_of = dict(zip(routes.tolist(), rng.integers(0, partitions, len(routes)).tolist()))
        part = np.array([part_of[r] for r in rows["route"].tolist()], dtype=np.int64)
        found += [kind_edges(kind, take(rows, part == p), plan) for p in range(partitions)]
    edges = Edges.merge(found)
    nodes, labels = components(edges.first, edges.second)
    drops = resolve(members_of(sigs, nodes, labels), plan)
    details = {
        k: (r, d.rsplit(" ", 1)[1])
        for k, r, d in zip(drops["key"], drops["reason"], drops["detail"])
    }
    return details, edges


def test_dedup_decisions_equal_brute_force_for_any_partitioning():
    sigs = random_signatures(1000, seed=3)
    cfg = CurateConfig()
    plan = DedupPlan.from_config(cfg)
    reference = brute_force(sigs, plan)
    reasons = {reason for reason, _ in reference.values()}
    assert reasons == {"exact_duplicate", "near_duplicate_image", "near_duplicate_text"}
    assert 150 < len(reference) < 350
    one, edges = decide(sigs, plan, partitions=1, seed=0)
    assert one == reference  # same samples dropped, same reason, same kept sample named
    # Rounds: 3 for every kind with that many copies; 40 puts each band part in a round of
    # its own (capped at the copies a kind has: one for exact, the LSH bands for text).
    for partitions, seed, rounds in ((3, 1, 1), (16, 2, 1), (3, 4, 3), (2, 5, 40)):
        split, split_edges = decide(sigs, plan, partitions, seed, rounds)
        assert split == reference
        assert np.array_equal(split_edges.first, edges.first)
        assert np.array_equal(split_edges.second, edges.second)


def test_hot_buckets_are_capped_and_counted():
    n = 300
    sigs = random_signatures(n, seed=5)
    # Every text shares its first LSH band (templated boilerplate), the rest differs.
    plan = DedupPlan.from_config(CurateConfig())
    start, end = plan.lsh[0]
    texts = [np.frombuffer(m, "<u4").copy() for m in sigs["minhash"]]
    for text in texts:
        text[start:end] = np.arange(start, end)
    sigs["minhash"][:] = [t.tobytes() for t in texts]
    rows = route_rows(sigs, plan, "text")
    edges = kind_edges("text", rows, plan)
    assert edges.capped_buckets == 1
    assert edges.capped_members == len(np.unique(sigs["minhash"]))
    # Within the cap each member still met its next max_bucket neighbours; copies (identical
    # MinHash) never count against it.
    uncapped = kind_edges("text", rows, dataclasses.replace(plan, cap=n))
    assert uncapped.capped_buckets == 0
    assert set(map(tuple, np.c_[edges.first, edges.second].tolist())) <= set(
        map(tuple, np.c_[uncapped.first, uncapped.second].tolist())
    )


def _wait_for_free_cpus(timeout: float = 60.0) -> None:
    """Until the actors of a killed driver are gone (Ray reclaims them within seconds)."""
    import ray

    deadline = time.time() + timeout
    while time.time() < deadline:
        if ray.available_resources().get("CPU", 0) >= ray.cluster_resources().get("CPU", 0):
            return
        time.sleep(0.2)
    raise AssertionError(f"Ray CPUs still held: {ray.available_resources()}")


def test_killed_ray_run_resumes_without_redoing_finished_units(tmp_path, ray_address):
    overrides = {"num_synthetic": 84, "shard_size": 12, "synthetic_max_side": 160}
    sets = [f"curate.{k}={v}" for k, v in overrides.items()]
    sets += ["curate.keep_work=true", "curate.engine=ray", f"curate.ray_address={ray_address}"]
    out = tmp_path / "killed"
    # Another driver on the session's Ray, pausing after each written unit (tests/curate_slow_run.py).
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "curate_slow_run.py"), str(out)]
        + [arg for s in sets for arg in ("--set", s)]
        + ["--after", "write_done=1.0"],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    write = out / "work" / "write"
    deadline = time.time() + 240
    while time.time() < deadline and len(list(write.glob("*.done"))) < 2:
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = sorted(p.stem for p in write.glob("*.done"))
    assert 2 <= len(done) < 7, done
    assert not (out / "manifest.json").exists()

    def stamps(paths) -> dict[Path, tuple[int, int]]:
        return {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in paths}

    finished = stamps(p for p in (out / "shards").glob("*.tar") if p.name[:5] in done)
    scanned = stamps((out / "work" / "scan").iterdir())
    deduped = stamps([out / "work" / "dedup.done", *(out / "work").glob("dedup/*")])
    assert finished and len(scanned) == 4 * 7

    _wait_for_free_cpus()
    cfg = load_recipe("tiny").override({"curate": {**overrides, "keep_work": True}}).curate
    curate(dataclasses.replace(cfg, engine="ray", num_workers=2), [], str(out))
    for path, stamp in {**finished, **scanned, **deduped}.items():
        assert stamps([path])[path] == stamp, f"{path} was redone"
    assert len(list(write.glob("*.done"))) == 7

    curate(cfg, [], str(tmp_path / "reference"))  # uninterrupted, local engine
    assert outputs(out) == outputs(tmp_path / "reference")


def test_a_failing_ray_task_raises_its_own_error_naming_the_unit(tmp_path, ray_address):
    """A scan task that fails surfaces in the driver as the worker's exception, not a Ray wrapper
    the user has to dig through, and no later phase runs."""

    def stop_in_second_unit(event: str, unit: str) -> None:  # runs in the Ray worker
        if event == "scan_sample" and unit == "00001":
            raise ValueError(f"operator crashed in unit {unit}")

    cfg = dataclasses.replace(load_recipe("tiny").curate, engine="ray", num_workers=2)
    cfg = dataclasses.replace(cfg, num_synthetic=48, shard_size=12, synthetic_max_side=160)
    with pytest.raises(ValueError, match="operator crashed in unit 00001"):
        curate(cfg, [], str(tmp_path / "out"), on_event=stop_in_second_unit)
    assert not (tmp_path / "out" / "work" / "dedup.done").exists()
    assert not (tmp_path / "out" / "manifest.json").exists()
