"""The curation stage: filter, de-duplicate, re-sample and write WebDataset shards.

    keye stage curate --preset tiny --output /tmp/curated                  # synthetic sources
    keye stage curate --input s3://raw/shards/ --input /data/x.parquet --output s3://cur/v1

Phases (each resumable; done markers are written last and atomically):

1. scan (parallel over work units = input files or synthetic blocks): per-sample operators
   (decode, size, text quality, language, image-text score), token counts and dedup signatures.
   Survivors go to ``work/scan/<unit>.tar``, signatures to ``<unit>.sig.jsonl``, rejections to
   ``<unit>.rejected.jsonl``, then ``<unit>.done``.
2. dedup (global): exact and near duplicates from the signatures (``keye_model.data.dedup``:
   candidate pairs by band key, verification, connected components, one decision per
   component); ``work/dedup/<unit>.drops.jsonl``, then ``work/dedup.done``.
3. mixture: per-category repeat factors from the surviving tokens (``keye_model.data.mixture``).
4. write (parallel over units): ``shards/<unit>-<part>.tar`` (at most ``shard_size`` samples each)
   and ``rejected/<unit>.jsonl``, then ``work/write/<unit>.done``.
5. ``manifest.json``, plots and metrics to MLflow (the run opens when the stage starts, so a
   crashed curation leaves a failed run behind).

Engines (``curate.engine``): ``local`` runs the phases in this process with forked workers;
``ray`` runs the same functions as Ray Data jobs (``keye_model.data.ray_curate``), locally or on
a cluster. Output does not depend on the engine or the number of workers.

A killed run restarts where it stopped: finished units are skipped, unfinished ones are redone
from scratch (their partial temp files deleted first), and the output is byte-identical to an
uninterrupted run (fixed tar headers, no timestamps in the manifest). The work directory
remembers the config and inputs it was made with; resuming with different ones is an error.

Sharded mode for a KFP ``ParallelFor``: task ``i`` of ``n`` runs ``--shard-index i --num-shards n``
(phase 1 for units ``u % n == i``); one final task without those flags finds every unit scanned
and runs the global dedup, mixture and write phases.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import io
import json
import os
import shutil
import tarfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from keye_model import storage
from keye_model.config_utils import from_dict, to_dict
from keye_model.data.config import CATEGORIES, CurateConfig
from keye_model.data.dedup import SIDE_BINS, DedupPlan, run_local, scan_summary, signature
from keye_model.data.mixture import achieved_shares, repeat_factors, repeats, target_shares
from keye_model.data.operators import Rejection, build_filters, media_tokens
from keye_model.data.readers import (
    BadRecord,
    WorkUnit,
    encode_rejected,
    iter_tar_groups,
    plan_units,
    read_unit,
)
from keye_model.data.records import Sample
from keye_model.log import get_logger, progress
from keye_model.stage import StageResult
from keye_model.tracking import scratch_dir

STAGE = "curate"
# Settings that do not change the output; a resumed run may change them freely.
RUNTIME_FIELDS = (
    "num_workers",
    "keep_work",
    "engine",
    "ray_address",
    "ray_shuffle_min",
    "ray_round_bytes",
    "rayjob",
)
# on_event(event, unit name) is called with "scan_sample" (each input sample), "scan_done" and
# "write_done" (each finished unit), in whichever worker did the work: progress reporting, or a
# test that needs to stop a run at a known point.
EventHook = Callable[[str, str], None]

log = get_logger(STAGE)


# ---------------------------------------------------------------------------------------------
# Output plumbing


@contextmanager
def scratch_space() -> Iterator[Path]:
    """A private temporary directory, removed however the block ends (success or error)."""
    path = scratch_dir("keye-curate-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def discard_partials(uri: str) -> None:
    """Delete the temp files a killed ``staged`` write of ``uri*`` left (local; S3 is atomic)."""
    if storage.is_s3(uri):
        return
    path = storage.local_path(uri)
    for tmp in path.parent.glob(f".{glob.escape(path.name)}*.tmp*"):
        tmp.unlink(missing_ok=True)


@contextmanager
def staged(uri: str, scratch: Path) -> Iterator[Path]:
    """A local path to write; on success it appears at ``uri`` atomically (rename or upload)."""
    if storage.is_s3(uri):
        tmp = scratch / hashlib.sha1(uri.encode()).hexdigest()
    else:
        final = storage.local_path(uri)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed write never becomes visible
        raise
    if storage.is_s3(uri):
        storage.upload(tmp, uri)
        tmp.unlink()
    else:
        tmp.replace(final)


def add_member(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    """Append a file with fixed metadata, so equal content gives byte-identical shards."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    archive.addfile(info, io.BytesIO(data))


