"""Official-rule corners found in review: OlympiadBench tolerances, MMMU's empty-tail rule, the
parser branches not reached elsewhere, and clear errors for malformed items.

Every expected value is worked out by hand from the official rule (the comment beside each case
says how), never by running the scorer.
"""

from __future__ import annotations

import pytest

from keye_model.eval import extract as ex
from keye_model.eval import score


def _olympiad(i, final, multiple=False, error=None):
    return {
        "id": i,
        "question": "q",
        "final_answer": final,
        "is_multiple_answer": multiple,
        "error": error,
        "subject": "Physics",
        "answer_type": "Numerical",
    }


def test_olympiadbench_tolerance_matches_the_official_judge():
    # Official: |ref - pred| <= tol * 1.01 for ref in (gold/100, gold, gold*100); tol absolute,
    # from ``error`` (comma-separated, one per answer part), else 1e-8.
    items = [
        _olympiad("o1", ["1.23"], error="0.01"),  # 1.24: diff 0.01 <= 0.0101 -> right
        _olympiad("o2", ["1.23"], error="0.01"),  # 1.2405: diff 0.0105 > 0.0101 -> wrong
        _olympiad("o3", ["1000000"]),  # 1000000.001: diff 1e-3 > 1.01e-8 (absolute) -> wrong
        _olympiad("o4", ["0.5"]),  # 50 = gold*100 (percentage variant) -> right
        _olympiad("o5", ["$1.5$, $200$"], multiple=True, error="0.1,5"),  # both parts in -> right
        _olympiad("o6", ["$1.5$, $200$"], multiple=True, error="0.1,5"),  # order-free -> right
        _olympiad("o7", ["$1.5$, $200$"], multiple=True, error="0.1,5"),  # 207: 7 > 5.05 -> wrong
        # 1.9 vs 1.5 needs 0.4 but its own tolerance is 0.1 (5 belongs to the 2nd part) -> wrong
        _olympiad("o8", ["$1.5$, $200$"], multiple=True, error="0.1,5"),
        _olympiad("o9", ["$2$, $3$"], multiple=True, error="1e-2"),  # one tol for all -> right
    ]
    responses = [
        "\\boxed{1.24}",
        "\\boxed{1.2405}",
        "\\boxed{1000000.001}",
        "\\boxed{50}",
        "\\boxed{1.58, 204}",
        "\\boxed{204, 1.58}",
        "\\boxed{1.58, 207}",
        "\\boxed{1.9, 204}",
        "\\boxed{3.005, 1.995}",
    ]
    result = score("olympiadbench", items, responses)
    assert [r["correct"] for r in result["items"]] == [
        True,
        False,
        False,
        True,
        True,
        True,
        False,
        False,
        True,
    ]
    assert result["overall"] == pytest.approx(5 / 9)
    assert ex.parse_tolerances("1e-2,1e-2") == [0.01, 0.01]
    assert ex.parse_tolerances(None) is None and ex.parse_tolerances("") is None


def test_olympiadbench_malformed_error_field_names_the_item():
    good = _olympiad("ok", ["1"])
    with pytest.raises(ValueError, match=r"olympiadbench: item id='bad-tol'.*'abc'"):
        score("olympiadbench", [good, _olympiad("bad-tol", ["1"], error="abc")], ["", "\\boxed{1}"])
    # three tolerances for two answer parts
    with pytest.raises(ValueError, match=r"item id='parts'.*3 tolerance\(s\).*2 answer part"):
        score(
            "olympiadbench",
            [_olympiad("parts", ["$1$, $2$"], multiple=True, error="0.1,0.1,0.1")],
            ["\\boxed{1, 2}"],
        )


def test_score_validates_items_against_the_benchmark_fields():
    with pytest.raises(
        ValueError,
        match=r"olympiadbench items: record 1 \(id='o2'\) lacks field\(s\) \['final_answer'\]",
    ):
        score("olympiadbench", [_olympiad("o1", ["1"]), {"id": "o2", "question": "q"}], ["", ""])
    with pytest.raises(
        ValueError,
        match=r"mathvista items: record 0 \(pid='7'\) lacks field\(s\) "
        r"\['question_type', 'answer_type'\]",
    ):
        score("mathvista", [{"pid": "7", "question": "q", "answer": "1"}], ["1"])
    with pytest.raises(ValueError, match=r"videomme items: duplicate question_id '1-1'"):
        score("videomme", [{"question_id": "1-1", "answer": "A"}] * 2, ["A", "B"])
    with pytest.raises(TypeError, match="mmstar: item 0 is str"):
        score("mmstar", ["not a record"], ["A"])
    # media are not needed to score: a VLMEvalKit row without its image scores fine
    row = {"index": 1, "question": "q", "answer": "B", "A": "x", "B": "y"}
    assert score("mmstar", [row], ["B"])["overall"] == 1.0


