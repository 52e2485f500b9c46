"""Training stages on CPU: freezing, targets, packing, normalisation, MoE balancing, schedules.

The end-to-end tests run the real stages (``run_stage``) on data curated by the real curate stage
and a model written by the real init stage, under DeepSpeed on a 1-rank gloo group.
"""

from __future__ import annotations

import dataclasses
import io

import pytest
import torch
from safetensors.torch import load_file

from keye_model import KeyeVLMoeConfig, KeyeVLMoeForConditionalGeneration
from keye_model.recipe import load_recipe
from keye_model.stages import run_stage
from keye_model.train import moe
from keye_model.train.config import OptimConfig, TrainConfig
from keye_model.train.data import (
    IGNORE,
    SampleRef,
    Tokenized,
    assistant_text,
    collate,
    epoch_order,
    render,
    target_mask,
    tokenize,
)
from keye_model.train.engine import lr_multiplier
from keye_model.train.loop import lm_loss_sum
from tests.conftest import FIXTURES


@pytest.fixture(scope="module")
def processor():
    from keye_model.model.assembly import build_processor

    return build_processor(KeyeVLMoeConfig.from_preset("tiny"), "tiny", None)


def small_image(name: str = "cat.jpg", side: int = 84) -> bytes:
    from PIL import Image

    image = Image.open(FIXTURES / name).convert("RGB").resize((side, side))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------- targets and rendering


def test_sft_targets_are_the_assistant_tokens_only(processor):
    sample = {
        "qa": [{"question": "What is 2+3?", "answer": "5", "cot": "2 plus 3 is 5."}],
        "images": [small_image()],
    }
    messages = render(sample, "no_think")
    assert messages[0]["content"][-1]["text"] == "What is 2+3?/no_think"
    item = tokenize(processor, messages, sample["images"], "assistant")
    targets = [tok for tok, label in zip(item.input_ids, item.labels) if label != IGNORE]
    # Exactly the assistant turn, its empty think block included, through <|im_end|>.
    assert processor.tokenizer.decode(targets) == "<think>\n\n</think>\n\n5<|im_end|>"
    assert all(label == tok or label == IGNORE for tok, label in zip(item.input_ids, item.labels))
    # The prompt (system, user text, every image pad) carries no loss.
    image_pad = processor.image_token_id
    assert image_pad in item.input_ids
    assert all(lab == IGNORE for tok, lab in zip(item.input_ids, item.labels) if tok == image_pad)


def test_thinking_modes_render_reasoning_only_when_thinking():
    assert assistant_text("5", "2+3=5.", "think") == "<think>\n2+3=5.\n</think>\n\n5"
    assert assistant_text("5", "2+3=5.", "no_think") == "<think>\n\n</think>\n\n5"
    assert assistant_text("5", "", "think") == "<think>\n\n</think>\n\n5"
    caption = render({"text": "A cat.", "category": "caption", "images": [b""]}, "auto")
    assert caption[0]["content"][-1]["text"] == "Describe the image."
    assert caption[1]["content"].endswith("A cat.")


def test_target_mask_all_tokens_skips_vision_pads_and_the_first_token(processor):
    ids = processor.tokenizer.encode("<|im_start|>user\n<|image_pad|>hi<|im_end|>")
    mask = target_mask(ids, processor.tokenizer, "all")
    assert mask[0] is False
    assert [m for tok, m in zip(ids, mask) if tok == processor.image_token_id] == [False]
    assert sum(mask) == len(ids) - 2
    with pytest.raises(ValueError, match="loss_on"):
        target_mask(ids, processor.tokenizer, "prompt")


