"""Dynamic sampling, prompt order/resume, truncation masks and the in-process rollout.

Dynamic sampling is driven by groups with given rewards (the rule under test is which groups
survive and when the stage gives up). The rollout tests sample from the tiny model in process:
the KV cache must not change what is sampled, a response must not depend on its batch
neighbours, and the returned log-probs must equal a teacher-forced forward pass.
"""

from __future__ import annotations

import pytest
import torch

from keye_model.rl.config import SamplingConfig, VerifierConfig
from keye_model.rl.rollout import InProcessRollout, Sample, with_thinking
from keye_model.rl.sampling import (
    MAX_DRAW_FACTOR,
    DynamicSamplingError,
    Group,
    PromptStream,
    RLPrompt,
    collect_groups,
    loss_mask,
    reward_std,
    sample_groups,
)
from keye_model.rl.verifier import Verdict, Verifier


def _prompt(i: int) -> RLPrompt:
    return RLPrompt(f"q{i}", [{"role": "user", "content": f"question {i}"}], f"question {i}", "1")


def _group(prompt: RLPrompt, rewards, truncated=()) -> Group:
    samples = [Sample("", [1], None, i in truncated, "stop") for i in range(len(rewards))]
    verdicts = [Verdict(r >= 0.5, None, r, None, "rule") for r in rewards]
    return Group(prompt, samples, verdicts)


def _grader(table):
    """grade(prompts, round) returning the rewards table[prompt index] for each prompt."""
    calls = []

    def grade(prompts, round_index):
        calls.append((round_index, [p.id for p in prompts]))
        return [_group(p, table[int(p.id[1:])]) for p in prompts]

    return grade, calls


def test_groups_with_equal_rewards_are_dropped_and_refilled_from_new_prompts():
    table = {
        0: [1, 0, 0, 1],
        1: [0, 0, 0, 0],  # all fail
        2: [0.5, 0.5, 0.5, 0.5],  # all equal but not binary: a mean filter would keep it
        3: [1, 1, 1, 1],  # all pass
        4: [0, 1, 0, 0],
        5: [0.2, 0.9, 0.9, 0.9],
        6: [1, 0, 1, 1],
        7: [0, 0, 0, 0],
        8: [0, 0, 1, 0],
    }
    stream = PromptStream([_prompt(i) for i in range(9)], seed=0)
    stream._order = list(range(9))  # a known order for the assertion below
    grade, calls = _grader(table)
    kept, stats = collect_groups(stream.take, grade, wanted=3, max_rounds=5)
    # Round 0 asks for 3 prompts and keeps 1 of 3; round 1 asks for the 2 missing groups at
    # that keep share, 2 / (1/3) = 6 fresh prompts, and keeps 4 of them.
    assert calls == [(0, ["q0", "q1", "q2"]), (1, ["q3", "q4", "q5", "q6", "q7", "q8"])]
    assert [g.prompt.id for g in kept] == ["q0", "q4", "q5"]
    assert (stats.rounds, stats.groups_sampled, stats.groups_kept) == (2, 9, 3)
    assert stats.groups_surplus == 2
    # q1 and q7 failed every response; q2 (0.5 >= pass_threshold) and q3 passed every one.
    assert (stats.dropped_all_fail, stats.dropped_all_pass) == (2, 2)
    assert stats.responses == 36


def test_a_round_draws_at_most_max_draw_factor_prompts_per_missing_group():
    table = {i: [0, 0] for i in range(100)}  # nothing informative: the share stays 0
    stream = PromptStream([_prompt(i) for i in range(100)], seed=0)
    stream._order = list(range(100))
    grade, calls = _grader(table)
    with pytest.raises(DynamicSamplingError):
        collect_groups(stream.take, grade, wanted=2, max_rounds=2)
    assert [len(ids) for _, ids in calls] == [2, 2 * MAX_DRAW_FACTOR]


@pytest.mark.parametrize(
    "rewards, verdict",
    [([0, 0, 0, 0], "too hard"), ([1, 1, 1, 1], "too easy")],
)
def test_dynamic_sampling_fails_with_a_diagnosis(rewards, verdict):
    table = {i: rewards for i in range(50)}
    table[0] = [0, 1, 0, 0]  # one informative group is not enough
    stream = PromptStream([_prompt(i) for i in range(50)], seed=3)
    grade, calls = _grader(table)
    with pytest.raises(DynamicSamplingError) as err:
        collect_groups(stream.take, grade, wanted=4, max_rounds=3)
    message = str(err.value)
    assert f"data is {verdict}" in message
    assert "after 3 generation round(s)" in message
    assert len(calls) == 3


def test_reward_std_is_unbiased():
    assert reward_std([1, 0]) == pytest.approx(2**-0.5)
    assert reward_std([0.3, 0.3, 0.3]) == 0.0