# ---------------------------------------------------------------------------------------------
# Phase 1: scan


_WORKER_STATE: dict[str, Any] = {}


def _scanner(cfg_json: str, tokenizer_json: str) -> tuple[CurateConfig, list, Any]:
    """Per-process operators and tokenizer, built once per config."""
    key = hashlib.sha1((cfg_json + tokenizer_json).encode()).hexdigest()
    if _WORKER_STATE.get("key") != key:
        from tokenizers import Tokenizer

        cfg = from_dict(CurateConfig, json.loads(cfg_json))
        _WORKER_STATE.update(
            key=key,
            cfg=cfg,
            filters=build_filters(cfg),
            tokenizer=Tokenizer.from_str(tokenizer_json),
        )
    return _WORKER_STATE["cfg"], _WORKER_STATE["filters"], _WORKER_STATE["tokenizer"]


def scan_sample(
    sample: Sample, cfg: CurateConfig, filters: list, tokenizer: Any
) -> Rejection | dict:
    """Run the per-sample operators; a rejection, or the sample's dedup signature."""
    if sample.category not in CATEGORIES:
        return Rejection("unknown_category", f"{sample.category!r} not in {list(CATEGORIES)}")
    for op in filters:
        rejection = op(sample)
        if rejection is not None:
            return rejection
    if sample.width and not sample.image_tokens:  # image_size not configured: still count tokens
        try:
            sample.image_tokens = media_tokens(sample, cfg.filters)
        except ValueError as err:
            return Rejection("extreme_aspect", str(err)[:200])
    sample.text_tokens = len(tokenizer.encode(sample.full_text(), add_special_tokens=False).ids)
    return signature(sample, cfg)


def scan_unit(
    unit: WorkUnit,
    cfg_json: str,
    tokenizer_json: str,
    work: str,
    on_event: EventHook | None = None,
) -> dict:
    """Phase 1 for one unit; returns (and stores in the done marker) its counts."""
    cfg, filters, tokenizer = _scanner(cfg_json, tokenizer_json)
    base = storage.join(work, "scan", unit.name)
    discard_partials(base + ".")  # what a run killed inside this unit left; redone from scratch
    counts: dict[str, Any] = {
        "input": 0,
        "passed": 0,
        "reasons": Counter(),
        "by_source": Counter(),
        "rejected_by_category": Counter(),
        "input_by_category": Counter(),
    }
    # Every output is written as samples stream by: memory does not grow with the unit's size.
    with ExitStack() as stack:
        scratch = stack.enter_context(scratch_space())  # exits last: after uploads from it
        archive = stack.enter_context(
            tarfile.open(
                stack.enter_context(staged(base + ".tar", scratch)), "w", format=tarfile.PAX_FORMAT
            )
        )
        sigs = stack.enter_context(
            open(stack.enter_context(staged(base + ".sig.jsonl", scratch)), "w")
        )
        rejected = stack.enter_context(
            open(stack.enter_context(staged(base + ".rejected.jsonl", scratch)), "w")
        )
        for item in read_unit(unit, cfg, scratch):
            if on_event is not None:
                on_event("scan_sample", unit.name)
            counts["input"] += 1
            counts["by_source"][item.source] += 1
            if isinstance(item, BadRecord):
                verdict: Rejection | dict = item.rejection
                category, raw = "unknown", item.raw
            else:
                verdict = scan_sample(item, cfg, filters, tokenizer)
                category, raw = item.category, item.media or b""
            counts["input_by_category"][category] += 1
            if isinstance(verdict, Rejection):
                counts["reasons"][verdict.reason] += 1
                counts["rejected_by_category"][category] += 1
                record = encode_rejected(
                    item.key, item.source, category, verdict, raw, cfg.rejected_bytes_max
                )
                rejected.write(json.dumps(record, sort_keys=True) + "\n")
                continue
            item.image = None  # release the decoded pixels before the next sample
            counts["passed"] += 1
            sigs.write(json.dumps(verdict, sort_keys=True) + "\n")
            for name, data in item.members():
                add_member(archive, name, data)
    summary = {k: dict(v) if isinstance(v, Counter) else v for k, v in counts.items()}
    storage.write_text(base + ".done", json.dumps(summary, sort_keys=True))
    if on_event is not None:
        on_event("scan_done", unit.name)
    return summary