def test_epoch_order_follows_category_weights_and_the_long_cot_ratio():
    refs = [SampleRef("s", f"c{i}", "chart", False) for i in range(60)]
    refs += [SampleRef("s", f"m{i}", "math_cot", True) for i in range(20)]
    order = epoch_order(refs, {"chart": 1.0, "math_cot": 0.0}, None, seed=0, epoch=0)
    assert sorted(order) == list(range(60))  # weight 1: each once; weight 0: never
    order = epoch_order(refs, {"chart": 1.0, "math_cot": 1.0}, 0.5, seed=0, epoch=0)
    share = sum(refs[i].has_cot for i in order) / len(order)
    assert 0.4 < share < 0.6, share  # 20 CoT samples of 80 made half of the epoch
    assert order != epoch_order(refs, {"chart": 1.0, "math_cot": 1.0}, 0.5, seed=0, epoch=1)


# ---------------------------------------------------------------- packing


def _samples(processor, count: int = 3) -> list[Tokenized]:
    items = []
    for i in range(count):
        images = [small_image("img2.jpg" if i % 2 else "cat.jpg", 56 + 28 * i)] if i != 1 else []
        sample = {
            "qa": [{"question": f"Question {i}?", "answer": f"answer {i}" * (i + 1), "cot": ""}]
        }
        sample["images"] = images
        items.append(tokenize(processor, render(sample, "auto"), images, "assistant", key=str(i)))
    return items


def test_packed_and_unpacked_batches_give_the_same_logits_and_loss(processor):
    torch.manual_seed(0)
    model = KeyeVLMoeForConditionalGeneration(KeyeVLMoeConfig.from_preset("tiny")).eval()
    samples = _samples(processor)
    pad = processor.tokenizer.pad_token_id
    packed = collate([samples], pad, length=sum(len(s) for s in samples) + 5)
    unpacked = collate([[s] for s in samples], pad)
    assert packed.position_ids[0, len(samples[0])] == 0  # positions restart per sample
    with torch.no_grad():
        logits_packed = model(**packed.model_inputs()).logits
        logits_unpacked = model(**unpacked.model_inputs()).logits
    start = 0
    for row, sample in enumerate(samples):
        piece = logits_packed[0, start : start + len(sample)]
        torch.testing.assert_close(piece, logits_unpacked[row, : len(sample)], atol=2e-5, rtol=1e-4)
        start += len(sample)
    loss_packed = lm_loss_sum(logits_packed, packed.labels) / packed.targets
    loss_unpacked = lm_loss_sum(logits_unpacked, unpacked.labels) / unpacked.targets
    torch.testing.assert_close(loss_packed, loss_unpacked, atol=1e-5, rtol=1e-5)
    # Without restarting positions, attention would leak across samples: the logits differ.
    leaky = dataclasses.replace(packed, position_ids=torch.arange(packed.input_ids.shape[1])[None])
    with torch.no_grad():
        logits_leaky = model(**leaky.model_inputs()).logits
    second = slice(len(samples[0]), len(samples[0]) + len(samples[1]))
    assert not torch.allclose(logits_leaky[0, second], logits_packed[0, second], atol=1e-3)


# ---------------------------------------------------------------- schedules and MoE balancing


def test_lr_schedules():
    wsd = OptimConfig(schedule="wsd", warmup_steps=2, decay_fraction=0.5, min_lr_ratio=0.1)
    values = [lr_multiplier(s, 10, wsd) for s in range(10)]
    assert values[:2] == [0.5, 1.0] and values[2:5] == [1.0, 1.0, 1.0]
    assert values[5] < 1.0 and values[-1] == pytest.approx(0.1)
    cosine = OptimConfig(schedule="cosine", warmup_steps=0, min_lr_ratio=0.0)
    values = [lr_multiplier(s, 11, cosine) for s in range(11)]
    assert values[0] == 1.0 and values[5] == pytest.approx(0.5) and values[-1] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="schedule"):
        lr_multiplier(0, 10, OptimConfig(schedule="linear"))


