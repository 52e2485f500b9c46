"""Cold-start filtering (REFERENCE §2 step 6): medium-difficulty prompts, concise correct answers.

1. Sample k responses per prompt in thinking mode and grade them (``sample_groups``).
2. Keep the prompts whose pass rate lies in the configured band, inclusive (Keye-VL: 25-75%),
   with their correct responses (``select_by_pass_rate``); the others are kept aside with their
   reason (too hard / too easy) and measured pass rate.
3. Prune redundant reflection from each kept response (``prune_reflection``, a pure function),
   re-verify the pruned text, and keep the original wherever pruning broke the answer.

Pruning rules (after ConCISE arXiv 2505.04881 and NoWait arXiv 2506.08343, written our way):

- *re-checks after the answer is reached*: inside ``<think>``, once a sentence has concluded the
  final answer (an "=", "answer is", "so", "therefore", ... followed by that answer), a later
  paragraph that opens with a reflection cue ("Wait", "Let me check again", "Double-check", ...)
  only re-derives what the response ends with anyway, and is removed from the cue to the end of
  its paragraph. Reflection *before* the answer is reached is kept: it may be the correction.
- *duplicated sentences*: a sentence of three or more words that already appeared (compared
  case- and space-insensitively) is removed.
- *post-answer text*: in the answer part, everything after the sentence holding the final
  ``\\boxed{}`` / "Answer:" is removed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from keye_model.processing.tokens import THINK_END, THINK_START
from keye_model.rl.sampling import Group, RLPrompt
from keye_model.rl.verifier import Verifier, VerifyItem, extract_answer

_SENTENCE_END = re.compile(r"(?<=[.!?。])[ \t]+|\n+")
_CUE = re.compile(
    r"^\W*(wait|hmm+|hold on|but wait|actually,? let me|let me (?:just )?(?:double[- ]?check|"
    r"re-?check|check|verify|re-?verify|confirm|make sure|re-?examine|reconsider|go over)|"
    r"double[- ]?check|to (?:double[- ]?)?check|checking again|verif(?:y|ying)|re-?checking)\b",
    re.IGNORECASE,
)
_CONCLUSION = (
    r"(?:=|answer\s*[:：]|\b(?:answer is|so|therefore|thus|hence|result is|gives|get|equals)\b)"
)
# Pass-rate bounds are compared with this slack, so 0.25 is "in" whatever the float path.
_BAND_SLACK = 1e-9


def _units(text: str) -> list[str]:
    """Sentences with their trailing whitespace; ``"".join(_units(t)) == t``."""
    units, pos = [], 0
    for match in _SENTENCE_END.finditer(text):
        units.append(text[pos : match.end()])
        pos = match.end()
    if pos < len(text):
        units.append(text[pos:])
    return units


def _norm(sentence: str) -> str:
    return " ".join(sentence.lower().split())


def _concludes(sentence: str, answer: str) -> bool:
    pattern = _CONCLUSION + r"\W*(?:\\boxed\{)?\s*" + re.escape(answer) + r"(?![\w.]*\d)"
    return re.search(pattern, sentence, re.IGNORECASE) is not None


@dataclass
class Pruned:
    """A pruned response and what was cut (reason, text) in order."""

    text: str
    removed: list[tuple[str, str]] = field(default_factory=list)


def _prune_thinking(thinking: str, answer: str | None, removed: list, seen: set) -> str:
    units = _units(thinking)
    keep = []
    reached = False
    in_reflection = False
    for unit in units:
        body = unit.strip()
        if not body:
            keep.append(unit)
            continue
        if in_reflection:
            removed.append(("reflection_after_answer", body))
            in_reflection = not unit.endswith("\n")  # the segment runs to its paragraph's end
            continue
        if reached and _CUE.match(body):
            removed.append(("reflection_after_answer", body))
            in_reflection = not unit.endswith("\n")
            continue
        key = _norm(body)
        if len(key.split()) >= 3 and key in seen:
            removed.append(("duplicate", body))
            continue
        seen.add(key)
        keep.append(unit)
        if answer is not None and not reached and _concludes(body, answer):
            reached = True
    return "".join(keep)


def _prune_answer(answer_part: str, removed: list, seen: set) -> str:
    units = _units(answer_part)
    keep = []
    final = next(
        (
            i
            for i in range(len(units) - 1, -1, -1)
            if "\\boxed" in units[i] or re.search(r"answer\s*[:：]", units[i], re.IGNORECASE)
        ),
        None,
    )
    for i, unit in enumerate(units):
        body = unit.strip()
        if final is not None and i > final and body:
            removed.append(("post_answer", body))
            continue
        key = _norm(body)
        if body and len(key.split()) >= 3 and key in seen and i != final:
            removed.append(("duplicate", body))
            continue
        seen.add(key)
        keep.append(unit)
    return "".join(keep).rstrip() if final is not None else "".join(keep)


def prune_reflection(response: str) -> Pruned:
    """``response`` without redundant reflection (rules in the module docstring)."""
    answer, _how = extract_answer(response)
    removed: list[tuple[str, str]] = []
    seen: set[str] = set()
    start, end = response.find(THINK_START), response.find(THINK_END)
    if start >= 0 and end > start:
        head = response[: start + len(THINK_START)]
        thinking = response[start + len(THINK_START) : end]
        tail = response[end:]
        lead = thinking[: len(thinking) - len(thinking.lstrip())]
        trail = thinking[len(thinking.rstrip()) :]
        pruned = _prune_thinking(thinking.strip(), answer, removed, seen).rstrip()
        after = tail[len(THINK_END) :]
        # The answer part may restate the reasoning: duplicates are looked for within each part.
        text = head + lead + pruned + trail + THINK_END + _prune_answer(after, removed, set())
    else:
        text = _prune_answer(response, removed, seen)
    return Pruned(text, removed)


# ---------------------------------------------------------------------------------------------
# selection


@dataclass
class PromptOutcome:
    """One prompt's measured pass rate, decision and correct responses."""

    prompt: RLPrompt
    pass_rate: float
    decision: str  # kept | too_hard | too_easy
    correct_responses: list[str]


