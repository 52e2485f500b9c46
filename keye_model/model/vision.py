"""KeyeViT: a SigLIP-initialised ViT at native resolution with 2D RoPE and per-image attention.

Shape legend: N = patches in the batch (all images and frames concatenated in raster order
(t, h, w)), D = hidden size, H = heads, K = head dim, S = sequences (one per image or frame),
G = rows of ``grid_thw`` (one per image/video, each ``(t, h, w)`` in patch units).

Parameter names follow SigLIP / the released Keye checkpoints (``vision_model.embeddings.*``,
``vision_model.encoder.layers.N.{layer_norm1,self_attn.{q,k,v,out}_proj,layer_norm2,mlp.{fc1,fc2}}``,
``vision_model.post_layernorm``) so released weights load without renaming.
This module runs on one device; it knows nothing of parallelism.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.activations import ACT2FN

from keye_model.model.configuration import KeyeVisionConfig

try:  # flash-attn is optional (GPU images only); elsewhere SDPA runs per group of equal-length sequences.
    from flash_attn import flash_attn_varlen_func
except ImportError:  # pragma: no cover - depends on the environment
    flash_attn_varlen_func = None


def rope_position_ids(grid_thw_G3: torch.Tensor) -> torch.Tensor:
    """Row and column id of every patch, raster order (t, h, w), repeated over t: shape (N, 2)."""
    ids = []
    for t, h, w in grid_thw_G3.tolist():
        hid = torch.arange(h).view(h, 1).expand(h, w)
        wid = torch.arange(w).view(1, w).expand(h, w)
        ids.append(
            torch.stack([hid, wid], dim=-1).reshape(1, h * w, 2).expand(t, -1, -1).reshape(-1, 2)
        )
    return torch.cat(ids, dim=0)


def rope_cos_sin(
    position_ids_N2: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """2D RoPE tables: per axis ``head_dim/4`` inverse freqs; emb = cat(hid*f, wid*f) repeated twice."""
    half = head_dim // 2  # rotary dims per axis pair: 36 of 72 at full size
    inv_freq = 1.0 / (theta ** (torch.arange(0, half, 2, dtype=torch.float32) / half))
    pos = position_ids_N2.to(torch.float32)
    emb = torch.cat([pos[:, :1] * inv_freq, pos[:, 1:] * inv_freq], dim=-1)  # (N, half)
    emb = torch.cat([emb, emb], dim=-1)  # (N, head_dim)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x_NHK: torch.Tensor, cos_NK: torch.Tensor, sin_NK: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE over the whole head dim."""
    return x_NHK * cos_NK[:, None, :] + _rotate_half(x_NHK) * sin_NK[:, None, :]


def sequence_lengths(grid_thw_G3: torch.Tensor) -> torch.Tensor:
    """Length of every attention sequence: one per image and per video frame (h*w each)."""
    t, h, w = grid_thw_G3.unbind(-1)
    return torch.repeat_interleave(h * w, t)


