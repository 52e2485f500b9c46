"""Cold-start filtering: the pass-rate band, reflection pruning, re-verification and outputs.

Responses come from a scripted rollout (prompt p answers correctly in exactly c_p of k samples)
so the measured pass rates are known; grading goes through the real rule verifier and token
counts through the real tiny tokenizer. One test runs the whole filter on the tiny model in
process.
"""

from __future__ import annotations

import json

import pytest

from keye_model.rl.cold_start import (
    prune_reflection,
    run_cold_start,
    select_by_pass_rate,
    write_cold_start,
)
from keye_model.rl.config import ColdStartConfig, SamplingConfig, VerifierConfig
from keye_model.rl.rollout import Sample
from keye_model.rl.sampling import RLPrompt
from keye_model.rl.verifier import Verifier, rule_check

REFLECTIVE = (
    "<think>\nWe add 3 and 4. Is this addition? Yes, the problem says plus.\n"
    "3 + 4 = 7.\n"
    "Wait, let me check again. 3 + 4 = 7. Yes.\n"
    "Let me double-check by counting: 4, 5, 6, 7.\n"
    "We add 3 and 4.\n"
    "</think>\n"
    "The answer is \\boxed{7}. To verify, 7 - 4 = 3."
)


@pytest.fixture(scope="module")
def tokenizer():
    from keye_model.processing import build_tiny_tokenizer

    return build_tiny_tokenizer()


class ScriptedRollout:
    """``Rollout`` that answers prompt p correctly in ``correct[p]`` of its n samples."""

    name = "scripted"

    def __init__(self, correct: dict[str, int], right: str = REFLECTIVE):
        self.correct = correct
        self.right = right
        self.prompts: list = []

    def generate(self, prompts, sampling, n=1, seed=0):
        out = []
        for messages in prompts:
            self.prompts.append(messages)
            pid = messages[-1]["content"].split(":")[0]
            c = self.correct[pid]
            out.append(
                [
                    Sample(self.right if j < c else "\\boxed{8}", [], None, False, "stop")
                    for j in range(n)
                ]
            )
        return out

    def refresh(self, model_dir=None):
        pass

    def close(self):
        pass


def _prompts(ids):
    return [
        RLPrompt(pid, [{"role": "user", "content": f"{pid}: what is 3 + 4?"}], "3 + 4?", "7")
        for pid in ids
    ]


def test_keeps_exactly_the_prompts_whose_pass_rate_is_in_the_band(tokenizer, tmp_path):
    k = 8
    correct = {f"p{c}": c for c in range(k + 1)}  # pass rates 0, 1/8, ..., 1
    cfg = ColdStartConfig(k=k, sampling=SamplingConfig(max_new_tokens=64))
    rollout = ScriptedRollout(correct)
    verifier = Verifier(VerifierConfig())
    examples, outcomes, report = run_cold_start(
        rollout, verifier, _prompts(correct), cfg, tokenizer, chunk=4
    )
    measured = {o.prompt.id: o.pass_rate for o in outcomes}
    assert measured == {pid: c / k for pid, c in correct.items()}
    kept = {o.prompt.id for o in outcomes if o.decision == "kept"}
    assert kept == {pid for pid, rate in measured.items() if 0.25 <= rate <= 0.75}
    assert kept == {"p2", "p3", "p4", "p5", "p6"}  # both bounds are inside the band
    assert {o.prompt.id: o.decision for o in outcomes if o.decision != "kept"} == {
        "p0": "too_hard",
        "p1": "too_hard",
        "p7": "too_easy",
        "p8": "too_easy",
    }
    # Kept prompts bring exactly their correct responses, pruned, still verifying.
    assert len(examples) == 2 + 3 + 4 + 5 + 6
    assert all(rule_check(ex.response, "7").correct for ex in examples)
    assert report.tokens_cut > 0 and report.tokens_after < report.tokens_before
    assert report.pruned_responses == report.pruned_still_verify == len(examples)
    assert report.prune_reverted == 0
    # Responses were sampled in thinking mode.
    assert all(m[-1]["content"].endswith("/think") for m in rollout.prompts)

    # Other bounds come from config.
    narrow = select_by_pass_rate(_groups(verifier, correct, k), 0.5, 1.0)
    assert {o.prompt.id for o in narrow if o.decision == "kept"} == {f"p{c}" for c in range(4, 9)}

    files = write_cold_start(tmp_path / "out", examples, outcomes, report, "think")
    kept_rows = [json.loads(line) for line in open(files["kept.jsonl"])]
    assert {r["id"] for r in kept_rows} == kept
    assert kept_rows[0]["messages"][-1]["role"] == "assistant"
    rejected = [json.loads(line) for line in open(files["rejected.jsonl"])]
    assert {(r["id"], r["reason"]) for r in rejected} == {
        ("p0", "too_hard"),
        ("p1", "too_hard"),
        ("p7", "too_easy"),
        ("p8", "too_easy"),
    }
    saved = json.loads(open(files["report.json"]).read())
    assert saved["tokens_cut"] == report.tokens_cut


