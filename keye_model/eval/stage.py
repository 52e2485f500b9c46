"""The evaluation stage entry function: ``evaluate(cfg, model, endpoint, data, output)``.

    keye stage evaluate --preset tiny --model DIR --output OUT                 # held-out synthetic sets
    keye stage evaluate --preset tiny --endpoint http://127.0.0.1:8000 --data s3://bench/ --output s3://runs/eval

Steps: read and validate every benchmark's released files (local or ``s3://``; nothing is
downloaded from the internet) before any model work; build the official prompts with the
configured thinking suffix (inline benchmark images are decoded once to files in a scratch
media folder, removed at the end; requests carry ``file://`` paths, never image bytes); ask
only what the prediction cache lacks (in-process model or an
OpenAI-compatible endpoint); score with each benchmark's official rule; write
``results/<bench>.json``, ``report.json``, ``report.md`` and ``comparison.png``; log metrics,
the report and the plot to MLflow.
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

from keye_model import storage
from keye_model.eval.config import EvalConfig
from keye_model.log import get_logger
from keye_model.stage import StageResult

log = get_logger("evaluate")

THINKING_MODES = ("think", "no_think", "auto")


def _check_config(cfg: EvalConfig, model: str | None, endpoint: str | None) -> None:
    from keye_model.eval.benchmarks import BENCHMARKS

    if model is None and endpoint is None:
        raise ValueError(
            "give --model (answered in-process) or --endpoint (an OpenAI-compatible server); "
            "with both, the endpoint answers and --model names the checkpoint it serves"
        )
    if cfg.thinking not in THINKING_MODES:
        raise ValueError(f"evaluate.thinking must be one of {THINKING_MODES}, got {cfg.thinking!r}")
    if not cfg.benchmarks:
        raise ValueError("evaluate.benchmarks is empty")
    unknown = [b for b in cfg.benchmarks if b not in BENCHMARKS]
    if unknown:
        raise ValueError(f"evaluate.benchmarks: unknown {unknown}; known: {sorted(BENCHMARKS)}")
    for name in ("limit", "synthetic_size"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"evaluate.{name} must be >= 0")
    if cfg.media_urls not in ("data", "file"):
        raise ValueError(f"evaluate.media_urls must be data or file, got {cfg.media_urls!r}")
    if cfg.batching not in ("exact", "padded"):
        raise ValueError(f"evaluate.batching must be exact or padded, got {cfg.batching!r}")
    if cfg.max_new_tokens < 1:
        raise ValueError("evaluate.max_new_tokens must be >= 1")


def _check_synthetic_allowed(cfg: EvalConfig, model: str | None, data: str | None) -> None:
    """Refuse, before any work, to score a large or unknown model on the held-out synthetic sets.

    The synthetic sets are smoke tests for tiny models; a real model scored on them would
    report numbers that look like benchmark results and are not.
    """
    if data is not None:
        return
    if model is None:
        raise ValueError(
            "no benchmark data (--data) and the size of the model behind the endpoint is unknown: "
            "held-out synthetic sets only score tiny models; pass the released benchmark files "
            "with --data, or --model naming the tiny checkpoint the endpoint serves"
        )
    from keye_model.model.params import count_parameters_at

    total = count_parameters_at(model).total
    if total > cfg.synthetic_max_params:
        raise ValueError(
            f"no benchmark data (--data) for {model} ({total / 1e9:.3g}B parameters): held-out "
            f"synthetic sets only score models up to evaluate.synthetic_max_params "
            f"({cfg.synthetic_max_params:g}); pass the released benchmark files with --data"
        )


def _check_fits_in_process(cfg: EvalConfig, model: str) -> None:
    """Refuse, before any download, to run a model too large for in-process generation."""
    from keye_model.model.params import count_parameters_at

    total = count_parameters_at(model).total
    if total > cfg.max_in_process_params:
        raise ValueError(
            f"{model} has {total / 1e9:.0f}B parameters, over evaluate.max_in_process_params "
            f"({cfg.max_in_process_params / 1e9:g}B): serve it (keye deploy) and pass --endpoint"
        )


def _local_dir(uri: str, work: Path, name: str) -> Path:
    if storage.is_s3(uri):
        return storage.sync_down(uri, work / name)
    path = storage.local_path(uri)
    if not path.exists():
        raise FileNotFoundError(f"{name} not found: {uri}")
    return path


def build_requests(cfg: EvalConfig, bench: str, records: list[dict], media_root: Path) -> list:
    """One cached-or-asked ``Request`` per record, with the official prompt and thinking suffix."""
    from keye_model.eval.backends import Request
    from keye_model.eval.benchmarks import get_benchmark, prompt_hash, to_messages
    from keye_model.processing.chat import THINKING_SUFFIX

    spec = get_benchmark(bench)
    out = []
    for record in records:
        messages = to_messages(spec.build(record, media_root), THINKING_SUFFIX[cfg.thinking])
        out.append(
            Request(
                bench,
                str(record[spec.key]),
                prompt_hash(messages, cfg.max_new_tokens),
                messages,
                cfg.max_new_tokens,
            )
        )
    return out


def make_backend(cfg: EvalConfig, model: str | None, endpoint: str | None, work: Path):
    """The in-process backend for ``model`` or the HTTP backend for ``endpoint``."""
    from keye_model.eval.backends import InProcessBackend, OpenAIBackend

    if endpoint:
        return OpenAIBackend(
            endpoint,
            model=cfg.served_model or None,
            concurrency=cfg.concurrency,
            timeout_s=cfg.timeout_s,
            retries=cfg.retries,
            backoff_base_s=cfg.backoff_base_s,
            media_urls=cfg.media_urls,
        )
    # Images and videos arrive as file:// paths and are read in place; the generator's own
    # temporary media folder (only used for data URLs) is removed when the backend closes.
    return InProcessBackend(
        _local_dir(model, work, "model"),
        batch_size=cfg.batch_size,
        batching=cfg.batching,
    )


def evaluate(
    cfg: EvalConfig,
    model: str | None = None,
    endpoint: str | None = None,
    data: str | None = None,
    output: str = "eval-output",
    backend=None,
) -> StageResult:
    """Run the configured benchmarks against a model or endpoint and score them officially.

    ``data`` is a root holding one folder per benchmark; without it, held-out synthetic sets are
    written in the official schemas first - for a model of at most
    ``cfg.synthetic_max_params`` parameters only (a larger one, or an endpoint without
    ``model``, fails before any work). ``backend`` overrides the backend built
    from ``model``/``endpoint`` (tests wrap a real backend to count calls).
    """
    from keye_model.tracking import scratch_dir

    if backend is None:
        _check_config(cfg, model, endpoint)
        _check_synthetic_allowed(cfg, model, data)
    # Decoded benchmark images: a copy of the data, so kept out of the output and always removed.
    media = scratch_dir("keye-eval-media-")
    try:
        if not storage.is_s3(output):
            local = storage.local_path(output)
            return _evaluate_in(cfg, model, endpoint, data, output, backend, local, media)
        # S3 output: work in a scratch folder, uploaded at the end and always removed.
        work = scratch_dir("keye-eval-")
        try:
            return _evaluate_in(cfg, model, endpoint, data, output, backend, work, media)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    finally:
        shutil.rmtree(media, ignore_errors=True)


def _evaluate_in(
    cfg: EvalConfig,
    model: str | None,
    endpoint: str | None,
    data: str | None,
    output: str,
    backend,
    work: Path,
    media: Path,
) -> StageResult:
    """``evaluate`` in working folder ``work`` (output or scratch), images decoded into ``media``."""
    from keye_model.eval import report
    from keye_model.eval.backends import PredictionCache, model_fingerprint
    from keye_model.eval.benchmarks import load_benchmark, score
    from keye_model.tracking import register_model, stage_run

    work.mkdir(parents=True, exist_ok=True)
    cache_uri = storage.join(output, "predictions.jsonl")
    if storage.is_s3(output) and storage.exists(cache_uri):
        storage.download(cache_uri, work / "predictions.jsonl")  # resume a run killed earlier

    # 1. data: read and validate everything before any model work
    if data is None:
        from keye_model.eval.benchmarks import write_synthetic

        data_root = write_synthetic(
            work / "synthetic", cfg.benchmarks, cfg.synthetic_size, cfg.synthetic_seed
        )
    else:
        data_root = _local_dir(data, work, "data")
    loaded = {b: load_benchmark(data_root, b, cfg.limit or None, media) for b in cfg.benchmarks}
    requests = {b: build_requests(cfg, b, recs, media) for b, (recs, media) in loaded.items()}

    # 2. which model answers: the prediction cache refuses answers written for another one
    owned = backend is None
    model_dir = None
    if backend is None and endpoint:
        backend = make_backend(cfg, None, endpoint, work)  # cheap: no connection until asked
    if backend is not None:
        fingerprint = backend.fingerprint()
    else:
        _check_fits_in_process(cfg, model)  # before downloading any weights
        model_dir = _local_dir(model, work, "model")
        fingerprint = model_fingerprint(model_dir)
    cache = PredictionCache(work / "predictions.jsonl", fingerprint=fingerprint)
    if cache.dropped_lines:
        log.warning(
            "prediction cache: %d partial line(s) dropped (killed mid-write); those are asked again",
            cache.dropped_lines,
        )
    todo = [r for b in cfg.benchmarks for r in requests[b] if r not in cache]
    total = sum(len(v) for v in requests.values())
    log.info(
        "%d questions over %d benchmark(s): %d cached, %d to ask",
        total,
        len(requests),
        total - len(todo),
        len(todo),
    )

    earlier = report.previous_runs(None, cfg.compare_runs)
    judge = None
    if cfg.judge_endpoint:
        from keye_model.eval.backends import OpenAIBackend

        judge_client = OpenAIBackend(
            cfg.judge_endpoint, model=cfg.judge_model or None, concurrency=1
        )
        judge = functools.partial(judge_client.complete, max_new_tokens=cfg.judge_max_new_tokens)

    with stage_run("evaluate", cfg) as tracker:
        tracker.set_tags(
            {
                "eval.model": model or "",
                "eval.endpoint": endpoint or "",
                "eval.data": data or "synthetic-held-out",
            }
        )
        if todo:
            if backend is None:
                backend = make_backend(cfg, str(model_dir), None, work)
            try:
                backend.run(todo, cache.add)
            finally:
                if owned:
                    backend.close()
        results = {}
        results_dir = work / "results"
        results_dir.mkdir(exist_ok=True)
        for bench in cfg.benchmarks:
            records, _media = loaded[bench]
            responses = [cache.get(r) for r in requests[bench]]
            missing = [r.index for r, text in zip(requests[bench], responses) if text is None]
            if missing:
                raise RuntimeError(
                    f"{bench}: no prediction for {len(missing)} question(s), e.g. {missing[:3]}"
                )
            result = score(bench, records, responses, seed=cfg.seed, judge=judge)
            for rec, text in zip(result["items"], responses):  # scorers keep input order
                rec["response"] = text
            results[bench] = result
            (results_dir / f"{bench}.json").write_text(
                json.dumps(result, indent=1, ensure_ascii=False, default=str)
            )
            log.info(
                "%s: %.2f%% over %d question(s)",
                bench,
                100 * result["overall"],
                result.get("n_questions", result["n"]),
            )

        metrics = report.flat_metrics(results)
        summary = report.summary(results)
        (work / "report.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False))
        (work / "report.md").write_text(report.markdown(results))
        figure = report.comparison_figure(results, earlier)
        figure.savefig(work / "comparison.png", dpi=110)
        tracker.log_metrics(metrics)
        tracker.log_dict(summary, "evaluate/report.json")
        tracker.log_text((work / "report.md").read_text(), "evaluate/report.md")
        tracker.log_figure(figure, "evaluate/comparison.png")
        tracker.log_artifact(results_dir, "evaluate/results")
        run_id = tracker.run_id
        registered = ""
        if cfg.register_as and model:
            source = model if storage.is_s3(model) else str(storage.local_path(model).absolute())
            version = register_model(cfg.register_as, source, metrics, run_id)
            registered = f"{cfg.register_as}/{version}"
            log.info("registered %s as MLflow model %s", source, registered)

    if storage.is_s3(output):
        for name in ("predictions.jsonl", "report.json", "report.md", "comparison.png"):
            storage.upload(work / name, storage.join(output, name))
        storage.sync_up(results_dir, storage.join(output, "results"))
    headline = ", ".join(f"{b} {100 * r['overall']:.1f}%" for b, r in results.items())
    return StageResult(
        stage="evaluate",
        outputs={
            "report": storage.join(output, "report.json"),
            "markdown": storage.join(output, "report.md"),
            "plot": storage.join(output, "comparison.png"),
            "predictions": cache_uri,
            "results": storage.join(output, "results"),
        },
        metrics=metrics,
        message=f"evaluate: {headline}",
        details={
            "mlflow_run_id": run_id,
            "registered_model": registered,
            "asked": len(todo),
            "cached": total - len(todo),
            "seed": cfg.seed,
            "compared_runs": [name for name, _ in earlier],
        },
    )
