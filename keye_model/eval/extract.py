"""Answer extraction, one function per official scorer (REFERENCE §5).

Toolkits disagree on how to read an answer out of the same response, so each benchmark uses the
rule of its own official scorer, re-implemented here from the published descriptions:

| benchmark | rule |
|---|---|
| MMBench, MMStar, RealWorldQA | VLMEvalKit ``can_infer``: exactly one option letter as a token, else exactly one option text |
| MMMU, LongVideoBench | MMMU ``parse_multi_choice_response`` (bracketed letter, bare letter, option text, random) and ``parse_open_response`` |
| MathVista | direct match / int / float / ``The answer is "..."``, then closest option or rounding to the item precision |
| OlympiadBench | last ``\\boxed{}`` content, compared by symbolic equivalence (math-verify) |
| Video-MME | answer prefixes removed, then the first A-D letter (empty = unanswered) |
| VisuLogic | last ``\\boxed{}`` letter, then "answer is X" phrases |
| MMVU | official scorer is a GPT-4o judge; the rule fallback reads "the final answer is: X" (inferred) |

Every function is pure: randomness comes in as an explicit ``random.Random``. ``<think>`` blocks are
removed first with ``keye_model.processing.parse_thinking`` (``strip_thinking`` below).
"""

from __future__ import annotations

import ast
import random
import re
import string
from collections.abc import Mapping, Sequence

# ---------------------------------------------------------------------------------------------
# Thinking blocks


def strip_thinking(response: str) -> str:
    """The answer part of a response: everything after ``</think>`` (REFERENCE §1.5)."""
    from keye_model.processing import parse_thinking

    _thinking, answer = parse_thinking(response or "")
    return answer


# ---------------------------------------------------------------------------------------------
# VLMEvalKit multiple choice (MMBench, MMStar, RealWorldQA)

# Refusals VLMEvalKit maps to the impossible option "Z" (always wrong).
_REFUSALS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)
_VLMEVAL_PUNCT = ".()[],:;!*#{}"


def vlmeval_can_infer_option(answer: str, choices: Mapping[str, str]) -> str | None:
    """The option letter when exactly one option letter appears as a token ('Z' for refusals)."""
    for refusal in _REFUSALS:
        if refusal in answer:
            return "Z"
    cleaned = answer
    for ch in _VLMEVAL_PUNCT:
        cleaned = cleaned.replace(ch, " ")
    tokens = cleaned.split()
    present = [letter for letter in choices if letter in tokens]
    if len(present) == 1:
        return present[0]
    if not present and "Z" in tokens:
        return "Z"
    return None


def vlmeval_can_infer_text(answer: str, choices: Mapping[str, str]) -> str | None:
    """The option letter when exactly one option's text occurs in the answer (case-insensitive)."""
    lowered = answer.lower()
    hits = [letter for letter, text in choices.items() if str(text).lower() in lowered]
    return hits[0] if len(hits) == 1 else None


def vlmeval_can_infer(answer: str, choices: Mapping[str, str]) -> tuple[str | None, str]:
    """VLMEvalKit's prefetch: (letter or None, branch name) - letters first, then option texts."""
    answer = str(answer)
    letter = vlmeval_can_infer_option(answer, choices)
    if letter:
        return letter, "option_letter" if letter != "Z" else "refusal"
    letter = vlmeval_can_infer_text(answer, choices)
    if letter:
        return letter, "option_text"
    return None, "none"


# ---------------------------------------------------------------------------------------------
# MMMU official parser (also used by LongVideoBench's official evaluation)


def mmmu_parse_multi_choice(
    response: str, all_choices: Sequence[str], index2ans: Mapping[str, str], rng: random.Random
) -> tuple[str, str]:
    """MMMU ``parse_multi_choice_response``: (letter, branch); branch 'random' when nothing parsed."""
    for ch in [",", ".", "!", "?", ";", ":", "'"]:
        response = response.strip(ch)
    response = f" {response} "  # spaces so " A " matches at the edges
    candidates: list[str] = []
    bracketed = False
    by_letter = True
    for choice in all_choices:
        if f"({choice})" in response:
            candidates.append(choice)
            bracketed = True
    if not candidates:
        for choice in all_choices:
            if f" {choice} " in response:
                candidates.append(choice)
    if not candidates and len(response.split()) > 5:
        for letter, text in index2ans.items():
            if str(text).lower() in response.lower():
                candidates.append(letter)
                by_letter = False
    if not candidates:
        return rng.choice(list(all_choices)), "random"
    if len(candidates) == 1:
        return candidates[0], "bracket" if bracketed else ("letter" if by_letter else "text")
    # Several candidates: the one mentioned last wins.
    if by_letter:
        pattern = "({})" if bracketed else " {} "
        positions = [response.rfind(pattern.format(c)) for c in candidates]
    else:
        positions = [response.lower().rfind(str(index2ans[c]).lower()) for c in candidates]
    best = max(range(len(candidates)), key=lambda i: (positions[i], -i))
    return candidates[best], (
        "bracket" if bracketed else "letter" if by_letter else "text"
    ) + "_last"


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
        return True
    except ValueError:
        return False


