"""Held-out synthetic benchmark sets written in the official schemas (tiny preset, no ``--data``).

Questions come from the curation stage's synthesizers (``keye_model.data.synth``: charts,
tables, rendered math) under ``EvalConfig.synthetic_seed``, a seed no curation run uses, so
the sets are never seen in training. Each set is written exactly as the real benchmark is
released, so the same loader, prompt builder and official scorer run on it:

- MMBench EN/CN, MMStar, RealWorldQA: VLMEvalKit TSV with base64 images (MMBench with its
  circular copies at ``index + k*1e6``); MMBench-CN's questions, hints and word options are
  written in Chinese from the question's kind and source data (``_mcq_cn``);
- MMMU: JSONL records (``validation_<Subject>_<n>``, options as a list literal, open questions);
- MathVista: ``testmini.json`` (pid -> record) plus ``images/``;
- OlympiadBench: JSON list with ``final_answer`` lists and inline images;
- VisuLogic: ``data.jsonl`` plus ``images/``;
- Video-MME, MMVU, LongVideoBench: their JSON records plus short MP4s of chart frames.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import random
from pathlib import Path

from keye_model.eval.scoring import CIRCULAR_OFFSET

MAX_SIDE = 224  # small images keep the tiny model's prompts short


def _samples(kinds: list[str], n: int, seed: int, offset: int):
    from keye_model.data.synth import generate_one

    for i in range(n):
        kind = kinds[i % len(kinds)]
        yield generate_one(kind, seed, offset + i, max_side=MAX_SIDE)


def _distractors(sample, answer: str, rng: random.Random, k: int = 3) -> list[str]:
    """``k`` wrong options of the same kind as ``answer`` (labels or numbers)."""
    src = sample.metadata.get("source_data", {})
    table = src.get("table", {})
    pool = [
        str(x)
        for x in (table.get("labels") or []) + (table.get("rows") or []) + (table.get("cols") or [])
    ]
    pool = [p for p in dict.fromkeys(pool) if p != answer]
    try:
        value = int(answer)
        numbers = [str(value + d) for d in (-7, -3, -1, 1, 2, 5, 9, 11)]
        rng.shuffle(numbers)
        return numbers[:k]
    except ValueError:
        pass
    rng.shuffle(pool)
    while len(pool) < k:
        pool.append(f"none of {len(pool)}")
    return pool[:k]


def _mcq(sample, rng: random.Random, qa_index: int = 0) -> tuple[str, list[str], int]:
    qa = sample.qa[qa_index % len(sample.qa)]
    options = [qa.answer, *_distractors(sample, qa.answer, rng)]
    rng.shuffle(options)
    return qa.question, options, options.index(qa.answer)


# MMBench-CN: questions, hints and word options written in Chinese from each question's kind
# and arguments (the generator's source data), never translated from the English text. Labels
# printed in the image (months, regions, column names) stay as printed, as in the released set.
_QUESTION_CN = {
    ("chart", "lookup"): "图中“{label}”对应的数值是多少？",
    ("chart", "max"): "图中哪一项的数值最高？",
    ("chart", "min"): "图中哪一项的数值最低？",
    ("chart", "sum"): "图中所有数值的总和是多少？",
    ("chart", "difference"): "“{a}”的数值减去“{b}”的数值，结果是多少？",
    ("chart", "trend"): "从第一项到最后一项，这组数据是上升、下降还是波动？",
    ("chart", "count"): "图中一共有多少个数据项？",
    ("table", "cell"): "表格中“{row}”行、“{col}”列的数值是多少？",
    ("table", "row_sum"): "表格中“{row}”行各列数值之和是多少？",
    ("table", "col_sum"): "表格中“{col}”列的数值之和是多少？",
    ("table", "col_argmax"): "表格中“{col}”列数值最大的是哪一行？",
}
_HINT_CN = {"chart": "请仔细观察图表中的数据后作答。", "table": "请仔细阅读表格中的数据后作答。"}
TREND_CN = {"increasing": "上升", "decreasing": "下降", "fluctuating": "波动"}


def _mcq_cn(sample, rng: random.Random, qa_index: int) -> tuple[str, list[str], int, str]:
    """A Chinese question, options, gold index and hint for one chart/table question."""
    turn = qa_index % len(sample.qa)
    qa = sample.qa[turn]
    generator = sample.metadata["generator"]
    args = sample.metadata["source_data"]["args"][turn]
    question = _QUESTION_CN[(generator, qa.kind)].format(**args)
    if qa.kind == "trend":
        answer = TREND_CN[qa.answer]
        distractors = [w for w in TREND_CN.values() if w != answer] + ["无法判断"]
    else:
        answer, distractors = qa.answer, _distractors(sample, qa.answer, rng)
    options = [answer, *distractors]
    rng.shuffle(options)
    return question, options, options.index(answer), _HINT_CN[generator]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _write_tsv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(rows[0])
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)


def write_vlmeval_mcq(
    path: Path, n: int, seed: int, offset: int, circular: bool, lang: str = "en"
) -> None:
    """VLMEvalKit MCQ TSV from chart/table questions (MMBench with circular copies)."""
    rng = random.Random(f"{seed}:{path.name}")
    rows = []
    for i, sample in enumerate(_samples(["chart", "table"], n, seed, offset)):
        if lang == "cn":
            question, options, gold, hint = _mcq_cn(sample, rng, i)
        else:
            (question, options, gold), hint = _mcq(sample, rng, i), ""
        letters = "ABCD"
        shifts = range(len(options)) if circular else [0]
        for k in shifts:
            shifted = options[k:] + options[:k]
            row = {
                "index": str(i + k * CIRCULAR_OFFSET),
                "question": question,
                "hint": hint,
                **dict(zip(letters, shifted)),
                "answer": letters[shifted.index(options[gold])],
                "category": sample.category,
                "l2-category": sample.qa[i % len(sample.qa)].kind,
                "split": "dev",
                "image": _b64(sample.media) if k == 0 else str(i),
            }
            rows.append(row)
    _write_tsv(path, rows)


def write_mathvista(folder: Path, n: int, seed: int, offset: int) -> None:
    """MathVista testmini-style JSON: free-form integers and multiple choice, images on disk."""
    rng = random.Random(f"{seed}:mathvista")
    records = {}
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for i, sample in enumerate(_samples(["math", "chart", "table"], n, seed, offset)):
        pid = str(i + 1)
        image = f"images/{pid}.{sample.media_ext}"
        (folder / image).write_bytes(sample.media)
        qa = sample.qa[i % len(sample.qa)]
        numeric = qa.answer.lstrip("-").isdigit()
        task = {"math": "math word problem", "chart": "figure question answering"}.get(
            sample.metadata["generator"], "textbook question answering"
        )
        if numeric and i % 3 != 2:
            rec = {
                "question": qa.question,
                "choices": None,
                "answer": qa.answer,
                "question_type": "free_form",
                "answer_type": "integer",
                "precision": None,
                "query": "Hint: Please answer the question requiring an integer answer and provide the final value, "
                f"e.g., 1, 2, 3, at the end.\nQuestion: {qa.question}",
            }
        else:
            _q, options, gold = _mcq(sample, rng, i)
            choices_text = "\n".join(f"({chr(65 + j)}) {c}" for j, c in enumerate(options))
            rec = {
                "question": qa.question,
                "choices": options,
                "answer": options[gold],
                "question_type": "multi_choice",
                "answer_type": "text",
                "precision": None,
                "query": "Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, "
                f"at the end.\nQuestion: {qa.question}\nChoices:\n{choices_text}",
            }
        records[pid] = {
            "pid": pid,
            "image": image,
            "unit": None,
            **rec,
            "metadata": {
                "split": "testmini",
                "source": "keye-synthetic",
                "task": task,
                "context": sample.category,
                "grade": "synthetic",
                "skills": [qa.kind or "reading"],
            },
        }
    (folder / "testmini.json").write_text(json.dumps(records, indent=1))


def write_mmmu(folder: Path, n: int, seed: int, offset: int) -> None:
    """MMMU validation-style JSONL: multiple choice plus open questions, image_1 inline (base64)."""
    rng = random.Random(f"{seed}:mmmu")
    lines = []
    for i, sample in enumerate(_samples(["chart", "table", "math"], n, seed, offset)):
        subject = {"chart": "Economics", "table": "Accounting", "math": "Math"}[
            sample.metadata["generator"]
        ]
        qa = sample.qa[i % len(sample.qa)]
        base = {
            "id": f"validation_{subject}_{i + 1}",
            "image_1": _b64(sample.media),
            "img_type": "['Plots and Charts']",
            "topic_difficulty": "Easy",
            "subfield": sample.category,
            "explanation": "",
        }
        if i % 4 == 3:
            lines.append(
                {
                    **base,
                    "question": f"<image 1> {qa.question}",
                    "options": "[]",
                    "answer": qa.answer,
                    "question_type": "open",
                }
            )
        else:
            _q, options, gold = _mcq(sample, rng, i)
            lines.append(
                {
                    **base,
                    "question": f"<image 1> {qa.question}",
                    "options": repr(options),
                    "answer": chr(65 + gold),
                    "question_type": "multiple-choice",
                }
            )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def write_olympiadbench(folder: Path, n: int, seed: int, offset: int) -> None:
    """OlympiadBench-style JSON list: rendered math problems, boxed numeric final answers."""
    records = []
    for i, sample in enumerate(_samples(["math"], n, seed, offset)):
        statement = sample.metadata["source_data"].get("statement", "")
        records.append(
            {
                "id": i + 1,
                "question": f"{statement} (The problem is shown in the image.)",
                "solution": [sample.qa[0].cot or ""],
                "final_answer": [f"${sample.qa[0].answer}$"],
                "context": None,
                "image_1": _b64(sample.media),
                "modality": "Multimodal",
                "difficulty": "Competition",
                "is_multiple_answer": False,
                "unit": None,
                "answer_type": "Numerical",
                "error": None,
                "question_type": "Open-ended",
                "subfield": sample.metadata["source_data"]["problem"]["type"],
                "subject": "Math",
                "language": "English",
            }
        )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "OE_MM_maths_en_COMP.json").write_text(json.dumps(records, indent=1))


def write_visulogic(folder: Path, n: int, seed: int, offset: int) -> None:
    """VisuLogic-style ``data.jsonl``: four-option questions with options in the text, images on disk."""
    rng = random.Random(f"{seed}:visulogic")
    tags = [
        "Quantitative Reasoning",
        "Spatial Reasoning",
        "Positional Reasoning",
        "Attribute Reasoning",
    ]
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, sample in enumerate(_samples(["chart", "table"], n, seed, offset)):
        question, options, gold = _mcq(sample, rng, i)
        image = f"images/{i + 1}.{sample.media_ext}"
        (folder / image).write_bytes(sample.media)
        choices = "  ".join(f"{chr(65 + j)}: {o}" for j, o in enumerate(options))
        lines.append(
            {
                "id": f"synthetic_{i + 1}",
                "image_path": image,
                "question": f"{question}\nChoices: {choices}",
                "label": chr(65 + gold),
                "tag": tags[i % len(tags)],
            }
        )
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def write_video(path: Path, frames_png: list[bytes], fps: int = 1, side: int = 112) -> None:
    """A short H.264 MP4 of the given images, one per second (PyAV)."""
    import av
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = stream.height = side
        stream.pix_fmt = "yuv420p"
        for data in frames_png:
            image = Image.open(io.BytesIO(data)).convert("RGB").resize((side, side))
            frame = av.VideoFrame.from_ndarray(np.asarray(image), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _video_items(folder: Path, n: int, seed: int, offset: int, name: str):
    """(index, question, options, gold, video relative path) for chart-frame videos."""
    rng = random.Random(f"{seed}:{name}")
    for i, sample in enumerate(_samples(["chart"], n, seed, offset)):
        question, options, gold = _mcq(sample, rng, i)
        rel = f"videos/v{i + 1:04d}.mp4"
        # Two frames of the chart around a blank one: the answer is visible in the video.
        blank = io.BytesIO()
        from PIL import Image

        Image.new("RGB", (MAX_SIDE, MAX_SIDE), "white").save(blank, format="PNG")
        write_video(folder / rel, [sample.media, blank.getvalue(), sample.media])
        yield i, question, options, gold, rel, sample


def write_videomme(folder: Path, n: int, seed: int, offset: int) -> None:
    """Video-MME-style JSON records (``videoID`` -> ``videos/<videoID>.mp4``)."""
    records = []
    for i, question, options, gold, rel, sample in _video_items(
        folder, n, seed, offset, "videomme"
    ):
        vid = Path(rel).stem
        records.append(
            {
                "video_id": f"{i + 1:03d}",
                "duration": "short",
                "domain": "Synthetic",
                "sub_category": sample.category,
                "url": "",
                "videoID": vid,
                "question_id": f"{i + 1:03d}-1",
                "task_type": "Information Synopsis",
                "question": question,
                "options": [f"{chr(65 + j)}. {o}" for j, o in enumerate(options)],
                "answer": chr(65 + gold),
            }
        )
    (folder / "videomme.json").write_text(json.dumps(records, indent=1))


def write_mmvu(folder: Path, n: int, seed: int, offset: int) -> None:
    """MMVU validation-style JSON (choices A-E, empty for open-ended; video path under videos/)."""
    records = []
    for i, question, options, gold, rel, _sample in _video_items(folder, n, seed, offset, "mmvu"):
        choices = {chr(65 + j): o for j, o in enumerate(options)} | {"E": ""}
        open_ended = i % 3 == 2
        records.append(
            {
                "id": f"validation_{i}",
                "video": rel,
                "youtube_url": "",
                "question_type": "open-ended" if open_ended else "multiple-choice",
                "metadata": {
                    "subject": "Statistics",
                    "textbook": "synthetic",
                    "knowledge": [],
                    "rationale": "",
                },
                "question": question,
                "choices": {k: "" for k in "ABCDE"} if open_ended else choices,
                "answer": options[gold] if open_ended else chr(65 + gold),
            }
        )
    (folder / "validation.json").write_text(json.dumps(records, indent=1))


def write_longvideobench(folder: Path, n: int, seed: int, offset: int) -> None:
    """LongVideoBench-style ``lvb_val.json`` (candidates + correct_choice index)."""
    records = []
    for i, question, options, gold, rel, _sample in _video_items(folder, n, seed, offset, "lvb"):
        records.append(
            {
                "id": f"lvb_{i}",
                "video_id": Path(rel).stem,
                "video_path": rel,
                "question": question,
                "question_wo_referring_query": question,
                "candidates": options,
                "correct_choice": gold,
                "position": [],
                "topic_category": "synthetic",
                "question_category": "S2E",
                "level": "L1-Perception",
                "duration_group": 15,
                "duration": 3.0,
                "subtitle_path": "",
                "starting_timestamp_for_subtitles": 0,
            }
        )
    (folder / "lvb_val.json").write_text(json.dumps(records, indent=1))


def write_mmbench_en(folder: Path, n: int, seed: int, offset: int) -> None:
    """MMBench-EN dev TSV with circular copies."""
    write_vlmeval_mcq(folder / "MMBench_DEV_EN.tsv", n, seed, offset, circular=True)


def write_mmbench_cn(folder: Path, n: int, seed: int, offset: int) -> None:
    """MMBench-CN dev TSV with circular copies, written in Chinese."""
    write_vlmeval_mcq(folder / "MMBench_DEV_CN.tsv", n, seed, offset, circular=True, lang="cn")


def write_mmstar(folder: Path, n: int, seed: int, offset: int) -> None:
    """MMStar TSV (no circular copies)."""
    write_vlmeval_mcq(folder / "MMStar.tsv", n, seed, offset, circular=False)


def write_realworldqa(folder: Path, n: int, seed: int, offset: int) -> None:
    """RealWorldQA TSV (no circular copies)."""
    write_vlmeval_mcq(folder / "RealWorldQA.tsv", n, seed, offset, circular=False)
