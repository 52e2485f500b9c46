"""The server rollout against a real ``keye serve local`` (uvicorn in a thread on 127.0.0.1).

Greedy decoding is deterministic, and sampling is seeded per response with one sampler on both
sides, so the server rollout must return what the in-process rollout samples from the same
checkpoint; after ``refresh`` (SGLang's pause / flush /
update_weights_from_disk / continue) it must return what the new checkpoint samples, never an
answer of the old weights.
"""

from __future__ import annotations

import pytest

from keye_model.rl.config import RolloutConfig, SamplingConfig
from keye_model.rl.rollout import InProcessRollout, ServerRollout, build_rollout
from tests.conftest import FIXTURES
from tests.servers import serve_app

GREEDY = SamplingConfig(temperature=0.0, max_new_tokens=10)
PROMPTS = [
    [{"role": "user", "content": "What is 2 + 3?/no_think"}],
    [
        {
            "role": "user",
            "content": [
                {
                    "type": "image_url",
                    "image_url": {"url": f"file://{FIXTURES / 'sglang_logo.png'}"},
                },
                {"type": "text", "text": "What is in the picture?/think"},
            ],
        }
    ],
]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from keye_model.model.assembly import assemble

    root = tmp_path_factory.mktemp("rl-server")
    assemble("tiny", str(root / "a"), seed=0)
    assemble("tiny", str(root / "b"), seed=1)
    return {"a": root / "a", "b": root / "b"}


def _in_process(model_dir, sampling=GREEDY, n=1, seed=0):
    rollout = InProcessRollout.from_pretrained(model_dir)
    try:
        return rollout.generate(PROMPTS, sampling, n=n, seed=seed)
    finally:
        rollout.close()


def test_server_rollout_matches_in_process_and_follows_a_refresh(models):
    from keye_model.eval.generation import LocalGenerator
    from keye_model.processing import KeyeProcessor
    from keye_model.serve.local import build_app

    tokenizer = KeyeProcessor.from_pretrained(models["a"]).tokenizer
    generator = LocalGenerator(models["a"])
    expected_a = _in_process(models["a"])
    expected_b = _in_process(models["b"])
    try:
        with serve_app(build_app(generator, "keye-tiny")) as url:
            rollout = build_rollout(
                RolloutConfig(backend="server", endpoint=url, concurrency=4),
                processor=KeyeProcessor.from_pretrained(models["a"]),
            )
            assert isinstance(rollout, ServerRollout)
            got = rollout.generate(PROMPTS, GREEDY, n=2, seed=3)
            for want, group in zip(expected_a, got):
                assert len(group) == 2
                for sample in group:
                    assert sample.text == want[0].text
                    assert sample.truncated == want[0].truncated
                    assert sample.logprobs is None  # the trainer recomputes them
                    tail = [] if sample.truncated else [rollout.stop_id]
                    assert sample.response_ids == tokenizer.encode(sample.text) + tail

            # Sampled (GSPO's temperature 1): each response seeded by (seed, prompt, sample),
            # drawn by the same sampler as in process, so the groups match the in-process ones.
            sampled = SamplingConfig(temperature=1.0, top_p=0.9, max_new_tokens=8)
            groups = rollout.generate(PROMPTS, sampled, n=4, seed=5)
            want = _in_process(models["a"], sampled, n=4, seed=5)
            assert [[s.text for s in g] for g in groups] == [[s.text for s in g] for g in want]
            assert all(len({s.text for s in g}) > 1 for g in groups)  # a group, not copies

            rollout.refresh(models["b"])
            after = rollout.generate(PROMPTS, GREEDY, n=1)
            assert [g[0].text for g in after] == [g[0].text for g in expected_b]
            assert [g[0].text for g in after] != [g[0].text for g in expected_a]
            assert rollout.refreshes == 1
    finally:
        generator.close()


def test_server_rollout_needs_an_endpoint_and_a_processor():
    with pytest.raises(ValueError, match="rollout.endpoint"):
        build_rollout(RolloutConfig(backend="server"))
    with pytest.raises(ValueError, match="processor"):
        build_rollout(RolloutConfig(backend="server", endpoint="http://127.0.0.1:1"))
