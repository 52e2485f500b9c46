"""``keye serve local``: an OpenAI-compatible server for a Keye model directory on CPU.

It accepts what SGLang's OpenAI-compatible server accepts from the Keye model card's client, so
a client moves between this server and the cluster's SGLang unchanged:

- ``POST /v1/chat/completions``: ``image_url`` / ``video_url`` parts as base64 data or
  ``file://`` URLs (remote ``http(s)`` URLs are refused: nothing is downloaded); ``model``
  empty, absent or the served name; ``stream: true`` answers as server-sent events in the
  OpenAI chunk format (``stream_options.include_usage`` adds the usage chunk). ``temperature``
  0 (the default) is greedy, and ``n`` > 1 then returns ``n`` copies of the one answer; above
  0 each of the ``n`` choices is drawn with ``top_k`` / ``top_p`` from its own generator, seeded
  ``seed + i`` (a random ``seed`` when none is given), so a seeded request is answered the same
  whatever it is batched with (``min_p`` is accepted at 0 only when sampling); ``stop``, ``ignore_eos``, ``skip_special_tokens`` (default true) and
  ``max_tokens`` / ``max_completion_tokens`` are honoured. Fields that would change the answer
  but are not implemented (``logprobs``, penalties, ``tools``, ``response_format``) are refused
  with a message naming the field; other unknown fields are ignored, as SGLang does.
- ``GET /v1/models``, ``GET /health`` (cheap liveness plus queue state and weights) and
  ``GET /health_generate`` (SGLang's: 200 once the model has generated a token, 503 otherwise,
  at once while paused).
- SGLang's weight refresh for RL (``keye_model.serve.refresh``): ``POST /pause_generation``
  (running requests are aborted and answered 503, new ones wait), ``/flush_cache``,
  ``/update_weights_from_disk`` (``{"model_path": ...}``; a bad checkpoint is refused and the
  old weights keep serving), ``/continue_generation``; ``GET /get_model_info`` and
  ``/get_weight_version``. No answer or KV cache outlives a batch, so after an update every
  answer - queued requests included - comes from the new weights.

Concurrent requests are collected by one worker thread and generated together, batched as
``keye_model.eval.generation`` does it (``--batching exact``: equal prompt lengths only, so
answers equal the in-process backend's exactly; ``padded``: any requests, faster). It binds
127.0.0.1 by default. Run it with::

    keye serve local --model DIR --port 8000

Why FastAPI + uvicorn and not an existing server library: SGLang and vLLM need GPUs and cannot
install here, and ``transformers serve`` (transformers 5.23) does not fit: it loads models with
``getattr(transformers, config.architectures[0])`` or its own multimodal auto-mapping (our
registered ``KeyeVLMoeForConditionalGeneration`` is neither), and drives processors through
``apply_chat_template(tokenize=True, return_dict=True)``, which ``KeyeProcessor`` (exact
placeholder expansion, Slow-Fast video) does not implement. The production path is SGLang on
Kubernetes (``keye_model.serve``); this server is its CPU stand-in with the same API surface.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import math
import random
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# FastAPI resolves the handler's ``Request`` annotation from module globals (annotations are
# strings here), so these imports live at module level; this module is imported only to serve.
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from keye_model.eval.generation import SamplingParams
from keye_model.log import get_logger

log = get_logger("serve")

HEALTH_CHECK_TIMEOUT_S = 20.0  # SGLang's default SGLANG_HEALTH_CHECK_TIMEOUT
MAX_N = 128  # choices per request; a cap keeps a typo from building a huge response


class Aborted(RuntimeError):
    """A request stopped mid-generation by ``/pause_generation``; the client should retry."""


@dataclass
class _Job:
    messages: list
    params: SamplingParams
    future: Future = field(default_factory=Future)
    # Streaming: called from the worker thread with ("start", None) once the request is
    # encoded, then ("delta", text) as text forms. The future carries the end either way.
    emit: Callable[[str, Any], None] | None = None
    seed: int = 0  # seeds the draws when params.temperature > 0


class BatchingWorker:
    """One thread that drains queued requests and generates them in batches; can be paused."""

    def __init__(self, generator, max_batch: int = 8, wait_ms: float = 5.0):
        self.generator = generator
        self.max_batch = max_batch
        self.wait_s = wait_ms / 1000
        self.cond = threading.Condition()
        self.pending: collections.deque[_Job] = collections.deque()
        self.running: list[_Job] = []
        self.paused = False
        self.stopping = False
        self._abort = False  # the running batch stops at its next token
        self.last_step = 0.0  # monotonic time the model last produced a token (health checks)
        self.thread = threading.Thread(target=self._loop, name="keye-generate", daemon=True)
        self.thread.start()

    def submit(
        self,
        messages: list,
        params: SamplingParams,
        emit: Callable[[str, Any], None] | None = None,
        seed: int = 0,
    ) -> Future:
        """Queue one answer; the future resolves to a ``Generation`` (or raises)."""
        job = _Job(messages, params, emit=emit, seed=seed)
        with self.cond:
            self.pending.append(job)
            self.cond.notify_all()
        return job.future

    def cancel(self, future: Future) -> bool:
        """Drop a request that has not started; whether it was dropped."""
        with self.cond:
            for job in self.pending:
                if job.future is future:
                    self.pending.remove(job)
                    future.cancel()
                    return True
        return False

    def pause(self) -> int:
        """Stop starting batches and abort the running one; returns once nothing runs."""
        with self.cond:
            self.paused = True
            aborted = len(self.running)
            self._abort = bool(self.running)
            while self.running:
                self.cond.wait()
            return aborted

    def resume(self) -> None:
        """Start batches again (queued requests first)."""
        with self.cond:
            self.paused = False
            self.cond.notify_all()

    def state(self) -> dict:
        """Running and waiting request counts and whether generation is paused."""
        with self.cond:
            return {
                "running": len(self.running),
                "waiting": len(self.pending),
                "paused": self.paused,
            }

    def flush(self) -> tuple[bool, str]:
        """Clear the generator's media cache unless a batch runs (SGLang refuses then too)."""
        with self.cond:  # held, so no batch starts meanwhile
            if self.running:
                return False, f"{len(self.running)} request(s) running; cache not flushed"
            removed = self.generator.clear_media()
        return True, f"cache flushed ({removed} media file(s) removed)"

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()

    def _take_batch(self) -> list[_Job] | None:
        """Wait for work (not paused), then gather up to ``max_batch`` jobs for ``wait_s``."""
        with self.cond:
            while not self.stopping and (self.paused or not self.pending):
                self.cond.wait()
            if self.stopping:
                return None
            deadline = time.monotonic() + self.wait_s
            while len(self.pending) < self.max_batch and not self.paused and not self.stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
            if self.paused or self.stopping or not self.pending:
                return []
            batch = [self.pending.popleft() for _ in range(min(self.max_batch, len(self.pending)))]
            self.running = batch
            self._abort = False
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                break
            if not batch:
                continue
            try:
                # Same settings within one generate call; groups keep requests independent.
                by_params: dict[SamplingParams, list[_Job]] = {}
                for job in batch:
                    by_params.setdefault(job.params, []).append(job)
                for params, jobs in by_params.items():
                    self._generate(jobs, params)
            finally:
                with self.cond:
                    self.running = []
                    self._abort = False
                    self.cond.notify_all()
        with self.cond:
            for job in self.pending:
                job.future.set_exception(RuntimeError("server is shutting down"))
            self.pending.clear()

    def _aborted(self) -> bool:
        self.last_step = time.monotonic()  # called once per decoding step
        return self._abort

    def _generate(self, jobs: list[_Job], params: SamplingParams) -> None:
        encoded, ready = [], []
        for job in jobs:  # a bad request fails alone, before any generation
            try:
                encoded.append(self.generator.encode(job.messages))
                ready.append(job)
                if job.emit is not None:
                    job.emit("start", None)
            except Exception as err:  # processor/PIL errors of several types: all the client's
                job.future.set_exception(err)
        if not ready:
            return
        deltas = [
            None if job.emit is None else (lambda text, e=job.emit: e("delta", text))
            for job in ready
        ]
        try:
            gens = self.generator.generate_encoded(
                encoded,
                params,
                self.max_batch,
                on_delta=deltas,
                abort=self._aborted,
                seeds=[job.seed for job in ready],
            )
        except Exception as err:
            for job in ready:
                job.future.set_exception(err)
            return
        for job, gen in zip(ready, gens):
            if gen.finish_reason == "abort":
                job.future.set_exception(
                    Aborted(
                        "request aborted by /pause_generation (weights are being updated); retry"
                    )
                )
            else:
                job.future.set_result(gen)