# ---------------------------------------------------------------------------------------------
# Phase 4: write


def write_unit(
    unit: WorkUnit,
    cfg_json: str,
    work: str,
    output: str,
    drops: dict[str, list[str]],
    factors: dict[str, float],
    on_event: EventHook | None = None,
) -> dict:
    """Phase 4 for one unit: emit survivors (with mixture repeats) into shards, log rejections."""
    cfg = from_dict(CurateConfig, json.loads(cfg_json))
    base = storage.join(work, "scan", unit.name)
    by_category: dict[str, Counter] = defaultdict(Counter)
    by_source: Counter = Counter()
    reasons: Counter = Counter()
    shards: list[str] = []
    with ExitStack() as stack:
        scratch = stack.enter_context(scratch_space())  # exits last: after uploads from it
        scan_rejected = storage.download(base + ".rejected.jsonl", scratch / "scan-rejected.jsonl")
        staging = (
            storage.download(base + ".tar", scratch / "staging.tar")
            if storage.is_s3(base)
            else storage.local_path(base + ".tar")
        )
        writer = stack.enter_context(_ShardWriter(output, unit, cfg.shard_size, scratch, shards))
        rejected_uri = storage.join(output, "rejected", f"{unit.name}.jsonl")
        rejected = stack.enter_context(
            open(stack.enter_context(staged(rejected_uri, scratch)), "w")
        )
        with open(scan_rejected) as earlier:  # scan-phase rejections first, in input order
            shutil.copyfileobj(earlier, rejected)
        for key, members in iter_tar_groups(staging):
            sample = Sample.from_members(key, members)
            stats = by_category[sample.category]
            factor = factors.get(sample.category, 0.0)
            if key in drops:
                (reason, detail), n = drops[key], 0
            else:
                n = repeats(factor, cfg.seed, key)
                reason, detail = (
                    "mixture_downsample",
                    f"category {sample.category!r} repeat factor {factor:.3f}",
                )
            if n == 0:
                reasons[reason] += 1
                stats["rejected"] += 1
                rejection = Rejection(reason, detail)
                record = encode_rejected(
                    key,
                    sample.source,
                    sample.category,
                    rejection,
                    sample.media or b"",
                    cfg.rejected_bytes_max,
                )
                rejected.write(json.dumps(record, sort_keys=True) + "\n")
                continue
            stats["kept"] += 1
            by_source[sample.source] += 1
            for j in range(n):
                repeat_meta = {**sample.metadata, "repeat_of": key}
                writer.add(
                    sample
                    if j == 0
                    else dataclasses.replace(sample, key=f"{key}_r{j}", metadata=repeat_meta)
                )
                stats["emitted"] += 1
                stats["text_tokens"] += sample.text_tokens
                stats["image_tokens"] += sample.image_tokens
        writer.close()
    summary = {
        "shards": shards,
        "kept_by_source": dict(by_source),
        "reasons": dict(reasons),
        "by_category": {c: dict(v) for c, v in by_category.items()},
    }
    storage.write_text(
        storage.join(work, "write", f"{unit.name}.done"), json.dumps(summary, sort_keys=True)
    )
    if on_event is not None:
        on_event("write_done", unit.name)
    return summary


