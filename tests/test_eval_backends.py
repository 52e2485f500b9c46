"""Evaluation backends end to end: ``keye serve local`` over HTTP vs in process, cache resume, retries.

A tiny random Keye model is written with ``keye init``'s assembler; greedy decoding makes its
answers deterministic, so the HTTP path (real uvicorn on 127.0.0.1, concurrency 8) must give
exactly the in-process predictions. MLflow runs on a sqlite file under tmp.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from keye_model.eval.backends import (
    OpenAIBackend,
    PredictionCache,
    Request,
    RequestFailed,
    wait_healthy,
)
from keye_model.eval.config import EvalConfig
from keye_model.eval.stage import evaluate
from tests.conftest import FIXTURES
from tests.servers import free_port, serve_app

BENCHES = ["mmbench_en", "mathvista", "videomme", "mmmu"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    saved = {
        k: os.environ.get(k)
        for k in ("KEYE_HOME", "MLFLOW_TRACKING_URI", "TMPDIR", "KEYE_NO_PROGRESS")
    }
    os.environ.update(
        KEYE_HOME=str(root / "home"),
        MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}",
        TMPDIR=str(root),
        KEYE_NO_PROGRESS="1",
    )
    yield root
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def model_dir(env):
    from keye_model.model.assembly import assemble

    out = env / "tiny-model"
    assemble("tiny", str(out), seed=0)  # model + its processor
    return out


@pytest.fixture(scope="module")
def data_dir(env):
    from keye_model.eval.benchmarks import write_synthetic

    return write_synthetic(env / "data", BENCHES, n=3, seed=900_001)


@pytest.fixture(scope="module")
def cfg():
    return EvalConfig(
        benchmarks=BENCHES, max_new_tokens=8, concurrency=8, batch_size=8, compare_runs=2
    )


@pytest.fixture(scope="module")
def server(env, model_dir):
    port = free_port()
    log = open(env / "server.log", "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "keye_model.cli",
            "serve",
            "local",
            "--model",
            str(model_dir),
            "--port",
            str(port),
            "--max-batch",
            "8",
            "--name",
            "keye-tiny",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=dict(os.environ),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_healthy(url, timeout_s=120, alive=lambda: proc.poll() is None)
        except RuntimeError as err:
            raise RuntimeError(f"{err}:\n{(env / 'server.log').read_text()[-3000:]}") from err
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _predictions(out: Path) -> dict:
    return PredictionCache(out / "predictions.jsonl").entries


@pytest.fixture(scope="module")
def in_process_run(env, model_dir, data_dir, cfg):
    out = env / "out-inproc"
    result = evaluate(cfg, model=str(model_dir), data=str(data_dir), output=str(out))
    return out, result


def test_http_backend_matches_in_process(env, server, model_dir, data_dir, cfg, in_process_run):
    inproc_out, inproc = in_process_run
    out = env / "out-http"
    # The endpoint answers; --model names the checkpoint it serves, for the registry.
    result = evaluate(
        cfg, model=str(model_dir), endpoint=server, data=str(data_dir), output=str(out)
    )
    assert result.details["registered_model"].startswith("keye-vl/")
    http_preds, local_preds = _predictions(out), _predictions(inproc_out)
    # 12 MMBench rotations + 3 + 3 + 3 questions, all asked, same keys and the same answers
    assert len(local_preds) == 21 and result.details["asked"] == 21
    assert http_preds == local_preds
    assert result.metrics == inproc.metrics
    # reports exist and name every benchmark
    report = json.loads((out / "report.json").read_text())
    assert sorted(report) == sorted(BENCHES)
    assert "| mmbench_en |" in (out / "report.md").read_text()
    assert (out / "comparison.png").stat().st_size > 1000


def test_server_endpoints_and_clear_errors(server, data_dir):
    models = httpx.get(f"{server}/v1/models").json()
    assert models["data"][0]["id"] == "keye-tiny"
    assert httpx.get(f"{server}/health").json()["status"] == "ok"
    image = next((data_dir / "mathvista" / "images").iterdir())
    body = {
        "model": "keye-tiny",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": image.as_uri()}},
                    {"type": "text", "text": "What is shown?/no_think"},
                ],
            }
        ],
        "max_tokens": 4,
        "temperature": 0,
    }
    resp = httpx.post(f"{server}/v1/chat/completions", json=body, timeout=120)
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert answer["object"] == "chat.completion" and answer["usage"]["completion_tokens"] <= 4
    bad = dict(
        body,
        messages=[
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": "file:///nope.png"}}],
            }
        ],
    )
    resp = httpx.post(f"{server}/v1/chat/completions", json=bad, timeout=60)
    assert resp.status_code == 400 and "nope.png" in resp.json()["detail"]
    resp = httpx.post(f"{server}/v1/chat/completions", json=dict(body, temperature=-1), timeout=60)
    assert resp.status_code == 400 and "temperature" in resp.json()["detail"]


class CountingBackend:
    """A real backend wrapped to count (and optionally stop after) the answers it gives."""

    def __init__(self, inner, stop_after: int | None = None):
        self.inner, self.stop_after, self.calls = inner, stop_after, 0

    def fingerprint(self):
        return self.inner.fingerprint()

    def run(self, requests, on_result):
        def counted(request, text):
            if self.stop_after is not None and self.calls >= self.stop_after:
                raise KeyboardInterrupt("simulated kill")
            self.calls += 1
            on_result(request, text)

        self.inner.run(requests, counted)


def test_killed_evaluation_resumes_from_cache(env, model_dir, data_dir, cfg, in_process_run):
    from keye_model.eval.backends import InProcessBackend

    inner = InProcessBackend(model_dir, batch_size=cfg.batch_size)
    out = env / "out-resume"
    first = CountingBackend(inner, stop_after=9)
    with pytest.raises(KeyboardInterrupt):
        evaluate(cfg, data=str(data_dir), output=str(out), backend=first)
    assert len(PredictionCache(out / "predictions.jsonl")) == 9
    # a kill can leave half a line; that answer is simply asked again
    with (out / "predictions.jsonl").open("a") as f:
        f.write('{"benchmark": "mathvista", "ind')
    assert PredictionCache(out / "predictions.jsonl").dropped_lines == 1
    second = CountingBackend(inner)
    result = evaluate(cfg, data=str(data_dir), output=str(out), backend=second)
    assert second.calls == 21 - 9
    assert result.details["cached"] == 9
    # resumed predictions equal an uninterrupted run's
    assert _predictions(out) == _predictions(in_process_run[0])
    # a third run asks nothing at all
    third = CountingBackend(inner)
    again = evaluate(cfg, data=str(data_dir), output=str(out), backend=third)
    assert third.calls == 0
    # the comparison plot draws the earlier finished run (the killed one is not FINISHED)
    assert len(again.details["compared_runs"]) == 1
    assert again.metrics == result.metrics


def test_cache_refuses_answers_written_for_another_model(
    env, server, model_dir, data_dir, cfg, in_process_run
):
    from keye_model.eval.backends import CacheMismatch
    from keye_model.model.assembly import assemble

    out = in_process_run[0]
    cache = out / "predictions.jsonl"
    before = cache.read_bytes()
    assert json.loads(before.splitlines()[0])["fingerprint"]["id"].startswith("model-sha256:")
    other = env / "tiny-model-seed1"  # same preset and config, other weights
    assemble("tiny", str(other), seed=1)
    with pytest.raises(CacheMismatch, match="written for model directory") as err:
        evaluate(cfg, model=str(other), data=str(data_dir), output=str(out))
    assert str(model_dir) in str(err.value) and str(other) in str(err.value)
    # a served model is another model too, even one loaded from the same directory
    with pytest.raises(CacheMismatch, match=r"not for model 'keye-tiny' served at http://127"):
        evaluate(cfg, endpoint=server, data=str(data_dir), output=str(out))
    assert cache.read_bytes() == before  # nothing was asked or written
    # a cache without a fingerprint cannot be attributed: refused as well
    legacy = env / "out-legacy"
    legacy.mkdir()
    (legacy / "predictions.jsonl").write_text(before.decode().split("\n", 1)[1])
    with pytest.raises(CacheMismatch, match="without a model fingerprint"):
        evaluate(cfg, model=str(model_dir), data=str(data_dir), output=str(legacy))


def test_generator_media_folder_is_removed_on_close(model_dir):
    from keye_model.eval.benchmarks import data_url
    from keye_model.eval.generation import LocalGenerator

    video = (FIXTURES / "video1.mp4").read_bytes()
    generator = LocalGenerator(model_dir)
    folder = generator.media_cache
    written = generator._video_file(data_url(video, "video/mp4"), "test")
    assert written.parent == folder and written.read_bytes() == video
    generator.close()
    assert not folder.exists()


def test_bad_input_fails_before_model_work(env, data_dir, cfg):
    with pytest.raises(ValueError, match="give --model .* or --endpoint"):
        evaluate(cfg, data=str(data_dir), output=str(env / "x"))
    with pytest.raises(ValueError, match="unknown"):
        evaluate(
            dataclasses.replace(cfg, benchmarks=["mmbench_xx"]),
            model="/nonexistent",
            output=str(env / "x"),
        )
    broken = env / "broken"
    (broken / "mathvista").mkdir(parents=True)
    (broken / "mathvista" / "testmini.json").write_text(
        json.dumps({"1": {"question": "q", "answer": "1"}})
    )
    with pytest.raises(
        ValueError,
        match=r"testmini.json: record 0 .* lacks field\(s\) \['question_type', 'answer_type'\]",
    ):
        evaluate(
            dataclasses.replace(cfg, benchmarks=["mathvista"]),
            model="/nonexistent",
            data=str(broken),
            output=str(env / "x"),
        )


def test_openai_client_retries_with_backoff_then_gives_up():
    """A real flaky HTTP server on 127.0.0.1: 503 twice, then a completion."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    app, hits = FastAPI(), {"n": 0}

    @app.post("/v1/chat/completions")
    def chat(body: dict):
        hits["n"] += 1
        if body["messages"][0]["content"] == "slow":
            time.sleep(1.0)
        if body["messages"][0]["content"] == "always-fail" or hits["n"] <= 2:
            return JSONResponse({"error": "busy"}, status_code=503)
        return {"choices": [{"message": {"role": "assistant", "content": "B"}}]}

    with serve_app(app) as url:
        client = OpenAIBackend(url, model="m", retries=3, backoff_base_s=0.01)
        assert client.complete("hello") == "B"
        assert client.calls == 3  # two 503s, then success
        client = OpenAIBackend(url, model="m", retries=2, backoff_base_s=0.01)
        req = Request("b", "1", "h", [{"role": "user", "content": "always-fail"}], 4)
        with pytest.raises(RequestFailed, match="after 3 attempt"):
            client.run([req], lambda r, t: None)
        # a request slower than the timeout is retried, then reported as a timeout
        client = OpenAIBackend(url, model="m", retries=1, timeout_s=0.2, backoff_base_s=0.01)
        slow = Request("b", "2", "h", [{"role": "user", "content": "slow"}], 4)
        with pytest.raises(RequestFailed, match="ReadTimeout"):
            client.run([slow], lambda r, t: None)
        assert client.calls == 2