# ------------------------------------------------------------------------------------------
# request validation


def _bad(field_name: str, message: str) -> HTTPException:
    return HTTPException(400, f"field {field_name!r}: {message}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# Fields that would change the answer in ways this CPU server does not implement:
# accepted only at their no-op value, refused otherwise (naming the field).
_UNSUPPORTED = {
    "logprobs": (lambda v: v in (None, False), "token log-probabilities are not returned"),
    "top_logprobs": (lambda v: v in (None, 0), "token log-probabilities are not returned"),
    "frequency_penalty": (lambda v: v in (None, 0, 0.0), "penalties are not implemented"),
    "presence_penalty": (lambda v: v in (None, 0, 0.0), "penalties are not implemented"),
    "repetition_penalty": (lambda v: v in (None, 1, 1.0), "penalties are not implemented"),
    "logit_bias": (lambda v: not v, "logit bias is not implemented"),
    "tools": (lambda v: not v, "tool calls are not implemented"),
    "response_format": (
        lambda v: v is None or (isinstance(v, dict) and v.get("type", "text") == "text"),
        "only plain text responses",
    ),
}


@dataclass(frozen=True)
class ChatRequest:
    """A validated chat-completion request."""

    messages: list
    params: SamplingParams
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    seed: int | None = None

    def answer_seeds(self) -> list[int]:
        """One seed per distinct answer: one answer copied ``n`` times when greedy, else ``n``
        draws seeded ``seed + i``."""
        if self.params.temperature == 0:
            return [0]
        base = self.seed if self.seed is not None else random.randrange(2**31)
        return [base + i for i in range(self.n)]

    def answer_of(self, choice: int) -> int:
        """Which answer choice ``choice`` shows."""
        return 0 if self.params.temperature == 0 else choice


def parse_chat_request(body: Any, model_name: str, default_max_tokens: int) -> ChatRequest:
    """Validate an OpenAI/SGLang chat request body (HTTPException naming the field)."""
    if not isinstance(body, dict):
        raise HTTPException(400, "request body must be a JSON object")
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        raise _bad("messages", "must be a non-empty list")
    if body.get("model") not in (None, "", model_name):
        # SGLang serves one model under any name; a different non-empty name is almost always
        # a client pointed at the wrong server, so it is refused rather than answered.
        raise HTTPException(
            404, f"field 'model': unknown model {body.get('model')!r}; serving {model_name!r}"
        )
    temperature = 0.0 if body.get("temperature") is None else body["temperature"]
    if not _is_number(temperature) or not 0 <= temperature < math.inf:
        raise _bad("temperature", f"must be a number >= 0 (0 is greedy), got {temperature!r}")
    top_k = body.get("top_k")
    if top_k is not None and (not _is_int(top_k) or not (top_k == -1 or top_k >= 1)):
        raise _bad("top_k", f"must be -1 (off) or a positive integer, got {top_k!r}")
    top_p = body.get("top_p")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise _bad("top_p", f"must be in (0, 1], got {top_p!r}")
    min_p = body.get("min_p")
    if min_p is not None and not (isinstance(min_p, (int, float)) and 0 <= min_p <= 1):
        raise _bad("min_p", f"must be in [0, 1], got {min_p!r}")
    if min_p and temperature > 0:
        raise _bad("min_p", "min-p sampling is not implemented by keye serve local (use top_p)")
    if body.get("seed") is not None and not _is_int(body["seed"]):
        raise _bad("seed", f"must be an integer, got {body['seed']!r}")
    n = 1 if body.get("n") is None else body["n"]
    if not _is_int(n) or not 1 <= n <= MAX_N:
        raise _bad("n", f"must be an integer in [1, {MAX_N}], got {n!r}")
    stop = body.get("stop")
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    if (stop is not None and not isinstance(stop, (str, list))) or not all(
        isinstance(s, str) and s for s in stops
    ):
        raise _bad("stop", f"must be a non-empty string or a list of them, got {stop!r}")
    flags = {}
    for name, default in (("ignore_eos", False), ("skip_special_tokens", True), ("stream", False)):
        value = body.get(name)
        if value is not None and not isinstance(value, bool):
            raise _bad(name, f"must be true or false, got {value!r}")
        flags[name] = default if value is None else value
    for name, (ok, why) in _UNSUPPORTED.items():
        if not ok(body.get(name)):
            raise _bad(name, f"{why} by keye serve local")
    budget = body.get("max_completion_tokens") or body.get("max_tokens") or default_max_tokens
    if not _is_int(budget) or budget < 1:
        raise _bad("max_tokens", "must be a positive integer")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise _bad("stream_options", "must be an object")
    return ChatRequest(
        messages=body["messages"],
        params=SamplingParams(
            max_new_tokens=budget,
            stop=stops,
            ignore_eos=flags["ignore_eos"],
            skip_special_tokens=flags["skip_special_tokens"],
            # Greedy ignores these: normalised so greedy requests still batch together.
            temperature=float(temperature),
            top_k=0 if not temperature or top_k in (None, -1) else top_k,
            top_p=1.0 if not temperature or top_p is None else float(top_p),
        ),
        n=n,
        stream=flags["stream"],
        include_usage=bool(options.get("include_usage")),
        seed=body.get("seed"),
    )


def _sse(data: Any) -> bytes:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def _usage(choices: list) -> dict:
    """OpenAI usage of one request from the ``Generation`` behind each of its choices."""
    completion = sum(gen.completion_tokens for gen in choices)
    prompt = choices[0].prompt_tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


# ------------------------------------------------------------------------------------------
# application


def build_app(generator, model_name: str, max_new_tokens: int = 256, max_batch: int = 8):
    """The FastAPI application serving ``generator`` under the OpenAI chat API and SGLang's admin API."""
    worker = BatchingWorker(generator, max_batch=max_batch)
    weights = {"model_path": str(generator.model_dir), "weight_version": "default"}

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        worker.stop()

    app = FastAPI(title="keye serve local", lifespan=lifespan)
    app.state.worker = worker

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": model_name, **worker.state(), **weights}

    @app.get("/health_generate")
    async def health_generate() -> Response:
        # As SGLang: healthy once the model produced a token after the check began - its own
        # one-token request, or any running batch's; 503 when that does not happen within the
        # timeout. While paused no token can come, so that 503 is given at once.
        if worker.paused:
            return Response(status_code=503)
        tic = time.monotonic()
        probe = worker.submit([{"role": "user", "content": "ping"}], SamplingParams(1))
        try:
            while time.monotonic() < tic + HEALTH_CHECK_TIMEOUT_S:
                if probe.done():
                    return Response(status_code=200 if probe.exception() is None else 503)
                if worker.last_step > tic:
                    return Response(status_code=200)
                await asyncio.sleep(0.02)
            return Response(status_code=503)
        finally:
            worker.cancel(probe)

    @app.get("/v1/models")
    def models() -> dict:
        return {
            "object": "list",
            "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "keye"}],
        }

    @app.get("/get_model_info")
    def model_info() -> dict:
        return {
            "model_path": weights["model_path"],
            "tokenizer_path": weights["model_path"],
            "is_generation": True,
            "preferred_sampling_params": None,
            "weight_version": weights["weight_version"],
        }

    @app.get("/get_weight_version")
    def weight_version() -> dict:
        return {"weight_version": weights["weight_version"]}

    @app.post("/pause_generation")
    async def pause_generation(request: Request) -> JSONResponse:
        body = await _optional_json(request)
        mode = body.get("mode", "abort")
        if mode != "abort":
            raise _bad("mode", f"only 'abort' (SGLang's default) is supported, got {mode!r}")
        aborted = await asyncio.to_thread(worker.pause)
        log.info("generation paused (%d running request(s) aborted)", aborted)
        return JSONResponse({"message": "Generation paused successfully.", "status": "ok"})

    @app.post("/continue_generation")
    def continue_generation() -> JSONResponse:
        worker.resume()
        return JSONResponse({"message": "Generation continued successfully.", "status": "ok"})

    @app.api_route("/flush_cache", methods=["GET", "POST"])
    def flush_cache() -> PlainTextResponse:
        ok, message = worker.flush()
        return PlainTextResponse(
            f"Cache flushed.\n{message}\n" if ok else message + "\n", 200 if ok else 400
        )

    @app.post("/update_weights_from_disk")
    async def update_weights_from_disk(request: Request) -> JSONResponse:
        body = await _optional_json(request)
        path = body.get("model_path")
        if not isinstance(path, str) or not path:
            raise _bad("model_path", "must name a model directory (or s3:// prefix)")
        try:
            message = await asyncio.to_thread(_load_weights, generator, path)
        except (OSError, ValueError, RuntimeError) as err:
            log.warning("weight update from %s refused: %s", path, err)
            return JSONResponse(
                {
                    "success": False,
                    "message": f"Failed to update weights: {err}",
                    "num_paused_requests": 0,
                },
                status_code=400,
            )
        weights["model_path"] = path
        weights["weight_version"] = str(body.get("weight_version") or weights["weight_version"])
        log.info("weights updated: %s (version %s)", message, weights["weight_version"])
        return JSONResponse(
            {
                "success": True,
                "message": f"Succeeded to update model weights: {message}.",
                "num_paused_requests": worker.state()["waiting"] if worker.paused else 0,
            }
        )

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        try:
            body = await request.json()
        except ValueError as err:
            raise HTTPException(400, f"request body is not JSON: {err}") from err
        req = parse_chat_request(body, model_name, max_new_tokens)
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        if req.stream:
            return await _stream(worker, req, model_name, completion_id, created)
        futures = [worker.submit(req.messages, req.params, seed=s) for s in req.answer_seeds()]
        try:
            answers = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
        except (ValueError, FileNotFoundError) as err:
            raise HTTPException(400, str(err)) from err
        except Aborted as err:
            raise HTTPException(503, str(err)) from err
        return JSONResponse(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": model_name,
                "choices": [
                    {
                        "index": i,
                        "message": {"role": "assistant", "content": answers[req.answer_of(i)].text},
                        "finish_reason": answers[req.answer_of(i)].finish_reason,
                    }
                    for i in range(req.n)
                ],
                "usage": _usage([answers[req.answer_of(i)] for i in range(req.n)]),
            }
        )

    return app


