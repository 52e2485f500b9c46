"""Held-out MMBench-CN: written in Chinese, answers re-derived from source data, circular scoring.

Each row's sample is regenerated from the generator seed, and its answer derived here from the
sample's source data with the same independent derivations the curation test uses
(``tests/test_curate_synth.py``), never read from the generator's own answer.
"""

from __future__ import annotations

import re

from keye_model.data.synth import generate_one
from keye_model.eval.benchmarks import get_benchmark, load_benchmark, score, write_synthetic
from keye_model.eval.config import EvalConfig
from keye_model.eval.scoring import CIRCULAR_OFFSET, score_mmbench
from tests.test_curate_synth import derive_chart, derive_table

CJK = re.compile(r"[\u4e00-\u9fff]")
TREND = {"increasing": "上升", "decreasing": "下降", "fluctuating": "波动"}
N = 24


def _records(tmp_path, name: str):
    seed = EvalConfig().synthetic_seed
    write_synthetic(tmp_path, [name], n=N, seed=seed)
    records, _media = load_benchmark(tmp_path, name, media_dir=tmp_path / "media")
    return records, seed


def test_mmbench_cn_is_chinese_and_its_answers_rederive(tmp_path):
    records, seed = _records(tmp_path, "mmbench_cn")
    assert len(records) == 4 * N  # every question with its 4 circular rotations
    for rec in records:
        assert CJK.search(rec["question"]), rec["question"]
        assert CJK.search(rec["hint"]), rec["hint"]
    main = [r for r in records if int(r["index"]) < CIRCULAR_OFFSET]
    kinds = set()
    for rec in main:
        i = int(rec["index"])
        # the writer's sample for row i: chart and table alternate, one generator index each
        sample = generate_one(["chart", "table"][i % 2], seed, i, max_side=224)
        turn = i % len(sample.qa)
        source, kind = sample.metadata["source_data"], sample.qa[turn].kind
        kinds.add(kind)
        args = source["args"][turn]
        derive = derive_chart if sample.metadata["generator"] == "chart" else derive_table
        expected = derive(source["table"], kind, args)
        expected = TREND.get(expected, expected)  # word answers are written in Chinese too
        assert rec[rec["answer"]] == expected, (rec["question"], expected)
        for name in args.values():  # the question asks about its own arguments
            assert f"“{name}”" in rec["question"]
        # no English question text left (labels printed in the image excepted)
        words = set(re.findall(r"[A-Za-z]+", rec["question"])) - {
            w for v in args.values() for w in re.findall(r"[A-Za-z]+", str(v))
        }
        assert not words, rec["question"]
        options = [rec[k] for k in "ABCD"]
        assert len(set(options)) == 4 and options.count(expected) == 1
    assert len(kinds) >= 5  # chart and table questions of several kinds


def test_mmbench_cn_is_scored_by_the_circular_rule(tmp_path):
    records, _seed = _records(tmp_path, "mmbench_cn")
    assert get_benchmark("mmbench_cn").scorer is score_mmbench is get_benchmark("mmbench_en").scorer
    gold = [f"答案是 {r['answer']}" for r in records]
    perfect = score("mmbench_cn", records, gold)
    assert perfect["overall"] == 1.0 and perfect["n_questions"] == N
    # one rotation of question 0 answered wrong: the whole question fails, the rest stand
    wrong = list(gold)
    target = next(k for k, r in enumerate(records) if int(r["index"]) == CIRCULAR_OFFSET)
    wrong[target] = next(f"答案是 {x}" for x in "ABCD" if x != records[target]["answer"])
    result = score("mmbench_cn", records, wrong)
    assert result["overall"] == (N - 1) / N
    assert [g["index"] for g in result["groups"] if not g["correct"]] == [0]