def test_llm_judge_goes_through_the_same_client(env, server, model_dir, data_dir, cfg):
    # The served tiny model acts as judge: its answers never name an option, so MathVista's
    # rule-branch items go to the judge and come back as its (normalised) text.
    judged_cfg = dataclasses.replace(
        cfg, benchmarks=["mathvista"], judge_endpoint=server, judge_max_new_tokens=4, limit=3
    )
    result = evaluate(
        judged_cfg, model=str(model_dir), data=str(data_dir), output=str(env / "out-judge")
    )
    items = json.loads((env / "out-judge" / "results" / "mathvista.json").read_text())["items"]
    assert any(item["branch"] == "judge" for item in items)
    assert 0.0 <= result.metrics["mathvista/overall"] <= 1.0


def test_cli_requires_data_for_the_671b_preset(tmp_path, capsys):
    # The rule lives in the library (keye_model.eval.stage); the CLI only reports it.
    from keye_model.cli import main

    code = main(
        [
            "stage",
            "evaluate",
            "--preset",
            "keye-vl-671b-a37b",
            "--endpoint",
            "http://127.0.0.1:9",
            "--output",
            str(tmp_path / "out"),
        ]
    )
    assert code == 2
    assert "no benchmark data (--data)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_padded_batching_matches_unbatched_answers(model_dir, data_dir, cfg):
    # Left padding must not change a prompt's answer (the model keeps padded rows' positions);
    # exact batching cannot differ by construction, padded batching is checked here.
    from keye_model.eval.benchmarks import load_benchmark
    from keye_model.eval.generation import LocalGenerator
    from keye_model.eval.stage import build_requests

    messages = []
    for bench in ("mmbench_en", "mathvista", "mmmu"):
        records, media = load_benchmark(data_dir, bench)
        messages += [r.messages for r in build_requests(cfg, bench, records, media)]
    padded = LocalGenerator(model_dir, batching="padded")
    batched = padded.generate_many(messages, 8, max_batch=8)
    alone = [padded.generate_many([m], 8)[0] for m in messages]
    assert len({g.prompt_tokens for g in batched}) > 1  # the batches really were padded
    assert [g.text for g in batched] == [g.text for g in alone]
