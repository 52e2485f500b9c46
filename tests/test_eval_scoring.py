"""Official scoring rules, one fixture per benchmark in its released schema.

Each fixture is built here with canned responses that reach every extraction branch; the expected
scores are worked out by hand from the official rule (comments say why each item is right or
wrong), never by running the scorer.
"""

from __future__ import annotations

import base64
import io
import random

import pytest
from PIL import Image

from keye_model.eval import score


def _png_b64(color=(200, 30, 30)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _rotations(index, question, options, answer, category, l2, hint=""):
    """VLMEvalKit MMBench rows: the original plus its circular shifts at index + k*1e6."""
    rows = []
    letters = "ABCD"[: len(options)]
    gold_text = options[letters.index(answer)]
    for k in range(len(options)):
        shifted = options[k:] + options[:k]
        row = {
            "index": str(index + k * 1_000_000),
            "question": question,
            "hint": hint,
            "answer": letters[shifted.index(gold_text)],
            "category": category,
            "l2-category": l2,
            "split": "dev",
            # VLMEvalKit stores the image once; copies refer to the original's index.
            "image": _png_b64() if k == 0 else str(index),
        }
        row.update(dict(zip(letters, shifted)))
        rows.append(row)
    return rows


def mmbench_fixture():
    q5 = _rotations(
        5, "Which animal is shown?", ["cat", "dog", "bird", "fish"], "B", "chart", "perception"
    )
    q7 = _rotations(
        7, "Which value is largest?", ["10", "20", "30", "40"], "D", "table", "reasoning"
    )
    q9 = _rotations(9, "What colour?", ["red", "green", "blue"], "A", "table", "perception")[:1]
    responses = {
        # q5: every rotation right, through four different branches
        "5": "B",  # single option letter
        "1000005": "<think>maybe C or D</think>The answer is (A)",  # think stripped, then letter A
        "2000005": "It is a dog, clearly",  # no letter token -> option text 'dog' (= D here)
        "3000005": "A dog is shown, so C",  # two letters (A, C) -> text 'dog' -> C
        # q7: three rotations right, one wrong -> the whole question counts 0
        "7": "D",
        "1000007": "C",
        "2000007": "B. 40",
        "3000007": "Cannot determine the answer",  # refusal -> 'Z'
        # q9: a single copy answered right
        "9": "Answer: A",
    }
    rows = q5 + q7 + q9
    return rows, [responses[r["index"]] for r in rows]


def test_mmbench_circular_counts_only_when_every_rotation_is_right():
    rows, responses = mmbench_fixture()
    # sanity of the fixture itself: q5's rotations have the gold letters B, A, D, C
    assert [r["answer"] for r in rows[:4]] == ["B", "A", "D", "C"]
    result = score("mmbench_en", rows, responses)
    # groups: q5 all right (1), q7 one refusal (0), q9 right (1) -> 2/3
    assert result["overall"] == pytest.approx(2 / 3)
    assert result["per_category"] == {"chart": 1.0, "table": 0.5}
    assert result["per_l2_category"] == {"perception": 1.0, "reasoning": 0.0}
    assert result["n_questions"] == 3
    branches = {r["index"]: r["branch"] for r in result["items"]}
    assert branches["5"] == "option_letter"
    assert branches["2000005"] == "option_text"
    assert branches["3000005"] == "option_text"
    assert branches["3000007"] == "refusal"
    # the same rows scored per item (no circular grouping) give 8/9
    flat = score("mmstar", rows, responses)
    assert flat["overall"] == pytest.approx(8 / 9)


def test_mmbench_judge_then_seeded_random_fallback():
    rows = _rotations(3, "Pick", ["alpha", "beta"], "A", "c", "l2")[:1]
    # exact-matching policy: nothing parsed -> 'Z' (wrong)
    assert score("mmbench_en", rows, ["no idea"])["items"][0]["branch"] == "no_match"
    # a judge (any callable LLM; a plain function here) that names the option
    judged = score("mmbench_en", rows, ["no idea"], judge=lambda prompt: "A")
    assert judged["overall"] == 1.0 and judged["items"][0]["branch"] == "judge"
    # a judge that never answers: three tries, then a seeded random option among A, B, Z
    seen = score("mmbench_en", rows, ["no idea"], seed=11, judge=lambda prompt: "hmm")
    expected = random.Random("11:mmbench_en:3").choice(["A", "B", "Z"])
    assert seen["items"][0]["extracted"] == expected
    assert seen["random_fallbacks"] == [{"index": "3", "choice": expected}]


def test_mmstar_and_realworldqa_plain_mcq():
    rows = [
        {
            "index": 0,
            "question": "q",
            "A": "cat",
            "B": "dog",
            "C": "cow",
            "D": "pig",
            "answer": "A",
            "category": "coarse perception",
            "l2_category": "image scene",
            "image": _png_b64(),
        },
        {
            "index": 1,
            "question": "q",
            "A": "1",
            "B": "2",
            "C": "3",
            "D": "4",
            "answer": "C",
            "category": "math",
            "l2_category": "numeric",
            "image": _png_b64(),
        },
        {
            "index": 2,
            "question": "q",
            "A": "up",
            "B": "down",
            "C": "left",
            "D": "right",
            "answer": "D",
            "category": "math",
            "l2_category": "numeric",
            "image": _png_b64(),
        },
        {
            "index": 3,
            "question": "q",
            "A": "red",
            "B": "green",
            "C": "blue",
            "D": "white",
            "answer": "B",
            "category": "coarse perception",
            "l2_category": "image scene",
            "image": _png_b64(),
        },
    ]
    responses = [
        "A",  # letter: right
        "The answer is B",  # letter B: wrong (gold C)
        "Cannot determine the answer",  # refusal -> Z: wrong
        "It looks green to me",  # option text 'green' -> B: right
    ]
    for name in ("mmstar", "realworldqa"):
        result = score(name, rows, responses)
        assert result["overall"] == 0.5
        assert result["per_category"] == {"coarse perception": 1.0, "math": 0.0}


def test_mmmu_official_parser_with_open_questions_and_seeded_random():
    items = [
        {
            "id": "validation_Art_1",
            "question": "q <image 1>",
            "options": "['cat', 'dog', 'bird', 'fish']",
            "answer": "B",
            "question_type": "multiple-choice",
        },
        {
            "id": "validation_Art_2",
            "question": "q",
            "options": "['w', 'x', 'y', 'z']",
            "answer": "C",
            "question_type": "multiple-choice",
        },
        {
            "id": "validation_Math_3",
            "question": "q",
            "options": "['1', '2', '3', '4']",
            "answer": "A",
            "question_type": "multiple-choice",
        },
        {
            "id": "validation_Math_4",
            "question": "q",
            "options": "['red', 'blue']",
            "answer": "A",
            "question_type": "multiple-choice",
        },
        {
            "id": "validation_Art_5",
            "question": "q",
            "options": "['x', 'y', 'z', 'w']",
            "answer": "D",
            "question_type": "multiple-choice",
        },
        {
            "id": "validation_Math_6",
            "question": "q",
            "options": "[]",
            "answer": "3.14",
            "question_type": "open",
        },
        {
            "id": "validation_Art_7",
            "question": "q",
            "options": "[]",
            "answer": "['paris', 'Paris, France']",
            "question_type": "open",
        },
        {
            "id": "validation_Math_8",
            "question": "q",
            "options": "[]",
            "answer": "12",
            "question_type": "open",
        },
    ]
    responses = [
        "(B) dog",  # bracketed letter -> B: right
        "I think the answer is C because",  # bare letter ' C ' -> right
        "The value clearly equals the number 3 in this case",  # >5 words, option text '3' -> C: wrong
        "no idea",  # nothing parses -> seeded random choice of A/B
        "(A) is wrong, so (D)",  # two bracketed letters -> the last one, D: right
        "The result is 3.140",  # open: shortest tail after an indicator, 3.140 -> 3.14: right
        "So the capital is Paris.",  # open: 'paris' contains gold 'paris': right
        "I do not know",  # open: nothing matches: wrong
    ]
    result = score("mmmu", items, responses, seed=7)
    draw = random.Random("7:mmmu:validation_Math_4").choice(["A", "B"])
    r = 1 if draw == "A" else 0
    assert result["overall"] == pytest.approx((5 + r) / 8)
    assert result["per_category"] == {"Art": 1.0, "Math": pytest.approx((1 + r) / 4)}
    assert result["random_fallbacks"] == [{"index": "validation_Math_4", "choice": draw}]
    assert result["seed"] == 7
    branches = [rec["branch"] for rec in result["items"]]
    assert branches[:5] == ["bracket", "letter", "text", "random", "bracket_last"]
    # the draw is a pure function of the seed: scoring again gives the same record
    assert score("mmmu", items, responses, seed=7)["random_fallbacks"][0]["choice"] == draw


def test_mathvista_precision_and_closest_option():
    def item(
        pid, qtype, atype, answer, choices=None, precision=None, task="figure question answering"
    ):
        return {
            "pid": pid,
            "question": "q",
            "image": f"images/{pid}.jpg",
            "choices": choices,
            "unit": None,
            "precision": precision,
            "answer": answer,
            "question_type": qtype,
            "answer_type": atype,
            "query": "Hint: ...\nQuestion: q",
            "metadata": {"split": "testmini", "task": task, "skills": ["arithmetic reasoning"]},
        }

    items = [
        item("1", "multi_choice", "text", "4", choices=["3", "4", "5"]),
        item("2", "free_form", "integer", "12"),
        item("3", "free_form", "float", "1.5", precision=1),
        item(
            "4",
            "multi_choice",
            "text",
            "blue square",
            choices=["red circle", "blue square", "green star"],
            task="visual question answering",
        ),
        item(
            "5",
            "multi_choice",
            "text",
            "cherry",
            choices=["apple", "banana", "cherry"],
            task="visual question answering",
        ),
        item("6", "free_form", "float", "0.33", precision=2, task="math word problem"),
        item("7", "free_form", "integer", "7", task="math word problem"),
    ]
    responses = [
        "4",  # response equals an option text: right
        "12",  # parses as int: right
        "1.53",  # float, rounded to precision 1 -> 1.5: right
        'The answer is "(B) blue square".',  # quick extract, '(B)' -> option B text: right
        "I'd pick bananna",  # no rule -> closest option by edit distance = banana: wrong
        "<think>1/3 is 0.3333</think>So the answer is 0.3333",  # 'answer is' -> 0.33: right
        "\\boxed{8}",  # boxed 8: wrong
    ]
    result = score("mathvista", items, responses)
    assert result["overall"] == pytest.approx(5 / 7)
    assert result["per_category"] == {
        "figure question answering": 1.0,
        "math word problem": 0.5,
        "visual question answering": 0.5,
    }
    assert [r["extracted"] for r in result["items"]][2:5] == ["1.5", "blue square", "banana"]


def test_olympiadbench_last_boxed_and_symbolic_equivalence():
    def item(i, final, subject="Math", multiple=False, error=None):
        return {
            "id": i,
            "question": "q",
            "solution": ["..."],
            "final_answer": final,
            "context": None,
            "image_1": None,
            "modality": "Text-only",
            "difficulty": "Competition",
            "is_multiple_answer": multiple,
            "unit": None,
            "answer_type": "Numerical",
            "error": error,
            "question_type": "Open-ended",
            "subfield": "Algebra",
            "subject": subject,
            "language": "English",
        }

    items = [
        item(1, ["$\\frac{1}{2}$"]),
        item(2, ["$3$, $-2$"], multiple=True),
        item(3, ["$(x+1)^2$"]),
        item(4, ["$9.8$"], subject="Physics", error="0.1"),
        item(5, ["$12$"], subject="Physics"),
        item(6, ["$\\sqrt{2}$"]),
    ]
    responses = [
        "So the final answer is \\boxed{0.5}",  # 0.5 == 1/2 symbolically: right
        "\\boxed{-2, 3}",  # multiple answers, order-free: right
        "\\boxed{x^2+2x+1} hmm, actually \\boxed{x^2}",  # the LAST box counts: wrong
        "\\boxed{9.75}",  # |9.75 - 9.8| <= error 0.1: right
        "The answer is 12",  # no box: wrong
        "<think>\\boxed{1}</think>\\boxed{\\sqrt{2}}",  # think stripped; nested braces: right
    ]
    result = score("olympiadbench", items, responses)
    assert result["overall"] == pytest.approx(4 / 6)
    assert result["per_category"] == {"Math": 0.75, "Physics": 0.5}
    assert result["items"][4]["branch"] == "no_boxed"


def test_videomme_first_letter_and_answered_only_rule():
    def item(qid, task, duration, answer):
        return {
            "video_id": qid[:3],
            "duration": duration,
            "domain": "Knowledge",
            "sub_category": "x",
            "url": "",
            "videoID": "abc",
            "question_id": qid,
            "task_type": task,
            "question": "q",
            "options": ["A. a", "B. b", "C. c", "D. d"],
            "answer": answer,
        }

    items = [
        item("001-1", "Counting Problem", "short", "B"),
        item("001-2", "Counting Problem", "short", "C"),
        item("002-1", "Object Recognition", "medium", "D"),
        item("002-2", "Object Recognition", "medium", "A"),
        item("003-1", "Object Recognition", "long", "C"),
    ]
    responses = [
        "The best answer is B.",  # prefix removed, B: right
        "A",  # wrong
        "I think the video shows a dog running around the park near a lake today",  # >10 words, no A-D: unanswered
        "(A) cat",  # right
        "The answer is: Bicycle",  # first A-D letter is the B of 'Bicycle': wrong (official quirk)
    ]
    result = score("videomme", items, responses)
    # 4 answered, 2 right; the unanswered one leaves numerator and denominator
    assert result["answered"] == 4
    assert result["overall"] == 0.5
    assert result["per_category"] == {"Counting Problem": 0.5, "Object Recognition": 0.5}
    assert result["per_duration"] == {"long": 0.0, "medium": 1.0, "short": 0.5}


def test_longvideobench_mmmu_parser():
    items = [
        {
            "id": "lvb1",
            "video_id": "v1",
            "video_path": "v1.mp4",
            "question": "q",
            "candidates": ["red", "green", "blue"],
            "correct_choice": 1,
            "question_category": "T2E",
            "duration_group": 15,
        },
        {
            "id": "lvb2",
            "video_id": "v2",
            "video_path": "v2.mp4",
            "question": "q",
            "candidates": ["one", "two", "three", "four"],
            "correct_choice": 3,
            "question_category": "E2O",
            "duration_group": 60,
        },
        {
            "id": "lvb3",
            "video_id": "v3",
            "video_path": "v3.mp4",
            "question": "q",
            "candidates": ["cat", "dog"],
            "correct_choice": 0,
            "question_category": "T2E",
            "duration_group": 60,
        },
    ]
    responses = [
        "B",
        "(C)",
        "The animal in the frames is a cat for sure",
    ]  # right, wrong, right by text
    result = score("longvideobench", items, responses)
    assert result["overall"] == pytest.approx(2 / 3)
    assert result["per_category"] == {"E2O": 0.0, "T2E": 1.0}
    assert result["per_duration"] == {"15": 1.0, "60": 0.5}


def test_visulogic_boxed_then_language_rules():
    items = [
        {
            "id": "v1",
            "image_path": "images/1.png",
            "question": "q",
            "label": "A",
            "tag": "Quantitative Reasoning",
        },
        {
            "id": "v2",
            "image_path": "images/2.png",
            "question": "q",
            "label": "B",
            "tag": "Spatial Reasoning",
        },
        {
            "id": "v3",
            "image_path": "images/3.png",
            "question": "q",
            "label": "C",
            "tag": "Spatial Reasoning",
        },
        {"id": "v4", "image_path": "images/4.png", "question": "q", "label": "D", "tag": "Other"},
    ]
    responses = [
        "so the answer is \\boxed{A}",  # box: right
        "Reasoning first. The correct answer is: B",  # phrase 'the correct answer is:': right
        "\\boxed{C or D}",  # ambiguous box and no phrase -> Z: wrong
        "After comparing the shapes, it is D.",  # ends with ' D.': right
    ]
    result = score("visulogic", items, responses)
    assert result["overall"] == 0.75
    assert result["per_category"] == {
        "Other": 1.0,
        "Quantitative Reasoning": 1.0,
        "Spatial Reasoning": 0.5,
    }
    assert [r["branch"] for r in result["items"]] == ["box", "lang", "none", "lang"]


def test_mmvu_rule_fallback_and_judge():
    def item(i, qtype, subject, answer, choices=None):
        return {
            "id": i,
            "video": f"videos/{i}.mp4",
            "youtube_url": "",
            "question_type": qtype,
            "metadata": {"subject": subject, "textbook": "", "knowledge": [], "rationale": ""},
            "question": "q",
            "choices": choices or {k: "" for k in "ABCDE"},
            "answer": answer,
        }

    mc = {
        "A": "Isothermal compression",
        "B": "Adiabatic compression",
        "C": "Isobaric compression",
        "D": "Adiabatic expansion",
        "E": "Isothermal expansion",
    }
    items = [
        item(
            "validation_1",
            "multiple-choice",
            "Chemistry",
            "A",
            {"A": "10.0", "B": "5.0", "C": "12.0", "D": "15.0", "E": "20.0"},
        ),
        item("validation_3", "multiple-choice", "Thermodynamics", "B", mc),
        item("validation_0", "open-ended", "Art", "Dolly Zoom"),
        item("validation_2", "open-ended", "Computer Science", "Depth-First Search (DFS)"),
        item("validation_10", "open-ended", "Civil Engineering", "rectangular"),
    ]
    responses = [
        "Step by step... Therefore, the final answer is: A",  # final-answer letter: right
        "It must be the Isobaric compression",  # option text -> C: wrong
        "Therefore, the final answer is: 'Answer: dolly zoom'.",  # normalised text equal: right
        "Therefore, the final answer is: Breadth-first search",  # wrong
        "It is a rectangular load. Therefore, the final answer is: rectangular",  # right
    ]
    result = score("mmvu", items, responses)
    assert result["overall"] == pytest.approx(3 / 5)
    assert (
        result["per_category"]["Chemistry"] == 1.0
        and result["per_category"]["Thermodynamics"] == 0.0
    )
    # the official scorer is an LLM judge returning JSON; a judge overrides the rule
    judged = score(
        "mmvu",
        items[:1],
        ["whatever"],
        judge=lambda p: '{"extracted_answer": "A", "correct": true}',
    )
    assert judged["overall"] == 1.0 and judged["items"][0]["branch"] == "judge"


def test_unknown_benchmark_and_length_mismatch_are_clear_errors():
    with pytest.raises(ValueError, match="unknown benchmark 'nope'"):
        score("nope", [], [])
    with pytest.raises(ValueError, match="2 items but 1 responses"):
        score("visulogic", [{}, {}], ["A"])
