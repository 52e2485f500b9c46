"""Rewards for RL and cold-start: a rule verifier, then optionally a verifier model (REFERENCE §3).

Rule check (``rule_check``), reusing the evaluation's extraction (``keye_model.eval.extract``):
``<think>`` stripped, then the last ``\\boxed{}``, then the last "Answer: X", then a bare one-line
answer (how SFT data answers outside thinking mode); option letters
(reference ``B``: "B", "(B)", "B. text"); plain numbers within a relative/absolute tolerance;
anything else by ``math-verify`` equivalence (``math_equal``) or normalised text equality.

Model check (``Verifier`` with ``use_model``): a verifier model, called through the rollout
interface at temperature 0, answers two verdicts - is the reasoning consistent with the final
answer, is the answer correct. The rule runs first: a rule-correct answer is final for
correctness, and the judge is skipped when consistency carries no weight. Verdicts are cached by
a content hash of (judge, prompt version, question, response, reference). A judge answer without
both verdicts takes the configured fallback (``on_malformed``) and is counted.

Reward: ``(1 - w) * correct + w * (correct and consistent)`` with ``w = consistency_weight``;
``float(correct)`` when no consistency verdict exists (rules only).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from keye_model.eval.extract import (
    last_boxed,
    math_equal,
    normalize_text,
    strip_thinking,
    vlmeval_can_infer_option,
)
from keye_model.rl.config import SamplingConfig, VerifierConfig

# "Answer: X" as the last line-level statement (the format our prompts ask for).
_ANSWER_LINE = re.compile(r"answer\s*[:：]\s*(.+)", re.IGNORECASE)
_NUMBER = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$")
_LETTER_GOLD = re.compile(r"^\(?([A-Z])\)?\.?$")


# A bare answer part ("12", "B", "increasing") is the answer itself: SFT data answers that way
# outside thinking mode. Longer free text without a marked answer is not graded.
_WHOLE_MAX_CHARS = 64


def extract_answer(response: str) -> tuple[str | None, str]:
    """The final answer of a response and where it came from: boxed, answer_line, whole or none."""
    answer_part = strip_thinking(response)
    boxed = last_boxed(answer_part)
    if boxed is not None:
        return boxed, "boxed"
    matches = _ANSWER_LINE.findall(answer_part)
    if matches:
        return matches[-1].strip().strip("$").rstrip(".").strip(), "answer_line"
    whole = answer_part.strip().rstrip(".").strip()
    if (
        whole
        and "\n" not in whole
        and len(whole) <= _WHOLE_MAX_CHARS
        and ("<think>" not in response or "</think>" in response)
    ):
        return whole, "whole"
    return None, "none"


def _plain_number(text: str) -> float | None:
    cleaned = text.strip().strip("$").replace(",", "").strip()
    return float(cleaned) if _NUMBER.match(cleaned) else None


def answers_match(pred: str, gold: str, rel_tol: float = 1e-4, abs_tol: float = 1e-8) -> bool:
    """Whether an extracted answer equals the reference (letters, numbers, math, text)."""
    gold = str(gold).strip()
    letter = _LETTER_GOLD.match(gold)
    if letter:
        # Option letters A..max(gold, D): "B", "(B)" and "B. text" name option B.
        last = max(letter.group(1), "D")
        options = {c: "" for c in string.ascii_uppercase[: string.ascii_uppercase.index(last) + 1]}
        return vlmeval_can_infer_option(pred, options) == letter.group(1)
    p, g = _plain_number(pred), _plain_number(gold)
    if p is not None and g is not None:
        # Not math_equal's number rule: OlympiadBench's also accepts gold*100 and gold/100
        # (percent answers), which would pay "500" for 5 in RL.
        return math.isclose(p, g, rel_tol=rel_tol, abs_tol=abs_tol)
    if normalize_text(pred) == normalize_text(gold) and normalize_text(gold):
        return True
    return math_equal(pred, gold)


@dataclass
class RuleResult:
    """Outcome of the rule check of one response."""

    correct: bool
    answer: str | None
    how: str  # boxed | answer_line | whole | none


def rule_check(
    response: str, gold: str, rel_tol: float = 1e-4, abs_tol: float = 1e-8
) -> RuleResult:
    """Extract the final answer of ``response`` and compare it with ``gold``."""
    answer, how = extract_answer(response)
    correct = answer is not None and answers_match(answer, gold, rel_tol, abs_tol)
    return RuleResult(correct, answer, how)


# ---------------------------------------------------------------------------------------------
# verifier model

JUDGE_PROMPT_VERSION = "keye-rl-judge-v1"
JUDGE_PROMPT = """\
You are grading a response to a question against its reference answer.