class _ShardWriter:
    """Rolls output shards ``<unit>-<part>.tar`` every ``shard_size`` samples."""

    def __init__(
        self, output: str, unit: WorkUnit, shard_size: int, scratch: Path, names: list[str]
    ):
        self.output, self.unit, self.shard_size, self.scratch, self.names = (
            output,
            unit,
            shard_size,
            scratch,
            names,
        )
        self.count, self.archive, self.ctx = 0, None, None

    def __enter__(self) -> _ShardWriter:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if exc_info[0] is not None and self.archive is not None:
            # A failed unit: drop the open shard's temp file instead of publishing half a shard.
            self.archive.close()
            self.ctx.__exit__(*exc_info)
            self.archive = self.ctx = None

    def add(self, sample: Sample) -> None:
        if self.archive is None or self.count == self.shard_size:
            self.close()
            name = f"shards/{self.unit.name}-{len(self.names):03d}.tar"
            self.names.append(name)
            self.ctx = staged(storage.join(self.output, name), self.scratch)
            self.archive = tarfile.open(self.ctx.__enter__(), "w", format=tarfile.PAX_FORMAT)
            self.count = 0
        for name, data in sample.members():
            add_member(self.archive, name, data)
        self.count += 1

    def close(self) -> None:
        if self.archive is not None:
            self.archive.close()
            self.ctx.__exit__(None, None, None)
            self.archive = self.ctx = None


# ---------------------------------------------------------------------------------------------
# Orchestration


def _pool_map(fn: Callable, tasks: list[tuple], workers: int, desc: str) -> list:
    """Run ``fn(*task)`` for each task, in-process or across forked worker processes."""
    if workers <= 1 or len(tasks) <= 1:
        return [fn(*task) for task in progress(tasks, desc=desc, total=len(tasks))]
    import multiprocessing

    # fork: children inherit the imported modules and the warmed-up operators (language model,
    # tokenizer), where spawn would re-import torch/transformers (seconds) in every worker. The
    # stage's MLflow run is open meanwhile: children never call MLflow, and a forked child leaves
    # through os._exit, so it cannot close or flush the parent's store connection.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=context) as pool:
        futures = [pool.submit(fn, *task) for task in tasks]
        return [f.result() for f in progress(futures, desc=desc, total=len(futures))]


def _tokenizer_json(cfg: CurateConfig) -> str:
    """The text tokenizer serialised once, so workers load it with ``tokenizers`` alone (fast)."""
    from keye_model.processing import build_tiny_tokenizer, load_tokenizer

    tokenizer = build_tiny_tokenizer() if cfg.tokenizer == "tiny" else load_tokenizer(cfg.tokenizer)
    return tokenizer.backend_tokenizer.to_str()


def _fingerprint(cfg: CurateConfig, units: list[WorkUnit], work: str) -> None:
    """Record what the work directory was made from; refuse to mix runs."""
    config = {k: v for k, v in to_dict(cfg).items() if k not in RUNTIME_FIELDS}
    record = json.dumps(
        {"config": config, "units": [dataclasses.asdict(u) for u in units]}, sort_keys=True
    )
    uri = storage.join(work, "run.json")
    if storage.exists(uri):
        if storage.read_text(uri) != record:
            raise ValueError(
                f"{work} holds an unfinished run with a different config or inputs; "
                "use a fresh --output or delete that directory"
            )
        return
    storage.write_text(uri, record)


