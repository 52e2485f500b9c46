"""Policy-gradient losses and advantages for RL post-training: GSPO, GSPO-token, GRPO (REFERENCE §3).

Pure tensor functions in the shape ``(logp, old_logp, advantages, mask, ...) -> (loss, metrics)``,
each with its equation in the docstring, and a plain name -> function dict (``POLICY_LOSSES``).

Shape legend: ``B`` sequences (responses) in the batch, ``T`` response token positions, ``V``
vocabulary. ``mask_BT`` is true on the response tokens that carry loss (padding, and whole
truncated responses, are false).

Rules every function here keeps (REFERENCE §7, traps seen in public trainers):

- Aggregation is seq-mean-token-mean: a sequence's tokens are averaged inside the sequence first,
  then sequences are averaged, so every response weighs the same whatever its length (multiplying
  a (B, 1) sequence loss by a (B, T) mask and summing would weight each by its length).
- Masked positions are removed with ``torch.where``, never by multiplying with the mask: a NaN or
  inf at a padded position times 0 is still NaN, and would poison the sums and the gradients.
- Sequences without any loss token (a truncated response is masked whole) leave the mean: they
  carry no gradient and must not dilute the others.
- ``old_logp`` and ``ref_logp`` are treated as constants (detached).

GSPO: Zheng et al., "Group Sequence Policy Optimization", arXiv 2507.18071.
GRPO: Shao et al., "DeepSeekMath", arXiv 2402.03300.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# The per-sequence log-ratio is clamped before exp() only to keep exp finite (float32 overflows
# past ~88); a policy this far from its rollout policy is clipped anyway.
_MAX_LOG_RATIO = 20.0

Metrics = dict[str, float]


def _sequence_mean(values_BT: torch.Tensor, mask_BT: torch.Tensor) -> torch.Tensor:
    """Mean over each sequence's masked tokens: ``sum_t where(mask, v, 0) / max(|y_i|, 1)``."""
    total_B = torch.where(mask_BT, values_BT, torch.zeros_like(values_BT)).sum(-1)
    return total_B / mask_BT.sum(-1).clamp(min=1)


def _batch_mean(values_B: torch.Tensor, valid_B: torch.Tensor, denominator: float | None):
    """Mean over sequences that have loss tokens (or over ``denominator`` sequences if given)."""
    total = torch.where(valid_B, values_B, torch.zeros_like(values_B)).sum()
    count = valid_B.sum().clamp(min=1) if denominator is None else denominator
    return total / count


def _check(logp_BT, old_logp_BT, advantages, mask_BT) -> tuple[torch.Tensor, torch.Tensor]:
    if logp_BT.shape != old_logp_BT.shape or logp_BT.shape != mask_BT.shape:
        raise ValueError(
            f"logp {tuple(logp_BT.shape)}, old_logp {tuple(old_logp_BT.shape)} and mask "
            f"{tuple(mask_BT.shape)} must have the same (B, T) shape"
        )
    if logp_BT.ndim != 2:
        raise ValueError(f"logp must be (B, T), got shape {tuple(logp_BT.shape)}")
    if advantages.shape not in (logp_BT.shape[:1], logp_BT.shape):
        raise ValueError(
            f"advantages must be (B,) or (B, T) for logp {tuple(logp_BT.shape)}, "
            f"got {tuple(advantages.shape)}"
        )
    return mask_BT.bool(), advantages.detach().to(logp_BT.dtype)


def _masked_stats(prefix: str, values: torch.Tensor, valid: torch.Tensor) -> Metrics:
    picked = values.detach()[valid]
    if picked.numel() == 0:
        return {f"{prefix}_mean": 0.0, f"{prefix}_min": 0.0, f"{prefix}_max": 0.0}
    return {
        f"{prefix}_mean": picked.mean().item(),
        f"{prefix}_min": picked.min().item(),
        f"{prefix}_max": picked.max().item(),
    }


def _clip_metrics(
    ratio: torch.Tensor,
    advantages: torch.Tensor,
    valid: torch.Tensor,
    eps_low: float,
    eps_high: float,
) -> Metrics:
    """Share of units (sequences or tokens) whose clipped term is the one ``min`` picks."""
    ratio, advantages = ratio.detach(), advantages.detach()
    low = (ratio < 1 - eps_low) & (advantages < 0) & valid
    high = (ratio > 1 + eps_high) & (advantages > 0) & valid
    count = max(int(valid.sum()), 1)
    return {
        "clip_fraction": float((low | high).sum()) / count,
        "clip_low_fraction": float(low.sum()) / count,
        "clip_high_fraction": float(high.sum()) / count,
    }


