"""Official scorers of the evaluation benchmarks, one function per official scoring script.

Each ``score_*(benchmark, items, responses, seed, judge)`` is called through
``keye_model.eval.benchmarks.score``, which looks the scorer up in the benchmark registry and
validates the items first; this module does not know the registry.

``items`` are records in each benchmark's released schema (VLMEvalKit TSV rows, MathVista JSON,
OlympiadBench, Video-MME, MMVU, LongVideoBench, VisuLogic records); ``responses`` are the raw model
outputs in the same order. Every scorer strips ``<think>`` blocks first, extracts the answer with
its benchmark's official rule (``keye_model.eval.extract``) and aggregates as the official script
does. The result is a plain dict::

    {"benchmark", "overall" (fraction in [0, 1]), "per_category": {name: fraction}, "n",
     "seed", "random_fallbacks": [...], "items": [{"index", "extracted", "branch", "correct"}]}

Random fallbacks (MMMU parser, VLMEvalKit judge failures) draw from ``random.Random`` seeded by
``(seed, benchmark, index)`` so a score does not depend on item order; each draw is recorded.
An optional ``judge(prompt) -> str`` (an LLM behind the same client) replaces the rule fallback
wherever the official scorer uses a GPT model.
"""

from __future__ import annotations

import json
import random
import re
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any

from keye_model.eval import extract as ex

Judge = Callable[[str], str]

OPTION_LETTERS = [chr(ord("A") + i) for i in range(26)]


def item_rng(seed: int, benchmark: str, index: Any) -> random.Random:
    """The random source of one item's fallback (string seeds hash deterministically)."""
    return random.Random(f"{seed}:{benchmark}:{index}")


def _present(value) -> bool:
    if value is None:
        return False
    if isinstance(value, float) and value != value:  # NaN from pandas-read TSVs
        return False
    return str(value).strip() != ""


def mcq_options(item: Mapping) -> dict[str, str]:
    """Option letter -> text from VLMEvalKit columns ``A``, ``B``, ... (blank columns skipped)."""
    return {k: str(item[k]) for k in OPTION_LETTERS if k in item and _present(item[k])}


def _fractions(records: list[dict], key: str) -> dict[str, float]:
    hits: dict[str, list[int]] = defaultdict(list)
    for rec in records:
        if rec.get(key) is not None and rec.get("correct") is not None:
            hits[str(rec[key])].append(int(rec["correct"]))
    return {name: sum(v) / len(v) for name, v in sorted(hits.items()) if v}


def _result(benchmark: str, records: list[dict], seed: int, **extra) -> dict:
    scored = [r for r in records if r.get("correct") is not None]
    overall = sum(int(r["correct"]) for r in scored) / len(scored) if scored else 0.0
    return {
        "benchmark": benchmark,
        "overall": overall,
        "per_category": _fractions(records, "category"),
        "n": len(records),
        "seed": seed,
        "random_fallbacks": [
            {"index": r["index"], "choice": r["extracted"]}
            for r in records
            if str(r.get("branch", "")).endswith("random")
        ],
        "items": records,
        **extra,
    }


# ---------------------------------------------------------------------------------------------
# VLMEvalKit multiple choice: MMBench (circular), MMStar, RealWorldQA


def vlmeval_judge_prompt(question: str, choices: Mapping[str, str], prediction: str) -> str:
    """Prompt asking a judge LLM which option a free-form answer picked (VLMEvalKit's role)."""
    options = "\n".join(f"{k}. {v}" for k, v in choices.items())
    return (
        "You match an answer to one of several options. Given a question, its options and an "
        "answer, output the single letter of the option the answer most closely means. If none "
        "fits, output Z. Output only the letter.\n"
        f"Question: {question}\nOptions:\n{options}\nAnswer: {prediction}\nYour output:"
    )


def vlmeval_extract(
    response: str, item: Mapping, judge: Judge | None, rng: random.Random
) -> tuple[str, str]:
    """VLMEvalKit MCQ extraction: prefetch, then judge (3 tries), then a seeded random option."""
    choices = mcq_options(item)
    letter, branch = ex.vlmeval_can_infer(response, choices)
    if letter:
        return letter, branch
    if judge is None:
        # VLMEvalKit's exact-matching policy: an unparsed answer is marked "Z" (wrong).
        return "Z", "no_match"
    prompt = vlmeval_judge_prompt(str(item.get("question", "")), choices, response)
    for _ in range(3):
        letter, _ = ex.vlmeval_can_infer(judge(prompt), choices)
        if letter:
            return letter, "judge"
    return rng.choice([*choices, "Z"]), "judge_random"