async def _optional_json(request: Request) -> dict:
    """The request's JSON object body, ``{}`` when empty (SGLang's admin calls may send none)."""
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError as err:
        raise HTTPException(400, f"request body is not JSON: {err}") from err
    if not isinstance(body, dict):
        raise HTTPException(400, "request body must be a JSON object")
    return body


def _load_weights(generator, model_path: str) -> str:
    """Load ``model_path`` (local or ``s3://``) into ``generator``; a summary line."""
    from keye_model import storage
    from keye_model.tracking import scratch_dir

    local = (
        Path(storage.sync_down(model_path, scratch_dir("keye-serve-weights-")))
        if storage.is_s3(model_path)
        else Path(model_path)
    )
    return generator.load_weights(local)


async def _stream(
    worker: BatchingWorker, req: ChatRequest, model_name: str, cid: str, created: int
):
    """Answer ``req`` as server-sent events; a request that fails before generating gets a 4xx."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    futures = []
    for answer, seed in enumerate(req.answer_seeds()):

        def emit(kind: str, value: Any, answer: int = answer) -> None:  # from the worker thread
            loop.call_soon_threadsafe(events.put_nowait, (answer, kind, value))

        futures.append(worker.submit(req.messages, req.params, emit=emit, seed=seed))
        futures[-1].add_done_callback(lambda f, emit=emit: emit("done", f))
    first = await events.get()  # (answer, "start" | "done", value)
    _, kind, value = first
    if kind == "done" and value.exception() is not None:  # failed before generating: HTTP error
        for future in futures:
            worker.cancel(future)
        err = value.exception()
        if isinstance(err, (ValueError, FileNotFoundError)):
            raise HTTPException(400, str(err))
        if isinstance(err, Aborted):
            raise HTTPException(503, str(err))
        raise HTTPException(500, f"generation failed: {err}")
    choices = {a: [i for i in range(req.n) if req.answer_of(i) == a] for a in range(len(futures))}

    def chunk(delta: dict, finish_reason: str | None = None, index: int = 0) -> dict:
        return {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model_name,
            "choices": [{"index": index, "delta": delta, "finish_reason": finish_reason}],
        }

    async def body():
        for i in range(req.n):
            yield _sse(chunk({"role": "assistant", "content": ""}, index=i))
        finished: dict[int, Any] = {}
        answer, kind, value = first
        while True:
            if kind == "delta":
                for i in choices[answer]:
                    yield _sse(chunk({"content": value}, index=i))
            elif kind == "done":
                err = value.exception()
                if err is not None:  # the status line is sent: report the error as an event
                    status = 503 if isinstance(err, Aborted) else 500
                    yield _sse(
                        {"error": {"message": str(err), "type": type(err).__name__, "code": status}}
                    )
                    yield b"data: [DONE]\n\n"
                    return
                finished[answer] = gen = value.result()
                for i in choices[answer]:
                    yield _sse(chunk({}, gen.finish_reason, index=i))
                if len(finished) == len(futures):
                    if req.include_usage:
                        usage = _usage([finished[req.answer_of(i)] for i in range(req.n)])
                        yield _sse({**chunk({}), "choices": [], "usage": usage})
                    yield b"data: [DONE]\n\n"
                    return
            answer, kind, value = await events.get()

    return StreamingResponse(
        body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )


def serve(
    model: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_new_tokens: int = 256,
    max_batch: int = 8,
    model_name: str | None = None,
    batching: str = "exact",
) -> None:
    """Load ``model`` (a local directory or ``s3://`` prefix) and serve it until interrupted."""
    import uvicorn

    from keye_model import storage
    from keye_model.eval.generation import LocalGenerator
    from keye_model.tracking import scratch_dir

    local = (
        Path(storage.sync_down(model, scratch_dir("keye-serve-model-")))
        if storage.is_s3(model)
        else Path(model)
    )
    generator = LocalGenerator(local, batching=batching)
    name = model_name or local.name
    log.info("serving %s as %r on http://%s:%d", local, name, host, port)
    app = build_app(generator, name, max_new_tokens=max_new_tokens, max_batch=max_batch)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        generator.close()  # removes the folder of videos received as data URLs