def mmmu_normalize_str(text: str) -> list:
    """MMMU ``normalize_str``: numbers become floats rounded to 2 places; 1-char strings get padded."""
    text = text.strip()
    if _is_number(text):
        return [round(float(text.replace(",", "")), 2)]
    text = text.lower()
    if len(text) == 1:
        return [" " + text, text + " "]
    return [text]


def mmmu_extract_numbers(text: str) -> list[str]:
    """MMMU ``extract_numbers``: comma-grouped, scientific and plain numbers in that order."""
    with_commas = re.findall(r"-?\b\d{1,3}(?:,\d{3})+\b", text)
    scientific = re.findall(r"-?\d+(?:\.\d+)?[eE][+-]?\d+", text)
    simple = re.findall(r"-?(?:\d+\.\d+|\.\d+|\d+)(?![eE][+-]?\d+)(?![,\d])", text)
    return with_commas + scientific + simple


def _mmmu_key_subresponses(response: str) -> list[str]:
    response = response.strip().strip(".").lower()
    # The official split looks for ". " before a capital letter *after* lowercasing, so in
    # practice only newlines split; kept as is because scores must match the official ones.
    parts = re.split(r"\.\s(?=[A-Z])|\n", response)
    indicators = ["could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result "]
    keys: list[str] = []
    for i, part in enumerate(parts):
        current = indicators + (["="] if i == len(parts) - 1 else [])
        shortest = ""
        for indicator in current:
            if indicator in part:
                tail = part.split(indicator)[-1].strip()
                # Official ``if not shortest_key_response``: an empty tail found earlier counts
                # as nothing found, so the next indicator's tail replaces it even if longer.
                if not shortest or len(tail) < len(shortest):
                    shortest = tail
        if shortest and shortest.strip() not in [":", ",", ".", "!", "?", ";", "'"]:
            keys.append(shortest)
    return keys or [response]


def mmmu_parse_open(response: str) -> list:
    """MMMU ``parse_open_response``: candidate answers (strings and rounded floats)."""
    keys = _mmmu_key_subresponses(response)
    preds: list = list(keys)
    for key in keys:
        preds.extend(mmmu_extract_numbers(key))
    normalized: list = []
    for pred in preds:
        normalized.extend(mmmu_normalize_str(pred))
    # Deduplicate keeping first-seen order (the official uses a set; order does not change the verdict).
    out: list = []
    for pred in normalized:
        if pred not in out:
            out.append(pred)
    return out


def parse_gold_list(answer) -> list[str]:
    """An answer field that may hold a Python list literal (MMMU open answers) as a list."""
    if isinstance(answer, (list, tuple)):
        return [str(a) for a in answer]
    text = str(answer)
    if text.startswith("[") and text.endswith("]"):
        try:
            value = ast.literal_eval(text)
            if isinstance(value, list):
                return [str(a) for a in value]
        except (ValueError, SyntaxError):
            pass
    return [text]


def mmmu_eval_open(gold: Sequence[str], preds: Sequence) -> bool:
    """MMMU ``eval_open``: a string gold must occur in a string pred; numbers must be equal."""
    golds: list = []
    for answer in gold:
        golds.extend(mmmu_normalize_str(str(answer)))
    for pred in preds:
        if isinstance(pred, str):
            if any(isinstance(g, str) and g in pred for g in golds):
                return True
        elif pred in golds:
            return True
    return False


# ---------------------------------------------------------------------------------------------
# MathVista


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insert, delete, substitute all cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def mathvista_quick_extract(response: str, item: Mapping) -> tuple[str, str]:
    """MathVista's rule branches of ``extract_answer``: (extraction, branch); '' when none fits.

    The official scorer sends the rest to a GPT-4 extractor; without a judge we fall back to a
    documented rule (*inferred*): the last ``\\boxed{}``, else the text after the last
    "answer is", else the last number for numeric questions, else the whole response.
    """
    response = response.strip()
    if not response:
        return "", "empty"
    choices = item.get("choices") or []
    if item.get("question_type") == "multi_choice" and response in choices:
        return response, "choice_text"
    answer_type = item.get("answer_type")
    if answer_type == "integer":
        try:
            return str(int(response)), "integer"
        except ValueError:
            pass
    if answer_type == "float":
        try:
            return str(float(response)), "float"
        except ValueError:
            pass
    match = re.search(r'The answer is "(.*)"\.', response)
    if match:
        return match.group(1), "quick"
    boxed = last_boxed(response)
    if boxed is not None:
        return boxed, "rule_boxed"
    match = list(re.finditer(r"answer is[:\s]*(.+)", response, flags=re.IGNORECASE))
    if match:
        return match[-1].group(1).strip().rstrip("."), "rule_answer_is"
    if answer_type in ("integer", "float"):
        numbers = re.findall(r"-?\d+(?:\.\d+)?", response.replace(",", ""))
        if numbers:
            return numbers[-1], "rule_last_number"
    return response, "rule_whole"


