"""``keye serve local``: an OpenAI-compatible server for a Keye model directory on CPU.

Endpoints: ``POST /v1/chat/completions`` (``image_url`` parts as base64 data or ``file://`` URLs,
``video_url`` parts likewise), ``GET /v1/models``, ``GET /health``. Decoding is greedy
(temperature 0); concurrent requests are collected by one worker thread and generated together,
batched as ``keye_model.eval.generation`` does it (``--batching exact``: equal prompt lengths
only, so answers equal the in-process backend's exactly; ``padded``: any requests, faster). It binds 127.0.0.1 by default. Run it with::

    keye serve local --model DIR --port 8000

Why FastAPI + uvicorn and not an existing server library: SGLang and vLLM need GPUs and cannot
install here, and ``transformers serve`` (transformers 5.23) does not fit: it needs the
``openai`` package (not installed), loads models with ``getattr(transformers,
config.architectures[0])`` or its own multimodal auto-mapping (our registered
``KeyeVLMoeForConditionalGeneration`` is neither), and drives processors through
``apply_chat_template(tokenize=True, return_dict=True)``, which ``KeyeProcessor`` (exact
placeholder expansion, Slow-Fast video) does not implement. The production path is SGLang on
Kubernetes (``keye_model.serve``); this server is its CPU stand-in with the same API surface.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

# FastAPI resolves the handler's ``Request`` annotation from module globals (annotations are
# strings here), so these imports live at module level; this module is imported only to serve.
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

from keye_model.log import get_logger

log = get_logger("serve")


@dataclass
class _Job:
    messages: list
    max_new_tokens: int
    future: Future = field(default_factory=Future)


class BatchingWorker:
    """One thread that drains queued requests and generates them in batches."""

    def __init__(self, generator, max_batch: int = 8, wait_ms: float = 5.0):
        self.generator = generator
        self.max_batch = max_batch
        self.wait_s = wait_ms / 1000
        self.jobs: queue.Queue[_Job | None] = queue.Queue()
        self.thread = threading.Thread(target=self._loop, name="keye-generate", daemon=True)
        self.thread.start()

    def submit(self, messages: list, max_new_tokens: int) -> Future:
        """Queue one request; the future resolves to a ``Generation``."""
        job = _Job(messages, max_new_tokens)
        self.jobs.put(job)
        return job.future

    def stop(self) -> None:
        self.jobs.put(None)

    def _loop(self) -> None:
        while True:
            first = self.jobs.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self.wait_s
            while len(batch) < self.max_batch:
                try:
                    job = self.jobs.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if job is None:
                    self.jobs.put(None)
                    break
                batch.append(job)
            # Same budget within one generate call; groups by budget keep requests independent.
            by_budget: dict[int, list[_Job]] = {}
            for job in batch:
                by_budget.setdefault(job.max_new_tokens, []).append(job)
            for budget, jobs in by_budget.items():
                self._generate(jobs, budget)

    def _generate(self, jobs: list[_Job], budget: int) -> None:
        try:
            gens = self.generator.generate_many([j.messages for j in jobs], budget, self.max_batch)
            for job, gen in zip(jobs, gens):
                job.future.set_result(gen)
        except Exception as err:  # a bad request in a batch: answer each alone to isolate it
            if len(jobs) == 1:
                jobs[0].future.set_exception(err)
                return
            for job in jobs:
                self._generate([job], budget)


def build_app(generator, model_name: str, max_new_tokens: int = 256, max_batch: int = 8):
    """The FastAPI application serving ``generator`` under the OpenAI chat API."""
    worker = BatchingWorker(generator, max_batch=max_batch)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        worker.stop()

    app = FastAPI(title="keye serve local", lifespan=lifespan)
    app.state.worker = worker

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": model_name}

    @app.get("/v1/models")
    def models() -> dict:
        return {
            "object": "list",
            "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "keye"}],
        }

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        try:
            body = await request.json()
        except ValueError as err:
            raise HTTPException(400, f"request body is not JSON: {err}") from err
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("messages"), list)
            or not body["messages"]
        ):
            raise HTTPException(400, "field 'messages' must be a non-empty list")
        if body.get("stream"):
            raise HTTPException(
                400, "field 'stream': streaming is not supported by keye serve local"
            )
        if body.get("model") not in (None, model_name):
            raise HTTPException(
                404, f"field 'model': unknown model {body.get('model')!r}; serving {model_name!r}"
            )
        temperature = body.get("temperature", 0)
        if temperature not in (0, 0.0, None):
            raise HTTPException(400, "field 'temperature': only greedy decoding (0) is served")
        budget = body.get("max_completion_tokens") or body.get("max_tokens") or max_new_tokens
        if not isinstance(budget, int) or budget < 1:
            raise HTTPException(400, "field 'max_tokens' must be a positive integer")
        try:
            gen = await asyncio.wrap_future(worker.submit(body["messages"], budget))
        except (ValueError, FileNotFoundError) as err:
            raise HTTPException(400, str(err)) from err
        return JSONResponse(
            {
                "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model_name,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": gen.text},
                        "finish_reason": gen.finish_reason,
                    }
                ],
                "usage": {
                    "prompt_tokens": gen.prompt_tokens,
                    "completion_tokens": gen.completion_tokens,
                    "total_tokens": gen.prompt_tokens + gen.completion_tokens,
                },
            }
        )

    return app


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
