"""Keye-VL model: published 671B shapes, tiny training/generation, ViT and projector formulas."""

from __future__ import annotations

import einops
import pytest
import torch
import torch.nn.functional as F

from keye_model import KeyeVLMoeConfig, KeyeVLMoeForConditionalGeneration
from keye_model.model.params import count_parameters
from keye_model.model.projector import merge_2x2
from keye_model.model.vision import rope_cos_sin, rope_position_ids

B = 1e9


@pytest.fixture(scope="module")
def tiny_config():
    return KeyeVLMoeConfig.from_preset("tiny")


def make_model(config, seed=0):
    torch.manual_seed(seed)
    return KeyeVLMoeForConditionalGeneration(config).eval()


def image_prompt(config, grid, text_ids=(20, 21, 22)):
    """input_ids with one image placeholder expanded to t*h*w/4 pads, plus its patches."""
    t, h, w = grid
    pads = [config.image_token_id] * (t * h * w // 4)
    ids = [config.vision_start_token_id, *pads, config.vision_end_token_id, *text_ids]
    pixels = torch.randn(t * h * w, 3, 14, 14)
    return torch.tensor([ids]), pixels, torch.tensor([grid])


def test_671b_preset_matches_published_parameter_counts():
    counts = count_parameters(KeyeVLMoeConfig.from_preset("keye-vl-671b-a37b"))
    print("\n671B preset:", counts.summary())
    # Published: 671B total / 37B active for DeepSeek-V3 without the MTP module (which adds ~11.5B).
    assert abs(counts.total / (671 * B) - 1) < 0.015
    assert abs(counts.active / (37 * B) - 1) < 0.015
    assert 11 * B < counts.mtp_layer < 12 * B
    assert 0.38 * B < counts.vision < 0.43 * B  # SigLIP-so400m vision tower
    assert abs(counts.projector - 54_284_800) == 0  # LN(4608) + 4608x4608 + 4608x7168 with biases


def test_671b_text_config_is_deepseek_v3():
    text = KeyeVLMoeConfig.from_preset("keye-vl-671b-a37b").text_config
    assert (
        text.vocab_size,
        text.hidden_size,
        text.intermediate_size,
        text.moe_intermediate_size,
    ) == (129280, 7168, 18432, 2048)
    assert (text.num_hidden_layers, text.first_k_dense_replace, text.num_attention_heads) == (
        61,
        3,
        128,
    )
    assert (
        text.q_lora_rank,
        text.kv_lora_rank,
        text.qk_nope_head_dim,
        text.qk_rope_head_dim,
        text.v_head_dim,
    ) == (1536, 512, 128, 64, 128)
    assert (text.n_routed_experts, text.num_experts_per_tok, text.n_shared_experts) == (256, 8, 1)
    assert (text.n_group, text.topk_group, text.routed_scaling_factor) == (8, 4, 2.5)
    assert text.max_position_embeddings == 163840
    assert text.rope_parameters["rope_type"] == "yarn" and text.rope_parameters["factor"] == 40


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match="keye-vl-671b-a37b"):
        KeyeVLMoeConfig.from_preset("huge")


def test_rope_position_ids_for_a_3x5_grid():
    ids = rope_position_ids(torch.tensor([[1, 3, 5]]))
    assert ids[:, 0].tolist() == [0] * 5 + [1] * 5 + [2] * 5
    assert ids[:, 1].tolist() == [0, 1, 2, 3, 4] * 3
    # Video: the same (h, w) ids repeat for each of t frames.
    video = rope_position_ids(torch.tensor([[2, 3, 5]]))
    assert torch.equal(video[:15], video[15:])


