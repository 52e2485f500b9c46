"""``keye plan``: per-GPU memory, nodes and traffic of the training stages under DeepSpeed ZeRO.

The tiny model's numbers are recomputed here by hand from its config (h=64, 4 heads, q/kv LoRA
32/16, heads 16+8/16, I=128, I_moe=32, 8 experts top-2 + 1 shared, 3 layers of which 1 dense,
vocab 2048); the 671B checks recompute the headline facts (a 256-expert layer is 11.27B params,
ZeRO-3 alone cannot hold pretrain on one 8 x 80 GB node) independently of the plan code.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import deepspeed
import pytest

from keye_model.cli import main
from keye_model.model.configuration import KeyeVLMoeConfig
from keye_model.model.params import count_parameters
from keye_model.train.config import LaunchConfig, TrainConfig
from keye_model.train.plan import (
    AUTOEP_FINDING,
    GB,
    Hardware,
    activation_bytes,
    format_plan,
    layer_activation_elems,
    make_plan,
    plan_stage,
)


def _cfg(zero: int, trainable=None, precision="bf16", micro=2, seq=16, accum=3) -> TrainConfig:
    cfg = TrainConfig(
        micro_batch_size=micro,
        seq_len=seq,
        grad_accum=accum,
        precision=precision,
        launch=dataclasses.replace(LaunchConfig(), zero_stage=zero),
    )
    if trainable is not None:
        cfg.trainable = trainable
    return cfg


@pytest.fixture(scope="module")
def tiny():
    config = KeyeVLMoeConfig.from_preset("tiny")
    return config, count_parameters(config)


@pytest.fixture(scope="module")
def big():
    config = KeyeVLMoeConfig.from_preset("keye-vl-671b-a37b")
    return config, count_parameters(config)


def test_tiny_layer_activations_by_hand(tiny):
    config, _ = tiny
    # x, norm | q down + norm | kv down (+rope) + norm | q 4x24 | kv up 4x(16+16) | k 4x24 | out 4x16
    attention = 2 * 64 + 2 * 32 + (16 + 8) + 16 + 4 * 24 + 4 * 32 + 4 * 24 + 4 * 16
    assert attention == 616
    dense = attention + 2 * 64 + 3 * 128
    # residual, norm | 8 router scores | 2 routed copies x (input, gate/up/act, output) | shared
    moe = attention + 2 * 64 + 8 + 2 * (64 + 3 * 32 + 64) + 1 * 3 * 32
    assert (
        (layer_activation_elems(config, moe=False), layer_activation_elems(config, moe=True))
        == (
            dense,
            moe,
        )
        == (1128, 1296)
    )
    tokens = 2 * 16
    logits = tokens * 2048 * (2 + 4)
    # Recompute: 3 layer inputs of 64 + the biggest layer (MoE) recomputed, plus logits.
    assert (
        activation_bytes(config, tokens, 2, recompute=True) == tokens * (3 * 64 + 1296) * 2 + logits
    )
    assert (
        activation_bytes(config, tokens, 2, recompute=False)
        == tokens * 2 * (1128 + 2 * 1296) + logits
    )
    assert activation_bytes(config, tokens, 2, recompute=True) == 488448


@pytest.mark.parametrize("zero", [0, 1, 2, 3])
@pytest.mark.parametrize("trainable", [["mlp_AR"], ["visual", "mlp_AR", "model", "lm_head"]])
def test_tiny_memory_and_traffic_match_the_zero_formulas(tiny, zero, trainable):
    config, counts = tiny
    hw = Hardware(nodes=2, gpus_per_node=4, gpu_mem_gb=1.0, link_gbps=100.0)
    plan = plan_stage("s", _cfg(zero, trainable), config, counts, hw)
    n, f, a = 8, 7 / 8, 3
    p = counts.total
    lm_head = 2048 * 64
    parts = {
        "visual": counts.vision,
        "mlp_AR": counts.projector,
        "model": counts.text - lm_head,
        "lm_head": lm_head,
    }
    t = sum(parts[m] for m in trainable)
    assert plan.total_params == p and plan.trainable_params == t
    # bf16: 2-byte weights and grads, 12-byte optimizer state (fp32 master + m + v).
    assert plan.weights == (p * 2 if zero < 3 else p * 2 // n)
    assert plan.gradients == (t * 2 if zero < 2 else t * 2 // n)
    assert plan.optimizer == (t * 12 if zero < 1 else t * 12 // n)
    # ZeRO-3's largest gather in tiny is the 2048 x 64 embedding/lm_head table (a MoE block is
    # 49152 routed + 6144 shared + 512 router = 55808 < 131072); its gradient counts if it trains.
    table_trains = "model" in trainable
    assert plan.gathered == (0 if zero < 3 else lm_head * 2 + (lm_head * 2 if table_trains else 0))
    expected_comm = {
        0: 2 * f * t * 2,
        1: f * t * (2 + 2),
        2: f * t * (a * 2 + 2),
        # Forward gathers all P; backward from mlp_AR on (or from visual when it trains).
        3: a * f * ((p + (p if "visual" in trainable else p - counts.vision)) * 2 + t * 2),
    }[zero]
    assert plan.comm_bytes == int(expected_comm)
    assert plan.comm_seconds == pytest.approx(expected_comm / (100 / 8 * 1e9))


def test_nodes_needed_is_the_smallest_count_that_fits(tiny):
    config, counts = tiny
    for zero in (1, 2, 3):
        cfg = _cfg(zero, precision="fp32", micro=1, seq=8, accum=1)
        # A GPU so small that the sharded states decide: a few nodes of 2 GPUs are needed.
        probe = plan_stage("s", cfg, config, counts, Hardware(1, 2, 1e-9))
        mem_gb = (probe.total - probe.sharded // 2 + probe.sharded // 7) / GB
        needed = plan_stage("s", cfg, config, counts, Hardware(1, 2, mem_gb)).nodes_needed
        assert needed and needed > 1
        assert plan_stage("s", cfg, config, counts, Hardware(needed, 2, mem_gb)).fits
        assert not plan_stage("s", cfg, config, counts, Hardware(needed - 1, 2, mem_gb)).fits


def test_bad_stage_settings_name_the_field(tiny):
    config, counts = tiny
    hw = Hardware(1)
    with pytest.raises(ValueError, match=r"pretrain.launch.zero_stage"):
        plan_stage("pretrain", _cfg(4), config, counts, hw)
    with pytest.raises(ValueError, match=r"align.trainable"):
        plan_stage("align", _cfg(2, ["projector"]), config, counts, hw)
    with pytest.raises(ValueError, match=r"sft.micro_batch_size"):
        plan_stage("sft", _cfg(2, micro=0), config, counts, hw)
    with pytest.raises(ValueError, match=r"precision"):
        plan_stage("sft", _cfg(2, precision="fp16"), config, counts, hw)


def test_671b_zero3_alone_does_not_fit_one_node(big):
    config, counts = big
    # 256 experts x (gate, up, down) of 7168 x 2048 per MoE layer, 58 MoE layers.
    per_layer = 256 * 3 * 7168 * 2048
    assert per_layer == 11_274_289_152 and counts.routed_experts == 58 * per_layer
    assert per_layer * 2 / GB == pytest.approx(22.55, abs=0.01)

    pretrain = _cfg(3, precision="bf16", micro=1, seq=4096, accum=1)
    one_node = Hardware(1, 8, 80.0)
    plan = plan_stage("pretrain", pretrain, config, counts, one_node)
    # Independent of activations: bf16 weights alone, sharded 8 ways, exceed 80 GB...
    assert counts.total * 2 / 8 > 80 * GB
    # ...and so do the sharded weights + grads + Adam (16 bytes per parameter).
    assert counts.total * 16 / 8 / GB == pytest.approx(1343, abs=1)
    assert not plan.fits and plan.total > counts.total * 16 / 8
    # The whole MoE block (experts + shared expert + router) is gathered, with its gradient.
    block = per_layer + 3 * 7168 * 2048 + 256 * 7168
    assert plan.gathered == block * 2 * 2
    # Nodes: the smallest count that fits, and the one below does not.
    needed = plan.nodes_needed
    assert needed is not None and needed > 1
    assert plan_stage("pretrain", pretrain, config, counts, Hardware(needed, 8, 80.0)).fits
    assert not plan_stage("pretrain", pretrain, config, counts, Hardware(needed - 1, 8, 80.0)).fits
    # ZeRO-2 replicates 1.34 TB of bf16 weights on every GPU: never fits.
    zero2 = plan_stage("pretrain", _cfg(2, micro=1, seq=4096), config, counts, one_node)
    assert zero2.weights == counts.total * 2 and zero2.nodes_needed is None

    text = format_plan(make_plan({"pretrain": pretrain}, config, one_node, "671b", counts=counts))
    assert "pretrain: ZeRO-3 alone on one 8 x 80 GB node" in text and "does NOT fit" in text
    assert "gathers ALL 256 experts" in text and "11.27B params = 22.5 GB in bf16" in text
    assert "Expert parallelism over 8 ranks" in text and "32 expert(s) per layer" in text
    assert "supports_expert_bias=False" in text


def test_autoep_finding_matches_the_installed_deepspeed():
    """The cited lines say what the plan says, and the config parser really rejects the bias."""
    from deepspeed.module_inject.auto_ep_config import parse_autoep_config
    from deepspeed.module_inject.auto_ep_presets.registry import get_preset

    assert deepspeed.__version__ == "0.19.8"
    root = Path(deepspeed.__file__).parent

    def line(path: str, number: int) -> str:
        return (root / path).read_text().splitlines()[number - 1]

    assert "supports_expert_bias=False" in line("module_inject/auto_ep_presets/deepseek_v3.py", 32)
    assert '"load_balance_coeff": None' in line("module_inject/auto_ep_presets/deepseek_v3.py", 31)
    assert "not currently supported" in line("module_inject/auto_ep_presets/deepseek_v3.py", 38)
    assert "_raise_unsupported_load_balance_coeff" in line("module_inject/auto_ep_config.py", 76)
    assert "does not support load_balance_coeff" in line("module_inject/auto_ep_layer.py", 576)
    assert "_copy_e_score_correction_bias" in line("module_inject/auto_ep_layer.py", 608)
    assert "tokens_per_expert.add_" in line("module_inject/auto_ep_layer.py", 982)
    assert "e_score_correction_bias" in line("moe/ep_router.py", 168)
    for cited in ("deepseek_v3.py:31-32", "auto_ep_layer.py:575-577", "auto_ep_layer.py:982"):
        assert cited in AUTOEP_FINDING

    assert get_preset("deepseek_v3").supports_expert_bias is False
    with pytest.raises(ValueError, match="load_balance_coeff"):
        parse_autoep_config(
            {"enabled": True, "preset_model": "deepseek_v3", "load_balance_coeff": 1e-3}
        )
    # Nothing else in the package reads the load counts that a bias update would need.
    readers = [
        p for p in root.rglob("*.py") if "self.tokens_per_expert" in p.read_text(errors="replace")
    ]
    assert [p.relative_to(root).as_posix() for p in readers] == ["module_inject/auto_ep_layer.py"]
    uses = [
        ln
        for ln in (root / "module_inject/auto_ep_layer.py").read_text().splitlines()
        if "self.tokens_per_expert" in ln
    ]
    assert len(uses) == 1 and ".add_(" in uses[0]


def test_keye_plan_cli_prints_every_stage(capsys):
    assert main(["plan", "--preset", "keye-vl-671b-a37b", "--nodes", "64"]) == 0
    out = capsys.readouterr().out
    for stage in ("align", "pretrain", "anneal", "sft"):
        assert any(row.startswith(stage) for row in out.splitlines())
    assert "64 node(s) x 8 GPU x 80 GB" in out
    assert "ZeRO-3 alone on one 8 x 80 GB node" in out
    assert main(["plan", "--preset", "tiny", "--nodes", "1", "--gpu-mem-gb", "16"]) == 0
    tiny_rows = capsys.readouterr().out.splitlines()
    assert "1 node(s) x 8 GPU x 16 GB" in tiny_rows[0]
    for stage in ("align", "pretrain", "anneal", "sft"):
        (row,) = [r for r in tiny_rows if r.startswith(stage)]
        assert row.split()[-4] == "yes"  # the tiny model fits one GPU under any ZeRO stage


def test_keye_plan_cli_rejects_bad_input(capsys):
    assert main(["plan", "--preset", "tiny", "--nodes", "0"]) == 2
    assert "nodes" in capsys.readouterr().err