def gspo_loss(
    logp_BT: torch.Tensor,
    old_logp_BT: torch.Tensor,
    advantages_B: torch.Tensor,
    mask_BT: torch.Tensor,
    eps_low: float = 3e-4,
    eps_high: float = 4e-4,
    *,
    num_sequences: float | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """GSPO loss: minus the mean over sequences of the clipped sequence-ratio objective.

    ::

        s_i  = exp( sum_t mask_it * (logp_it - old_logp_it) / |y_i| )     |y_i| = sum_t mask_it
        J_i  = min( s_i * A_i,  clip(s_i, 1 - eps_low, 1 + eps_high) * A_i )
        loss = - (1 / N) * sum_i J_i       N = sequences with |y_i| > 0 (or ``num_sequences``)

    Every token of sequence i gets the gradient ``-s_i * A_i / (N * |y_i|)`` while unclipped, and
    none once clipped. ``num_sequences`` sets N when one optimizer step's sequences are split over
    several micro-batches (pass the step's total so the micro-batch losses add up to its mean).
    Paper clip range: eps_low 3e-4, eps_high 4e-4.
    """
    mask, adv_B = _check(logp_BT, old_logp_BT, advantages_B, mask_BT)
    if adv_B.ndim != 1:
        raise ValueError("gspo_loss takes one advantage per sequence (B,); see gspo_token_loss")
    valid_B = mask.any(-1)
    log_ratio_B = _sequence_mean(logp_BT - old_logp_BT.detach(), mask)
    ratio_B = torch.exp(log_ratio_B.clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO))
    unclipped_B = ratio_B * adv_B
    clipped_B = ratio_B.clamp(1 - eps_low, 1 + eps_high) * adv_B
    objective_B = torch.minimum(unclipped_B, clipped_B)
    loss = -_batch_mean(objective_B, valid_B, num_sequences)
    metrics = {
        "loss": loss.item(),
        **_clip_metrics(ratio_B, adv_B, valid_B, eps_low, eps_high),
        **_masked_stats("ratio", ratio_B, valid_B),
        "response_length_mean": mask.sum(-1)[valid_B].float().mean().item()
        if valid_B.any()
        else 0.0,
        "sequences": float(valid_B.sum()),
    }
    return loss, metrics


def gspo_token_loss(
    logp_BT: torch.Tensor,
    old_logp_BT: torch.Tensor,
    advantages: torch.Tensor,
    mask_BT: torch.Tensor,
    eps_low: float = 3e-4,
    eps_high: float = 4e-4,
    *,
    num_sequences: float | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """GSPO-token loss: the sequence ratio per token, so advantages may differ per token.

    ::

        s_it = sg[s_i] * exp(logp_it - sg[logp_it])          (value s_i, gradient of logp_it)
        J_it = min( s_it * A_it,  clip(s_it, 1 - eps_low, 1 + eps_high) * A_it )
        loss = - (1 / N) * sum_i (1 / |y_i|) * sum_t mask_it * J_it

    ``sg`` is stop-gradient, ``s_i`` as in ``gspo_loss``. With one advantage per sequence
    (``A_it = A_i``) value and gradient equal ``gspo_loss``'s (GSPO paper §4.3).
    """
    mask, adv = _check(logp_BT, old_logp_BT, advantages, mask_BT)
    adv_BT = adv[:, None].expand_as(logp_BT) if adv.ndim == 1 else adv
    valid_B = mask.any(-1)
    seq_log_ratio_B = _sequence_mean(logp_BT - old_logp_BT.detach(), mask)
    seq_ratio_B = torch.exp(seq_log_ratio_B.clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)).detach()
    # exp(logp - sg[logp]) is 1 in value and carries d/dlogp = 1; masked first so NaN stays out.
    safe_logp_BT = torch.where(mask, logp_BT, torch.zeros_like(logp_BT))
    ratio_BT = seq_ratio_B[:, None] * torch.exp(safe_logp_BT - safe_logp_BT.detach())
    objective_BT = torch.minimum(
        ratio_BT * adv_BT, ratio_BT.clamp(1 - eps_low, 1 + eps_high) * adv_BT
    )
    loss = -_batch_mean(_sequence_mean(objective_BT, mask), valid_B, num_sequences)
    metrics = {
        "loss": loss.item(),
        **_clip_metrics(ratio_BT, adv_BT, mask, eps_low, eps_high),
        **_masked_stats("ratio", seq_ratio_B, valid_B),
        "sequences": float(valid_B.sum()),
    }
    return loss, metrics


