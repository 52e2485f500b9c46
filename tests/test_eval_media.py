"""Requests carry images and videos as paths, not bytes: lazy per-request payloads,
content-hashed cache keys, and an HTTP client that survives malformed answers.

Real HTTP servers (FastAPI + uvicorn on 127.0.0.1) record what the client sends; real videos
come from the real fixtures (tests/fixtures/real); images are random-noise PNGs (incompressible, so ~1 MB each)
carried base64 in a VLMEvalKit TSV as RealWorldQA releases them.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import shutil
import tracemalloc
from pathlib import Path

import pytest

from keye_model.eval.backends import OpenAIBackend, Request, RequestFailed
from keye_model.eval.benchmarks import load_benchmark, prompt_hash
from keye_model.eval.config import EvalConfig
from keye_model.eval.stage import build_requests
from tests.conftest import FIXTURES
from tests.servers import serve_app

VIDEO = FIXTURES / "video4.mp4"
IMAGE_SIDE = 560  # 560 x 560 RGB noise: ~0.94 MB as PNG


def _noise_png(seed: int) -> bytes:
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (IMAGE_SIDE, IMAGE_SIDE, 3), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _realworldqa(root: Path, images: list[bytes]) -> Path:
    """A RealWorldQA TSV with one base64 image per question, as released."""
    folder = root / "realworldqa"
    folder.mkdir(parents=True)
    with (folder / "RealWorldQA.tsv").open("w", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["index", "question", "A", "B", "answer", "image"])
        for i, data in enumerate(images):
            writer.writerow(
                [i, "Which side?", "left", "right", "A", base64.b64encode(data).decode()]
            )
    return root


def _image_requests(root: Path, media: Path):
    cfg = EvalConfig(benchmarks=["realworldqa"], max_new_tokens=4)
    records, folder = load_benchmark(root, "realworldqa", media_dir=media)
    return build_requests(cfg, "realworldqa", records, folder)


def _videomme(root: Path, n: int) -> Path:
    """A Video-MME folder of ``n`` questions, each with its own copy of the fixture video."""
    folder = root / "videomme"
    (folder / "videos").mkdir(parents=True)
    records = []
    for i in range(n):
        shutil.copyfile(VIDEO, folder / "videos" / f"vid{i}.mp4")
        records.append(
            {
                "video_id": f"{i:03d}",
                "duration": "short",
                "domain": "Knowledge",
                "sub_category": "Humanity & History",
                "videoID": f"vid{i}",
                "question_id": f"{i:03d}-1",
                "task_type": "Counting Problem",
                "question": "How many?",
                "options": ["A. 1", "B. 2", "C. 3", "D. 4"],
                "answer": "B",
            }
        )
    (folder / "videomme.json").write_text(json.dumps(records))
    return root


def _requests(root: Path, cfg=None):
    cfg = cfg or EvalConfig(benchmarks=["videomme"], max_new_tokens=4)
    records, media = load_benchmark(root, "videomme")
    return build_requests(cfg, "videomme", records, media)


def test_requests_hold_video_paths_and_memory_does_not_grow_with_videos(tmp_path):
    root = _videomme(tmp_path / "data", 20)
    size = VIDEO.stat().st_size
    tracemalloc.start()
    try:
        requests = _requests(root)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # 20 videos of ~1.1 MB: base64-inlining them all would peak above 20 * 1.33 * size; the
    # streamed content hash needs about one 1 MiB chunk at a time.
    assert peak < 3 * size, f"peak {peak} bytes while building 20 video requests"
    part = requests[0].messages[0]["content"][0]
    assert part["type"] == "video_url" and part["video_url"]["url"].startswith("file://")
    assert len(json.dumps(requests[0].messages)) < 2000


def test_cache_key_hashes_video_content_not_its_path(tmp_path):
    first = _requests(_videomme(tmp_path / "a", 2))
    moved = _requests(_videomme(tmp_path / "b", 2))  # same content under another root
    assert [r.prompt_hash for r in first] == [r.prompt_hash for r in moved]
    assert first[0].prompt_hash == first[1].prompt_hash  # same content, same question text
    video = tmp_path / "b" / "videomme" / "videos" / "vid1.mp4"
    data = bytearray(video.read_bytes())
    data[-1] ^= 0xFF  # same size, one byte changed
    video.write_bytes(bytes(data))
    changed = _requests(tmp_path / "b")
    assert changed[0].prompt_hash == first[0].prompt_hash
    assert changed[1].prompt_hash != first[1].prompt_hash
    # and the budget still enters the key
    assert prompt_hash(first[0].messages, 5) != first[0].prompt_hash


def test_requests_hold_image_paths_and_memory_does_not_grow_with_images(tmp_path):
    def peak_building(n: int) -> tuple[int, list]:
        root = _realworldqa(tmp_path / f"data{n}", [_noise_png(seed) for seed in range(n)])
        tracemalloc.start()
        try:
            requests = _image_requests(root, tmp_path / f"media{n}")  # TSV loading included
            return tracemalloc.get_traced_memory()[1], requests
        finally:
            tracemalloc.stop()

    size = len(_noise_png(0))
    few, _ = peak_building(4)
    peak, requests = peak_building(24)
    # Holding 24 images base64-encoded needs 24 * 1.33 * size; row-by-row loading holds one
    # row at a time (plus the csv module's field buffer, 4 bytes a character, sized by the
    # largest image), so the peak does not depend on how many images there are.
    assert peak < few + size // 2, f"peak {peak} bytes for 24 images vs {few} for 4"
    assert peak < 24 * size, f"peak {peak} bytes while loading + building 24 image requests"
    assert len(requests) == 24
    for i, request in enumerate(requests):
        part = request.messages[0]["content"][0]
        assert part["type"] == "image_url" and part["image_url"]["url"].startswith("file://")
        assert len(json.dumps(request.messages)) < 2000
        path = Path(part["image_url"]["url"].removeprefix("file://"))
        assert path.parent == tmp_path / "media24"
        assert path.read_bytes() == _noise_png(i)  # decoded once, byte for byte


def test_cache_key_hashes_image_content_not_its_path(tmp_path):
    images = [_noise_png(0), _noise_png(0), _noise_png(1)]
    first = _image_requests(_realworldqa(tmp_path / "a", images), tmp_path / "media-a")
    moved = _image_requests(_realworldqa(tmp_path / "b", images), tmp_path / "media-b")
    assert first[0].messages != moved[0].messages  # other files ...
    assert [r.prompt_hash for r in first] == [r.prompt_hash for r in moved]  # ... same keys
    assert first[0].prompt_hash == first[1].prompt_hash != first[2].prompt_hash
    # the same image twice is decoded to one file
    assert len(list((tmp_path / "media-a").iterdir())) == 2
    # a changed pixel is a new file and a new key; the other questions keep theirs
    changed = [_noise_png(0), bytearray(_noise_png(0)), _noise_png(1)]
    from PIL import Image

    pixels = Image.open(io.BytesIO(changed[1])).copy()
    pixels.putpixel((0, 0), tuple(255 - c for c in pixels.getpixel((0, 0))))
    buf = io.BytesIO()
    pixels.save(buf, format="PNG", compress_level=1)
    changed[1] = buf.getvalue()
    again = _image_requests(_realworldqa(tmp_path / "c", changed), tmp_path / "media-c")
    assert again[0].prompt_hash == first[0].prompt_hash
    assert again[1].prompt_hash != first[1].prompt_hash
    assert again[2].prompt_hash == first[2].prompt_hash


def test_http_backend_inlines_images_per_request_or_sends_file_urls(tmp_path):
    from fastapi import FastAPI

    app, seen = FastAPI(), []

    @app.post("/v1/chat/completions")
    async def chat(body: dict):
        seen.append(body["messages"][0]["content"][0]["image_url"]["url"])
        return {"choices": [{"message": {"role": "assistant", "content": "A"}}]}

    images = [_noise_png(seed) for seed in range(3)]
    requests = _image_requests(_realworldqa(tmp_path / "data", images), tmp_path / "media")
    with serve_app(app) as url:
        answers = {}
        OpenAIBackend(url, model="m", concurrency=2).run(
            requests, lambda r, t: answers.__setitem__(r.index, t)
        )
        assert answers == {"0": "A", "1": "A", "2": "A"}
        assert all(u.startswith("data:image/png;base64,") for u in seen)
        assert sorted(base64.b64decode(u.split(",", 1)[1]) for u in seen) == sorted(images)
        seen.clear()
        OpenAIBackend(url, model="m", media_urls="file").run(requests[:1], lambda r, t: None)
        assert seen == [requests[0].messages[0]["content"][0]["image_url"]["url"]]
        assert seen[0].startswith("file://")


def test_http_backend_inlines_videos_per_request_or_sends_file_urls(tmp_path):
    from fastapi import FastAPI

    app, seen, state = FastAPI(), [], {"live": 0, "most": 0}

    @app.post("/v1/chat/completions")
    async def chat(body: dict):
        seen.append(body["messages"][0]["content"][0]["video_url"]["url"])
        return {"choices": [{"message": {"role": "assistant", "content": "B"}}]}

    requests = _requests(_videomme(tmp_path / "data", 6))
    import keye_model.eval.benchmarks as benchmarks

    real_inline = benchmarks.inline_media

    def counting_inline(messages):
        state["live"] += 1
        state["most"] = max(state["most"], state["live"])
        return real_inline(messages)

    with serve_app(app) as url:
        client = OpenAIBackend(url, model="m", concurrency=2)
        answers = {}
        benchmarks.inline_media = counting_inline
        try:

            def on_result(request, text):
                state["live"] -= 1  # its payload is gone once answered
                answers[request.index] = text

            client.run(requests, on_result)
        finally:
            benchmarks.inline_media = real_inline
        assert len(answers) == 6 and set(answers.values()) == {"B"}
        # base64 data URLs carrying the very file bytes; never more than ``concurrency`` built
        assert all(u.startswith("data:video/mp4;base64,") for u in seen)
        assert base64.b64decode(seen[0].split(",", 1)[1]) == VIDEO.read_bytes()
        assert state["most"] <= 2
        seen.clear()
        OpenAIBackend(url, model="m", media_urls="file").run(requests[:1], lambda r, t: None)
        assert seen == [requests[0].messages[0]["content"][0]["video_url"]["url"]]
        assert seen[0].startswith("file://")
    with pytest.raises(ValueError, match="media_urls"):
        OpenAIBackend("http://127.0.0.1:9", media_urls="s3")


def test_malformed_200_response_is_retried_then_named():
    from fastapi import FastAPI
    from fastapi.responses import PlainTextResponse

    app, hits = FastAPI(), {"n": 0}

    @app.post("/v1/chat/completions")
    def chat(body: dict):
        hits["n"] += 1
        text = body["messages"][0]["content"]
        if text == "no-choices":
            return {"id": "x", "object": "chat.completion"}
        if hits["n"] == 1:
            return PlainTextResponse("<html>proxy hiccup</html>", status_code=200)
        return {"choices": [{"message": {"role": "assistant", "content": "fine"}}]}

    with serve_app(app) as url:
        client = OpenAIBackend(url, model="m", retries=2, backoff_base_s=0.01)
        assert client.complete("hi") == "fine"  # the garbled first answer was asked again
        assert client.calls == 2
        ok = Request("mmmu", "q-1", "h", [{"role": "user", "content": "fine"}], 4)
        bad = Request("mmmu", "q-7", "h", [{"role": "user", "content": "no-choices"}], 4)
        got = []
        with pytest.raises(
            RequestFailed,
            match=rf"{url}: request mmmu index q-7 failed after 3 attempt\(s\): "
            r"malformed 200 response: response lacks choices",
        ):
            client.run([ok, bad], lambda r, t: got.append((r.index, t)))
        assert got == [("q-1", "fine")]  # the good answer arrived (and would be cached)