class LocalEngine:
    """Scan, dedup and write in this process, units spread over forked worker processes."""

    name = "local"

    def __init__(self, num_workers: int):
        self.workers = num_workers or os.cpu_count() or 1

    def scan(self, units, cfg_json, tokenizer_json, work, on_event) -> None:
        """Phase 1 for ``units``."""
        _scanner(cfg_json, tokenizer_json)  # build once here; forked workers inherit it
        tasks = [(u, cfg_json, tokenizer_json, work, on_event) for u in units]
        _pool_map(scan_unit, tasks, self.workers, "scan")

    def dedup(self, plan: DedupPlan, units: list[WorkUnit], work: str) -> dict:
        """Phase 2 in this process."""
        return run_local(plan, units, work)

    def write(self, units, cfg_json, work, output, factors, on_event) -> None:
        """Phase 4 for ``units``."""
        from keye_model.data.dedup import read_unit_drops

        tasks = [
            (u, cfg_json, work, output, read_unit_drops(work, u.name), factors, on_event)
            for u in units
        ]
        _pool_map(write_unit, tasks, self.workers, "write")


@contextmanager
def open_engine(cfg: CurateConfig) -> Iterator[Any]:
    """The configured engine, with Ray up for the duration of the block when engine=ray."""
    if cfg.engine == "local":
        yield LocalEngine(cfg.num_workers)
        return
    from keye_model.data.ray_curate import RayEngine, ray_runtime

    with ray_runtime(cfg) as cpus:
        yield RayEngine(cpus, cfg.num_workers, cfg.ray_shuffle_min, cfg.ray_round_bytes)


def _dedup_phase(cfg: CurateConfig, engine: Any, units: list[WorkUnit], work: str) -> dict:
    """Phase 2, once: a finished dedup (``work/dedup.done``) is read back on resume."""
    done = storage.join(work, "dedup.done")
    if storage.exists(done):
        log.info("dedup: already done")
        return json.loads(storage.read_text(done))
    _remove_tree(storage.join(work, "dedup"))  # drop files of a dedup that was killed midway
    result = engine.dedup(DedupPlan.from_config(cfg), units, work)
    storage.write_text(done, json.dumps(result, sort_keys=True))
    return result


def _done(uri: str) -> bool:
    return storage.exists(uri)


def curate(
    cfg: CurateConfig,
    inputs: list[str],
    output: str,
    shard_index: int | None = None,
    num_shards: int = 1,
    *,
    on_event: EventHook | None = None,
) -> StageResult:
    """Run the curation stage (or, with ``shard_index``, only its scan phase for that shard)."""
    started = time.time()
    cfg.validate()
    if shard_index is not None and not 0 <= shard_index < num_shards:
        raise ValueError(f"--shard-index must lie in [0, {num_shards}), got {shard_index}")
    if shard_index is not None:  # one ParallelFor scan task: the final pass owns the MLflow run
        return _run(cfg, inputs, output, shard_index, num_shards, on_event, None, started)
    from keye_model.tracking import stage_run

    # Open before any work, so a crash leaves a FAILED run with the config. Forked workers may
    # start inside it: they never touch MLflow, and the client starts no background threads.
    with stage_run(STAGE, cfg) as tracker:
        tracker.set_tags({"curate.engine": cfg.engine})
        return _run(cfg, inputs, output, None, 1, on_event, tracker, started)


