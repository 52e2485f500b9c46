"""Released-file loading, official prompts and the S3 path of the evaluation stage.

Files are written here in their released formats (VLMEvalKit TSV with image back-references,
MMMU parquet with HF image dicts, MathVista's pid -> record JSON); S3 is a real moto server on
127.0.0.1 and the model a tiny random one run in process.
"""

from __future__ import annotations

import base64
import csv
import io
import json

import pytest
from PIL import Image

from keye_model import storage
from keye_model.eval.benchmarks import (
    get_benchmark,
    load_benchmark,
    prompt_hash,
    score,
    to_messages,
)
from keye_model.eval.config import EvalConfig


def _png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buf, format="PNG")
    return buf.getvalue()


def test_vlmeval_tsv_resolves_image_references_and_builds_official_prompt(tmp_path):
    folder = tmp_path / "mmbench_en"
    folder.mkdir()
    image = base64.b64encode(_png((0, 0, 255))).decode()
    rows = [
        {
            "index": "3",
            "question": "What colour?",
            "hint": "Look closely",
            "A": "red",
            "B": "blue",
            "C": "",
            "D": "",
            "answer": "B",
            "category": "color",
            "l2-category": "perception",
            "split": "dev",
            "image": image,
        },
        # the circular copy refers to the original row's image by index, as VLMEvalKit stores it
        {
            "index": "1000003",
            "question": "What colour?",
            "hint": "Look closely",
            "A": "blue",
            "B": "red",
            "C": "",
            "D": "",
            "answer": "A",
            "category": "color",
            "l2-category": "perception",
            "split": "dev",
            "image": "3",
        },
    ]
    with (folder / "MMBench_DEV_EN.tsv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    records, media = load_benchmark(tmp_path, "mmbench_en", media_dir=tmp_path / "decoded")
    # the base64 image was decoded once to a file; the circular copy names that same file
    assert records[1]["image"] == records[0]["image"]
    assert [p.read_bytes() for p in (tmp_path / "decoded").iterdir()] == [_png((0, 0, 255))]
    prompt = get_benchmark("mmbench_en").build(records[1], media)
    assert prompt.text == (
        "Hint: Look closely\nQuestion: What colour?\nOptions:\nA. blue\nB. red\n"
        "Please select the correct answer from the options above. \n"
    )
    assert prompt.images[0].read_bytes() == _png((0, 0, 255))
    think, no_think = to_messages(prompt, "/think"), to_messages(prompt, "/no_think")
    assert think[0]["content"][-1]["text"].endswith("above. \n/think")
    assert think[0]["content"][0]["image_url"]["url"] == prompt.images[0].as_uri()
    assert prompt_hash(think, 8) != prompt_hash(no_think, 8) != prompt_hash(no_think, 9)
    # both rotations right -> the question counts
    assert score("mmbench_en", records, ["B", "A"])["overall"] == 1.0


def test_mmmu_parquet_with_hf_image_dicts(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "mmmu"
    folder.mkdir()
    table = pa.Table.from_pylist(
        [
            {
                "id": "validation_Art_1",
                "question": "Which colour is <image 1>?",
                "options": "['red', 'green']",
                "answer": "B",
                "question_type": "multiple-choice",
                "image_1": {"bytes": _png((0, 255, 0)), "path": "a.png"},
                "image_2": None,
            },
        ]
    )
    pq.write_table(table, folder / "validation-00000-of-00001.parquet")
    records, media = load_benchmark(tmp_path, "mmmu")
    prompt = get_benchmark("mmmu").build(records[0], media)
    assert prompt.text == (
        "Which colour is <image 1>?\n\n(A) red\n(B) green\n\nAnswer with the option's letter from the given choices directly."
    )
    assert [p.read_bytes() for p in prompt.images] == [_png((0, 255, 0))]


def test_mathvista_pid_keys_and_missing_media_is_a_clear_error(tmp_path):
    folder = tmp_path / "mathvista"
    (folder / "images").mkdir(parents=True)
    (folder / "images" / "7.png").write_bytes(_png((1, 2, 3)))
    data = {
        "7": {
            "question": "q",
            "image": "images/7.png",
            "answer": "3",
            "question_type": "free_form",
            "answer_type": "integer",
            "query": "Hint: integer\nQuestion: q",
            "precision": None,
            "choices": None,
        },
        "8": {
            "question": "q",
            "image": "images/8.png",
            "answer": "3",
            "question_type": "free_form",
            "answer_type": "integer",
            "query": "Q",
            "precision": None,
            "choices": None,
        },
    }
    (folder / "testmini.json").write_text(json.dumps(data))
    records, media = load_benchmark(tmp_path, "mathvista")
    assert [r["pid"] for r in records] == ["7", "8"]
    assert get_benchmark("mathvista").build(records[0], media).text == "Hint: integer\nQuestion: q"
    with pytest.raises(ValueError, match="pid 8"):
        get_benchmark("mathvista").build(records[1], media)


@pytest.fixture
def s3(s3_bucket):
    return s3_bucket


def test_evaluate_reads_released_files_from_s3_and_resumes_from_s3_cache(tmp_path, s3, monkeypatch):
    import tempfile

    from keye_model.eval.stage import evaluate

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where scratch_dir() creates folders
    from keye_model.eval.benchmarks import write_synthetic
    from keye_model.model.assembly import assemble

    model = tmp_path / "model"
    assemble("tiny", str(model), seed=0)
    local = write_synthetic(tmp_path / "data", ["visulogic"], n=3, seed=900_001)
    storage.sync_up(local, f"{s3}/benchmarks")
    cfg = EvalConfig(benchmarks=["visulogic"], max_new_tokens=4, thinking="think")
    first = evaluate(cfg, model=str(model), data=f"{s3}/benchmarks", output=f"{s3}/runs/eval")
    assert first.details["asked"] == 3
    report = json.loads(storage.read_text(f"{s3}/runs/eval/report.json"))
    assert report["visulogic"]["published_671b"] == 35.4
    assert storage.exists(f"{s3}/runs/eval/results/visulogic.json")
    # a header line naming the model, then one line per answer
    assert len(storage.read_text(f"{s3}/runs/eval/predictions.jsonl").splitlines()) == 1 + 3
    # a new process with the same output asks nothing: the cache comes back from S3
    second = evaluate(cfg, model=str(model), data=f"{s3}/benchmarks", output=f"{s3}/runs/eval")
    assert second.details == {**second.details, "asked": 0, "cached": 3}
    assert second.metrics == first.metrics
    # the scratch working folders and the generator's media folder are gone
    assert sorted(p.name for p in scratch.iterdir() if p.name.startswith("keye-")) == []


def test_every_synthetic_set_loads_in_its_official_schema(tmp_path):
    from keye_model.data.config import CurateConfig
    from keye_model.eval.benchmarks import BENCHMARKS, write_synthetic

    # held out: the evaluation seed is not the curation seed
    assert EvalConfig().synthetic_seed != CurateConfig().seed
    root = write_synthetic(tmp_path, list(BENCHMARKS), n=2, seed=EvalConfig().synthetic_seed)
    for name, spec in BENCHMARKS.items():
        records, media = load_benchmark(root, name)
        assert records, name
        prompt = spec.build(records[0], media)
        assert prompt.text and (prompt.images or prompt.videos), name
        # every gold answer is reachable: a response quoting it scores 1 on the official rule
        if name in ("mmstar", "realworldqa"):
            assert score(name, records, [r["answer"] for r in records])["overall"] == 1.0
    mmbench, _ = load_benchmark(root, "mmbench_en")
    assert len(mmbench) == 2 * 4  # every question with its three circular copies


def test_a_model_too_large_for_in_process_evaluation_is_refused_before_any_work(tmp_path):
    from keye_model import KeyeVLMoeConfig
    from keye_model.eval.benchmarks import write_synthetic
    from keye_model.eval.stage import evaluate

    big = tmp_path / "keye-671b"
    KeyeVLMoeConfig.from_preset("keye-vl-671b-a37b").save_pretrained(big)  # config only, no weights
    cfg = EvalConfig(benchmarks=["mmstar"])
    # benchmark files given (without them the synthetic-set rule refuses first)
    data = write_synthetic(tmp_path / "data", ["mmstar"], n=2, seed=cfg.synthetic_seed)
    with pytest.raises(ValueError, match=r"671B parameters.*pass --endpoint"):
        evaluate(cfg, model=str(big), data=str(data), output=str(tmp_path / "out"))
    assert not (tmp_path / "out" / "predictions.jsonl").exists()  # nothing was asked