def _mcq_records(benchmark, items, responses, seed, judge, l2_keys=("l2-category", "l2_category")):
    records = []
    for item, response in zip(items, responses):
        index = item.get("index")
        answer = ex.strip_thinking(response)
        letter, branch = vlmeval_extract(answer, item, judge, item_rng(seed, benchmark, index))
        l2 = next((item[k] for k in l2_keys if k in item and _present(item[k])), None)
        records.append(
            {
                "index": index,
                "category": item.get("category") if _present(item.get("category")) else None,
                "l2_category": l2,
                "extracted": letter,
                "branch": branch,
                "correct": letter == str(item["answer"]).strip(),
            }
        )
    return records


def score_vlmeval_mcq(benchmark: str, items, responses, seed: int = 0, judge: Judge | None = None):
    """Plain VLMEvalKit MCQ accuracy (MMStar, RealWorldQA), per category and l2-category."""
    records = _mcq_records(benchmark, items, responses, seed, judge)
    return _result(benchmark, records, seed, per_l2_category=_fractions(records, "l2_category"))


CIRCULAR_OFFSET = 1_000_000


def score_mmbench(benchmark: str, items, responses, seed: int = 0, judge: Judge | None = None):
    """MMBench circular evaluation: a question counts only when every rotation is right."""
    records = _mcq_records(benchmark, items, responses, seed, judge)
    groups: dict[int, list[dict]] = defaultdict(list)
    for rec in records:
        groups[int(float(rec["index"])) % CIRCULAR_OFFSET].append(rec)
    group_records = []
    for g_index, members in sorted(groups.items()):
        main = min(members, key=lambda r: int(float(r["index"])))
        group_records.append(
            {
                "index": g_index,
                "category": main["category"],
                "l2_category": main["l2_category"],
                "rotations": len(members),
                "correct": all(m["correct"] for m in members),
            }
        )
    result = _result(
        benchmark, group_records, seed, per_l2_category=_fractions(group_records, "l2_category")
    )
    result["items"] = records
    result["groups"] = group_records
    result["random_fallbacks"] = [
        {"index": r["index"], "choice": r["extracted"]}
        for r in records
        if r["branch"].endswith("random")
    ]
    result["n_questions"] = len(group_records)
    return result


# ---------------------------------------------------------------------------------------------
# MMMU (official parser) and LongVideoBench (same parser, lmms-eval / official repo)


def mmmu_subject(item: Mapping) -> str:
    """Subject of an MMMU item from its id ``validation_Art_Theory_12`` -> ``Art_Theory``."""
    parts = str(item.get("id", "")).split("_")
    return "_".join(parts[1:-1]) if len(parts) > 2 else str(item.get("subject", ""))


def mmmu_options(item: Mapping) -> list[str]:
    """The options list of an MMMU item (the released field is a Python list literal string)."""
    return ex.parse_gold_list(item.get("options") or [])


def score_mmmu(benchmark: str, items, responses, seed: int = 0, judge: Judge | None = None):
    """MMMU official scoring: multiple-choice parser with seeded random fallback; open parser."""
    records = []
    for item, response in zip(items, responses):
        answer = ex.strip_thinking(response)
        index = item["id"]
        if item.get("question_type", "multiple-choice") == "multiple-choice":
            options = mmmu_options(item)
            letters = OPTION_LETTERS[: len(options)]
            pred, branch = ex.mmmu_parse_multi_choice(
                answer, letters, dict(zip(letters, options)), item_rng(seed, benchmark, index)
            )
            golds = ex.parse_gold_list(item["answer"])
            correct = pred in golds
        else:
            pred = ex.mmmu_parse_open(answer)
            branch = "open"
            correct = ex.mmmu_eval_open(ex.parse_gold_list(item["answer"]), pred)
        records.append(
            {
                "index": index,
                "category": mmmu_subject(item),
                "extracted": pred,
                "branch": branch,
                "correct": correct,
            }
        )
    return _result(benchmark, records, seed)


