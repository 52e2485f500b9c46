"""Rollouts: sampled responses with their token ids, log-probs and truncation flags.

One interface (``Rollout``), two implementations:

- ``InProcessRollout``: batched sampling from a ``KeyeVLMoeForConditionalGeneration`` in this
  process (the tiny preset, tests, benchmarks). Rows are left-padded into one batch and decoded
  with the KV cache (``use_cache=False`` recomputes the whole prefix each step; only the benchmark
  wants that). Every response (prompt p, sample j) draws from its own ``torch.Generator`` seeded
  from ``(seed, p, j)``, so it does not depend on which other rows share its batch. Log-probs are
  ``log_softmax(logits / temperature)`` of the chosen token: the distribution the trainer
  recomputes (``keye_model.rl.gspo.token_logprobs``); top-p/top-k only narrow the draw.
- ``ServerRollout``: an OpenAI-compatible chat endpoint (SGLang at scale, ``keye serve local`` on
  CPU) through the evaluation client ``keye_model.eval.backends.OpenAIBackend`` (its retries,
  backoff, timeouts, model resolution and media inlining). One request per response, each with
  its own seed. Response ids are the text re-tokenised with the policy tokenizer, and log-probs
  are not taken from the server: the trainer recomputes old log-probs (REFERENCE §7), and a
  server's tokens and numerics differ from the trainer's. After each policy update the stage
  writes the policy to shared storage and calls ``refresh(model_dir)`` (SGLang's pause, flush,
  ``update_weights_from_disk``, continue: ``keye_model.serve.refresh``).

Prompts are OpenAI chat messages (text parts, ``image_url``/``video_url`` parts with ``file://``
or ``data:`` URLs) whose last user text already carries its thinking suffix (``with_thinking``).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from keye_model.rl.config import RolloutConfig, SamplingConfig

Messages = list[dict]


@dataclass
class Sample:
    """One sampled response.

    ``response_ids`` end with the stop token when the response stopped by itself (the policy must
    learn to stop); ``logprobs`` align with them, or are None when the backend does not give
    trainer-comparable ones (a server).
    """

    text: str
    response_ids: list[int]
    logprobs: list[float] | None
    truncated: bool
    finish_reason: str  # "stop" | "length"


class Rollout(Protocol):
    """Anything that samples ``n`` responses per prompt."""

    name: str

    def generate(
        self, prompts: Sequence[Messages], sampling: SamplingConfig, n: int = 1, seed: int = 0
    ) -> list[list[Sample]]:
        """``n`` samples for each prompt, in prompt order."""
        ...

    def refresh(self, model_dir: str | Path | None) -> None:
        """Make the next samples come from the policy saved in ``model_dir``."""
        ...

    def close(self) -> None:
        """Release temporary files and connections."""
        ...


def with_thinking(messages: Messages, mode: str) -> Messages:
    """``messages`` with the thinking suffix of ``mode`` (think/no_think/auto) on the last user text."""
    from keye_model.processing.chat import THINKING_SUFFIX, _with_suffix

    if mode not in THINKING_SUFFIX:
        raise ValueError(f"thinking must be one of {sorted(THINKING_SUFFIX)}, got {mode!r}")
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=None)
    if last_user is None:
        raise ValueError("messages hold no user turn to carry the thinking suffix")
    out = [dict(m) for m in messages]
    out[last_user]["content"] = _with_suffix(out[last_user].get("content"), THINKING_SUFFIX[mode])
    return out


def row_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    """A 63-bit seed for response ``sample_index`` of prompt ``prompt_index`` of a call with ``seed``."""
    digest = hashlib.sha256(f"{seed}:{prompt_index}:{sample_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


# ---------------------------------------------------------------------------------------------
# in process


def message_encoder(processor):
    """The evaluation's request -> model-input conversion, over an in-memory processor."""
    from keye_model.eval.generation import LocalGenerator

    class _Encoder(LocalGenerator):
        # Only prepare()/encode()/close() are used; they need the processor and a media folder,
        # not a loaded model, so the parent's __init__ (which loads one) is not run.
        def __init__(self, processor):  # noqa: D107
            self.processor = processor
            self._own_media = tempfile.TemporaryDirectory(prefix="keye-rl-media-")
            self.media_cache = Path(self._own_media.name)

    return _Encoder(processor)