def test_rope_frequencies_follow_reference_formula():
    # Full size: head_dim 72, 18 inverse frequencies 1/theta^(arange(0,36,2)/36) per axis.
    cos, sin = rope_cos_sin(torch.tensor([[2, 3]]), head_dim=72, theta=10000.0, dtype=torch.float64)
    inv = 1.0 / (10000.0 ** (torch.arange(0, 36, 2, dtype=torch.float64) / 36))
    emb = torch.cat([2 * inv, 3 * inv])
    torch.testing.assert_close(cos[0], torch.cat([emb, emb]).cos(), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(sin[0], torch.cat([emb, emb]).sin(), atol=1e-6, rtol=1e-6)


def test_position_table_bilinear_interpolation_non_square(tiny_config):
    model = make_model(tiny_config)
    emb = model.visual.vision_model.embeddings
    side = emb.side
    # A table linear in (row, col): bilinear interpolation reproduces it at clamped source coords.
    i, j = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    value = (10 * i + j).float().reshape(-1, 1).expand(-1, emb.position_embedding.weight.shape[1])
    with torch.no_grad():
        emb.position_embedding.weight.copy_(value)
    h, w = 3, 7
    out = emb.interpolated_positions(h, w)[:, 0].view(h, w)
    src_y = ((torch.arange(h) + 0.5) * side / h - 0.5).clamp(0, side - 1)
    src_x = ((torch.arange(w) + 0.5) * side / w - 0.5).clamp(0, side - 1)
    torch.testing.assert_close(out, 10 * src_y[:, None] + src_x[None, :], atol=1e-4, rtol=0)
    # Same size as the table: no interpolation at all.
    torch.testing.assert_close(
        emb.interpolated_positions(side, side), emb.position_embedding.weight
    )


def test_two_images_batched_equal_each_alone(tiny_config):
    model = make_model(tiny_config)
    torch.manual_seed(1)
    a, b = torch.randn(4 * 6, 3, 14, 14), torch.randn(2 * 8, 3, 14, 14)
    ga, gb = torch.tensor([[1, 4, 6]]), torch.tensor([[1, 2, 8]])
    with torch.no_grad():
        both = model.visual(torch.cat([a, b]), torch.cat([ga, gb]))
        alone = torch.cat([model.visual(a, ga), model.visual(b, gb)])
    torch.testing.assert_close(both, alone, atol=1e-5, rtol=1e-5)


def test_projector_merges_2x2_groups_in_raster_order():
    t, h, w, d = 2, 4, 6, 3
    x = torch.arange(t * h * w * d, dtype=torch.float32).view(-1, d)
    expected = einops.rearrange(
        x, "(t h p1 w p2) d -> (t h w) (p1 p2 d)", t=t, h=h // 2, p1=2, w=w // 2, p2=2
    )
    torch.testing.assert_close(merge_2x2(x, torch.tensor([[t, h, w]])), expected)


def test_projector_shapes_and_671b_names():
    config = KeyeVLMoeConfig.from_preset("keye-vl-671b-a37b")
    with torch.device("meta"):
        model = KeyeVLMoeForConditionalGeneration(config)
    names = {n for n, _ in model.named_parameters()}
    for name in (
        "mlp_AR.pre_norm.weight",
        "mlp_AR.linear_1.weight",
        "mlp_AR.linear_2.weight",
        "visual.vision_model.embeddings.patch_embedding.weight",
        "visual.vision_model.encoder.layers.26.self_attn.q_proj.bias",
        "visual.vision_model.encoder.layers.0.mlp.fc2.weight",
        "visual.vision_model.post_layernorm.weight",
        "model.embed_tokens.weight",
        "model.layers.60.mlp.experts.gate_up_proj",
        "model.norm.weight",
        "lm_head.weight",
    ):
        assert name in names, name
    assert model.mlp_AR.linear_1.weight.shape == (4608, 4608)
    assert model.mlp_AR.linear_2.weight.shape == (7168, 4608)


def test_splice_count_mismatch_is_a_clear_error(tiny_config):
    model = make_model(tiny_config)
    ids, pixels, grid = image_prompt(tiny_config, (1, 4, 4))
    ids = torch.cat([ids[:, :1], ids[:, 2:]], dim=1)  # one image pad token fewer than features
    with pytest.raises(ValueError, match=r"3 image pad tokens but the images give 4 features"):
        model(input_ids=ids, pixel_values=pixels, image_grid_thw=grid)


def test_tiny_loss_falls_and_all_trainable_parameters_get_gradients(tiny_config):
    model = make_model(tiny_config).train()
    ids, pixels, grid = image_prompt(tiny_config, (1, 4, 6), text_ids=tuple(range(30, 46)))
    labels = ids.clone()
    labels[ids == tiny_config.image_token_id] = -100
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(20):
        loss = model(input_ids=ids, pixel_values=pixels, image_grid_thw=grid, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        if step == 0:
            no_grad = [
                n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()
            ]
            # Routed experts that no token picked get no gradient; everything else must.
            assert all(".mlp.experts." in n for n in no_grad), no_grad
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_generate_with_an_image_returns_tokens(tiny_config):
    model = make_model(tiny_config)
    ids, pixels, grid = image_prompt(tiny_config, (1, 4, 4))
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        pixel_values=pixels,
        image_grid_thw=grid,
        max_new_tokens=6,
        do_sample=False,
    )
    assert out.shape == (1, ids.shape[1] + 6)
    assert torch.equal(out[:, : ids.shape[1]], ids)


def test_left_padded_batch_generates_like_single_prompts(tiny_config):
    model = make_model(tiny_config)
    pad = tiny_config.text_config.pad_token_id
    short, long_ = torch.tensor([[40, 41, 42]]), torch.tensor([[50, 51, 52, 53, 54, 55]])
    batch = torch.tensor([[pad] * 3 + short[0].tolist(), long_[0].tolist()])
    mask = torch.tensor([[0] * 3 + [1] * 3, [1] * 6])
    kwargs = dict(max_new_tokens=5, do_sample=False, pad_token_id=pad)
    together = model.generate(input_ids=batch, attention_mask=mask, **kwargs)[:, 6:]
    alone = [
        model.generate(input_ids=p, attention_mask=torch.ones_like(p), **kwargs)[:, p.shape[1] :]
        for p in (short, long_)
    ]
    assert torch.equal(together[0], alone[0][0]) and torch.equal(together[1], alone[1][0])


def test_save_load_round_trip_gives_identical_logits(tiny_config, tmp_path):
    from transformers import AutoModelForImageTextToText

    model = make_model(tiny_config)
    ids, pixels, grid = image_prompt(tiny_config, (1, 4, 6))
    model.save_pretrained(tmp_path / "m")
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "m").eval()
    assert isinstance(loaded, KeyeVLMoeForConditionalGeneration)
    with torch.no_grad():
        a = model(input_ids=ids, pixel_values=pixels, image_grid_thw=grid).logits
        b = loaded(input_ids=ids, pixel_values=pixels, image_grid_thw=grid).logits
    assert torch.equal(a, b)


def test_varlen_attention_masks_across_images():
    from keye_model.model.vision import varlen_attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(7, 2, 8) for _ in range(3))
    out = varlen_attention(q, k, v, torch.tensor([3, 4]), scale=8**-0.5)
    ref = torch.cat(
        [
            F.scaled_dot_product_attention(
                q[s].transpose(0, 1), k[s].transpose(0, 1), v[s].transpose(0, 1)
            ).transpose(0, 1)
            for s in (slice(0, 3), slice(3, 7))
        ]
    )
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)


def test_images_with_inputs_embeds_are_refused(tiny_config):
    model = make_model(tiny_config)
    ids, pixels, grid = image_prompt(tiny_config, (1, 4, 4))
    embeds = model.get_input_embeddings()(ids)
    with pytest.raises(ValueError, match="not inputs_embeds"):
        model(inputs_embeds=embeds, pixel_values=pixels, image_grid_thw=grid)
