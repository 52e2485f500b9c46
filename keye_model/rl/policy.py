"""Scoring responses with the policy: batch layout, token log-probs and entropy for the update.

Shape legend: ``B`` rows (prompt + response), ``L`` = ``P + T`` columns, ``P`` the longest
prompt, ``T`` the longest response, ``V`` vocabulary.

Layout of a row: ``[left pad][prompt][response][right pad]``. Prompts are left-padded to ``P``
so that every response starts at column ``P``; the model derives positions from the attention
mask (``cumsum - 1``), so a prompt gets the same positions as it had when the rollout sampled
it. Only the last ``T + 1`` positions go through the output head: the logits at columns
``P - 1 .. P + T - 2`` predict the response tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from keye_model.rl.gspo import token_logprobs

_VISION_KEYS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw")


@dataclass
class PolicyBatch:
    """Model inputs of prompt + response rows and the response targets and loss mask."""

    input_ids_BL: torch.Tensor
    attention_mask_BL: torch.Tensor
    vision: dict[str, torch.Tensor]
    targets_BT: torch.Tensor
    mask_BT: torch.Tensor  # response tokens that carry loss

    @property
    def response_width(self) -> int:
        return self.targets_BT.shape[1]

    def model_inputs(self) -> dict[str, Any]:
        """Keyword arguments of the model's forward (logits for the response positions only)."""
        return {
            "input_ids": self.input_ids_BL,
            "attention_mask": self.attention_mask_BL,
            "logits_to_keep": self.response_width + 1,
            "use_cache": False,
            **self.vision,
        }


def build_policy_batch(
    prompts: Sequence[dict[str, Any]],
    responses: Sequence[Sequence[int]],
    carries_loss: Sequence[bool],
    pad_id: int,
) -> PolicyBatch:
    """Rows of encoded prompts (processor outputs, batch of one) and response ids.

    ``carries_loss[i]`` false masks row i whole (a truncated response).
    """
    if not (len(prompts) == len(responses) == len(carries_loss)) or not prompts:
        raise ValueError("prompts, responses and carries_loss must be non-empty and equally long")
    width_p = max(int(p["input_ids"].shape[1]) for p in prompts)
    width_t = max(1, max(len(r) for r in responses))
    ids, attn, targets, mask = [], [], [], []
    for prompt, response, loss in zip(prompts, responses, carries_loss):
        p_ids = prompt["input_ids"][0].tolist()
        p_mask = prompt["attention_mask"][0].tolist()
        left, right = width_p - len(p_ids), width_t - len(response)
        ids.append([pad_id] * left + p_ids + list(response) + [pad_id] * right)
        attn.append([0] * left + p_mask + [1] * len(response) + [0] * right)
        targets.append(list(response) + [pad_id] * right)
        mask.append([loss] * len(response) + [False] * right)
    vision = {
        key: torch.cat([p[key] for p in prompts if key in p])
        for key in _VISION_KEYS
        if any(key in p for p in prompts)
    }
    return PolicyBatch(
        torch.tensor(ids),
        torch.tensor(attn),
        vision,
        torch.tensor(targets),
        torch.tensor(mask, dtype=torch.bool),
    )


def response_logits(model, batch: PolicyBatch) -> torch.Tensor:
    """Logits that predict each response token, (B, T, V)."""
    inputs = {
        k: v.to(_device(model)) if torch.is_tensor(v) else v
        for k, v in batch.model_inputs().items()
    }
    return model(**inputs).logits[:, :-1]


def response_logprobs(model, batch: PolicyBatch, temperature: float) -> torch.Tensor:
    """``log pi(y_t | prompt, y_<t)`` of every response token under ``softmax(logits / T)``."""
    logits = response_logits(model, batch)
    return token_logprobs(logits, batch.targets_BT.to(logits.device), temperature)


def _device(model) -> torch.device:
    return next(model.parameters()).device