def select_by_pass_rate(groups: Sequence[Group], low: float, high: float) -> list[PromptOutcome]:
    """Keep prompts with ``low <= pass rate <= high`` (pass = verdict correct), with their correct answers."""
    outcomes = []
    for group in groups:
        correct = [s.text for s, v in zip(group.samples, group.verdicts) if v.correct]
        rate = len(correct) / len(group.samples)
        if rate < low - _BAND_SLACK:
            decision = "too_hard"
        elif rate > high + _BAND_SLACK:
            decision = "too_easy"
        else:
            decision = "kept"
        outcomes.append(PromptOutcome(group.prompt, rate, decision, correct))
    return outcomes


@dataclass
class ColdStartExample:
    """A kept (prompt, response) pair for SFT, with its pruning record."""

    prompt: RLPrompt
    response: str
    original: str
    tokens_before: int
    tokens_after: int
    removed: list[tuple[str, str]]
    prune_reverted: bool


@dataclass
class ColdStartReport:
    """Counts of the cold-start filter (logged to MLflow and written beside the data)."""

    prompts: int = 0
    kept: int = 0
    too_hard: int = 0
    too_easy: int = 0
    responses_kept: int = 0
    tokens_before: int = 0
    tokens_after: int = 0
    pruned_responses: int = 0
    pruned_still_verify: int = 0
    prune_reverted: int = 0

    @property
    def tokens_cut(self) -> int:
        return self.tokens_before - self.tokens_after

    def metrics(self) -> dict[str, float]:
        """Flat numbers for tracking."""
        cut_share = self.tokens_cut / self.tokens_before if self.tokens_before else 0.0
        return {
            "prompts": self.prompts,
            "prompts_kept": self.kept,
            "prompts_too_hard": self.too_hard,
            "prompts_too_easy": self.too_easy,
            "responses_kept": self.responses_kept,
            "tokens_before_prune": self.tokens_before,
            "tokens_after_prune": self.tokens_after,
            "tokens_cut": self.tokens_cut,
            "tokens_cut_share": cut_share,
            "pruned_responses": self.pruned_responses,
            "pruned_still_verify": self.pruned_still_verify,
            "prune_reverted": self.prune_reverted,
        }