def score_longvideobench(
    benchmark: str, items, responses, seed: int = 0, judge: Judge | None = None
):
    """LongVideoBench: MMMU multiple-choice parser over ``candidates``; gold ``correct_choice``."""
    records = []
    for item, response in zip(items, responses):
        answer = ex.strip_thinking(response)
        index = item["id"]
        options = list(item["candidates"])
        letters = OPTION_LETTERS[: len(options)]
        pred, branch = ex.mmmu_parse_multi_choice(
            answer, letters, dict(zip(letters, options)), item_rng(seed, benchmark, index)
        )
        records.append(
            {
                "index": index,
                "category": item.get("question_category"),
                "duration_group": item.get("duration_group"),
                "extracted": pred,
                "branch": branch,
                "correct": pred == letters[int(item["correct_choice"])],
            }
        )
    return _result(benchmark, records, seed, per_duration=_fractions(records, "duration_group"))


# ---------------------------------------------------------------------------------------------
# MathVista


def mathvista_judge_prompt(item: Mapping, response: str) -> str:
    """Prompt asking a judge LLM to extract the final answer (the official GPT-4 extractor's job)."""
    return (
        "Extract the final answer from the model response to the question below. Output only "
        "the answer: an option text for multiple choice, a number for numeric questions.\n"
        f"Question: {item.get('query') or item.get('question')}\nModel response: {response}\n"
        "Extracted answer:"
    )


def score_mathvista(benchmark: str, items, responses, seed: int = 0, judge: Judge | None = None):
    """MathVista: extraction, closest option / precision rounding, exact string match."""
    records = []
    for item, response in zip(items, responses):
        answer = ex.strip_thinking(response)
        extraction, branch = ex.mathvista_quick_extract(answer, item)
        if judge is not None and branch.startswith("rule_"):
            extraction, branch = judge(mathvista_judge_prompt(item, answer)).strip(), "judge"
        normalized = ex.mathvista_normalize(extraction, item)
        metadata = item.get("metadata") or {}
        records.append(
            {
                "index": item.get("pid"),
                "category": metadata.get("task"),
                "skills": metadata.get("skills") or [],
                "extracted": normalized,
                "branch": branch,
                "correct": normalized is not None and normalized == str(item["answer"]),
            }
        )
    skills: dict[str, list[int]] = defaultdict(list)
    for rec in records:
        for skill in rec["skills"]:
            skills[skill].append(int(rec["correct"]))
    per_skill = {k: sum(v) / len(v) for k, v in sorted(skills.items())}
    return _result(benchmark, records, seed, per_skill=per_skill)


# ---------------------------------------------------------------------------------------------
# OlympiadBench


def score_olympiadbench(
    benchmark: str, items, responses, seed: int = 0, judge: Judge | None = None
):
    """OlympiadBench: last ``\\boxed{}`` vs ``final_answer``, numbers within the ``error`` field.

    As the official judge: numbers match when ``|gold - pred| <= tol * 1.01`` (gold also taken
    /100 and *100), ``tol`` absolute, from ``error`` (one per answer part, comma-separated) or
    1e-8; everything else by symbolic equivalence. A malformed item raises naming its id.
    """
    records = []
    for item, response in zip(items, responses):
        index = item["id"]
        try:
            answer = ex.strip_thinking(response)
            boxed = ex.last_boxed(answer)
            tolerances = ex.parse_tolerances(item.get("error"))
            golds = ex.parse_gold_list(item["final_answer"])
            multiple = str(item.get("is_multiple_answer", False)).lower() in ("true", "1")
            correct = boxed is not None and ex.olympiad_match(boxed, golds, multiple, tolerances)
        except (ValueError, TypeError) as err:
            raise ValueError(f"{benchmark}: item id={index!r}: {err}") from err
        records.append(
            {
                "index": index,
                "category": item.get("subject"),
                "extracted": boxed,
                "branch": "boxed" if boxed is not None else "no_boxed",
                "correct": correct,
            }
        )
    return _result(benchmark, records, seed)


# ---------------------------------------------------------------------------------------------
# Video-MME


def score_videomme(benchmark: str, items, responses, seed: int = 0, judge: Judge | None = None):
    """Video-MME official: accuracy over *answered* questions (an A-D letter was found)."""
    records = []
    for item, response in zip(items, responses):
        letter = ex.videomme_extract(ex.strip_thinking(response))
        answered = letter != ""
        records.append(
            {
                "index": item.get("question_id"),
                "category": item.get("task_type"),
                "duration": item.get("duration"),
                "extracted": letter,
                "branch": "letter" if answered else "unanswered",
                # Unanswered questions leave both numerator and denominator (official rule).
                "correct": (letter == str(item["answer"]).strip()) if answered else None,
            }
        )
    answered = sum(r["correct"] is not None for r in records)
    return _result(
        benchmark,
        records,
        seed,
        per_duration=_fractions(records, "duration"),
        answered=answered,
    )