def varlen_attention(
    q_NHK: torch.Tensor,
    k_NHK: torch.Tensor,
    v_NHK: torch.Tensor,
    seq_lens_S: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Bidirectional attention within each sequence and never across (flash-attn varlen or SDPA)."""
    if (
        flash_attn_varlen_func is not None
        and q_NHK.is_cuda
        and q_NHK.dtype in (torch.float16, torch.bfloat16)
    ):
        cu = F.pad(seq_lens_S.cumsum(0), (1, 0)).to(device=q_NHK.device, dtype=torch.int32)
        max_len = int(seq_lens_S.max())
        return flash_attn_varlen_func(
            q_NHK, k_NHK, v_NHK, cu, cu, max_len, max_len, softmax_scale=scale
        )
    # SDPA on each group of equal-length sequences (one batch per group: video frames and
    # same-size images share one call). A block-diagonal mask over all N patches would cost
    # N^2; this costs the sum of len^2 and never attends across images.
    lengths = seq_lens_S.tolist()
    starts = [0, *torch.tensor(lengths).cumsum(0).tolist()[:-1]]
    groups: dict[int, list[int]] = {}
    for index, length in enumerate(lengths):
        groups.setdefault(length, []).append(index)
    pieces, order = [], []
    for length, members in groups.items():
        rows = torch.cat([torch.arange(starts[i], starts[i] + length) for i in members])
        rows = rows.to(q_NHK.device)

        def batched(x_NHK: torch.Tensor, n: int = len(members), r=rows, m=length) -> torch.Tensor:
            return x_NHK[r].view(n, m, *x_NHK.shape[1:]).transpose(1, 2)  # (B, H, len, K)

        out_BHLK = F.scaled_dot_product_attention(
            batched(q_NHK), batched(k_NHK), batched(v_NHK), scale=scale
        )
        pieces.append(
            out_BHLK.transpose(1, 2).reshape(-1, *out_BHLK.shape[1:2], out_BHLK.shape[-1])
        )
        order.append(rows)
    if len(pieces) == 1 and len(lengths) == 1:
        return pieces[0]
    return torch.cat(pieces)[torch.argsort(torch.cat(order))]


class KeyeVisionEmbeddings(nn.Module):
    """Patch embedding + learned absolute positions interpolated to each image's patch grid."""

    def __init__(self, config: KeyeVisionConfig):
        super().__init__()
        self.config = config
        self.patch_embedding = nn.Conv2d(
            config.num_channels,
            config.hidden_size,
            kernel_size=config.patch_size,
            stride=config.patch_size,
        )
        self.side = config.image_size // config.patch_size
        self.position_embedding = nn.Embedding(self.side * self.side, config.hidden_size)

    def interpolated_positions(self, h: int, w: int) -> torch.Tensor:
        """The (side x side) table bilinearly resized (align_corners=False) to (h, w): shape (h*w, D)."""
        table = self.position_embedding.weight.view(self.side, self.side, -1).permute(2, 0, 1)[None]
        if (h, w) != (self.side, self.side):
            table = F.interpolate(table.float(), size=(h, w), mode="bilinear", align_corners=False)
        return table[0].permute(1, 2, 0).reshape(h * w, -1).to(self.position_embedding.weight.dtype)

    def forward(self, pixel_values: torch.Tensor, grid_thw_G3: torch.Tensor) -> torch.Tensor:
        c, p = self.config.num_channels, self.config.patch_size
        weight = self.patch_embedding.weight
        patches = pixel_values.view(-1, c, p, p).to(device=weight.device, dtype=weight.dtype)
        embeds_ND = self.patch_embedding(patches).flatten(1)
        cache: dict[tuple[int, int], torch.Tensor] = {}
        positions = []
        for t, h, w in grid_thw_G3.tolist():
            if (h, w) not in cache:
                cache[(h, w)] = self.interpolated_positions(h, w)
            positions.append(cache[(h, w)].repeat(t, 1))
        return embeds_ND + torch.cat(positions, dim=0)


class KeyeVisionAttention(nn.Module):
    """Multi-head self-attention with biases, 2D RoPE, and one attention sequence per image/frame."""

    def __init__(self, config: KeyeVisionConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scale = self.head_dim**-0.5
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(
        self,
        x_ND: torch.Tensor,
        cos_sin: tuple[torch.Tensor, torch.Tensor],
        seq_lens_S: torch.Tensor,
    ):
        n = x_ND.shape[0]
        q = self.q_proj(x_ND).view(n, self.num_heads, self.head_dim)
        k = self.k_proj(x_ND).view(n, self.num_heads, self.head_dim)
        v = self.v_proj(x_ND).view(n, self.num_heads, self.head_dim)
        q, k = apply_rope(q, *cos_sin), apply_rope(k, *cos_sin)
        out = varlen_attention(q, k, v, seq_lens_S, self.scale)
        return self.out_proj(out.reshape(n, -1))


class KeyeVisionMLP(nn.Module):
    def __init__(self, config: KeyeVisionConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.act = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class KeyeVisionEncoderLayer(nn.Module):
    """Pre-LN transformer block."""

    def __init__(self, config: KeyeVisionConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = KeyeVisionAttention(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = KeyeVisionMLP(config)

    def forward(self, x_ND, cos_sin, seq_lens_S):
        x_ND = x_ND + self.self_attn(self.layer_norm1(x_ND), cos_sin, seq_lens_S)
        return x_ND + self.mlp(self.layer_norm2(x_ND))


class KeyeVisionEncoder(nn.Module):
    def __init__(self, config: KeyeVisionConfig):
        super().__init__()
        self.layers = nn.ModuleList(
            KeyeVisionEncoderLayer(config) for _ in range(config.num_hidden_layers)
        )
        self.gradient_checkpointing = False

    def forward(self, x_ND, cos_sin, seq_lens_S):
        for layer in self.layers:
            if self.gradient_checkpointing and self.training:
                x_ND = torch.utils.checkpoint.checkpoint(
                    layer, x_ND, cos_sin, seq_lens_S, use_reentrant=False
                )
            else:
                x_ND = layer(x_ND, cos_sin, seq_lens_S)
        return x_ND


class KeyeVisionTransformer(nn.Module):
    """Embeddings -> encoder (2D RoPE in every layer) -> post_layernorm."""

    def __init__(self, config: KeyeVisionConfig):
        super().__init__()
        self.config = config
        self.embeddings = KeyeVisionEmbeddings(config)
        self.encoder = KeyeVisionEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """Patches (N, 3, 14, 14) or (N, 588) plus grid_thw (G, 3) -> features (N, D)."""
        grid_thw = grid_thw.to("cpu", torch.long)
        expected = int((grid_thw[:, 0] * grid_thw[:, 1] * grid_thw[:, 2]).sum())
        if pixel_values.shape[0] != expected:
            raise ValueError(
                f"pixel_values has {pixel_values.shape[0]} patches but grid_thw describes {expected} "
                f"(sum of t*h*w over {len(grid_thw)} images/videos)"
            )
        x_ND = self.embeddings(pixel_values, grid_thw)
        head_dim = self.config.hidden_size // self.config.num_attention_heads
        cos, sin = rope_cos_sin(
            rope_position_ids(grid_thw), head_dim, self.config.rope_theta, x_ND.dtype
        )
        cos_sin = (cos.to(x_ND.device), sin.to(x_ND.device))
        x_ND = self.encoder(x_ND, cos_sin, sequence_lengths(grid_thw))
        return self.post_layernorm(x_ND)


class KeyeVisionModel(PreTrainedModel):
    """KeyeViT as a standalone transformers model (``vision_model.*`` weight names)."""

    config: KeyeVisionConfig
    config_class = KeyeVisionConfig
    main_input_name = "pixel_values"
    base_model_prefix = "vision_model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["KeyeVisionEncoderLayer"]

    def __init__(self, config: KeyeVisionConfig):
        super().__init__(config)
        self.vision_model = KeyeVisionTransformer(config)
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        return self.vision_model(pixel_values, grid_thw)
