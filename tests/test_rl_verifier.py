"""Rule and model verifiers: extraction order, tolerances, judge verdicts, cache and fallbacks.

The judge logic is tested with a scripted rollout (an object with the ``Rollout`` interface that
answers given texts, so each malformed form can be named) and once with the real tiny model as
judge: its random weights cannot write the two verdicts, so every answer takes the fallback.
"""

from __future__ import annotations

import pytest

from keye_model.rl.config import VerifierConfig
from keye_model.rl.rollout import Sample
from keye_model.rl.verifier import (
    Verifier,
    VerifyItem,
    answers_match,
    combine_reward,
    extract_answer,
    parse_judge,
    rule_check,
)


class ScriptedJudge:
    """A ``Rollout`` whose answers are given in advance; records the prompts it was asked."""

    name = "scripted"

    def __init__(self, answers: list[str]):
        self.answers = list(answers)
        self.prompts: list = []
        self.temperatures: list[float] = []

    def generate(self, prompts, sampling, n=1, seed=0):
        self.prompts.extend(prompts)
        self.temperatures.append(sampling.temperature)
        return [[Sample(self.answers.pop(0), [], None, False, "stop")] for _ in prompts]

    def refresh(self, model_dir=None):
        pass

    def close(self):
        pass


def test_extraction_order_think_then_boxed_then_answer_line():
    assert extract_answer("<think>maybe \\boxed{3}</think>So \\boxed{4}.") == ("4", "boxed")
    # A boxed answer only inside the reasoning does not count.
    assert extract_answer("<think>\\boxed{3}</think>I am not sure.\nIt could be many things.") == (
        None,
        "none",
    )
    # A bare one-line answer part is the answer (SFT data answers that way without thinking).
    assert extract_answer("<think>\n\n</think>\n\n12") == ("12", "whole")
    assert extract_answer("<think>\\boxed{3}</think>increasing.") == ("increasing", "whole")
    assert extract_answer("<think>x</think>Working...\nAnswer: 12.") == ("12", "answer_line")
    assert extract_answer("Answer: 1\nActually, answer: $7$") == ("7", "answer_line")
    assert extract_answer("\\boxed{5} and Answer: 6") == ("5", "boxed")
    # A truncated response still inside <think> has no answer.
    assert extract_answer("<think>let me compute 2+2 = 4, Answer: 4") == (None, "none")


@pytest.mark.parametrize(
    "pred, gold, expected",
    [
        ("B", "B", True),
        ("(B)", "B", True),
        ("B. a cat", "(B)", True),
        ("C", "B", False),
        ("A or B", "B", False),  # two letters: not an answer
        ("4", "4", True),
        ("4.00001", "4", True),  # within rel_tol 1e-4
        ("4.01", "4", False),
        ("1,000", "1000", True),
        ("500", "5", False),  # OlympiadBench's percent leniency is not inherited
        ("\\frac{1}{2}", "0.5", True),  # math-verify
        ("\\sqrt{4}", "2", True),
        ("x^2+2x+1", "(x+1)^2", True),
        ("Paris", "paris", True),
        ("London", "Paris", False),
    ],
)
def test_answers_match(pred, gold, expected):
    assert answers_match(pred, gold) is expected


def test_rule_check_reports_the_answer_and_branch():
    result = rule_check("<think>2+3</think>The sum is \\boxed{5}", "5")
    assert (result.correct, result.answer, result.how) == (True, "5", "boxed")
    result = rule_check("I think it is five.\nOr maybe six.", "5")
    assert (result.correct, result.answer, result.how) == (False, None, "none")
    result = rule_check("<think>\n\n</think>\n\n5", "5")
    assert (result.correct, result.answer, result.how) == (True, "5", "whole")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Consistent: yes\nCorrect: no", (True, False)),
        ("**Consistent:** No\n**Correct:** Yes", (False, True)),
        ("<think>hmm, correct: no?</think>Consistent: yes\nCorrect: yes", (True, True)),
        ("Consistent: yes\nCorrect: yes\nCorrect: yes", (True, True)),  # repeated, agreeing
        ("", None),
        ("Consistent: yes", None),  # one verdict only
        ("Consistent: yes\nCorrect: maybe", None),
        ("Consistent: yes\nCorrect: yes\nCorrect: no", None),  # contradicts itself
        ("The answer looks right to me.", None),
    ],
)
def test_parse_judge(text, expected):
    assert parse_judge(text) == expected


def test_rule_only_rewards_never_call_a_judge():
    verifier = Verifier(VerifierConfig())
    verdicts = verifier.verify(
        [VerifyItem("1+1?", "\\boxed{2}", "2"), VerifyItem("1+1?", "Answer: 3", "2")]
    )
    assert [(v.correct, v.reward, v.consistent, v.source) for v in verdicts] == [
        (True, 1.0, None, "rule"),
        (False, 0.0, None, "rule"),
    ]
    assert verifier.stats.rule_checks == 2 and verifier.stats.judge_calls == 0