_VISION_KEYS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw")


class InProcessRollout:
    """Batched sampling from a model held in this process (shares the policy's parameters)."""

    name = "in_process"

    def __init__(self, model, processor, *, use_cache: bool = True, max_batch: int = 64):
        from keye_model.processing.tokens import IM_END

        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.model = model
        self.processor = processor
        self.use_cache = use_cache
        self.max_batch = max_batch
        self.encoder = message_encoder(processor)
        tok = processor.tokenizer
        self.pad_id = tok.pad_token_id
        self.stop_ids = sorted(
            {i for i in (tok.convert_tokens_to_ids(IM_END), tok.eos_token_id) if i is not None}
        )
        self.generated_tokens = 0  # tokens sampled so far (benchmarks read it)

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, **kwargs) -> InProcessRollout:
        """Load a model directory written by ``keye init`` or a training stage."""
        import torch

        from keye_model.model import KeyeVLMoeForConditionalGeneration
        from keye_model.processing import KeyeProcessor

        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(f"model directory has no config.json: {model_dir}")
        model = KeyeVLMoeForConditionalGeneration.from_pretrained(
            str(model_dir), dtype=torch.float32
        ).eval()
        return cls(model, KeyeProcessor.from_pretrained(model_dir), **kwargs)

    def encode(self, messages: Messages) -> dict[str, Any]:
        """Model inputs (batch of one, unpadded) of one chat prompt."""
        return self.encoder.encode(messages)

    def refresh(self, model_dir: str | Path | None = None) -> None:
        """Nothing to do: samples come from the live policy parameters."""

    def close(self) -> None:
        """Remove the folder of media received as data URLs."""
        self.encoder.close()

    def generate(
        self, prompts: Sequence[Messages], sampling: SamplingConfig, n: int = 1, seed: int = 0
    ) -> list[list[Sample]]:
        """``n`` samples per prompt, batched ``max_batch`` rows at a time."""
        import torch

        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        encoded = [self.encode(messages) for messages in prompts]
        rows = [(p, j) for p in range(len(prompts)) for j in range(n)]
        out: list[list[Sample]] = [[] for _ in prompts]
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                for start in range(0, len(rows), self.max_batch):
                    chunk = rows[start : start + self.max_batch]
                    samples = self._sample_batch(
                        [encoded[p] for p, _ in chunk],
                        [row_seed(seed, p, j) for p, j in chunk],
                        sampling,
                    )
                    for (p, _), sample in zip(chunk, samples):
                        out[p].append(sample)
        finally:
            self.model.train(was_training)
        return out

    def _batch_inputs(self, encoded: list[dict[str, Any]]):
        import torch

        longest = max(e["input_ids"].shape[1] for e in encoded)
        ids = [
            torch.nn.functional.pad(
                e["input_ids"], (longest - e["input_ids"].shape[1], 0), value=self.pad_id
            )
            for e in encoded
        ]
        mask = [
            torch.nn.functional.pad(
                e["attention_mask"], (longest - e["attention_mask"].shape[1], 0), value=0
            )
            for e in encoded
        ]
        # Vision tensors are concatenated in row order, the order the model splices them in.
        vision = {
            key: torch.cat([e[key] for e in encoded if key in e])
            for key in _VISION_KEYS
            if any(key in e for e in encoded)
        }
        return torch.cat(ids), torch.cat(mask), vision

    def _next_tokens(self, logits_BV, generators, sampling: SamplingConfig):
        """Chosen tokens and their log-probs under ``softmax(logits / T)``."""
        import torch

        from keye_model.eval.generation import draw_tokens

        if sampling.temperature == 0:
            logp_BV = torch.log_softmax(logits_BV, dim=-1)
            tokens_B = logp_BV.argmax(-1)
            return tokens_B, logp_BV.gather(-1, tokens_B[:, None]).squeeze(-1)
        logp_BV = torch.log_softmax(logits_BV / sampling.temperature, dim=-1)
        tokens_B = draw_tokens(
            logits_BV, generators, sampling.temperature, sampling.top_k, sampling.top_p
        )
        return tokens_B, logp_BV.gather(-1, tokens_B[:, None]).squeeze(-1)

    def _sample_batch(
        self, encoded: list[dict[str, Any]], seeds: list[int], sampling: SamplingConfig
    ) -> list[Sample]:
        import torch

        ids_BL, mask_BL, vision = self._batch_inputs(encoded)
        batch = ids_BL.shape[0]
        generators = [torch.Generator().manual_seed(s) for s in seeds]
        stop_ids = torch.tensor(self.stop_ids)
        tokens, logps = [], []
        finished_B = torch.zeros(batch, dtype=torch.bool)
        past, step_ids = None, ids_BL
        for step in range(sampling.max_new_tokens):
            if self.use_cache:
                out = self.model(
                    input_ids=step_ids,
                    attention_mask=mask_BL,
                    past_key_values=past,
                    use_cache=True,
                    logits_to_keep=1,
                    **(vision if step == 0 else {}),
                )
                past = out.past_key_values
            else:
                out = self.model(
                    input_ids=ids_BL,
                    attention_mask=mask_BL,
                    use_cache=False,
                    logits_to_keep=1,
                    **vision,
                )
            next_B, logp_B = self._next_tokens(out.logits[:, -1].float(), generators, sampling)
            next_B = torch.where(finished_B, torch.full_like(next_B, self.pad_id), next_B)
            tokens.append(next_B)
            logps.append(logp_B)
            self.generated_tokens += int((~finished_B).sum())
            finished_B |= torch.isin(next_B, stop_ids)
            if finished_B.all():
                break
            step_ids = next_B[:, None]
            ids_BL = torch.cat([ids_BL, step_ids], dim=1)
            mask_BL = torch.cat([mask_BL, torch.ones(batch, 1, dtype=mask_BL.dtype)], dim=1)
        tokens_BT = torch.stack(tokens, dim=1).tolist()
        logps_BT = torch.stack(logps, dim=1).tolist()
        samples = []
        for row_tokens, row_logps in zip(tokens_BT, logps_BT):
            stop_at = next((i for i, t in enumerate(row_tokens) if t in self.stop_ids), None)
            keep = len(row_tokens) if stop_at is None else stop_at + 1
            text_ids = row_tokens[: keep if stop_at is None else stop_at]
            samples.append(
                Sample(
                    text=self.processor.decode(text_ids, skip_special_tokens=True),
                    response_ids=row_tokens[:keep],
                    logprobs=row_logps[:keep],
                    truncated=stop_at is None,
                    finish_reason="length" if stop_at is None else "stop",
                )
            )
        return samples


