"""Attention over packed rows without flash-attn: causal SDPA on each sample's own segment.

transformers turns restarting position ids into a dense block-diagonal causal mask for SDPA,
which costs (row length)^2 per row; running SDPA per segment costs the sum of the squared sample
lengths and needs no mask at all. Registered with transformers' ``AttentionInterface`` and set on
the LM by the training loop (model code stays unaware); on GPUs with flash-attn, its varlen
kernel does the same job and is used instead.

Shapes (transformers' attention interface): query/key (B, H, L, Dk), value (B, H, L, Dv) in,
(B, L, H, Dv) out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NAME = "keye_packed_sdpa"


def segments(positions_L: torch.Tensor) -> list[tuple[int, int]]:
    """[start, end) of each sample in a packed row: a new sample starts where positions do not step by 1."""
    breaks = torch.nonzero(positions_L[1:] != positions_L[:-1] + 1).flatten() + 1
    bounds = [0, *breaks.tolist(), positions_L.numel()]
    return list(zip(bounds[:-1], bounds[1:]))


def packed_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """Causal attention within each packed sample; plain SDPA when decoding with a cache."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    position_ids = kwargs.get("position_ids")
    if position_ids is None or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    positions = position_ids.expand(query.shape[0], -1)
    rows = []
    for b in range(query.shape[0]):
        pieces = [
            F.scaled_dot_product_attention(
                query[b : b + 1, :, s:e],
                key[b : b + 1, :, s:e],
                value[b : b + 1, :, s:e],
                is_causal=True,
                dropout_p=dropout if module.training else 0.0,
                scale=scaling,
            )
            for s, e in segments(positions[b])
        ]
        rows.append(torch.cat(pieces, dim=2))
    return torch.cat(rows).transpose(1, 2).contiguous(), None


def _no_mask(*args, **kwargs):
    return None  # segments replace the mask


def use_packed_attention(model) -> str:
    """Make the LM attend per packed sample; returns the implementation now in use."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    current = model.config.text_config._attn_implementation
    if current and current.startswith("flash_attention"):
        return current  # varlen kernels already keep samples apart
    AttentionInterface.register(NAME, packed_sdpa)
    AttentionMaskInterface.register(NAME, _no_mask)
    model.model.set_attn_implementation(NAME)
    return NAME
