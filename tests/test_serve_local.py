"""``keye serve local`` speaks SGLang's API: the model card's client, the ``openai`` client, weight refresh.

One real server process (``keye serve local`` on 127.0.0.1) serves a tiny random Keye model
written by ``keye init``'s assembler. Greedy decoding, and seeded sampling, make answers
deterministic, so every answer is checked against the same model generating in process.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import httpx
import pytest
import torch
from safetensors.torch import load_file, save_file

from keye_model.eval.backends import OpenAIBackend, wait_healthy
from keye_model.eval.generation import LocalGenerator, SamplingParams
from keye_model.serve.refresh import RefreshError, refresh_weights
from tests.conftest import FIXTURES, TEST_DATA
from tests.servers import free_port

# The client function of the Keye-VL-671B-A37B model card, as published (the card text in
# tests/data lost its indentation; test_card_client_is_the_published_one checks this copy
# against it line by line). Only BASE_URL is replaced before it runs.
CARD_CLIENT = """\
import json
import requests
BASE_URL = "http://MASTER_NODE_IP:30000"
def generate(messages):
    payload = {
        "model": "",
        "messages": messages,
        "n": 1,
        "temperature": 0.0,
        "max_tokens": 256,
        "top_k": 1,
        "ignore_eos": False,
        "skip_special_tokens": True,
    }
    resp = requests.post(
        f"{BASE_URL}/v1/chat/completions",
        headers={"Content-Type": "application/json"},
        data=json.dumps(payload),
        timeout=1800,
    )
    resp.raise_for_status()
    return resp.json()