# ---------------------------------------------------------------------------------------------
# OpenAI-compatible server


class _Recorder:
    """An httpx client stand-in that keeps the last response, so the rollout can read the fields
    (finish_reason, reasoning_content) that ``OpenAIBackend`` validates but does not return."""

    def __init__(self, client):
        self.client = client
        self.response = None

    async def post(self, *args, **kwargs):
        self.response = await self.client.post(*args, **kwargs)
        return self.response


class ServerRollout:
    """Samples from an OpenAI-compatible chat endpoint (SGLang, ``keye serve local``)."""

    name = "server"

    def __init__(
        self,
        endpoint: str,
        tokenizer,
        model: str | None = None,
        concurrency: int = 64,
        timeout_s: float = 600.0,
        retries: int = 4,
    ):
        from keye_model.eval.backends import OpenAIBackend
        from keye_model.processing.tokens import IM_END

        self.client = OpenAIBackend(
            endpoint, model=model, concurrency=concurrency, timeout_s=timeout_s, retries=retries
        )
        self.tokenizer = tokenizer
        self.stop_id = tokenizer.convert_tokens_to_ids(IM_END)
        self.refreshes = 0

    @property
    def endpoint(self) -> str:
        return self.client.endpoint

    def refresh(self, model_dir: str | Path | None) -> None:
        """Load the policy saved in ``model_dir`` into the server (pause, flush, load, continue)."""
        from keye_model.serve.refresh import refresh_weights

        if model_dir is None:
            raise ValueError("a server rollout needs the saved policy directory to refresh from")
        refresh_weights(self.endpoint, str(model_dir))
        self.refreshes += 1

    def close(self) -> None:
        """Nothing held between calls (connections live inside ``generate``)."""

    def _payload(self, messages: Messages, sampling: SamplingConfig, seed: int) -> dict:
        payload = {
            "model": self.client.resolve_model(),
            "messages": messages,
            "temperature": sampling.temperature,
            "max_tokens": sampling.max_new_tokens,
            "stream": False,
        }
        if sampling.temperature > 0:
            payload["seed"] = seed
            if sampling.top_p < 1.0:
                payload["top_p"] = sampling.top_p
            if sampling.top_k > 0:
                payload["top_k"] = sampling.top_k  # SGLang's extension of the OpenAI API
        return payload

    def _sample(self, body: dict, content: str) -> Sample:
        from keye_model.processing.tokens import THINK_END, THINK_START

        choice = body["choices"][0]
        reasoning = choice["message"].get("reasoning_content")
        # A server with a reasoning parser returns the <think> part separately; the policy
        # produced it inline, so it is put back where the chat format has it.
        text = f"{THINK_START}{reasoning}{THINK_END}{content}" if reasoning else content
        truncated = choice.get("finish_reason") == "length"
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if not truncated:
            ids.append(self.stop_id)
        return Sample(text, ids, None, truncated, "length" if truncated else "stop")

    async def _generate(self, jobs, sampling: SamplingConfig) -> list[Sample]:
        import httpx

        from keye_model.eval.benchmarks import inline_media

        semaphore = asyncio.Semaphore(self.client.concurrency)
        limits = httpx.Limits(max_connections=self.client.concurrency)
        rng = random.Random(0)
        self.client.resolve_model()
        async with httpx.AsyncClient(timeout=self.client.timeout_s, limits=limits) as http:

            async def one(messages: Messages, seed: int, what: str) -> Sample:
                async with semaphore:
                    inlined = await asyncio.to_thread(inline_media, messages)
                    recorder = _Recorder(http)
                    content = await self.client._post(
                        recorder, self._payload(inlined, sampling, seed), rng, what
                    )
                    return self._sample(recorder.response.json(), content)

            return await asyncio.gather(*(one(*job) for job in jobs))

    def generate(
        self, prompts: Sequence[Messages], sampling: SamplingConfig, n: int = 1, seed: int = 0
    ) -> list[list[Sample]]:
        """``n`` samples per prompt, one request each, ``concurrency`` in flight."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        jobs = [
            (messages, row_seed(seed, p, j), f"prompt {p} sample {j}")
            for p, messages in enumerate(prompts)
            for j in range(n)
        ]
        flat = asyncio.run(self._generate(jobs, sampling)) if jobs else []
        return [flat[p * n : (p + 1) * n] for p in range(len(prompts))]


def build_rollout(cfg: RolloutConfig, *, model=None, processor=None, model_dir=None) -> Rollout:
    """The rollout ``cfg.backend`` names: in process over ``model`` (or ``model_dir``), or a server."""
    if cfg.backend == "server":
        if not cfg.endpoint:
            raise ValueError("rollout.endpoint is required for rollout.backend=server")
        if processor is None:
            raise ValueError("a server rollout needs the policy's processor to tokenise responses")
        return ServerRollout(
            cfg.endpoint,
            processor.tokenizer,
            model=cfg.served_model or None,
            concurrency=cfg.concurrency,
            timeout_s=cfg.timeout_s,
        )
    if model is not None:
        if processor is None:
            raise ValueError("an in-process rollout over a live model needs its processor")
        return InProcessRollout(model, processor, use_cache=cfg.use_cache, max_batch=cfg.max_batch)
    if model_dir is None:
        raise ValueError("an in-process rollout needs a model or a model directory")
    return InProcessRollout.from_pretrained(
        model_dir, use_cache=cfg.use_cache, max_batch=cfg.max_batch
    )
