"""Where predictions come from: a model in process or an OpenAI-compatible server; and their cache.

- ``InProcessBackend``: a local model directory, batched greedy generation (``LocalGenerator``).
- ``OpenAIBackend``: ``POST {endpoint}/v1/chat/completions`` (SGLang, ``keye serve local``, any
  OpenAI-compatible server) with asyncio + httpx, bounded concurrency, per-request timeouts and
  retries with exponential backoff; temperature 0.
- ``PredictionCache``: JSONL keyed by (benchmark, index, prompt hash); every answer is appended
  and flushed as it arrives, so a killed evaluation resumes without asking again. Its first line
  is a header with the fingerprint of the model that answered (``model_fingerprint`` for a
  model directory; for a server its endpoint, served model name and, where the server reports
  them, weights path and version); a cache written for another model is refused, never silently
  reused - nor one written before a weight refresh.

Requests carry images and videos as ``file://`` URLs (see ``keye_model.eval.benchmarks``): the
in-process backend reads the files directly; the HTTP backend inlines them as base64 data URLs
while sending each request (``media_urls="data"``, any server), or keeps ``file://`` for a
server on this filesystem (``media_urls="file"``, ``keye serve local``). At most
``concurrency`` payloads exist at a time, so memory does not grow with the number of media.

Both backends expose ``run(requests, on_result)``: ``on_result(request, text)`` is called as each
answer arrives (the stage appends it to the cache there).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from keye_model.log import get_logger

log = get_logger("evaluate")


@dataclass(frozen=True)
class Request:
    """One question to ask: benchmark, item id, prompt hash, OpenAI messages, token budget."""

    benchmark: str
    index: str
    prompt_hash: str
    messages: list
    max_new_tokens: int

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.benchmark, self.index, self.prompt_hash)


OnResult = Callable[[Request, str], None]


# ---------------------------------------------------------------------------------------------
# model fingerprints

# Files above this size are fingerprinted by size + first and last MiB: hashing a 671B
# checkpoint whole would take longer than many evaluations, and weights written from a
# different seed or step already differ within their first MiB of tensor data.
_WHOLE_HASH_LIMIT = 8 << 20
_SAMPLE = 1 << 20


def model_fingerprint(model_dir: str | Path) -> dict:
    """Fingerprint of a model directory: SHA-256 over every file's path and content.

    Small files (config, tokenizer, processor, index) are hashed whole; larger ones (weight
    shards) by size plus their first and last MiB.
    """
    root = Path(model_dir)
    if not (root / "config.json").is_file():
        raise FileNotFoundError(f"model directory has no config.json: {root}")
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        size = path.stat().st_size
        digest.update(f"{path.relative_to(root).as_posix()}\0{size}\0".encode())
        with path.open("rb") as f:
            if size <= _WHOLE_HASH_LIMIT:
                digest.update(f.read())
            else:
                digest.update(f.read(_SAMPLE))
                f.seek(size - _SAMPLE)
                digest.update(f.read(_SAMPLE))
    value = digest.hexdigest()
    return {
        "id": f"model-sha256:{value}",
        "description": f"model directory {root} (fingerprint {value[:12]})",
    }


def endpoint_fingerprint(endpoint: str, model: str, weights: dict | None = None) -> dict:
    """Fingerprint of a served model: endpoint URL, served model name and, when the server
    reports them (SGLang's and ``keye serve local``'s ``/get_model_info``), its weights' path
    and version, so answers cached before a weight refresh are not reused after it."""
    if not weights:
        return {
            "id": f"endpoint:{endpoint}#{model}",
            "description": f"model {model!r} served at {endpoint}",
        }
    path, version = weights.get("model_path"), weights.get("weight_version")
    return {
        "id": f"endpoint:{endpoint}#{model}@{path}#{version}",
        "description": f"model {model!r} served at {endpoint} (weights {path}, version {version})",
    }


# ---------------------------------------------------------------------------------------------
# cache


class CacheMismatch(ValueError):
    """A prediction cache written for another model than the one being evaluated."""


class PredictionCache:
    """Append-only JSONL of answers keyed by (benchmark, index, prompt hash), one model per file.

    With ``fingerprint`` the file is opened for writing: a new file starts with a header naming
    the model; an existing one must carry the same model's header (``CacheMismatch`` otherwise).
    Without it the file is only read (inspection, tests).
    """

    def __init__(self, path: str | Path, fingerprint: dict | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.entries: dict[tuple[str, str, str], str] = {}
        self.dropped_lines = 0
        self.fingerprint: dict | None = None
        if self.path.exists():
            raw = self.path.read_bytes()
            if raw and not raw.endswith(b"\n"):
                # Close a line cut by a kill so the next answer starts on its own line; the
                # partial line stays in the file for inspection and is skipped below.
                with self.path.open("ab") as f:
                    f.write(b"\n")
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                    if "fingerprint" in rec and "benchmark" not in rec:
                        self.fingerprint = self.fingerprint or rec["fingerprint"]
                        continue
                    self.entries[(rec["benchmark"], str(rec["index"]), rec["prompt_hash"])] = rec[
                        "response"
                    ]
                except (json.JSONDecodeError, KeyError):
                    # A process killed mid-write leaves at most one partial line; that answer is asked again.
                    self.dropped_lines += 1
        if fingerprint is not None:
            self._claim(fingerprint)

    def _claim(self, fingerprint: dict) -> None:
        if self.fingerprint is None and self.entries:
            raise CacheMismatch(
                f"{self.path}: holds {len(self.entries)} prediction(s) without a model fingerprint; "
                f"cannot tell whether {fingerprint['description']} wrote them - move the file "
                "away or use another output"
            )
        if self.fingerprint is not None:
            if self.fingerprint.get("id") != fingerprint["id"]:
                raise CacheMismatch(
                    f"{self.path}: predictions were written for "
                    f"{self.fingerprint.get('description', self.fingerprint.get('id'))}, "
                    f"not for {fingerprint['description']}; use another output or delete the cache"
                )
            return
        self.fingerprint = fingerprint
        self._append(json.dumps({"fingerprint": fingerprint}, ensure_ascii=False))

    def get(self, request: Request) -> str | None:
        """The cached answer of ``request`` or None."""
        return self.entries.get(request.key)

    def __contains__(self, request: Request) -> bool:
        return request.key in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, request: Request, response: str) -> None:
        """Record an answer durably (flushed and fsynced before returning)."""
        self.entries[request.key] = response
        self._append(
            json.dumps(
                {
                    "benchmark": request.benchmark,
                    "index": request.index,
                    "prompt_hash": request.prompt_hash,
                    "response": response,
                },
                ensure_ascii=False,
            )
        )

    def _append(self, line: str) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())


# ---------------------------------------------------------------------------------------------
# in-process


class InProcessBackend:
    """A local model directory, generated in batches of ``batch_size`` (``exact`` or ``padded``)."""

    name = "in-process"

    def __init__(
        self,
        model_dir: str | Path,
        batch_size: int = 8,
        media_cache: str | Path | None = None,
        batching: str = "exact",
    ):
        from keye_model.eval.generation import LocalGenerator

        self.model_dir = Path(model_dir)
        self.generator = LocalGenerator(model_dir, media_cache=media_cache, batching=batching)
        self.batch_size = batch_size

    def fingerprint(self) -> dict:
        """The model directory's fingerprint (the prediction cache refuses other models')."""
        return model_fingerprint(self.model_dir)

    def close(self) -> None:
        """Release the generator's temporary media folder."""
        self.generator.close()

    def run(self, requests: Sequence[Request], on_result: OnResult) -> None:
        """Answer ``requests`` in chunks, reporting each chunk's answers as soon as it finishes."""
        from keye_model.log import progress

        # Windows of several batches, so that equal-length prompts find each other for a batch.
        window = self.batch_size * 4
        chunks = [requests[i : i + window] for i in range(0, len(requests), window)]
        for chunk in progress(chunks, desc="generate", total=len(chunks)):
            budget = max(r.max_new_tokens for r in chunk)
            gens = self.generator.generate_many(
                [r.messages for r in chunk], budget, self.batch_size
            )
            for request, gen in zip(chunk, gens):
                on_result(request, gen.text)

    def complete(self, prompt: str, max_new_tokens: int = 64) -> str:
        """One text-only completion (for use as a judge)."""
        messages = [{"role": "user", "content": [{"type": "text", "text": prompt}]}]
        return self.generator.generate_many([messages], max_new_tokens)[0].text


