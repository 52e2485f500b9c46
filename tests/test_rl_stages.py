"""The post-training stages end to end on CPU: the tiny model learns arithmetic with GSPO.

Task: one-digit addition as text ("What is 3 + 4?", SFT answers "\\boxed{7}"), 100 problems,
answers checked by the rule verifier. (A longer instruction after the numbers slows the tiny
model's learning of the sums several-fold, so the prompt is kept short.) The tiny model
(``keye init``'s random weights) first gets a short SFT through the SFT stage
(``keye_model.train.stages``, DeepSpeed on a 1-rank gloo group) that teaches the answer format
and part of the sums; then the GSPO stage runs from it with three seeds. Rewards are measured by
sampling every problem ``EVAL_SAMPLES`` times at temperature 1 with a fixed seed, before GSPO
and after each run.

Margin: the mean over the three seeds of (reward after - reward before) must be at least
``MARGIN`` = 0.04 absolute (about two standard errors of the 400-sample estimate), and every seed
must gain. Measured while writing this test: before 0.26, gains 0.078 to 0.11 per seed.
About 8 minutes on 2 shared CPU cores (SFT 2 min, each GSPO run 1.5 min), hence ``slow``.
"""

from __future__ import annotations

import dataclasses
import tarfile

import pytest

from keye_model.rl.config import GSPOConfig, RolloutConfig, SamplingConfig, VerifierConfig
from keye_model.train.config import OptimConfig, TrainConfig

MARGIN = 0.04
EVAL_SAMPLES = 4
SEEDS = (0, 1, 2)
QUESTION = "What is {a} + {b}?"


def write_arithmetic(root) -> str:
    """The 100 one-digit additions as curated shards (the format the training stages read)."""
    from keye_model.data.curate import add_member
    from keye_model.data.records import QA, Sample

    shards = root / "shards"
    shards.mkdir(parents=True)
    with tarfile.open(shards / "arith-000.tar", "w", format=tarfile.PAX_FORMAT) as archive:
        for a in range(10):
            for b in range(10):
                sample = Sample(
                    key=f"add{a}{b}",
                    source="synthetic:arithmetic",
                    category="math",
                    qa=[QA(QUESTION.format(a=a, b=b), f"\\boxed{{{a + b}}}", "", "sum")],
                    metadata={"synthetic": True},
                )
                for name, blob in sample.members():
                    add_member(archive, name, blob)
    return str(root)


def mean_reward(model_dir, data, tmp) -> float:
    """Mean rule reward of EVAL_SAMPLES sampled answers per problem (temperature 1, fixed seed)."""
    from keye_model.rl.data import load_prompts
    from keye_model.rl.rollout import InProcessRollout
    from keye_model.rl.sampling import sample_groups
    from keye_model.rl.verifier import Verifier

    prompts = load_prompts(data, tmp / "media", tmp / "cache")
    rollout = InProcessRollout.from_pretrained(model_dir)
    try:
        groups = sample_groups(
            rollout,
            Verifier(VerifierConfig()),
            prompts,
            SamplingConfig(temperature=1.0, max_new_tokens=16),
            EVAL_SAMPLES,
            seed=12345,
            thinking="no_think",
        )
    finally:
        rollout.close()
    rewards = [r for g in groups for r in g.rewards]
    return sum(rewards) / len(rewards)


@pytest.fixture(scope="module")
def sft_model(tmp_path_factory):
    """Tiny model -> short SFT on the arithmetic set (the real SFT stage)."""
    from keye_model.model.assembly import assemble
    from keye_model.train.stages import sft

    root = tmp_path_factory.mktemp("rl-stages")
    data = write_arithmetic(root / "data")
    assemble("tiny", str(root / "init"), seed=0)
    # Adam's beta2 = 0.999 (not DeepSeek's 0.95): with 0.95 the tiny model learns the format
    # but not the sums in this many steps.
    # The margin below was measured with this SFT on transformers' masked SDPA; with the
    # per-segment kernel (same maths, other rounding) the 400-step trajectory differs and the
    # three seeds gained +0.020 / +0.015 / +0.013: positive, but under the 0.04 margin.
    cfg = TrainConfig(
        attention="sdpa",
        max_steps=400,
        micro_batch_size=1,
        seq_len=640,
        think_mix=[0.0, 1.0, 0.0],
        optim=OptimConfig(
            lr=3e-3,
            schedule="constant",
            warmup_steps=10,
            weight_decay=0.0,
            betas=[0.9, 0.999],
            grad_clip=0.0,
        ),
        save_every=1000,
    )
    result = sft(cfg, output=str(root / "sft"), model=str(root / "init"), data=data)
    return root, result.outputs["model"], data


def gspo_config(seed: int, **overrides) -> GSPOConfig:
    cfg = GSPOConfig(
        group_size=8,
        prompts_per_step=16,
        minibatches=4,
        micro_batch_size=8,
        steps=30,
        thinking="no_think",
        seed=seed,
        sampling=SamplingConfig(temperature=1.0, max_new_tokens=16),
        rollout=RolloutConfig(max_batch=128),
        optim=OptimConfig(
            lr=6e-4, schedule="constant", warmup_steps=0, weight_decay=0.0, betas=[0.9, 0.999]
        ),
        save_every=1000,
    )
    return dataclasses.replace(cfg, **overrides)