Question:
{question}

Reference answer:
{gold}

Response:
{response}

Reply with exactly these two lines and nothing else:
Consistent: yes or no (does the reasoning support the final answer without contradicting itself?)
Correct: yes or no (does the final answer equal the reference answer?)"""

_VERDICT = re.compile(r"^[\s*_#>-]*(consistent|correct)[\s*_]*[:：][\s*_]*(yes|no)\b", re.I | re.M)


def parse_judge(text: str) -> tuple[bool, bool] | None:
    """(consistent, correct) from a judge answer, or None when either is missing or contradicted."""
    found: dict[str, set[bool]] = {"consistent": set(), "correct": set()}
    for key, value in _VERDICT.findall(strip_thinking(text or "")):
        found[key.lower()].add(value.lower() == "yes")
    if any(len(values) != 1 for values in found.values()):
        return None
    return next(iter(found["consistent"])), next(iter(found["correct"]))


@dataclass
class VerifyItem:
    """One response to grade: the question text, the response and the reference answer."""

    question: str
    response: str
    gold: str


@dataclass
class Verdict:
    """Grade of one response; ``consistent`` is None when no judge verdict exists."""

    correct: bool
    consistent: bool | None
    reward: float
    answer: str | None
    source: str  # rule | judge | cache | fallback


@dataclass
class VerifierStats:
    """Counters the stages log: rule checks, judge calls, cache hits and malformed fallbacks."""

    rule_checks: int = 0
    judge_calls: int = 0
    cache_hits: int = 0
    fallbacks: int = 0
    malformed_examples: list[str] = field(default_factory=list)


def combine_reward(correct: bool, consistent: bool | None, consistency_weight: float) -> float:
    """``(1 - w) * correct + w * (correct and consistent)``; ``float(correct)`` without a verdict."""
    if consistent is None:
        return float(correct)
    return (1 - consistency_weight) * float(correct) + consistency_weight * float(
        correct and consistent
    )


class Verifier:
    """Grades responses: rules first, then (``cfg.use_model``) a judge through a rollout."""

    def __init__(self, cfg: VerifierConfig, judge=None, judge_id: str = ""):
        if cfg.use_model and judge is None:
            raise ValueError("verifier.use_model is on but no judge rollout was given")
        self.cfg = cfg
        self.judge = judge
        self.judge_id = judge_id or cfg.judge_model or cfg.judge.endpoint
        self.stats = VerifierStats()
        self.cache: dict[str, tuple[bool, bool]] = {}
        self.cache_path = Path(cfg.cache_path) if cfg.cache_path else None
        if self.cache_path is not None and self.cache_path.is_file():
            for line in self.cache_path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                    self.cache[rec["key"]] = (bool(rec["consistent"]), bool(rec["correct"]))
                except (json.JSONDecodeError, KeyError):
                    continue  # a line cut by a kill: that verdict is asked again

    def _key(self, item: VerifyItem) -> str:
        blob = json.dumps(
            [self.judge_id, JUDGE_PROMPT_VERSION, item.question, item.response, item.gold]
        )
        return hashlib.sha256(blob.encode()).hexdigest()

    def _remember(self, key: str, verdict: tuple[bool, bool]) -> None:
        self.cache[key] = verdict
        if self.cache_path is not None:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            with self.cache_path.open("a", encoding="utf-8") as f:
                rec = {"key": key, "consistent": verdict[0], "correct": verdict[1]}
                f.write(json.dumps(rec) + "\n")

    def _ask(self, items: list[VerifyItem]) -> list[str]:
        from keye_model.rl.rollout import with_thinking

        prompts = [
            with_thinking(
                [
                    {
                        "role": "user",
                        "content": JUDGE_PROMPT.format(
                            question=it.question, gold=it.gold, response=it.response
                        ),
                    }
                ],
                "no_think",
            )
            for it in items
        ]
        greedy = SamplingConfig(temperature=0.0, max_new_tokens=self.cfg.judge_max_new_tokens)
        self.stats.judge_calls += len(prompts)
        return [group[0].text for group in self.judge.generate(prompts, greedy, n=1)]

    def verify(self, items: Sequence[VerifyItem]) -> list[Verdict]:
        """Verdicts for ``items``; all judge questions of one call go out as one batch."""
        cfg = self.cfg
        rules = [rule_check(it.response, it.gold, cfg.rel_tol, cfg.abs_tol) for it in items]
        self.stats.rule_checks += len(items)
        verdicts: list[Verdict | None] = [None] * len(items)
        pending: list[int] = []
        for i, rule in enumerate(rules):
            needs_judge = cfg.use_model and (not rule.correct or cfg.consistency_weight > 0)
            if not needs_judge:
                verdicts[i] = Verdict(rule.correct, None, float(rule.correct), rule.answer, "rule")
                continue
            cached = self.cache.get(self._key(items[i]))
            if cached is None:
                pending.append(i)
                continue
            self.stats.cache_hits += 1
            verdicts[i] = self._judged(rule, *cached, "cache")
        if pending:
            for i, text in zip(pending, self._ask([items[i] for i in pending])):
                parsed = parse_judge(text)
                if parsed is None:
                    verdicts[i] = self._fallback(rules[i], text)
                    continue
                self._remember(self._key(items[i]), parsed)
                verdicts[i] = self._judged(rules[i], *parsed, "judge")
        return [v for v in verdicts if v is not None]

    def _judged(self, rule: RuleResult, consistent: bool, correct: bool, source: str) -> Verdict:
        # A rule-correct answer stays correct: the rule ran first and is exact when it matches.
        correct = rule.correct or correct
        reward = combine_reward(correct, consistent, self.cfg.consistency_weight)
        return Verdict(correct, consistent, reward, rule.answer, source)

    def _fallback(self, rule: RuleResult, text: str) -> Verdict:
        self.stats.fallbacks += 1
        if len(self.stats.malformed_examples) < 5:
            self.stats.malformed_examples.append(text[:300])
        if self.cfg.on_malformed == "zero":
            return Verdict(False, False, 0.0, rule.answer, "fallback")
        reward = combine_reward(rule.correct, rule.correct, self.cfg.consistency_weight)
        return Verdict(rule.correct, rule.correct, reward, rule.answer, "fallback")


def build_verifier(cfg: VerifierConfig) -> Verifier:
    """A verifier from config; a judge rollout is built when ``cfg.use_model`` is on."""
    if not cfg.use_model:
        return Verifier(cfg)
    from keye_model.rl.rollout import build_rollout

    if cfg.judge.backend == "server":
        from keye_model.processing import KeyeProcessor

        if not cfg.judge_model:
            raise ValueError("verifier.judge_model must name the judge's processor directory")
        judge = build_rollout(cfg.judge, processor=KeyeProcessor.from_pretrained(cfg.judge_model))
    else:
        if not cfg.judge_model:
            raise ValueError("verifier.judge_model is required for an in-process judge")
        judge = build_rollout(cfg.judge, model_dir=cfg.judge_model)
    return Verifier(cfg, judge)