# ---------------------------------------------------------------------------------------------
# OpenAI-compatible HTTP


class RequestFailed(RuntimeError):
    """A request that still failed after every retry."""


def completion_text(body: bytes) -> str:
    """The answer text of a chat-completion response body (ValueError naming what is wrong)."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"response is not JSON ({err}): {body[:200]!r}") from err
    try:
        content = data["choices"][0]["message"].get("content")
    except (KeyError, IndexError, TypeError, AttributeError) as err:
        raise ValueError(f"response lacks choices[0].message: {str(data)[:200]}") from err
    if content is not None and not isinstance(content, str):
        raise ValueError(f"choices[0].message.content is {type(content).__name__}, not text")
    return content or ""


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter: uniform(0, min(cap, base * 2**attempt))."""
    return rng.uniform(0, min(cap, base * (2**attempt)))


MEDIA_URL_MODES = ("data", "file")


class OpenAIBackend:
    """An OpenAI-compatible chat endpoint, queried concurrently with retries and timeouts."""

    name = "openai"

    def __init__(
        self,
        endpoint: str,
        model: str | None = None,
        concurrency: int = 8,
        timeout_s: float = 600.0,
        retries: int = 4,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 30.0,
        api_key: str | None = None,
        media_urls: str = "data",
    ):
        if not endpoint.startswith(("http://", "https://")):
            raise ValueError(f"endpoint must be an http(s) URL, got {endpoint!r}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if media_urls not in MEDIA_URL_MODES:
            raise ValueError(f"media_urls must be one of {MEDIA_URL_MODES}, got {media_urls!r}")
        self.media_urls = media_urls
        self.endpoint = endpoint.rstrip("/").removesuffix("/v1")
        self.model = model
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.api_key = (
            api_key or os.environ.get("KEYE_EVAL_API_KEY") or os.environ.get("OPENAI_API_KEY")
        )
        self.calls = 0  # HTTP attempts made (retries included)

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def resolve_model(self) -> str:
        """The served model name: the configured one or the first of ``/v1/models``."""
        if self.model:
            return self.model
        import httpx

        resp = httpx.get(
            f"{self.endpoint}/v1/models", headers=self._headers(), timeout=self.timeout_s
        )
        resp.raise_for_status()
        data = resp.json().get("data") or []
        if not data:
            raise ValueError(f"{self.endpoint}/v1/models lists no model; pass a model name")
        self.model = str(data[0]["id"])
        return self.model

    def served_weights(self) -> dict | None:
        """``model_path`` and ``weight_version`` from ``/get_model_info``; None if not offered."""
        import httpx

        try:
            resp = httpx.get(
                f"{self.endpoint}/get_model_info", headers=self._headers(), timeout=self.timeout_s
            )
            info = resp.json() if resp.status_code == 200 else {}
        except (httpx.HTTPError, ValueError):  # not SGLang-like: name and URL must do
            return None
        if not isinstance(info, dict):
            return None
        weights = {k: info[k] for k in ("model_path", "weight_version") if info.get(k) is not None}
        return weights or None

    def fingerprint(self) -> dict:
        """Endpoint, served model name and weights (the prediction cache refuses other models')."""
        return endpoint_fingerprint(self.endpoint, self.resolve_model(), self.served_weights())

    def close(self) -> None:
        """Nothing to release (connections live only inside ``run``)."""

    def _payload(self, messages: list, max_new_tokens: int) -> dict:
        return {
            "model": self.resolve_model(),
            "messages": messages,
            "temperature": 0,
            "max_tokens": max_new_tokens,
            "stream": False,
        }

    async def _post(self, client, payload: dict, rng: random.Random, what: str = "") -> str:
        import httpx

        last_error = ""
        for attempt in range(self.retries + 1):
            self.calls += 1
            try:
                resp = await client.post(
                    f"{self.endpoint}/v1/chat/completions", json=payload, headers=self._headers()
                )
                if resp.status_code == 200:
                    try:
                        return completion_text(resp.content)
                    except ValueError as err:
                        # A truncated or garbled body from an overloaded proxy/server: retried.
                        last_error = f"malformed 200 response: {err}"
                else:
                    last_error = f"HTTP {resp.status_code}: {resp.text[:300]}"
                    if resp.status_code < 500 and resp.status_code != 429:
                        break  # a client error will not heal by retrying
            except (httpx.TransportError, httpx.TimeoutException) as err:
                last_error = f"{type(err).__name__}: {err}"
            if attempt < self.retries:
                await asyncio.sleep(
                    backoff_delay(attempt, self.backoff_base_s, self.backoff_cap_s, rng)
                )
        raise RequestFailed(
            f"{self.endpoint}: {what or 'request'} failed after {self.retries + 1} attempt(s): "
            f"{last_error}"
        )

    async def _run(self, requests: Sequence[Request], on_result: OnResult) -> None:
        import httpx

        from keye_model.eval.benchmarks import inline_media

        semaphore = asyncio.Semaphore(self.concurrency)
        limits = httpx.Limits(
            max_connections=self.concurrency, max_keepalive_connections=self.concurrency
        )
        rng = random.Random(0)
        self.resolve_model()
        async with httpx.AsyncClient(timeout=self.timeout_s, limits=limits) as client:

            async def one(request: Request) -> None:
                async with semaphore:
                    # The payload (media inlined as base64) exists only while in flight.
                    messages = request.messages
                    if self.media_urls == "data":
                        messages = await asyncio.to_thread(inline_media, messages)
                    payload = self._payload(messages, request.max_new_tokens)
                    del messages
                    what = f"request {request.benchmark} index {request.index}"
                    text = await self._post(client, payload, rng, what)
                    del payload
                on_result(request, text)

            tasks = [asyncio.create_task(one(r)) for r in requests]
            try:
                await asyncio.gather(*tasks)
            finally:
                for task in tasks:
                    task.cancel()

    def run(self, requests: Sequence[Request], on_result: OnResult) -> None:
        """Answer ``requests`` with at most ``concurrency`` in flight; each reported on arrival."""
        if requests:
            asyncio.run(self._run(requests, on_result))

    def complete(self, prompt: str, max_new_tokens: int = 256) -> str:
        """One text-only completion (the LLM judge goes through this same client)."""
        out: list[str] = []
        req = Request("judge", "0", "", [{"role": "user", "content": prompt}], max_new_tokens)
        self.run([req], lambda _r, text: out.append(text))
        return out[0]


def wait_healthy(
    endpoint: str, timeout_s: float = 60.0, alive: Callable[[], bool] | None = None
) -> None:
    """Poll ``{endpoint}/health`` until it answers 200; ``alive`` says whether the server still runs."""
    import httpx

    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise RuntimeError(f"{endpoint}: server exited before becoming healthy")
        try:
            if httpx.get(f"{endpoint.rstrip('/')}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError as err:
            last = str(err)
        time.sleep(0.2)
    raise TimeoutError(f"{endpoint}/health not ready after {timeout_s:.0f} s ({last})")