@pytest.mark.slow
def test_gspo_raises_the_reward_of_the_tiny_model_over_three_seeds(sft_model):
    import mlflow

    from keye_model.rl.stages import gspo

    root, model, data = sft_model
    before = mean_reward(model, data, root / "eval-before")
    gains = []
    for seed in SEEDS:
        out = root / f"gspo-{seed}"
        result = gspo(gspo_config(seed), str(out), model=model, data=data)
        after = mean_reward(result.outputs["model"], data, root / f"eval-{seed}")
        gains.append(after - before)
        assert result.metrics["steps"] == 30
        assert (out / "rewards.png").stat().st_size > 0
    print(f"reward before {before:.3f}, gains per seed {[round(g, 3) for g in gains]}")
    assert 0.05 < before < 0.6, "the SFT should leave room to learn"
    assert sum(gains) / len(gains) >= MARGIN, gains
    assert min(gains) > 0, gains
    # The stage logged what the issue asks for to MLflow.
    run = mlflow.search_runs(filter_string="tags.stage = 'gspo'", output_format="list")[0]
    for key in (
        "reward_mean",
        "reward_std",
        "pass_rate",
        "clip_fraction",
        "response_length_mean",
        "entropy",
        "kl",
        "groups_dropped",
        "rollout_s",
        "update_s",
    ):
        assert key in run.data.metrics, key
    # GSPO's clip acts off-policy: several minibatches per rollout batch make it non-zero.
    assert 0 < run.data.metrics["clip_fraction"] < 1


def _weights(model_dir) -> dict:
    from pathlib import Path

    from safetensors.torch import load_file

    out = {}
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        out.update(load_file(path))
    return out


@pytest.mark.slow
def test_gspo_resumed_mid_run_ends_where_an_uninterrupted_run_ends(sft_model):
    """Same prompts, same samples, same optimizer state: the final weights are identical."""
    import torch

    from keye_model.rl.stages import gspo

    root, model, data = sft_model
    # The KL term is on here so the reference-model path runs too.
    cfg = gspo_config(7, steps=2, save_every=1, kl_coef=0.05)
    straight = gspo(cfg, str(root / "straight"), model=model, data=data)
    gspo(cfg, str(root / "resumed"), model=model, data=data, max_steps=1)
    resumed = gspo(cfg, str(root / "resumed"), model=model, data=data, resume=True)
    assert resumed.metrics["steps"] == 1  # only step 2 ran after the resume
    a, b = _weights(straight.outputs["model"]), _weights(resumed.outputs["model"])
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    before = _weights(model)
    assert any(not torch.equal(before[k], a[k]) for k in a), "GSPO changed nothing"


@pytest.mark.slow
def test_cold_start_stage_keeps_the_band_and_fine_tunes(sft_model):
    import json

    from keye_model.rl.config import ColdStartConfig
    from keye_model.rl.stages import cold_start
    from keye_model.train.data import ShardIndex

    root, model, data = sft_model
    cfg = ColdStartConfig(
        k=4,
        thinking="no_think",
        sampling=SamplingConfig(temperature=1.0, max_new_tokens=16),
    )
    cfg.sft.max_steps = 2
    cfg.sft.seq_len = 640
    cfg.sft.micro_batch_size = 1
    cfg.sft.think_mix = [0.0, 1.0, 0.0]
    out = root / "cold-start"
    result = cold_start(cfg, str(out), model=model, data=data)
    report = json.loads((out / "filter" / "report.json").read_text())
    kept_rows = [json.loads(x) for x in (out / "filter" / "kept.jsonl").read_text().splitlines()]
    rejected = [json.loads(x) for x in (out / "filter" / "rejected.jsonl").read_text().splitlines()]
    assert report["prompts"] == 100 == report["prompts_kept"] + len(rejected)
    assert report["prompts_kept"] > 0 and rejected, "an SFT model at ~26% spans the band"
    for row in rejected:
        low = row["pass_rate"] < 0.25
        assert row["reason"] == ("too_hard" if low else "too_easy")
        assert row["pass_rate"] < 0.25 or row["pass_rate"] > 0.75
    # Every kept response is correct, and the kept set is SFT data the trainer reads.
    from keye_model.rl.verifier import Verifier, VerifyItem

    items = [
        VerifyItem(r["messages"][0]["content"][-1]["text"], r["messages"][-1]["content"], r["gold"])
        for r in kept_rows
    ]
    assert all(v.correct for v in Verifier(VerifierConfig()).verify(items))
    index = ShardIndex(result.outputs["data"], root / "cs-cache")
    assert len(index.refs) == report["responses_kept"] == len(kept_rows)
    assert result.metrics["steps"] == 2
    assert (out / "sft" / "final" / "config.json").is_file()
    assert result.outputs["model"].endswith("sft/final")