def _run(
    cfg: CurateConfig,
    inputs: list[str],
    output: str,
    shard_index: int | None,
    num_shards: int,
    on_event: EventHook | None,
    tracker: Any,
    started: float,
) -> StageResult:
    units = plan_units(cfg, inputs)  # validates every input file before any heavy work
    work = storage.join(output, "work")
    _fingerprint(cfg, units, work)
    cfg_json = json.dumps(to_dict(cfg), sort_keys=True)
    mine = [u for u in units if shard_index is None or u.index % num_shards == shard_index]
    pending = [u for u in mine if not _done(storage.join(work, "scan", f"{u.name}.done"))]
    with open_engine(cfg) as engine:
        log.info(
            "scan: %d units (%d already done), engine %s with %d workers",
            len(mine),
            len(mine) - len(pending),
            engine.name,
            engine.workers,
        )
        clock = time.time()
        if pending:
            engine.scan(pending, cfg_json, _tokenizer_json(cfg), work, on_event)
        seconds = {"scan": time.time() - clock}
        if shard_index is not None:
            return StageResult(
                stage=STAGE,
                outputs={"work": work},
                metrics={
                    "units_scanned": float(len(pending)),
                    "elapsed_s": time.time() - started,
                },
                message=f"scanned shard {shard_index}/{num_shards}: {len(mine)} units; "
                "run once more without --shard-index to finish",
            )
        missing = [u.name for u in units if not _done(storage.join(work, "scan", f"{u.name}.done"))]
        if missing:
            raise RuntimeError(f"units {missing[:5]} were not scanned")

        clock = time.time()
        dedup = _dedup_phase(cfg, engine, units, work)
        seconds["dedup"] = time.time() - clock
        factors, budget = repeat_factors(cfg.mixture, dedup["available"])
        log.info(
            "dedup dropped %d (%d hot buckets capped); repeat factors %s",
            sum(dedup["reasons"].values()),
            dedup["stats"]["capped_buckets"],
            {c: round(f, 3) for c, f in factors.items()},
        )
        _clean_partials(output)
        write_pending = [
            u for u in units if not _done(storage.join(work, "write", f"{u.name}.done"))
        ]
        log.info("write: %d units (%d already done)", len(units), len(units) - len(write_pending))
        clock = time.time()
        engine.write(write_pending, cfg_json, work, output, factors, on_event)
        seconds["write"] = time.time() - clock
    log.info("phases: %s", ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()))
    manifest = build_manifest(cfg, units, inputs, work, dedup, factors, budget)
    storage.write_text(
        storage.join(output, "manifest.json"), json.dumps(manifest, indent=2, sort_keys=True)
    )
    _log_to_mlflow(tracker, manifest)
    tracker.log_metrics(
        {"elapsed_s": time.time() - started, **{f"{k}_s": v for k, v in seconds.items()}}
    )
    if not cfg.keep_work:
        _remove_work(work)
    counts = manifest["counts"]
    metrics = {f"{k}_samples": float(v) for k, v in counts.items()}
    metrics.update(
        text_tokens=float(manifest["tokens"]["text"]),
        image_tokens=float(manifest["tokens"]["image"]),
        elapsed_s=time.time() - started,
        **{f"{phase}_s": value for phase, value in seconds.items()},
    )
    return StageResult(
        stage=STAGE,
        outputs={
            "data": output,
            "shards": storage.join(output, "shards"),
            "manifest": storage.join(output, "manifest.json"),
        },
        metrics=metrics,
        message=f"kept {counts['kept']}/{counts['input']} samples ({counts['emitted']} emitted) in {len(manifest['shards'])} shards",
        details={"rejected_by_reason": manifest["rejected_by_reason"]},
    )