# Example: image + text
messages = [
    {
        "role": "user",
        "content": [
            {
                "type": "image_url",
                "image_url": {"url": "https://raw.githubusercontent.com/sgl-project/sglang/main/assets/logo.png"},
            },
            {"type": "text", "text": "Describe this image in detail./think"},
        ],
    }
]
"""


def _card_lines() -> list[str]:
    text = (TEST_DATA / "keye_model_card_serving.txt").read_text()
    start = text.index("import json\nimport requests")
    end = text.index("result = generate(messages)", start)
    return [line.strip() for line in text[start:end].splitlines() if line.strip()]


def _image_message(text: str) -> list[dict]:
    # The card's example image (SGLang's logo), sent inline since nothing is downloaded here.
    data = base64.b64encode((FIXTURES / "sglang_logo.png").read_bytes()).decode()
    return [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}},
                {"type": "text", "text": text},
            ],
        }
    ]


QUESTION = [{"role": "user", "content": "What is in the picture? Answer briefly./no_think"}]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-local")
    saved = {k: os.environ.get(k) for k in ("KEYE_HOME", "TMPDIR", "KEYE_NO_PROGRESS")}
    os.environ.update(KEYE_HOME=str(root / "home"), TMPDIR=str(root), KEYE_NO_PROGRESS="1")
    yield root
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def models(env):
    """Three checkpoints of one architecture: seed 0, seed 1, and seed 0 rigged to end at once."""
    from keye_model.model.assembly import assemble

    a, b, eos = env / "tiny-a", env / "tiny-b", env / "tiny-eos"
    assemble("tiny", str(a), seed=0)
    assemble("tiny", str(b), seed=1)
    # The <|im_end|> row of the output head set along the final norm's weight (all ones in the
    # tiny init) scores far above the random rows: this model's first token is <|im_end|>.
    shutil.copytree(a, eos)
    weights = load_file(eos / "model.safetensors")
    head = weights["lm_head.weight"]
    head[2] = 10 * head.abs().max() * torch.sign(weights["model.norm.weight"])
    save_file(weights, eos / "model.safetensors", metadata={"format": "pt"})
    return {"a": a, "b": b, "eos": eos}


@pytest.fixture(scope="module")
def server(env, models):
    port = free_port()
    log = open(env / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "keye_model.cli", "serve", "local", "--model", str(models["a"])]
        + ["--port", str(port), "--name", "keye-tiny"],
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


def _answer(model_dir, messages, params: SamplingParams) -> str:
    generator = LocalGenerator(model_dir)
    try:
        return generator.generate_many([messages], params)[0].text
    finally:
        generator.close()


def _chat(server, messages=QUESTION, **fields) -> httpx.Response:
    body = {"messages": messages, "max_tokens": 12, "temperature": 0, **fields}
    return httpx.post(f"{server}/v1/chat/completions", json=body, timeout=120)


def test_card_client_is_the_published_one():
    ours = [line.strip() for line in CARD_CLIENT.splitlines() if line.strip()]
    assert ours == _card_lines()


def test_model_card_client_unchanged_gets_200_and_text(server, models):
    namespace: dict = {}
    exec(CARD_CLIENT.replace("http://MASTER_NODE_IP:30000", server), namespace)
    generate = namespace["generate"]
    # The card's own example names a remote URL: refused clearly (nothing is fetched).
    import requests

    with pytest.raises(requests.HTTPError) as err:
        generate(namespace["messages"])
    assert err.value.response.status_code == 400
    assert "remote URL 'https://raw.githubusercontent.com" in err.value.response.text
    assert "base64 data URL" in err.value.response.text
    # The same image sent inline: a 200 and the text the model gives in process.
    messages = _image_message("Describe this image in detail./think")
    result = generate(messages)
    content = result["choices"][0]["message"]["content"]
    assert isinstance(content, str) and content
    assert result["model"] == "keye-tiny" and len(result["choices"]) == 1
    assert content == _answer(models["a"], messages, SamplingParams(256))


def test_openai_client_stream_adds_up_to_the_answer(server):
    import openai

    client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)
    messages = _image_message("What does the logo show?/no_think")
    kwargs = dict(model="", messages=messages, max_tokens=24, temperature=0)
    whole = client.chat.completions.create(**kwargs)
    answer = whole.choices[0].message.content
    chunks = list(
        client.chat.completions.create(
            **kwargs, stream=True, stream_options={"include_usage": True}
        )
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(pieces) == answer
    assert sum(1 for p in pieces if p) > 1  # really streamed, not one final chunk
    finals = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finals == [whole.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens

    # A stop string from the middle of the answer: both paths cut before it, and agree.
    stop = next(
        answer[i : i + 3]
        for i in range(4, len(answer) - 3)
        if "\ufffd" not in answer[i : i + 3] and answer.find(answer[i : i + 3]) == i
    )
    cut = answer[: answer.find(stop)]
    stopped = client.chat.completions.create(**kwargs, stop=[stop])
    assert stopped.choices[0].message.content == cut
    assert stopped.choices[0].finish_reason == "stop"
    streamed = client.chat.completions.create(**kwargs, stop=stop, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == cut


def test_sglang_sampling_fields_honoured(server, models):
    expected = _answer(models["a"], QUESTION, SamplingParams(12))
    # model empty or absent, and SGLang's extras at their greedy values: the same answer
    for fields in ({"model": ""}, {}, {"top_k": 1, "seed": 7, "top_p": 1.0, "model": "keye-tiny"}):
        resp = _chat(server, **fields)
        assert resp.status_code == 200, resp.text
        assert resp.json()["choices"][0]["message"]["content"] == expected
    # n copies of the one greedy answer
    resp = _chat(server, n=3).json()
    assert [c["index"] for c in resp["choices"]] == [0, 1, 2]
    assert {c["message"]["content"] for c in resp["choices"]} == {expected}
    # ignore_eos: the budget is always used up
    resp = _chat(server, ignore_eos=True, max_tokens=9).json()
    assert (
        resp["usage"]["completion_tokens"] == 9 and resp["choices"][0]["finish_reason"] == "length"
    )


def test_sampling_is_seeded_per_choice_whatever_the_batch(server, models):
    sampled = {"temperature": 1.0, "top_p": 0.95, "top_k": 50, "max_tokens": 12}
    first = _chat(server, n=3, seed=11, **sampled).json()["choices"]
    again = _chat(server, n=3, seed=11, **sampled).json()["choices"]
    texts = [c["message"]["content"] for c in first]
    assert texts == [c["message"]["content"] for c in again]  # seeded: reproducible
    assert len(set(texts)) > 1  # n draws, not n copies
    # Choice i is the draw seeded 11 + i: the same as a one-choice request with that seed.
    alone = _chat(server, seed=12, **sampled).json()["choices"][0]["message"]["content"]
    assert alone == texts[1]
    # In process, the same draws whether a row is generated alone or batched with others.
    generator = LocalGenerator(models["a"])
    try:
        params = SamplingParams(12, temperature=1.0, top_p=0.95, top_k=50)
        encoded = [generator.encode(QUESTION)] * 3
        batched = generator.generate_encoded(encoded, params, seeds=[13, 11, 12])
        single = generator.generate_encoded(encoded[:1], params, seeds=[11])
    finally:
        generator.close()
    assert [g.text for g in batched] == [texts[2], texts[0], texts[1]]
    assert single[0].text == texts[0]
    # Streaming: each choice's deltas add up to that choice's answer.
    with httpx.stream(
        "POST",
        f"{server}/v1/chat/completions",
        json={"messages": QUESTION, "n": 3, "seed": 11, "stream": True, **sampled},
        timeout=120,
    ) as resp:
        lines = [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    streamed = ["", "", ""]
    for chunk in map(json.loads, lines[:-1]):
        for choice in chunk["choices"]:
            streamed[choice["index"]] += choice["delta"].get("content") or ""
    assert streamed == texts


def test_ignore_eos_and_skip_special_tokens_on_a_model_that_ends_at_once(models):
    # The rigged model's first token is <|im_end|>: the end of a normal answer.
    generator = LocalGenerator(models["eos"])
    try:
        ended = generator.generate_many([QUESTION], SamplingParams(5))[0]
        assert (ended.text, ended.completion_tokens, ended.finish_reason) == ("", 0, "stop")
        kept = generator.generate_many(
            [QUESTION], SamplingParams(5, ignore_eos=True, skip_special_tokens=False)
        )[0]
        assert kept.text == "<|im_end|>" * 5 and kept.finish_reason == "length"
        skipped = generator.generate_many([QUESTION], SamplingParams(5, ignore_eos=True))[0]
        assert skipped.text == "" and skipped.completion_tokens == 5
    finally:
        generator.close()


@pytest.mark.parametrize(
    ("fields", "status", "named"),
    [
        ({"temperature": -0.5}, 400, "temperature"),
        ({"temperature": "hot"}, 400, "temperature"),
        ({"temperature": 0.7, "min_p": 0.1}, 400, "min_p"),
        ({"top_k": 0}, 400, "top_k"),
        ({"n": 0}, 400, "'n'"),
        ({"seed": "x"}, 400, "seed"),
        ({"stop": [""]}, 400, "stop"),
        ({"ignore_eos": "yes"}, 400, "ignore_eos"),
        ({"logprobs": True}, 400, "logprobs"),
        ({"presence_penalty": 0.5}, 400, "presence_penalty"),
        ({"model": "other-model"}, 404, "unknown model 'other-model'"),
        ({"max_tokens": -1}, 400, "max_tokens"),
    ],
)
def test_unsupported_or_bad_fields_refused_naming_them(server, fields, status, named):
    resp = _chat(server, **fields)
    assert resp.status_code == status and named in resp.json()["detail"]


def test_stream_error_before_generation_is_a_plain_400(server):
    bad = [
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": "file:///nope.png"}}],
        }
    ]
    resp = _chat(server, messages=bad, stream=True)
    assert resp.status_code == 400 and "nope.png" in resp.json()["detail"]


def test_health_generate_as_sglang(server):
    resp = httpx.get(f"{server}/health_generate", timeout=30)
    assert resp.status_code == 200 and resp.content == b""


def _status(server) -> dict:
    return httpx.get(f"{server}/health", timeout=10).json()


def _wait_for(predicate, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.02)


def test_weight_refresh_answers_from_new_weights_only(server, models, env):
    params = SamplingParams(12)
    old = _answer(models["a"], QUESTION, params)
    new = _answer(models["b"], QUESTION, params)
    assert old != new
    assert _chat(server).json()["choices"][0]["message"]["content"] == old
    fingerprint = OpenAIBackend(server).fingerprint()  # what the evaluation cache is keyed by

    # A long request in flight when generation pauses is aborted (503, retryable), never
    # finished on the old weights behind the caller's back.
    replies: dict = {}
    long = threading.Thread(
        target=lambda: replies.update(long=_chat(server, max_tokens=4000, ignore_eos=True))
    )
    long.start()
    _wait_for(lambda: _status(server)["running"] == 1, "long request never started")
    paused = httpx.post(f"{server}/pause_generation", timeout=60)
    assert paused.json() == {"message": "Generation paused successfully.", "status": "ok"}
    long.join(timeout=60)
    assert replies["long"].status_code == 503 and "pause_generation" in replies["long"].text

    # Asked while paused: it waits, and is answered after the update by the new weights.
    queued = threading.Thread(target=lambda: replies.update(queued=_chat(server)))
    queued.start()
    _wait_for(lambda: _status(server)["waiting"] == 1, "request was not queued while paused")
    assert httpx.get(f"{server}/health_generate", timeout=30).status_code == 503
    flushed = httpx.post(f"{server}/flush_cache", timeout=30)
    assert flushed.status_code == 200 and flushed.text.startswith("Cache flushed.")
    update = httpx.post(
        f"{server}/update_weights_from_disk",
        json={"model_path": str(models["b"]), "weight_version": "step-1"},
        timeout=120,
    )
    assert update.status_code == 200 and update.json()["success"] is True
    assert update.json()["num_paused_requests"] == 1
    assert httpx.post(f"{server}/continue_generation", timeout=30).status_code == 200
    queued.join(timeout=60)
    assert replies["queued"].json()["choices"][0]["message"]["content"] == new
    assert _chat(server).json()["choices"][0]["message"]["content"] == new
    info = httpx.get(f"{server}/get_model_info", timeout=10).json()
    assert info["model_path"] == str(models["b"]) and info["weight_version"] == "step-1"
    # an evaluation cache written before the refresh is refused after it
    refreshed = OpenAIBackend(server).fingerprint()
    assert refreshed["id"] != fingerprint["id"] and "version step-1" in refreshed["description"]

    # The client helper does the same four calls; back to the first weights.
    reply = refresh_weights(server, models["a"], weight_version="step-2")
    assert reply["success"] is True
    assert _chat(server).json()["choices"][0]["message"]["content"] == old
    assert httpx.get(f"{server}/get_weight_version", timeout=10).json() == {
        "weight_version": "step-2"
    }


def test_refresh_with_a_bad_checkpoint_fails_clearly_and_keeps_serving(server, models, env):
    broken = env / "tiny-broken"
    shutil.copytree(models["b"], broken)
    weights = load_file(broken / "model.safetensors")
    del weights["lm_head.weight"]  # from_pretrained would fill it with random values
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    before = _chat(server).json()["choices"][0]["message"]["content"]
    with pytest.raises(
        RefreshError, match=r"update_weights_from_disk.*missing keys: 1.*lm_head"
    ) as err:
        refresh_weights(server, broken)
    assert "continues on its previous weights" in str(err.value)
    with pytest.raises(RefreshError, match="model_path has no config.json"):
        refresh_weights(server, env / "nowhere")
    # not left paused, and still the previous weights
    assert _status(server)["paused"] is False
    assert _chat(server).json()["choices"][0]["message"]["content"] == before
    with pytest.raises(RefreshError, match="ConnectError"):
        refresh_weights(f"http://127.0.0.1:{free_port()}", models["a"], timeout_s=5)


def test_pause_modes_other_than_abort_refused(server):
    resp = httpx.post(f"{server}/pause_generation", json={"mode": "retract"}, timeout=10)
    assert resp.status_code == 400 and "'mode'" in resp.json()["detail"]
    assert _status(server)["paused"] is False


def test_stream_cut_by_a_pause_ends_with_an_error_event(server):
    # The status line is already sent, so an aborted stream says so in an error event that the
    # openai client raises on; it never ends as if the answer were complete.
    body = {"messages": QUESTION, "max_tokens": 4000, "ignore_eos": True, "stream": True}
    events = []
    with httpx.stream("POST", f"{server}/v1/chat/completions", json=body, timeout=120) as resp:
        assert resp.status_code == 200
        lines = resp.iter_lines()
        for line in lines:
            if line.startswith("data: "):
                events.append(line[6:])
            if len(events) == 3:  # generation is under way
                break
        try:
            paused = httpx.post(f"{server}/pause_generation", timeout=60)
            assert paused.status_code == 200
            events += [line[6:] for line in lines if line.startswith("data: ")]
        finally:
            httpx.post(f"{server}/continue_generation", timeout=30)
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["code"] == 503 and "pause_generation" in error["message"]
    assert not any('"finish_reason": "length"' in e for e in events)