def build_examples(
    outcomes: Sequence[PromptOutcome], verifier: Verifier, tokenizer, prune: bool = True
) -> tuple[list[ColdStartExample], ColdStartReport]:
    """SFT examples from the kept prompts' correct responses, pruned where pruning keeps them correct."""
    report = ColdStartReport(prompts=len(outcomes))
    pairs: list[tuple[RLPrompt, str, Pruned]] = []
    for outcome in outcomes:
        if outcome.decision == "too_hard":
            report.too_hard += 1
        elif outcome.decision == "too_easy":
            report.too_easy += 1
        else:
            report.kept += 1
            for text in outcome.correct_responses:
                pruned = prune_reflection(text) if prune else Pruned(text)
                if not pruned.removed:  # nothing redundant: keep the response, trimmed only
                    pruned = Pruned(text.strip())
                pairs.append((outcome.prompt, text, pruned))
    changed = [i for i, (_p, text, pruned) in enumerate(pairs) if pruned.text != text]
    verdicts = verifier.verify(
        [VerifyItem(pairs[i][0].question, pairs[i][2].text, pairs[i][0].gold) for i in changed]
    )
    still_correct = {i: v.correct for i, v in zip(changed, verdicts)}
    examples = []
    for i, (prompt, text, pruned) in enumerate(pairs):
        reverted = i in still_correct and not still_correct[i]
        final = text if reverted else pruned.text
        before = len(tokenizer.encode(text, add_special_tokens=False))
        after = len(tokenizer.encode(final, add_special_tokens=False))
        examples.append(
            ColdStartExample(
                prompt, final, text, before, after, [] if reverted else pruned.removed, reverted
            )
        )
        report.responses_kept += 1
        report.tokens_before += before
        report.tokens_after += after
        report.pruned_responses += i in still_correct
        report.pruned_still_verify += still_correct.get(i, False)
        report.prune_reverted += reverted
    return examples, report


def run_cold_start(
    rollout,
    verifier: Verifier,
    prompts: Sequence[RLPrompt],
    cfg,
    tokenizer,
    chunk: int = 64,
) -> tuple[list[ColdStartExample], list[PromptOutcome], ColdStartReport]:
    """Steps 1-3 for ``prompts`` under a ``ColdStartConfig``: sample, grade, select, prune."""
    from keye_model.rl.sampling import sample_groups

    low, high = cfg.pass_band
    outcomes: list[PromptOutcome] = []
    # Chunks bound the memory of encoded prompts (images) held at once.
    for start in range(0, len(prompts), chunk):
        groups = sample_groups(
            rollout,
            verifier,
            prompts[start : start + chunk],
            cfg.sampling,
            cfg.k,
            seed=cfg.seed + start,
            thinking=cfg.thinking,
        )
        outcomes.extend(select_by_pass_rate(groups, low, high))
    examples, report = build_examples(outcomes, verifier, tokenizer, prune=cfg.prune)
    return examples, outcomes, report


def write_cold_start(
    out_dir,
    examples: Sequence[ColdStartExample],
    outcomes: Sequence[PromptOutcome],
    report,
    thinking: str,
) -> dict[str, str]:
    """Write ``kept.jsonl`` (chat SFT examples), ``rejected.jsonl`` (with reasons) and ``report.json``."""
    import json
    from dataclasses import asdict
    from pathlib import Path

    from keye_model.rl.rollout import with_thinking

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "kept.jsonl").open("w", encoding="utf-8") as f:
        for ex in examples:
            messages = with_thinking(ex.prompt.messages, thinking)
            messages.append({"role": "assistant", "content": ex.response})
            rec = {
                "id": ex.prompt.id,
                "messages": messages,
                "gold": ex.prompt.gold,
                "tokens_before": ex.tokens_before,
                "tokens_after": ex.tokens_after,
                "removed": ex.removed,
                "prune_reverted": ex.prune_reverted,
            }
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    with (out / "rejected.jsonl").open("w", encoding="utf-8") as f:
        for o in outcomes:
            if o.decision != "kept":
                rec = {
                    "id": o.prompt.id,
                    "reason": o.decision,
                    "pass_rate": o.pass_rate,
                    "question": o.prompt.question,
                    "gold": o.prompt.gold,
                }
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    (out / "report.json").write_text(json.dumps({**asdict(report), **report.metrics()}, indent=2))
    return {name: str(out / name) for name in ("kept.jsonl", "rejected.jsonl", "report.json")}