def build_manifest(
    cfg: CurateConfig,
    units: list[WorkUnit],
    inputs: list[str],
    work: str,
    dedup: dict,
    factors: dict[str, float],
    budget: int,
) -> dict:
    """Aggregate the done markers of every unit into the stage manifest (no timestamps)."""
    available = dedup["available"]
    reasons: Counter = Counter()
    sources: dict[str, Counter] = defaultdict(Counter)
    categories: dict[str, Counter] = defaultdict(Counter)
    shards: list[str] = []
    for unit in units:
        scan = scan_summary(work, unit.name)
        write = json.loads(storage.read_text(storage.join(work, "write", f"{unit.name}.done")))
        reasons.update(scan["reasons"])
        reasons.update(write["reasons"])
        for src, n in scan["by_source"].items():
            sources[src]["input"] += n
        for src, n in write["kept_by_source"].items():
            sources[src]["kept"] += n
        for cat, n in scan["input_by_category"].items():
            categories[cat]["input"] += n
        for cat, n in scan["rejected_by_category"].items():
            categories[cat]["rejected"] += n
        for cat, stats in write["by_category"].items():
            categories[cat].update(stats)
        shards += write["shards"]
    for counter in sources.values():
        counter["rejected"] = counter["input"] - counter["kept"]
    total_in = sum(c["input"] for c in sources.values())
    kept = sum(c["kept"] for c in sources.values())
    emitted_tokens = {
        c: v["text_tokens"] + v["image_tokens"] for c, v in categories.items() if v["emitted"]
    }
    return {
        "counts": {
            "input": total_in,
            "kept": kept,
            "rejected": total_in - kept,
            "emitted": sum(c["emitted"] for c in categories.values()),
        },
        "rejected_by_reason": dict(sorted(reasons.items())),
        "by_source": {s: dict(c) for s, c in sorted(sources.items())},
        "by_category": {
            c: {
                k: v[k]
                for k in ("input", "kept", "rejected", "emitted", "text_tokens", "image_tokens")
            }
            for c, v in sorted(categories.items())
        },
        "tokens": {
            "text": sum(v["text_tokens"] for v in categories.values()),
            "image": sum(v["image_tokens"] for v in categories.values()),
        },
        "mixture": {
            "enabled": cfg.mixture.enabled,
            "token_budget": budget,
            "available_tokens": dict(sorted(available.items())),
            "repeat_factor": {c: round(f, 6) for c, f in sorted(factors.items())},
            "target_share": target_shares(cfg.mixture.weights, available),
            "achieved_share": achieved_shares(emitted_tokens),
            "unavailable": sorted(
                c for c, w in cfg.mixture.weights.items() if w > 0 and not available.get(c)
            ),
        },
        "image_side_histogram": {
            "bins": [round(b, 1) for b in SIDE_BINS],
            "counts": dedup["side_hist"],
        },
        "dedup": dedup["stats"],
        "shards": shards,
        "inputs": list(inputs),
        "config": to_dict(cfg) | {k: None for k in RUNTIME_FIELDS},
    }


def _log_to_mlflow(tracker: Any, manifest: dict) -> None:
    from keye_model.data.plots import stats_figures

    counts = manifest["counts"]
    tracker.log_metrics(
        {
            **{f"samples_{k}": v for k, v in counts.items()},
            "tokens_text": manifest["tokens"]["text"],
            "tokens_image": manifest["tokens"]["image"],
        }
    )
    tracker.log_metrics({f"rejected_{k}": v for k, v in manifest["rejected_by_reason"].items()})
    tracker.log_metrics({f"dedup_{k}": v for k, v in manifest["dedup"].items()})
    tracker.log_dict(manifest, "curate/manifest.json")
    for name, figure in stats_figures(manifest).items():
        tracker.log_figure(figure, f"curate/{name}.png")


def _clean_partials(output: str) -> None:
    """Delete temp files a killed run left in shards/ and rejected/ (local; S3 uploads are atomic)."""
    if storage.is_s3(output):
        return
    for sub in ("shards", "rejected"):
        for tmp in storage.local_path(output).joinpath(sub).glob(".*.tmp*"):
            tmp.unlink(missing_ok=True)


def _remove_work(work: str) -> None:
    """Delete the staging area (signatures, staging shards, done markers)."""
    _remove_tree(work)


def _remove_tree(uri: str) -> None:
    """Delete everything under a local directory or an S3 prefix."""
    if not storage.is_s3(uri):
        shutil.rmtree(storage.local_path(uri), ignore_errors=True)
        return
    for item in list(storage.list_files(uri)):
        storage.delete(item)
