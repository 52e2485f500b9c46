"""Training throughput of the Keye-VL LM with each expert kernel transformers offers.

Measures tokens/s of full training steps (forward, backward, AdamW) for the ``tiny`` preset and a
~100M-parameter proxy (same structure: MLA attention, 1 dense + N MoE layers with a shared expert),
with the experts implementation set to ``eager`` (a Python loop over experts, the baseline),
``grouped_mm`` (one grouped GEMM over all experts) and ``batched_mm``. Images ride along in every
batch so the ViT and projector are part of the step. Prints a ratio to eager measured in this run.

    .venv/bin/python benchmarks/bench_model.py            # CPU
    .venv/bin/python benchmarks/bench_model.py --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import time

import torch

from keye_model import KeyeVLMoeConfig, KeyeVLMoeForConditionalGeneration

IMPLEMENTATIONS = ("eager", "grouped_mm", "batched_mm")


def proxy_100m() -> KeyeVLMoeConfig:
    """~100M parameters: the tiny structure at width 512 with 16 experts."""
    config = KeyeVLMoeConfig.from_preset("tiny")
    text = config.text_config
    text.hidden_size, text.intermediate_size, text.moe_intermediate_size = 512, 1536, 512
    text.num_hidden_layers, text.first_k_dense_replace = 8, 1
    text.num_attention_heads = text.num_key_value_heads = 8
    text.q_lora_rank, text.kv_lora_rank = 256, 128
    text.qk_nope_head_dim, text.qk_rope_head_dim, text.v_head_dim = 32, 16, 32
    text.n_routed_experts, text.num_experts_per_tok, text.n_group, text.topk_group = 16, 4, 4, 2
    text.head_dim, text.qk_head_dim = (
        text.qk_rope_head_dim,
        text.qk_nope_head_dim + text.qk_rope_head_dim,
    )
    return config


BATCHED_MM_LIMIT = 2 * 1024**3


def batched_mm_bytes(config: KeyeVLMoeConfig, tokens: int, dtype) -> int:
    """Memory batched_mm needs for one layer: a copy of the chosen experts' weights per token."""
    text = config.text_config
    per_copy = 3 * text.hidden_size * text.moe_intermediate_size
    return tokens * text.num_experts_per_tok * per_copy * torch.finfo(dtype).bits // 8


def make_batch(config: KeyeVLMoeConfig, batch: int, seq: int, device: str):
    """Token ids with one 8x8-patch image (16 pad tokens) per row, plus its patches."""
    grid = (1, 8, 8)
    pads = grid[1] * grid[2] // 4
    text = torch.randint(20, config.text_config.vocab_size, (batch, seq - pads - 2))
    vis = torch.tensor(
        [config.vision_start_token_id]
        + [config.image_token_id] * pads
        + [config.vision_end_token_id]
    )
    ids = torch.cat([vis.expand(batch, -1), text], dim=1).to(device)
    pixels = torch.randn(batch * grid[1] * grid[2], 3, 14, 14, device=device)
    return ids, pixels, torch.tensor([grid] * batch, device=device)


def tokens_per_second(
    config, impl: str, batch: int, seq: int, steps: int, device: str, dtype
) -> float:
    torch.manual_seed(0)
    model = KeyeVLMoeForConditionalGeneration(config).to(device=device, dtype=dtype).train()
    model.set_experts_implementation(impl)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids, pixels, grid = make_batch(config, batch, seq, device)
    pixels = pixels.to(dtype)

    def step():
        loss = model(input_ids=ids, pixel_values=pixels, image_grid_thw=grid, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up (allocations, lazy init)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return batch * seq * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    torch.set_num_threads(torch.get_num_threads())
    scale = 8 if args.device == "cuda" else 1
    models = {
        "tiny": (KeyeVLMoeConfig.from_preset("tiny"), 4 * scale, 256),
        "proxy-100m": (proxy_100m(), 1 * scale, 128),
    }
    print(f"device={args.device} dtype={args.dtype} threads={torch.get_num_threads()}")
    for name, (config, batch, seq) in models.items():
        with torch.device("meta"):
            n_params = sum(
                p.numel() for p in KeyeVLMoeForConditionalGeneration(config).parameters()
            )
        rates = {}
        for impl in IMPLEMENTATIONS:
            if (
                impl == "batched_mm"
                and batched_mm_bytes(config, batch * seq, dtype) > BATCHED_MM_LIMIT
            ):
                continue  # gathers a weight copy per token: meant for small decode batches
            rates[impl] = tokens_per_second(
                config, impl, batch, seq, args.steps, args.device, dtype
            )
        base = rates["eager"]
        cells = "  ".join(
            f"{impl} {rate:9.1f} tok/s (x{rate / base:.2f})" for impl, rate in rates.items()
        )
        if "batched_mm" not in rates:
            cells += "  batched_mm skipped (per-token weight copies exceed memory)"
        print(f"{name:11s} {n_params / 1e6:6.1f}M params  batch {batch}x{seq}  {cells}")


if __name__ == "__main__":
    main()