def _groups(verifier, correct, k):
    from keye_model.rl.sampling import sample_groups

    return sample_groups(
        ScriptedRollout(correct), verifier, _prompts(correct), SamplingConfig(), k, seed=0
    )


def test_prune_removes_rechecks_after_the_answer_duplicates_and_post_answer_text():
    pruned = prune_reflection(REFLECTIVE)
    reasons = [reason for reason, _ in pruned.removed]
    assert pruned.text == (
        "<think>\nWe add 3 and 4. Is this addition? Yes, the problem says plus.\n"
        "3 + 4 = 7.\n"
        "</think>\n"
        "The answer is \\boxed{7}."
    )
    assert reasons == [
        "reflection_after_answer",
        "reflection_after_answer",
        "reflection_after_answer",
        "reflection_after_answer",
        "duplicate",
        "post_answer",
    ]
    assert rule_check(pruned.text, "7").correct


def test_prune_keeps_reflection_before_the_answer_and_concise_text_unchanged():
    correction = "<think>3 + 4 = 8. Wait, that is wrong: 3 + 4 = 7.</think>\\boxed{7}"
    # "= 8" does not conclude the final answer 7, so the correction stays.
    assert prune_reflection(correction).text == correction
    concise = "<think>3 + 4 = 7.</think>The answer is \\boxed{7}."
    assert prune_reflection(concise).text == concise
    assert prune_reflection(concise).removed == []
    # No <think> block: only post-answer text and duplicates go.
    assert prune_reflection("Sum: \\boxed{7}. Double-check: 7.").text == "Sum: \\boxed{7}."


def test_pruning_that_breaks_the_answer_is_reverted(tokenizer):
    """A judge accepts the original but not the pruned text: the original is kept, and counted."""
    from keye_model.rl.cold_start import PromptOutcome, build_examples

    original = (
        "<think>3 + 4 is seven, so the result is seven.\nWait, let me check again. Seven it is."
        "</think>Answer: seven"
    )

    class Judge:
        name = "judge"

        def generate(self, prompts, sampling, n=1, seed=0):
            texts = []
            for messages in prompts:
                ok = "Seven it is" in messages[0]["content"]
                texts.append(f"Consistent: yes\nCorrect: {'yes' if ok else 'no'}")
            return [[Sample(t, [], None, False, "stop")] for t in texts]

    verifier = Verifier(VerifierConfig(use_model=True, consistency_weight=0.0), Judge())
    prompt = _prompts(["p"])[0]
    examples, report = build_examples(
        [PromptOutcome(prompt, 0.5, "kept", [original])], verifier, tokenizer
    )
    assert examples[0].response == original and examples[0].prune_reverted
    assert report.prune_reverted == 1 and report.pruned_still_verify == 0
    assert report.tokens_cut == 0


def test_cold_start_on_the_tiny_model_in_process(tmp_path, tokenizer):
    """Real sampling from the random tiny model: nothing is right, so every prompt is too hard."""
    from keye_model.model.assembly import assemble
    from keye_model.rl.rollout import InProcessRollout

    assemble("tiny", str(tmp_path / "m"), seed=0)
    rollout = InProcessRollout.from_pretrained(tmp_path / "m")
    cfg = ColdStartConfig(k=3, sampling=SamplingConfig(max_new_tokens=6), seed=1)
    examples, outcomes, report = run_cold_start(
        rollout, Verifier(VerifierConfig()), _prompts(["a", "b"]), cfg, tokenizer
    )
    rollout.close()
    assert [o.decision for o in outcomes] == ["too_hard", "too_hard"]
    assert examples == [] and report.too_hard == 2 and report.kept == 0


def test_band_must_be_ordered():
    with pytest.raises(ValueError, match="cold_start.pass_band"):
        ColdStartConfig(pass_band=[0.8, 0.2])
