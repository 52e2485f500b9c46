"""`keye init`: assemble from a SigLIP/KeyeViT checkpoint and a (FP8) DeepSeek-V3 checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModelForImageTextToText,
    DeepseekV3ForCausalLM,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from keye_model import KeyeVLMoeConfig, KeyeVLMoeForConditionalGeneration
from keye_model.cli import main
from keye_model.model.assembly import FP8_BLOCK, assemble, dequantize_fp8_blockwise


@pytest.fixture(scope="module")
def config():
    return KeyeVLMoeConfig.from_preset("tiny")


def write_siglip(path, config):
    """A tiny SigLIP vision tower with the tiny preset's shapes (random weights)."""
    v = config.vision_config
    torch.manual_seed(1)
    siglip = SiglipVisionModel(
        SiglipVisionConfig(
            hidden_size=v.hidden_size,
            intermediate_size=v.intermediate_size,
            num_hidden_layers=v.num_hidden_layers,
            num_attention_heads=v.num_attention_heads,
            image_size=v.image_size,
            patch_size=v.patch_size,
            vision_use_head=True,  # a pooling head that assembly must drop
        )
    )
    siglip.save_pretrained(path)
    return siglip


def write_deepseek(path, config, fp8: bool):
    """A tiny DeepSeek-V3 LM checkpoint; with fp8, 2-D weights become e4m3 + 128x128 block scales."""
    torch.manual_seed(2)
    lm = DeepseekV3ForCausalLM(config.text_config)
    lm.save_pretrained(path)
    shard = path / "model.safetensors"
    tensors = load_file(shard)
    originals = {}
    if fp8:
        for name in list(tensors):
            t = tensors[name]
            if t.ndim == 2 and name.endswith("proj.weight") and "experts" not in name:
                rows, cols = t.shape
                scale = torch.rand(-(-rows // FP8_BLOCK), -(-cols // FP8_BLOCK)) * 0.01 + 0.001
                full = scale.repeat_interleave(FP8_BLOCK, 0)[:rows].repeat_interleave(FP8_BLOCK, 1)[
                    :, :cols
                ]
                tensors[name] = (t / full).to(torch.float8_e4m3fn)
                tensors[name + "_scale_inv"] = scale
                originals[name] = t
    # An MTP layer after the main stack, as in DeepSeek's HF checkpoints: assembly must drop it.
    hidden, mtp = config.text_config.hidden_size, config.text_config.num_hidden_layers
    tensors[f"model.layers.{mtp}.eh_proj.weight"] = torch.randn(hidden, 2 * hidden)
    save_file(tensors, shard, metadata={"format": "pt"})
    return lm, originals


def test_fp8_block_dequantisation_formula():
    w = torch.tensor([[1.0, -2.0, 0.5], [4.0, 0.25, -1.0]]).to(torch.float8_e4m3fn)
    scale = torch.tensor([[3.0, 5.0]])  # blocks of 2 columns: cols 0-1 x3, col 2 x5
    out = dequantize_fp8_blockwise(w, scale, block=2)
    # 0.25 * 3 and -2 * 3 etc.: block (i//2, j//2) scale applied elementwise.
    assert out.tolist() == [[3.0, -6.0, 2.5], [12.0, 0.75, -5.0]]
    with pytest.raises(ValueError, match=r"expected \(1, 2\)"):
        dequantize_fp8_blockwise(w, torch.ones(2, 2), block=2)


def test_assembles_siglip_and_deepseek_into_keye(tmp_path, config):
    siglip = write_siglip(tmp_path / "siglip", config)
    lm, _ = write_deepseek(tmp_path / "ds", config, fp8=False)
    out = tmp_path / "keye"
    assert (
        main(
            [
                "init",
                "--preset",
                "tiny",
                "--output",
                str(out),
                "--vision",
                str(tmp_path / "siglip"),
                "--lm",
                str(tmp_path / "ds"),
            ]
        )
        == 0
    )

    model, info = AutoModelForImageTextToText.from_pretrained(out, output_loading_info=True)
    assert isinstance(model, KeyeVLMoeForConditionalGeneration)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    # Vision weights are SigLIP's, byte for byte (the pooling head was dropped).
    ours = model.visual.state_dict()
    theirs = {
        "vision_model." + k: v for k, v in siglip.state_dict().items() if not k.startswith("head.")
    }
    assert set(ours) == set(theirs)
    for name, tensor in ours.items():
        assert torch.equal(tensor, theirs[name]), name
    # The language model is DeepSeek's: text-only logits are identical.
    ids = torch.tensor([[11, 12, 13, 14, 15]])
    with torch.no_grad():
        torch.testing.assert_close(
            model.eval()(input_ids=ids).logits, lm.eval()(input_ids=ids).logits
        )
    # Stored in the released names: per-expert DeepSeek keys, visual.vision_model.*, mlp_AR.*; no MTP.
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "model.layers.1.mlp.experts.0.gate_proj.weight" in keys
    assert "visual.vision_model.encoder.layers.0.self_attn.q_proj.weight" in keys
    assert {"mlp_AR.pre_norm.weight", "mlp_AR.linear_1.weight", "mlp_AR.linear_2.weight"} <= keys
    assert not any(
        k.startswith(f"model.layers.{config.text_config.num_hidden_layers}.") for k in keys
    )
    assert json.loads((out / "config.json").read_text())["architectures"] == [
        "KeyeVLMoeForConditionalGeneration"
    ]


def test_fp8_deepseek_checkpoint_is_dequantised(tmp_path, config):
    _, originals = write_deepseek(tmp_path / "ds8", config, fp8=True)
    out = tmp_path / "keye8"
    assemble("tiny", out, lm=tmp_path / "ds8", shard_bytes=200_000)
    assert (out / "model.safetensors.index.json").exists()  # several shards + index
    model = AutoModelForImageTextToText.from_pretrained(out)
    params = dict(model.named_parameters())
    assert originals
    for name, original in originals.items():
        restored = params[name].float()
        # e4m3 keeps 3 mantissa bits: relative error per element is at most 2^-4 (+ tiny-value slack).
        assert torch.all((restored - original).abs() <= original.abs() * 2**-4 + 1e-3), name
    index = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    name = next(iter(originals))
    with safe_open(str(out / index[name]), "pt") as f:
        assert f.get_tensor(name).dtype == torch.bfloat16  # dequantised FP8 is stored as bf16


def test_keyevit_names_load_and_wrong_shapes_are_named(tmp_path, config):
    # A Keye-VL-1.5 style checkpoint: visual.vision_model.* beside LM weights we must ignore.
    model = KeyeVLMoeForConditionalGeneration(config)
    tensors = {f"visual.{k}": v for k, v in model.visual.state_dict().items()}
    tensors["visual.vision_model.embeddings.packing_position_embedding.weight"] = torch.zeros(8, 64)
    tensors["model.embed_tokens.weight"] = torch.zeros(4, 4)
    (tmp_path / "keye15").mkdir()
    save_file(tensors, tmp_path / "keye15" / "model.safetensors")
    assemble("tiny", tmp_path / "out", vision=tmp_path / "keye15")
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "out")
    for name, tensor in model.visual.state_dict().items():
        assert torch.equal(loaded.visual.state_dict()[name], tensor)

    bad = dict(tensors)
    bad["visual.vision_model.post_layernorm.weight"] = torch.ones(65)
    (tmp_path / "bad").mkdir()
    save_file(bad, tmp_path / "bad" / "model.safetensors")
    write_deepseek(tmp_path / "ds", config, fp8=False)
    with pytest.raises(ValueError, match=r"post_layernorm.weight has shape \(65,\)"):
        assemble("tiny", tmp_path / "out2", vision=tmp_path / "bad", lm=tmp_path / "ds")


def test_bad_inputs_fail_early_with_clear_errors(tmp_path, capsys):
    assert main(["init", "--output", str(tmp_path / "x"), "--lm", str(tmp_path / "missing")]) == 2
    assert "--lm" in capsys.readouterr().err
    with pytest.raises(ValueError, match="pass --lm"):
        assemble("keye-vl-671b-a37b", tmp_path / "big")


def test_model_directory_carries_a_matching_processor(tmp_path, config):
    from keye_model.processing import KeyeProcessor

    out = tmp_path / "tiny"
    assert main(["init", "--preset", "tiny", "--output", str(out)]) == 0
    processor = KeyeProcessor.from_pretrained(out)
    saved = KeyeVLMoeConfig.from_pretrained(out)
    assert saved.image_token_id == processor.image_token_id == config.image_token_id
    assert saved.fast_video_token_id == processor.fast_video_token_id


def test_lm_tokenizer_without_vision_tokens_gets_them_added(tmp_path, config):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from keye_model.processing import KeyeProcessor

    write_deepseek(tmp_path / "ds", config, fp8=False)
    vocab = {chr(c): i for i, c in enumerate(range(97, 123))}  # a..z only: no Keye tokens
    raw = Tokenizer(models.WordLevel(vocab, unk_token="a"))
    raw.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="a").save_pretrained(tmp_path / "ds")
    assemble("tiny", tmp_path / "out", lm=tmp_path / "ds")
    processor = KeyeProcessor.from_pretrained(tmp_path / "out")
    saved = KeyeVLMoeConfig.from_pretrained(tmp_path / "out")
    assert saved.image_token_id == processor.image_token_id >= len(vocab)
    assert saved.video_token_id == processor.video_token_id != saved.image_token_id


def test_incomplete_or_mismatched_lm_checkpoints_are_refused(tmp_path, config):
    write_deepseek(tmp_path / "ds", config, fp8=False)
    shard = tmp_path / "ds" / "model.safetensors"
    tensors = load_file(shard)
    del tensors["model.layers.2.mlp.experts.3.down_proj.weight"]  # as if a shard were missing
    save_file(tensors, shard, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"1 tensors missing .*experts\.3\.down_proj"):
        assemble("tiny", tmp_path / "out", lm=tmp_path / "ds")

    write_deepseek(tmp_path / "ds2", config, fp8=False)
    cfg = json.loads((tmp_path / "ds2" / "config.json").read_text())
    cfg["n_group"] = 4
    (tmp_path / "ds2" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"n_group=4 but the preset's text_config.n_group=2"):
        assemble("tiny", tmp_path / "out2", lm=tmp_path / "ds2")