def test_prompt_stream_resumes_in_the_same_order():
    prompts = [_prompt(i) for i in range(7)]
    a = PromptStream(prompts, seed=11)
    first = [p.id for p in a.take(5)]
    state = a.state_dict()
    expected = [p.id for p in a.take(12)]  # crosses two epoch boundaries
    b = PromptStream(prompts, seed=11)
    b.load_state_dict(state)
    assert [p.id for p in b.take(12)] == expected
    assert sorted(first + expected[:2]) == sorted(
        p.id for p in prompts
    )  # an epoch is a permutation
    assert [p.id for p in PromptStream(prompts, seed=12).take(7)] != first + expected[:2]
    with pytest.raises(ValueError, match="seed"):
        PromptStream(prompts, seed=1).load_state_dict(state)


def test_truncated_responses_are_masked_whole():
    samples = [
        Sample("a", [5, 6, 2], None, False, "stop"),
        Sample("b", [5, 6, 7, 8], None, True, "length"),
        Sample("c", [9], None, False, "stop"),
    ]
    assert loss_mask(samples, 4) == [
        [True, True, True, False],
        [False, False, False, False],
        [True, False, False, False],
    ]


# ---------------------------------------------------------------------------------------------
# in-process rollout on the tiny model


@pytest.fixture(scope="module")
def rollout(tmp_path_factory):
    from keye_model.model.assembly import assemble

    path = tmp_path_factory.mktemp("rl-rollout") / "tiny"
    assemble("tiny", str(path), seed=0)
    r = InProcessRollout.from_pretrained(path)
    yield r
    r.close()


PROMPTS = [
    [{"role": "user", "content": "What is 2 + 3?"}],
    [{"role": "user", "content": "Describe the picture of a cat sitting on a table."}],
]


def test_kv_cache_and_batching_do_not_change_the_samples(rollout):
    sampling = SamplingConfig(temperature=1.0, top_k=50, top_p=0.9, max_new_tokens=12)
    rollout.use_cache, rollout.max_batch = True, 64
    cached = rollout.generate(PROMPTS, sampling, n=3, seed=5)
    rollout.use_cache = False
    uncached = rollout.generate(PROMPTS, sampling, n=3, seed=5)
    rollout.use_cache, rollout.max_batch = True, 1
    alone = rollout.generate(PROMPTS, sampling, n=3, seed=5)
    rollout.max_batch = 64
    for a, b, c in zip(cached, uncached, alone):
        for x, y, z in zip(a, b, c):
            assert x.response_ids == y.response_ids == z.response_ids
            assert x.logprobs == pytest.approx(y.logprobs, abs=1e-4)
    ids = [s.response_ids for group in cached for s in group]
    assert len({tuple(i) for i in ids}) > 1, "samples of one seed should differ"
    other = rollout.generate(PROMPTS, sampling, n=3, seed=6)
    assert [s.response_ids for g in other for s in g] != ids
    for group in cached:
        for s in group:
            assert s.truncated == (s.finish_reason == "length")
            assert len(s.response_ids) == len(s.logprobs) <= 12
            if s.truncated:
                assert len(s.response_ids) == 12
            else:
                assert s.response_ids[-1] in rollout.stop_ids


def test_rollout_logprobs_equal_a_teacher_forced_forward(rollout):
    from keye_model.rl.gspo import token_logprobs

    sampling = SamplingConfig(temperature=0.7, max_new_tokens=10)
    sample = rollout.generate(PROMPTS[:1], sampling, n=1, seed=0)[0][0]
    prompt = rollout.encode(PROMPTS[0])["input_ids"]
    full = torch.cat([prompt, torch.tensor([sample.response_ids])], dim=1)
    with torch.no_grad():
        logits = rollout.model(input_ids=full).logits
    start = prompt.shape[1]
    ref = token_logprobs(
        logits[:, start - 1 : -1], torch.tensor([sample.response_ids]), temperature=0.7
    )
    assert ref[0].tolist() == pytest.approx(sample.logprobs, abs=1e-4)


def test_greedy_rollout_is_deterministic_and_training_mode_is_restored(rollout):
    rollout.model.train()
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=8)
    a = rollout.generate(PROMPTS, greedy, n=2, seed=0)
    b = rollout.generate(PROMPTS, greedy, n=1, seed=99)
    assert rollout.model.training
    rollout.model.eval()
    assert a[0][0].response_ids == a[0][1].response_ids == b[0][0].response_ids


def test_sample_groups_grades_g_responses_per_prompt(rollout):
    prompts = [_prompt(1), _prompt(2)]
    groups = sample_groups(
        rollout,
        Verifier(VerifierConfig()),
        prompts,
        SamplingConfig(max_new_tokens=5),
        group_size=3,
        seed=0,
        thinking="no_think",
    )
    assert [g.prompt.id for g in groups] == ["q1", "q2"]
    assert all(len(g.samples) == len(g.verdicts) == 3 for g in groups)
    assert all(g.rewards == [0.0, 0.0, 0.0] for g in groups)  # a random model is never right


def test_with_thinking_appends_the_mode_suffix_to_the_last_user_turn():
    messages = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "second"}]},
    ]
    out = with_thinking(messages, "think")
    assert out[0]["content"] == "first"
    assert out[2]["content"][-1]["text"] == "second/think"
    assert messages[2]["content"][0]["text"] == "second"  # the input is not modified
    assert with_thinking(messages, "auto")[2]["content"][0]["text"] == "second"
    with pytest.raises(ValueError, match="thinking must be one of"):
        with_thinking(messages, "deep")