# ---------------------------------------------------------------------------------------------
# VisuLogic


def visulogic_judge_prompt(response: str) -> str:
    """Prompt asking a judge LLM for the chosen option letter (VisuLogic's GPT fallback)."""
    return (
        "Extract the option the solution below chose. Answer with the capital letter only; if it "
        f"chose several options or none clearly, answer None.\nSolution: {response}\n"
    )


def score_visulogic(benchmark: str, items, responses, seed: int = 0, judge: Judge | None = None):
    """VisuLogic: boxed letter, then answer phrases, then (optional) judge; per ``tag``."""
    records = []
    for item, response in zip(items, responses):
        answer = ex.strip_thinking(response)
        letter, branch = ex.visulogic_extract(answer)
        if letter is None and judge is not None:
            out = judge(visulogic_judge_prompt(answer)).strip().split("\n")[0].split(".")[0]
            letter, branch = ("N" if "none" in out.lower() else out), "judge"
        if letter is None:
            letter = "Z"
        records.append(
            {
                "index": item.get("id"),
                "category": item.get("tag"),
                "extracted": letter,
                "branch": branch,
                "correct": letter.lower() == str(item["label"]).strip().lower(),
            }
        )
    return _result(benchmark, records, seed)


# ---------------------------------------------------------------------------------------------
# MMVU


def mmvu_judge_prompt(item: Mapping, response: str) -> str:
    """The official MMVU grading request (GPT-4o): extract the answer and say if it is correct."""
    if item.get("question_type") == "multiple-choice":
        options = "\n".join(f"{k}: {v}" for k, v in (item.get("choices") or {}).items())
        context = f"Question: {item['question']}\n\nOptions:\n{options}"
        fmt = '"extracted_answer": a single option letter'
    else:
        context = f"Question: {item['question']}"
        fmt = '"extracted_answer": the short final answer found in the response'
    return (
        "Judge whether the model's final answer is correct against the ground truth. First extract "
        "the final answer from the response, then compare. Reply with JSON only: "
        f'{{{fmt}, "correct": true or false}}.\n\n'
        f"{context}\n\nGround Truth Answer: {item['answer']}\n\n"
        f"Model Response to the Question: {response}"
    )


def _parse_judge_json(text: str) -> tuple[str, bool] | None:
    match = re.search(r"\{.*\}", text, flags=re.DOTALL)
    if not match:
        return None
    try:
        data = json.loads(match.group(0))
        return str(data.get("extracted_answer", "")), bool(data.get("correct", False))
    except (json.JSONDecodeError, AttributeError):
        return None


def score_mmvu(benchmark: str, items, responses, seed: int = 0, judge: Judge | None = None):
    """MMVU: the official GPT judge when given, else the inferred rule (final-answer phrase)."""
    records = []
    for item, response in zip(items, responses):
        answer = ex.strip_thinking(response)
        extracted, correct, branch = None, False, "none"
        if judge is not None:
            parsed = _parse_judge_json(judge(mmvu_judge_prompt(item, answer)))
            if parsed is not None:
                (extracted, correct), branch = parsed, "judge"
        if branch == "none":
            tail, where = ex.mmvu_final_answer(answer)
            gold = str(item["answer"]).strip()
            if item.get("question_type") == "multiple-choice":
                choices = {k: v for k, v in (item.get("choices") or {}).items() if _present(v)}
                match = re.match(r"\(?([A-E])\b", tail)
                if match and match.group(1) in choices:
                    extracted, branch = match.group(1), f"{where}_letter"
                else:
                    extracted, branch = ex.vlmeval_can_infer(answer, choices)
                correct = extracted == gold
            else:
                extracted = tail
                norm_pred, norm_gold = ex.normalize_text(tail), ex.normalize_text(gold)
                if norm_gold and (norm_pred == norm_gold or f" {norm_gold} " in f" {norm_pred} "):
                    correct, branch = True, f"{where}_text"
                else:
                    correct, branch = ex.math_equal(tail, gold), f"{where}_math"
        records.append(
            {
                "index": item.get("id"),
                "category": (item.get("metadata") or {}).get("subject"),
                "extracted": extracted,
                "branch": branch,
                "correct": bool(correct),
            }
        )
    return _result(benchmark, records, seed)