def mathvista_normalize(extraction, item: Mapping) -> str | None:
    """MathVista ``normalize_extracted_answer``: option text for choices, rounded numbers otherwise."""
    choices = item.get("choices") or []
    answer_type = item.get("answer_type")
    if item.get("question_type") == "multi_choice":
        extraction = str(extraction).strip() if extraction is not None else ""
        letter = re.findall(r"\(([a-zA-Z])\)", extraction)
        if letter:
            extraction = letter[0].upper()
        letters = [chr(ord("A") + i) for i in range(len(choices))]
        if extraction in letters:
            return choices[letters.index(extraction)]
        # Closest option by edit distance; the first one wins ties, as in the official code.
        distances = [levenshtein(extraction, str(c)) for c in choices]
        return choices[distances.index(min(distances))]
    try:
        if answer_type == "integer":
            return str(int(float(extraction)))
        if answer_type == "float":
            return str(round(float(extraction), int(item.get("precision") or 0)))
    except (TypeError, ValueError):
        return None
    return str(extraction) if extraction is not None else None


# ---------------------------------------------------------------------------------------------
# \boxed{} (OlympiadBench, VisuLogic)


def last_boxed(text: str) -> str | None:
    """Content of the last top-level ``\\boxed{...}`` (nested braces balanced), or None."""
    start = text.rfind("\\boxed")
    while start != -1:
        i = start + len("\\boxed")
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            depth = 0
            for j in range(i, len(text)):
                if text[j] == "{":
                    depth += 1
                elif text[j] == "}":
                    depth -= 1
                    if depth == 0:
                        return text[i + 1 : j].strip()
            return None  # unbalanced: truncated response
        start = text.rfind("\\boxed", 0, start)
    return None


def split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside brackets (for multi-answer OlympiadBench items)."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == sep and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur).strip())
    return [p for p in parts if p]


def _strip_math(text: str) -> str:
    text = str(text).strip()
    text = text.strip("$").strip()
    return re.sub(r"^\\\(|\\\)$", "", text).strip()


def _as_float(text: str) -> float | None:
    try:
        return float(text.replace(",", "").replace("{", "").replace("}", ""))
    except ValueError:
        return None


DEFAULT_TOLERANCE = 1e-8  # OlympiadBench's default absolute precision


def numbers_close(pred: float, gold: float, tolerance: float = DEFAULT_TOLERANCE) -> bool:
    """OlympiadBench ``numerical_equal``: ``|g - p| <= tol * 1.01`` for g in gold/100, gold, gold*100."""
    return any(abs(g - pred) <= tolerance * 1.01 for g in (gold / 100, gold, gold * 100))


def math_equal(pred: str, gold: str, tolerance: float | None = None) -> bool:
    """Symbolic equivalence via math-verify; plain numbers by ``numbers_close`` (absolute tolerance)."""
    pred, gold = _strip_math(pred), _strip_math(gold)
    if pred == gold:
        return True
    p, g = _as_float(pred), _as_float(gold)
    if p is not None and g is not None:
        return numbers_close(p, g, DEFAULT_TOLERANCE if tolerance is None else tolerance)
    from math_verify import parse, verify

    gold_parsed = parse(f"${gold}$")
    pred_parsed = parse(f"${pred}$")
    if not gold_parsed or not pred_parsed:
        return False
    try:
        return bool(verify(gold_parsed, pred_parsed))
    except Exception:  # math-verify raises on exotic LaTeX; treat as not equivalent
        return False


def parse_tolerances(error) -> list[float] | None:
    """OlympiadBench ``error`` field: None when absent, else one float per comma-separated part."""
    if error is None or (isinstance(error, float) and error != error) or str(error).strip() == "":
        return None
    if isinstance(error, (int, float)):
        return [float(error)]
    try:
        return [float(part) for part in str(error).split(",")]
    except ValueError as err:
        raise ValueError(
            f"error field {error!r} is not a number or comma-separated numbers"
        ) from err


