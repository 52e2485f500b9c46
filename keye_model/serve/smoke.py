"""The smoke test of a served Keye model: one image + text chat request, non-empty answer expected.

Used by the chart's ``helm test`` pod (``python -m keye_model.serve.smoke --url ...``) and by the
deploy step, so both check the same thing. Standard library only: it runs in any image.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import struct
import sys
import time
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass

PROMPT = "Describe this image in detail."


class SmokeTestError(RuntimeError):
    """The endpoint did not give a usable answer."""


@dataclass
class SmokeResult:
    """What one smoke request returned."""

    answer: str
    latency_s: float
    model: str


def sample_png(size: int = 64) -> bytes:
    """A small RGB gradient PNG made in memory, so the test needs no network or image files."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return (
            struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
        )

    rows = b"".join(
        b"\x00" + bytes(v for x in range(size) for v in (4 * x % 256, 4 * y % 256, 128))
        for y in range(size)
    )
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def build_request(image_url: str | None = None, prompt: str = PROMPT, max_tokens: int = 64) -> dict:
    """The OpenAI-format chat payload (image first, then text; greedy, as in the model card)."""
    if image_url is None:
        image_url = "data:image/png;base64," + base64.b64encode(sample_png()).decode()
    return {
        "model": "",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": image_url}},
                    {"type": "text", "text": prompt},
                ],
            }
        ],
        "n": 1,
        "temperature": 0.0,
        "top_k": 1,
        "max_tokens": max_tokens,
        "skip_special_tokens": True,
    }


def _headers(api_key: str | None) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def wait_healthy(
    url: str, timeout_s: float, api_key: str | None = None, poll_s: float = 5.0
) -> None:
    """Poll ``/health`` until it answers 200 or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while True:
        try:
            req = urllib.request.Request(url.rstrip("/") + "/health", headers=_headers(api_key))
            with urllib.request.urlopen(req, timeout=min(10.0, timeout_s)) as resp:
                if resp.status == 200:
                    return
                last = f"HTTP {resp.status}"
        except (urllib.error.URLError, OSError) as err:
            last = str(err)
        if time.monotonic() + poll_s > deadline:
            raise SmokeTestError(f"{url}/health not healthy after {timeout_s:.0f} s: {last}")
        time.sleep(poll_s)


def chat_smoke_test(
    url: str,
    api_key: str | None = None,
    timeout_s: float = 1800.0,
    image_url: str | None = None,
    max_tokens: int = 64,
) -> SmokeResult:
    """POST one image + text request to ``url``/v1/chat/completions; raise unless the answer is non-empty."""
    payload = json.dumps(build_request(image_url, max_tokens=max_tokens)).encode()
    req = urllib.request.Request(
        url.rstrip("/") + "/v1/chat/completions",
        data=payload,
        headers=_headers(api_key),
        method="POST",
    )
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            body = resp.read()
    except urllib.error.HTTPError as err:
        detail = err.read().decode(errors="replace")[:500]
        raise SmokeTestError(f"{req.full_url} answered HTTP {err.code}: {detail}") from err
    except (urllib.error.URLError, OSError) as err:
        raise SmokeTestError(f"{req.full_url} unreachable: {err}") from err
    latency = time.perf_counter() - start
    try:
        data = json.loads(body)
        message = data["choices"][0]["message"]
        answer = message.get("content") or message.get("reasoning_content") or ""
    except (ValueError, KeyError, IndexError, TypeError) as err:
        raise SmokeTestError(f"{req.full_url} returned no chat completion: {body[:300]!r}") from err
    if not answer.strip():
        raise SmokeTestError(f"{req.full_url} returned an empty answer")
    return SmokeResult(answer=answer, latency_s=latency, model=str(data.get("model", "")))


def main(argv: list[str] | None = None) -> int:
    """CLI of the helm test pod: exit 0 on a non-empty answer, 1 otherwise."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--url", required=True, help="Base URL of the SGLang server, e.g. http://svc:30000."
    )
    parser.add_argument(
        "--timeout", type=float, default=900.0, help="Seconds for health wait + request."
    )
    parser.add_argument(
        "--api-key-env", default="", help="Environment variable holding the API key."
    )
    parser.add_argument(
        "--image-url", default=None, help="Image URL instead of the built-in test PNG."
    )
    parser.add_argument("--no-wait", action="store_true", help="Skip waiting for /health first.")
    args = parser.parse_args(argv)
    api_key = os.environ.get(args.api_key_env) if args.api_key_env else None
    if args.api_key_env and not api_key:
        print(f"smoke: --api-key-env {args.api_key_env} is not set", file=sys.stderr)
        return 1
    try:
        if not args.no_wait:
            wait_healthy(args.url, args.timeout, api_key)
        result = chat_smoke_test(args.url, api_key, args.timeout, args.image_url)
    except SmokeTestError as err:
        print(f"smoke: FAIL {err}", file=sys.stderr)
        return 1
    print(
        json.dumps(
            {"ok": True, "latency_s": round(result.latency_s, 3), "answer": result.answer[:500]}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
