"""The ``mlp_AR`` projector: 2x2 patch merge, LayerNorm, two linears with exact GELU (REFERENCE §1.2)."""

from __future__ import annotations

import torch
from torch import nn


def merge_2x2(features_ND: torch.Tensor, grid_thw_G3: torch.Tensor, merge: int = 2) -> torch.Tensor:
    """``(t h p1 w p2) d -> (t h w) (p1 p2 d)`` per image: (N, D) -> (N / merge^2, merge^2 * D)."""
    out, start = [], 0
    d = features_ND.shape[-1]
    for t, h, w in grid_thw_G3.tolist():
        if h % merge or w % merge:
            raise ValueError(f"patch grid {h}x{w} is not divisible by the merge size {merge}")
        n = t * h * w
        x = features_ND[start : start + n].view(t, h // merge, merge, w // merge, merge, d)
        out.append(x.permute(0, 1, 3, 2, 4, 5).reshape(-1, merge * merge * d))
        start += n
    return torch.cat(out, dim=0)


class KeyeProjector(nn.Module):
    """Maps merged ViT features (N/4, 4*D_vit) to LM embeddings (N/4, D_text)."""

    def __init__(self, vision_hidden: int, text_hidden: int, merge: int = 2, eps: float = 1e-5):
        super().__init__()
        self.merge = merge
        merged = vision_hidden * merge * merge
        self.pre_norm = nn.LayerNorm(merged, eps=eps)
        self.linear_1 = nn.Linear(merged, merged)
        self.act = nn.GELU()  # exact (erf) GELU, as in the released projector
        self.linear_2 = nn.Linear(merged, text_hidden)

    def forward(self, features_ND: torch.Tensor, grid_thw_G3: torch.Tensor) -> torch.Tensor:
        x = merge_2x2(features_ND, grid_thw_G3.to("cpu", torch.long), self.merge)
        return self.linear_2(self.act(self.linear_1(self.pre_norm(x))))