def test_mmmu_open_parser_empty_tail_counts_as_empty():
    # Official ``get_key_subresponses``: line "the result is 7 so " (kept with its trailing
    # space) -> "so " gives the empty tail "", then "is " gives "7 so"; since
    # ``not shortest_key_response`` holds for "", "7 so" replaces it although longer.
    # The last line "ok" has no indicator, so the key responses are just ["7 so"].
    response = "The result is 7 so \nok"
    assert ex.mmmu_parse_open(response) == ["7 so", 7.0]
    item = {"id": "validation_Math_1", "question": "q", "question_type": "open", "answer": "ok"}
    # gold "ok" is not in "7 so" and 7.0 != "ok": wrong (keeping "" would fall back to the whole
    # response, which contains "ok", and count it right)
    assert score("mmmu", [item], [response])["overall"] == 0.0


def test_mmmu_multiple_candidates_the_last_mentioned_wins():
    options = "['cat', 'dog', 'bird', 'fish']"

    def item(i, answer):
        return {
            "id": f"validation_Art_{i}",
            "question": "q",
            "options": options,
            "answer": answer,
            "question_type": "multiple-choice",
        }

    items = [item(1, "B"), item(2, "C"), item(3, "A")]
    responses = [
        "A or maybe B is it",  # " A " at 0, " B " at 11: the later letter B -> right
        "I first thought dog but now I think bird really",  # >5 words, texts dog/bird: bird=C
        "(B) no wait (A)",  # brackets: "(A)" found later than "(B)" -> A, right
    ]
    result = score("mmmu", items, responses)
    assert [r["branch"] for r in result["items"]] == ["letter_last", "text_last", "bracket_last"]
    assert [r["extracted"] for r in result["items"]] == ["B", "C", "A"]
    assert result["overall"] == 1.0 and result["random_fallbacks"] == []


def test_mathvista_last_number_and_unparseable_numbers():
    def item(pid, answer, answer_type, precision=None):
        return {
            "pid": pid,
            "question": "q",
            "answer": answer,
            "question_type": "free_form",
            "answer_type": answer_type,
            "precision": precision,
            "metadata": {"task": "math word problem", "skills": []},
        }

    items = [item("1", "7", "integer"), item("2", "7", "integer"), item("3", "0.5", "float", 1)]
    responses = [
        "First 3 apples, then 4 more, 7 apples in all",  # no quote/box/"answer is": last number 7
        "The answer is seven.",  # "answer is" -> "seven"; int("seven") fails -> None: wrong
        "So the answer is about half",  # "about half"; float() fails -> None: wrong
    ]
    result = score("mathvista", items, responses)
    assert [r["branch"] for r in result["items"]] == [
        "rule_last_number",
        "rule_answer_is",
        "rule_answer_is",
    ]
    assert [r["extracted"] for r in result["items"]] == ["7", None, None]
    assert result["overall"] == pytest.approx(1 / 3)


def test_visulogic_judge_only_for_unparsed_answers():
    items = [
        {"id": f"v{i}", "image_path": f"images/{i}.png", "question": "q", "label": label}
        for i, label in enumerate("BAC")
    ]
    responses = [
        "I cannot decide between the shapes",  # no box (-> "N"), no phrase: judge says B: right
        "Hard to say which one fits",  # judge says "None of them" -> "N": wrong
        "\\boxed{C}",  # the box answers it; the judge is never asked: right
    ]
    replies = iter(["B. because the shapes rotate", "None of them"])
    prompts = []

    def judge(prompt):
        prompts.append(prompt)
        return next(replies)

    result = score("visulogic", items, responses, judge=judge)
    assert [r["branch"] for r in result["items"]] == ["judge", "judge", "box"]
    assert [r["extracted"] for r in result["items"]] == ["B", "N", "C"]
    assert result["overall"] == pytest.approx(2 / 3)
    assert len(prompts) == 2 and "I cannot decide between the shapes" in prompts[0]