def test_judge_verdicts_combine_with_the_rule_and_are_cached(tmp_path):
    cfg = VerifierConfig(
        use_model=True, consistency_weight=0.5, cache_path=str(tmp_path / "v.jsonl")
    )
    judge = ScriptedJudge(
        [
            "Consistent: no\nCorrect: yes",  # rule-correct, inconsistent reasoning -> 0.5
            "Consistent: yes\nCorrect: yes",  # rule missed an equivalent answer -> 1.0
            "Consistent: yes\nCorrect: no",  # wrong -> 0
        ]
    )
    verifier = Verifier(cfg, judge, judge_id="scripted")
    items = [
        VerifyItem("2+2?", "<think>2+2=5</think>\\boxed{4}", "4"),
        VerifyItem("half?", "It is one half.", "0.5"),
        VerifyItem("2+2?", "\\boxed{5}", "4"),
    ]
    verdicts = verifier.verify(items)
    assert [(v.correct, v.consistent, v.reward, v.source) for v in verdicts] == [
        (True, False, 0.5, "judge"),
        (True, True, 1.0, "judge"),
        (False, True, 0.0, "judge"),
    ]
    assert judge.temperatures == [0.0]  # one batched call at temperature 0
    assert judge.prompts[1][0]["content"].endswith("/no_think")
    assert "It is one half." in judge.prompts[1][0]["content"]
    # Asked again: every verdict comes from the cache, no judge call.
    again = verifier.verify(items)
    assert [v.reward for v in again] == [0.5, 1.0, 0.0]
    assert {v.source for v in again} == {"cache"}
    assert verifier.stats.judge_calls == 3 and verifier.stats.cache_hits == 3
    # The cache file serves a new verifier (another process) for the same judge ...
    fresh = Verifier(cfg, ScriptedJudge([]), judge_id="scripted")
    assert [v.reward for v in fresh.verify(items)] == [0.5, 1.0, 0.0]
    # ... but not a different judge.
    other = Verifier(cfg, ScriptedJudge(["Consistent: yes\nCorrect: yes"] * 3), judge_id="other")
    assert [v.source for v in other.verify(items)] == ["judge"] * 3


def test_rule_correct_answers_skip_the_judge_when_consistency_has_no_weight():
    judge = ScriptedJudge(["Consistent: yes\nCorrect: yes"])
    verifier = Verifier(VerifierConfig(use_model=True, consistency_weight=0.0), judge)
    verdicts = verifier.verify(
        [VerifyItem("q", "\\boxed{4}", "4"), VerifyItem("q", "four, I believe", "4")]
    )
    assert [v.source for v in verdicts] == ["rule", "judge"]
    assert [v.reward for v in verdicts] == [1.0, 1.0]
    assert verifier.stats.judge_calls == 1


@pytest.mark.parametrize(
    "on_malformed, expected",
    [("rule", [(True, True, 1.0), (False, False, 0.0)]), ("zero", [(False, False, 0.0)] * 2)],
)
def test_malformed_judge_output_takes_the_fallback_and_is_counted(on_malformed, expected):
    cfg = VerifierConfig(use_model=True, on_malformed=on_malformed)
    judge = ScriptedJudge(["Correct: yes", "I cannot decide."])
    verifier = Verifier(cfg, judge)
    verdicts = verifier.verify(
        [VerifyItem("q", "\\boxed{4}", "4"), VerifyItem("q", "\\boxed{3}", "4")]
    )
    assert [(v.correct, v.consistent, v.reward) for v in verdicts] == expected
    assert {v.source for v in verdicts} == {"fallback"}
    assert verifier.stats.fallbacks == 2
    assert verifier.stats.malformed_examples == ["Correct: yes", "I cannot decide."]
    # Malformed answers are not cached: the next call asks again (and counts again).
    judge.answers = ["Consistent: yes\nCorrect: yes", "Consistent: yes\nCorrect: yes"]
    assert [v.source for v in verifier.verify([VerifyItem("q", "\\boxed{4}", "4")])] == ["judge"]


def test_real_tiny_judge_takes_the_fallback(tmp_path):
    """The tiny random model as judge, in process: its answers are malformed, each counted."""
    from keye_model.model.assembly import assemble
    from keye_model.rl.rollout import InProcessRollout

    assemble("tiny", str(tmp_path / "judge"), seed=0)
    judge = InProcessRollout.from_pretrained(tmp_path / "judge")
    cfg = VerifierConfig(use_model=True, judge_max_new_tokens=12)
    verifier = Verifier(cfg, judge, judge_id="tiny")
    items = [VerifyItem("2+2?", "\\boxed{4}", "4"), VerifyItem("2+2?", "\\boxed{5}", "4")]
    verdicts = verifier.verify(items)
    judge.close()
    assert verifier.stats.judge_calls == 2 and verifier.stats.fallbacks == 2
    assert [(v.correct, v.reward, v.source) for v in verdicts] == [
        (True, 1.0, "fallback"),
        (False, 0.0, "fallback"),
    ]


def test_combine_reward():
    assert combine_reward(True, True, 0.3) == pytest.approx(1.0)
    assert combine_reward(True, False, 0.3) == pytest.approx(0.7)
    assert combine_reward(False, True, 0.3) == 0.0
    assert combine_reward(True, None, 0.3) == 1.0


def test_bad_config_names_the_field():
    with pytest.raises(ValueError, match="verifier.on_malformed"):
        VerifierConfig(on_malformed="ignore")
    with pytest.raises(ValueError, match="no judge rollout"):
        Verifier(VerifierConfig(use_model=True))