def test_sequence_balance_loss_matches_the_formula_by_hand():
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.5], [0.2, 0.8, 0.5, 0.5], [0.6, 0.6, 0.1, 0.1]])
    topk = torch.tensor([[0, 2], [1, 2], [0, 1]])
    segments = torch.tensor([0, 0, 1])
    expected = []
    for rows in ([0, 1], [2]):
        s = scores[rows] / scores[rows].sum(-1, keepdim=True)
        p = s.mean(0)
        f = torch.zeros(4)
        for r in rows:
            f[topk[r]] += 1
        f = f * 4 / (2 * len(rows))
        expected.append((f * p).sum())
    got = moe.sequence_balance_loss(scores, topk, segments, top_k=2)
    torch.testing.assert_close(got, torch.stack(expected).mean())


def test_correction_bias_falls_for_the_overloaded_expert_and_rises_for_the_others():
    torch.manual_seed(0)
    model = KeyeVLMoeForConditionalGeneration(KeyeVLMoeConfig.from_preset("tiny")).train()
    router = moe.routers(model)[0]
    with torch.no_grad():  # equal scores, and a head start for expert 3: every token picks it
        router.weight.zero_()
        router.e_score_correction_bias[3] = 0.5
    monitor = moe.RouterMonitor(model, aux_weight=0.0)
    model(input_ids=torch.randint(20, 200, (2, 32)), use_cache=False)
    load = monitor.reset_load()
    assert load[0, 3] == 64 and load[0].max() == 64  # every one of the 64 tokens picked expert 3
    before = router.e_score_correction_bias.clone()
    monitor.apply_bias_update(torch.zeros_like(load), rate=0.0)
    monitor.apply_bias_update(load, rate=0.0)
    assert torch.equal(router.e_score_correction_bias, before)  # rate 0 changes nothing
    monitor.apply_bias_update(load, rate=1e-3)
    delta = router.e_score_correction_bias - before
    assert float(delta[3]) == pytest.approx(-1e-3, abs=1e-7)
    underloaded = load[0] < load[0].float().mean()
    assert underloaded.sum() == 6
    torch.testing.assert_close(delta[underloaded], torch.full((6,), 1e-3), atol=1e-7, rtol=0)
    monitor.remove()


# ---------------------------------------------------------------- real stages


@pytest.fixture(scope="module")
def tiny_inputs(tmp_path_factory):
    """Data from the real curate stage and a model from the real init stage (shared by this module)."""
    root = tmp_path_factory.mktemp("train-inputs")
    recipe = load_recipe("tiny", {"curate": {"num_synthetic": 48, "shard_size": 16}})
    data = run_stage("curate", recipe, str(root / "data")).outputs["data"]
    model = run_stage("init", recipe, str(root / "init")).outputs["model"]
    return model, data


def _recipe(stage: str, **train):
    base = {"max_steps": 2, "seq_len": 640, "micro_batch_size": 1, "save_every": 100}
    return load_recipe("tiny", {stage: {**base, **train}})


def _weights(model_dir) -> dict[str, torch.Tensor]:
    from pathlib import Path

    out = {}
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        out.update(load_file(path))
    return out


def test_align_trains_every_projector_parameter_and_nothing_else(tiny_inputs, tmp_path):
    model, data = tiny_inputs
    result = run_stage(
        "align", _recipe("align"), str(tmp_path / "align"), {"model": model, "data": data}
    )
    before, after = _weights(model), _weights(result.outputs["model"])
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    projector = {k for k in before if k.startswith("mlp_AR.")}
    assert changed == projector, sorted(changed ^ projector)[:5]
    assert result.metrics["steps"] == 2 and (tmp_path / "align" / "loss.png").stat().st_size > 0


def test_one_pretrain_step_changes_every_parameter_and_reaches_every_expert(tiny_inputs, tmp_path):
    import mlflow

    model, data = tiny_inputs
    recipe = _recipe("pretrain", max_steps=1, seq_len=2048, micro_batch_size=2)
    result = run_stage("pretrain", recipe, str(tmp_path / "pt"), {"model": model, "data": data})
    before, after = _weights(model), _weights(result.outputs["model"])
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    # Every parameter moved; position tables of unused image sizes included (interpolation).
    assert unchanged == [], unchanged[:5]
    run = mlflow.search_runs(filter_string="tags.stage = 'pretrain'", output_format="list")[0]
    assert (
        run.data.metrics["moe_unused_experts"] == 0
    )  # routing reached every expert of every layer
    for key in ("loss", "lr", "grad_norm", "tokens_per_s", "mfu", "packing_efficiency"):
        assert key in run.data.metrics, key