def olympiad_match(
    pred: str, golds: Sequence[str], multiple: bool, tolerances: Sequence[float] | None = None
) -> bool:
    """OlympiadBench rule: every gold part pairs with a distinct answer part (order-free).

    ``tolerances`` are absolute, one per gold part in order (a single one applies to all); the
    official judge walks the gold parts and removes each paired gold, answer and tolerance.
    """
    gold_text = ",".join(_strip_math(g) for g in golds)
    pred_parts = split_top_level(_strip_math(pred)) if multiple else [_strip_math(pred)]
    gold_parts = split_top_level(gold_text) if multiple else [gold_text]
    tols = list(tolerances) if tolerances else [DEFAULT_TOLERANCE]
    if len(tols) == 1:
        tols = tols * len(gold_parts)
    if len(tols) != len(gold_parts):
        raise ValueError(
            f"{len(tols)} tolerance(s) in the error field for {len(gold_parts)} answer part(s)"
        )
    if len(pred_parts) != len(gold_parts):
        return False
    remaining = list(pred_parts)
    for gold, tol in zip(gold_parts, tols):
        hit = next((i for i, part in enumerate(remaining) if math_equal(part, gold, tol)), None)
        if hit is None:
            return False
        remaining.pop(hit)
    return True


# ---------------------------------------------------------------------------------------------
# Video-MME

# The official list lacks two commas, so Python joins those strings; kept for fidelity.
_VIDEOMME_PREFIXES = (
    "The best answer is",
    "The correct answer is",
    "The answer is",
    "The answer",
    "The best option isThe correct option is",
    "Best answer:Best option:",
)


def videomme_extract(response: str) -> str:
    """Video-MME official: drop answer prefixes, then the first A-D letter ('' = unanswered)."""
    text = response.strip()
    for prefix in _VIDEOMME_PREFIXES:
        text = text.replace(prefix, "")
    if len(text.split()) > 10 and not re.search("[ABCD]", text):
        return ""
    match = re.search(r"[ABCD]", text)
    return match[0] if match else ""


# ---------------------------------------------------------------------------------------------
# VisuLogic

_VISULOGIC_OPTIONS = ("A", "B", "C", "D")
_VISULOGIC_FLAGS = (
    "answer:",
    "the final answer is:",
    "the answer is option:",
    "the answer is:",
    "the correct answer is option:",
    "the correct answer is:",
    "the answer should be:",
    "the final answer is",
    "the answer is option",
    "the answer is",
    "the correct answer is option",
    "the correct answer is",
    "the answer should be",
)


def _visulogic_boxed(text: str) -> str:
    if len(text) < 3:
        return text
    content = last_boxed(text)
    if content is None:
        return "N"
    for cmd in ("\\text{", "\\rm{", "\\mathbf{", "$"):
        content = content.replace(cmd, "")
    content = content.replace("}", "")
    if "letter" in content.lower() or "or" in content or len(content) > 2:
        return text
    return content


def _visulogic_lang(text: str) -> str:
    text = text.replace("<|endoftext|>", "")
    for c in _VISULOGIC_OPTIONS:
        if (
            text.endswith(f" {c}.")
            or text.endswith(f" ({c}).")
            or text.startswith(f"{c}\n")
            or text.startswith(f"({c})\n")
            or text.startswith(f"({c}) {c}\n")
        ):
            return c
    lower = text.lower()
    for flag in _VISULOGIC_FLAGS:
        if flag in lower:
            lower = lower.split(flag)[-1].strip().split("\n")[0].split(".")[0]
            if lower.upper() in _VISULOGIC_OPTIONS:
                return lower.upper()
    return text


def visulogic_extract(response: str) -> tuple[str | None, str]:
    """VisuLogic official rules: boxed letter, then answer phrases; (None, 'none') otherwise."""
    boxed = _visulogic_boxed(response).strip()
    if boxed in _VISULOGIC_OPTIONS:
        return boxed, "box"
    lang = _visulogic_lang(response)
    if lang in _VISULOGIC_OPTIONS:
        return lang, "lang"
    return None, "none"


# ---------------------------------------------------------------------------------------------
# MMVU (official scorer: GPT-4o judge; this rule is our inferred offline fallback)


def mmvu_final_answer(response: str) -> tuple[str, str]:
    """Text after the last 'the final answer is' (the format the official prompts request)."""
    matches = list(re.finditer(r"final answer is[:\s]*", response, flags=re.IGNORECASE))
    if not matches:
        return response.strip(), "whole"
    tail = response[matches[-1].end() :].strip()
    tail = re.sub(r"^['\"]?answer:\s*", "", tail, flags=re.IGNORECASE)
    return tail.strip(" '\".\n"), "final_answer"


def normalize_text(text: str) -> str:
    """Lowercase, punctuation to spaces, whitespace collapsed (open-answer comparison)."""
    text = str(text).lower()
    text = "".join(" " if ch in string.punctuation else ch for ch in text)
    return " ".join(text.split())