def grpo_loss(
    logp_BT: torch.Tensor,
    old_logp_BT: torch.Tensor,
    advantages: torch.Tensor,
    mask_BT: torch.Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    *,
    num_sequences: float | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """Token-level GRPO loss (PPO clip per token), for comparison with GSPO.

    ::

        r_it = exp(logp_it - old_logp_it)
        J_it = min( r_it * A_it,  clip(r_it, 1 - eps_low, 1 + eps_high) * A_it )
        loss = - (1 / N) * sum_i (1 / |y_i|) * sum_t mask_it * J_it

    Defaults are GRPO's clip of 0.2 on both sides; KL is a separate term (``k3_kl``).
    """
    mask, adv = _check(logp_BT, old_logp_BT, advantages, mask_BT)
    adv_BT = adv[:, None].expand_as(logp_BT) if adv.ndim == 1 else adv
    valid_B = mask.any(-1)
    log_ratio_BT = torch.where(mask, logp_BT - old_logp_BT.detach(), torch.zeros_like(logp_BT))
    ratio_BT = torch.exp(log_ratio_BT.clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO))
    objective_BT = torch.minimum(
        ratio_BT * adv_BT, ratio_BT.clamp(1 - eps_low, 1 + eps_high) * adv_BT
    )
    loss = -_batch_mean(_sequence_mean(objective_BT, mask), valid_B, num_sequences)
    metrics = {
        "loss": loss.item(),
        **_clip_metrics(ratio_BT, adv_BT, mask, eps_low, eps_high),
        **_masked_stats("ratio", ratio_BT, mask),
        "sequences": float(valid_B.sum()),
    }
    return loss, metrics


def k3_kl(
    logp_BT: torch.Tensor,
    ref_logp_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    *,
    num_sequences: float | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """KL(pi || pi_ref) by Schulman's k3 estimator, seq-mean-token-mean.

    ::

        d_it = ref_logp_it - logp_it
        k3_it = exp(d_it) - d_it - 1          (>= 0, unbiased for KL under samples from pi)
        kl = (1 / N) * sum_i (1 / |y_i|) * sum_t mask_it * k3_it

    Off by default in GSPO (``GSPOConfig.kl_coef = 0``); the caller adds ``kl_coef * kl``.
    """
    if logp_BT.shape != ref_logp_BT.shape or logp_BT.shape != mask_BT.shape:
        raise ValueError("logp, ref_logp and mask must have the same (B, T) shape")
    mask = mask_BT.bool()
    valid_B = mask.any(-1)
    delta_BT = torch.where(mask, ref_logp_BT.detach() - logp_BT, torch.zeros_like(logp_BT))
    delta_BT = delta_BT.clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    k3_BT = torch.exp(delta_BT) - delta_BT - 1
    kl = _batch_mean(_sequence_mean(k3_BT, mask), valid_B, num_sequences)
    return kl, {"kl": kl.item()}


def group_advantages(rewards_N: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """Group-normalised advantages, groups of ``group_size`` consecutive responses of one prompt.

    ::

        A_i = (r_i - mean_g(r)) / (std_g(r) + eps)       std unbiased (divides by G - 1)

    A group whose rewards are all equal gets zero advantages (dynamic sampling drops them).
    """
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 for an unbiased std, got {group_size}")
    if rewards_N.ndim != 1 or rewards_N.numel() % group_size:
        raise ValueError(
            f"rewards must be 1-D with a multiple of group_size={group_size} entries, "
            f"got shape {tuple(rewards_N.shape)}"
        )
    rewards_GK = rewards_N.reshape(-1, group_size).to(torch.float64)
    mean_G1 = rewards_GK.mean(-1, keepdim=True)
    std_G1 = rewards_GK.std(-1, unbiased=True, keepdim=True)
    return ((rewards_GK - mean_G1) / (std_G1 + eps)).reshape(-1).to(rewards_N.dtype)


def token_logprobs(
    logits_BTV: torch.Tensor, tokens_BT: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Log-probability of each chosen token: ``log_softmax(logits / temperature)[token]``.

    ``temperature`` must be the rollout's sampling temperature so that trainer and rollout score
    the same distribution (0 means greedy and scores the raw logits).
    """
    if temperature > 0 and temperature != 1.0:
        logits_BTV = logits_BTV / temperature
    logp_BTV = torch.log_softmax(logits_BTV.float(), dim=-1)
    return logp_BTV.gather(-1, tokens_BT.unsqueeze(-1)).squeeze(-1)


def token_entropy(logits_BTV: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of each position's sampling distribution, ``z = logits / temperature``::

    H_t = logsumexp_v(z_v) - sum_v softmax(z)_v * z_v
    """
    z_BTV = logits_BTV.float()
    if temperature > 0 and temperature != 1.0:
        z_BTV = z_BTV / temperature
    return torch.logsumexp(z_BTV, -1) - (torch.softmax(z_BTV, -1) * z_BTV).sum(-1)


PolicyLoss = Callable[..., tuple[torch.Tensor, Metrics]]

# name -> loss; GSPOConfig.loss picks one.
POLICY_LOSSES: dict[str, PolicyLoss] = {
    "gspo": gspo_loss,
    "gspo_token": gspo_token_loss,
    "grpo": grpo_loss,
}