def test_bad_training_config_is_rejected_before_work(tiny_inputs, tmp_path):
    model, data = tiny_inputs
    with pytest.raises(ValueError, match="sft.trainable"):
        run_stage(
            "sft",
            _recipe("sft", trainable=["vision"]),
            str(tmp_path / "x"),
            {"model": model, "data": data},
        )
    with pytest.raises(ValueError, match="think_mix"):
        run_stage(
            "sft",
            _recipe("sft", think_mix=[1.0, 1.0, 0.0]),
            str(tmp_path / "x"),
            {"model": model, "data": data},
        )
    with pytest.raises(FileNotFoundError, match="no WebDataset shards"):
        run_stage(
            "sft", _recipe("sft"), str(tmp_path / "x"), {"model": model, "data": str(tmp_path)}
        )
    assert not (tmp_path / "x" / "final").exists()


def test_micro_batch_4_and_accumulation_4_give_the_same_gradient(processor):
    """Loss normalised by the target tokens of the whole accumulated batch (not per micro-batch)."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    from keye_model.train.engine import build_engine
    from keye_model.train.loop import _step

    samples = _samples(processor, 4)  # different lengths and target counts per sample
    pad = processor.tokenizer.pad_token_id
    grads = {}
    for micro, accum in ((4, 1), (1, 4)):
        torch.manual_seed(0)
        model = KeyeVLMoeForConditionalGeneration(KeyeVLMoeConfig.from_preset("tiny")).train()
        cfg = TrainConfig(micro_batch_size=micro, grad_accum=accum, seq_len=512)
        cfg.optim.grad_clip = 0.0
        cfg.launch.zero_stage = 0
        engine = build_engine(model, cfg, max_steps=1)
        monitor = moe.RouterMonitor(model, aux_weight=0.0)
        rows = [[s] for s in samples]
        batches = [collate(rows[i : i + micro], pad, 512) for i in range(0, 4, micro)]

        def snapshot(_optimizer, _args, _kwargs, model=model, key=(micro, accum)):
            grads[key] = {
                n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None
            }

        handle = register_optimizer_step_pre_hook(snapshot)
        metrics = _step(engine, monitor, batches, cfg, world=1)
        handle.remove()
        monitor.remove()
        assert metrics["target_tokens"] == sum(s.targets for s in samples)
    a, b = grads[(4, 1)], grads[(1, 4)]
    assert a.keys() == b.keys() and len(a) > 50
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-4, msg=name)


def _stage_cmd(stage: str, model: str, data: str, output, *extra: str) -> list[str]:
    import sys

    sets = ["seq_len=640", "micro_batch_size=1", "keep_last=3"]
    argv = [sys.executable, "-m", "keye_model.cli", "stage", stage, "--model", model]
    argv += ["--data", data, "--output", str(output), *extra]
    for item in sets:
        argv += ["--set", f"{stage}.{item}"]
    return argv


def test_kill_9_then_resume_gives_bit_identical_weights(tiny_inputs, tmp_path):
    """SIGKILL after the step-2 checkpoint, resume to step 4: same bytes as an uninterrupted run."""
    import os
    import signal
    import subprocess
    import time

    model, data = tiny_inputs
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    steps = ["--max-steps", "4", "--save-every", "2"]
    subprocess.run(
        _stage_cmd("pretrain", model, data, tmp_path / "a", *steps),
        env=env,
        check=True,
        capture_output=True,
    )

    killed = tmp_path / "b"
    marker = killed / "checkpoints" / "step-00000002" / "COMPLETE"
    proc = subprocess.Popen(
        _stage_cmd("pretrain", model, data, killed, *steps), env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.time() + 600
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert marker.exists() and not (killed / "final").exists(), "killed before finishing"
    resumed = subprocess.run(
        _stage_cmd("pretrain", model, data, killed, *steps, "--resume"),
        env=env,
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed at step 2" in resumed.stderr
    a, b = _weights(tmp_path / "a" / "final"), _weights(killed / "final")
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert different == [], different[:5]


def test_two_process_zero3_through_torchx_matches_one_process(tiny_inputs, tmp_path):
    """torchx local_cwd -> torchrun, 2 gloo ranks under ZeRO-3 (MoE blocks as leaves) vs 1 rank."""
    import json
    import os
    import subprocess

    model, data = tiny_inputs
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    losses = {}
    for procs, micro in ((1, 2), (2, 1)):
        out = tmp_path / f"p{procs}"
        argv = _stage_cmd("pretrain", model, data, out, "--max-steps", "2")
        argv += [
            "--set",
            f"pretrain.micro_batch_size={micro}",
            "--set",
            "pretrain.launch.zero_stage=3",
        ]
        argv += ["--set", f"pretrain.launch.nproc_per_node={procs}"]
        done = subprocess.run(argv, env=env, capture_output=True, text=True)
        assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
        result = json.loads((out / "stage_result.json").read_text())
        losses[procs] = (result["metrics"]["loss_first"], result["metrics"]["loss_final"])
        if procs == 2:
            assert "[rank1]" in done.stdout + done.stderr  # both ranks ran and logged
    assert losses[2] == pytest.approx(losses[1], rel=1e-4)


def test_first_fit_packing_fills_rows_and_skips_what_cannot_fit():
    from keye_model.train.data import Packer

    def item(n: int) -> Tokenized:
        return Tokenized(list(range(n)), [IGNORE] * n, None, None, key=str(n))

    packer = Packer(seq_len=10, open_rows=2)
    rows = [row for n in (6, 6, 4, 3, 12, 7, 4) for row in packer.add(item(n))]
    assert packer.too_long == 1  # 12 > 10: skipped, counted
    assert [[len(s) for s in row] for row in rows] == [[6, 4], [6, 3]]
    assert all(sum(len(s) for s in row) <= 10 for row in rows)
    assert [[len(s) for s in row] for row in Packer(10, packing=False).add(item(3))] == [[3]]


def test_packed_sdpa_equals_the_masked_reference_and_is_used_by_training(processor):
    """Per-segment attention (the training loop's CPU kernel) gives the masked SDPA's logits."""
    from keye_model.train.attention import NAME, segments, use_packed_attention

    assert segments(torch.tensor([0, 1, 2, 0, 1, 0, 1, 2, 3])) == [(0, 3), (3, 5), (5, 9)]
    torch.manual_seed(0)
    config = KeyeVLMoeConfig.from_preset("tiny")
    reference = KeyeVLMoeForConditionalGeneration(config).eval()
    packed_model = KeyeVLMoeForConditionalGeneration(config).eval()
    packed_model.load_state_dict(reference.state_dict())
    assert use_packed_attention(packed_model) == NAME
    samples = _samples(processor)
    batch = collate([samples, samples[:2]], processor.tokenizer.pad_token_id, length=400)
    with torch.no_grad():
        expected = reference(**batch.model_inputs()).logits
        got = packed_model(**batch.model_inputs()).logits
    real = batch.segment_ids >= 0
    torch.testing.assert_close(got[real], expected[real], atol=2e-5, rtol=1e-4)
    # Generation (a KV cache, one query at a time) falls back to plain SDPA and still works.
    prompt = torch.tensor([samples[1].input_ids[:20]])
    out = packed_model.generate(input_ids=prompt, max_new_tokens=3, do_sample=False)
    ref = reference.generate(input_ids=prompt, max_new_tokens=3, do_sample=False)
    assert torch.equal(out, ref)
