"""GSPO, GSPO-token, GRPO and k3-KL against hand-computed values and gradients (REFERENCE §3, §7).

Expected values are written out per sequence in plain Python (``math.exp``, loops), so they do not
share code with the vectorised implementation. Gradients come from the formula
``d loss / d logp_it = -s_i * A_i / (N * |y_i|)`` on unclipped sequences and 0 on clipped ones.
"""

from __future__ import annotations

import math

import pytest
import torch

from keye_model.rl.gspo import (
    POLICY_LOSSES,
    group_advantages,
    grpo_loss,
    gspo_loss,
    gspo_token_loss,
    k3_kl,
    token_logprobs,
)

EPS_LOW, EPS_HIGH = 3e-4, 4e-4


def _hand_gspo(logp, old, adv, mask, eps_low=EPS_LOW, eps_high=EPS_HIGH):
    """Loss and d loss / d logp written out sequence by sequence."""
    objectives, grads, n_valid = [], [], 0
    for lp, op, a, m in zip(logp, old, adv, mask):
        tokens = [(x - y) for x, y, keep in zip(lp, op, m) if keep]
        if not tokens:
            grads.append([0.0] * len(lp))
            continue
        n_valid += 1
        s = math.exp(sum(tokens) / len(tokens))
        clipped = min(max(s, 1 - eps_low), 1 + eps_high)
        objectives.append(min(s * a, clipped * a))
        unclipped_active = s * a <= clipped * a
        g = -s * a / len(tokens) if unclipped_active else 0.0
        grads.append([g if keep else 0.0 for keep in m])
    loss = -sum(objectives) / n_valid
    return loss, [[g / n_valid for g in row] for row in grads]


def _leaf(rows):
    return torch.tensor(rows, dtype=torch.float64, requires_grad=True)


# Four sequences of lengths 3, 1, 4 and 2 (in a T=4 batch), chosen so that:
#  0: s = exp(+0.0001)  A > 0 -> inside the band, unclipped
#  1: s = exp(+0.002)   A > 0 -> above 1 + eps_high: clipped, no gradient
#  2: s = exp(-0.002)   A < 0 -> below 1 - eps_low:  clipped, no gradient
#  3: s = exp(+0.002)   A < 0 -> above the band but A < 0: unclipped, gradient flows
CASE_OLD = [
    [-1.0, -2.0, -0.5, 0.0],
    [-0.7, 0.0, 0.0, 0.0],
    [-1.2, -0.3, -2.2, -0.9],
    [-0.4, -1.5, 0.0, 0.0],
]
CASE_DELTA = [
    [0.0003, -0.0001, 0.0001, 0.0],  # mean +0.0001
    [0.002, 0.0, 0.0, 0.0],
    [-0.001, -0.003, -0.002, -0.002],  # mean -0.002
    [0.003, 0.001, 0.0, 0.0],  # mean +0.002
]
CASE_MASK = [
    [True, True, True, False],
    [True, False, False, False],
    [True, True, True, True],
    [True, True, False, False],
]
CASE_ADV = [1.5, 0.8, -1.2, -0.6]


def _case():
    old = torch.tensor(CASE_OLD, dtype=torch.float64)
    logp = _leaf([[o + d for o, d in zip(ro, rd)] for ro, rd in zip(CASE_OLD, CASE_DELTA)])
    return logp, old, torch.tensor(CASE_ADV, dtype=torch.float64), torch.tensor(CASE_MASK)


def test_gspo_value_and_gradient_match_the_hand_computation():
    logp, old, adv, mask = _case()
    loss, metrics = gspo_loss(logp, old, adv, mask)
    loss.backward()
    expected_loss, expected_grad = _hand_gspo(logp.tolist(), CASE_OLD, CASE_ADV, CASE_MASK)
    assert loss.item() == pytest.approx(expected_loss, rel=1e-12)
    torch.testing.assert_close(logp.grad, torch.tensor(expected_grad, dtype=torch.float64))
    # The branches the case was built for: 0 and 3 carry gradient, 1 and 2 are clipped.
    assert logp.grad[0, :3].abs().min() > 0 and logp.grad[3, :2].abs().min() > 0
    assert logp.grad[1].abs().max() == 0 and logp.grad[2].abs().max() == 0
    # Masked positions never receive gradient.
    assert logp.grad[~mask].abs().max() == 0
    assert metrics["clip_fraction"] == pytest.approx(0.5)
    assert metrics["clip_high_fraction"] == pytest.approx(0.25)
    assert metrics["clip_low_fraction"] == pytest.approx(0.25)
    assert metrics["ratio_max"] == pytest.approx(math.exp(0.002))
    assert metrics["ratio_min"] == pytest.approx(math.exp(-0.002))


def test_gspo_unclipped_gradient_is_the_same_for_every_token_of_a_sequence():
    """Each token gets s_i * A_i / |y_i| (GSPO), unlike GRPO's per-token ratios."""
    logp, old, adv, mask = _case()
    gspo_loss(logp, old, adv, mask)[0].backward()
    s0 = math.exp(0.0001)
    torch.testing.assert_close(
        logp.grad[0, :3], torch.full((3,), -s0 * 1.5 / 3 / 4, dtype=torch.float64)
    )
    s3 = math.exp(0.002)
    torch.testing.assert_close(
        logp.grad[3, :2], torch.full((2,), -s3 * -0.6 / 2 / 4, dtype=torch.float64)
    )


def test_every_sequence_weighs_the_same_whatever_its_length():
    """A 1-token and a 9-token sequence with equal ratio/advantage contribute equally."""
    old = torch.zeros(2, 9, dtype=torch.float64)
    logp = _leaf([[0.0] * 9, [0.0] * 9])
    mask = torch.tensor([[True] + [False] * 8, [True] * 9])
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    loss, _ = gspo_loss(logp, old, adv, mask)
    loss.backward()
    # Length-weighted (the TRL-issue-3823 trap) would be -(1*1 - 1*9)/10 = 0.8; ours is 0.
    assert loss.item() == pytest.approx(0.0, abs=1e-15)
    # Per-sequence gradient mass is A_i / N whatever the length.
    assert logp.grad[0].sum().item() == pytest.approx(-0.5)
    assert logp.grad[1].sum().item() == pytest.approx(0.5)


def test_gradients_where_advantages_sum_to_zero():
    """On-policy with zero-sum advantages the loss is 0 but the gradient is not."""
    old = torch.tensor(
        [[-1.0, -0.5, -2.0], [-0.3, -0.9, 0.0], [-1.1, 0.0, 0.0]], dtype=torch.float64
    )
    logp = old.clone().requires_grad_(True)
    mask = torch.tensor([[True, True, True], [True, True, False], [True, False, False]])
    adv = torch.tensor([1.0, 0.5, -1.5], dtype=torch.float64)
    for fn in (gspo_loss, gspo_token_loss, grpo_loss):
        logp.grad = None
        loss, _ = fn(logp, old, adv, mask)
        loss.backward()
        assert loss.item() == pytest.approx(0.0, abs=1e-15)
        expected = torch.tensor(
            [[-1 / 3 / 3] * 3, [-0.5 / 2 / 3] * 2 + [0.0], [1.5 / 3, 0.0, 0.0]],
            dtype=torch.float64,
        )
        torch.testing.assert_close(logp.grad, expected)


def test_gspo_finite_difference():
    torch.manual_seed(0)
    old = torch.randn(5, 7, dtype=torch.float64)
    mask = torch.rand(5, 7) > 0.3
    mask[:, 0] = True
    adv = torch.randn(5, dtype=torch.float64)
    # Off-policy by up to +-0.1 with a wide band: every branch reachable but away from the kinks.
    logp = (old + 0.1 * torch.randn(5, 7, dtype=torch.float64)).requires_grad_(True)
    for eps in ((0.2, 0.2), (3e-4, 4e-4)):

        def f(x, eps=eps):
            return gspo_loss(x, old, adv, mask, *eps)[0]

        assert torch.autograd.gradcheck(f, (logp,), eps=1e-7, atol=1e-6)


def test_gspo_token_equals_gspo_for_sequence_advantages():
    torch.manual_seed(1)
    old = torch.randn(6, 9, dtype=torch.float64)
    mask = torch.rand(6, 9) > 0.4
    mask[:, 0] = True
    adv = torch.randn(6, dtype=torch.float64)
    base = old + 1e-3 * torch.randn(6, 9, dtype=torch.float64)  # some clipped, some not
    a = base.clone().requires_grad_(True)
    b = base.clone().requires_grad_(True)
    loss_a, metrics_a = gspo_loss(a, old, adv, mask)
    loss_b, metrics_b = gspo_token_loss(b, old, adv, mask)
    loss_a.backward()
    loss_b.backward()
    assert 0 < metrics_a["clip_fraction"] < 1, "the case should hold both branches"
    assert loss_a.item() == pytest.approx(loss_b.item(), rel=1e-12)
    torch.testing.assert_close(a.grad, b.grad)
    # Per-token advantages equal to the sequence ones broadcast: still the same.
    c = base.clone().requires_grad_(True)
    loss_c, _ = gspo_token_loss(c, old, adv[:, None].expand(6, 9), mask)
    loss_c.backward()
    torch.testing.assert_close(c.grad, a.grad)


def test_grpo_matches_per_token_hand_computation():
    old = [[-1.0, -2.0, 0.0], [-0.5, -0.5, -0.5]]
    delta = [[0.1, 0.3, 0.0], [-0.3, 0.0, 0.05]]
    mask = [[True, True, False], [True, True, True]]
    adv = [1.0, -2.0]
    logp = _leaf([[o + d for o, d in zip(ro, rd)] for ro, rd in zip(old, delta)])
    loss, metrics = grpo_loss(
        logp,
        torch.tensor(old, dtype=torch.float64),
        torch.tensor(adv, dtype=torch.float64),
        torch.tensor(mask),
    )
    loss.backward()
    # Sequence 0 (A=1): r = e^0.1 (inside 1.2), e^0.3 = 1.35 (clipped at 1.2, no grad).
    # Sequence 1 (A=-2): r = e^-0.3 = 0.74 (below 0.8 with A<0: clipped), e^0 = 1, e^0.05.
    r = math.exp
    j0 = (r(0.1) * 1.0 + 1.2 * 1.0) / 2
    j1 = (0.8 * -2.0 + 1.0 * -2.0 + r(0.05) * -2.0) / 3
    assert loss.item() == pytest.approx(-(j0 + j1) / 2, rel=1e-12)
    expected = [[-r(0.1) / 2 / 2, 0.0, 0.0], [0.0, 2.0 / 3 / 2, 2.0 * r(0.05) / 3 / 2]]
    torch.testing.assert_close(logp.grad, torch.tensor(expected, dtype=torch.float64))
    assert metrics["clip_fraction"] == pytest.approx(2 / 5)


def test_nan_at_masked_positions_does_not_leak():
    logp, old, adv, mask = _case()
    poisoned_logp = logp.detach().clone()
    poisoned_old = old.clone()
    poisoned_logp[~mask] = float("nan")
    poisoned_old[~mask] = float("inf")
    for fn in POLICY_LOSSES.values():
        clean = logp.detach().clone().requires_grad_(True)
        dirty = poisoned_logp.clone().requires_grad_(True)
        loss_clean, _ = fn(clean, old, adv, mask)
        loss_dirty, metrics = fn(dirty, poisoned_old, adv, mask)
        loss_clean.backward()
        loss_dirty.backward()
        assert torch.isfinite(loss_dirty) and loss_dirty.item() == loss_clean.item()
        assert torch.isfinite(dirty.grad).all()
        torch.testing.assert_close(dirty.grad, clean.grad)
        assert all(math.isfinite(v) for v in metrics.values())
    kl, _ = k3_kl(poisoned_logp.clone().requires_grad_(True), poisoned_old, mask)
    assert torch.isfinite(kl)


def test_fully_masked_sequences_leave_the_mean():
    """A truncated response (mask all false) neither adds to the loss nor dilutes it."""
    logp, old, adv, mask = _case()
    loss_4, _ = gspo_loss(logp, old, adv, mask)
    extra = torch.zeros(1, 4, dtype=torch.float64)
    loss_5, metrics = gspo_loss(
        torch.cat([logp, extra]),
        torch.cat([old, extra]),
        torch.cat([adv, torch.tensor([5.0], dtype=torch.float64)]),
        torch.cat([mask, torch.zeros(1, 4, dtype=torch.bool)]),
    )
    assert loss_5.item() == pytest.approx(loss_4.item(), rel=1e-12)
    assert metrics["sequences"] == 4


def test_micro_batches_with_num_sequences_add_up_to_the_full_batch():
    logp, old, adv, mask = _case()
    full, _ = gspo_loss(logp, old, adv, mask)
    full.backward()
    full_grad = logp.grad.clone()
    logp.grad = None
    total = 0.0
    for rows in (slice(0, 1), slice(1, 4)):
        part, _ = gspo_loss(logp[rows], old[rows], adv[rows], mask[rows], num_sequences=4)
        part.backward()
        total += part.item()
    assert total == pytest.approx(full.item(), rel=1e-12)
    torch.testing.assert_close(logp.grad, full_grad)


def test_k3_kl_value_and_gradient():
    logp = _leaf([[math.log(0.5), math.log(0.2)], [math.log(0.9), 0.0]])
    ref = torch.tensor([[math.log(0.25), math.log(0.2)], [math.log(0.3), 0.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True], [True, False]])
    kl, metrics = k3_kl(logp, ref, mask)
    kl.backward()

    def k3(p, q):  # d = log q - log p
        return q / p - math.log(q / p) - 1

    expected = ((k3(0.5, 0.25) + k3(0.2, 0.2)) / 2 + k3(0.9, 0.3)) / 2
    assert kl.item() == pytest.approx(expected, rel=1e-12)
    assert metrics["kl"] == pytest.approx(expected)
    # d k3 / d logp = 1 - exp(d)
    torch.testing.assert_close(
        logp.grad,
        torch.tensor([[(1 - 0.5) / 4, 0.0], [(1 - 1 / 3) / 2, 0.0]], dtype=torch.float64),
    )


def test_group_advantages_use_the_unbiased_std():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    adv = group_advantages(rewards, 4, eps=0.0 + 1e-12)
    # Group 1: mean 0.25, unbiased std sqrt((0.5625 + 3 * 0.0625) / 3) = 0.5.
    torch.testing.assert_close(adv[:4], torch.tensor([1.5, -0.5, -0.5, -0.5]))
    assert adv[4:].abs().max() == 0  # all-equal group: no signal
    with pytest.raises(ValueError, match="multiple of group_size"):
        group_advantages(torch.ones(6), 4)
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        group_advantages(torch.ones(6), 1)


def test_token_logprobs_scores_the_temperature_scaled_distribution():
    logits = torch.tensor([[[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]]])
    tokens = torch.tensor([[0, 2]])
    got = token_logprobs(logits, tokens, temperature=0.5)
    z0 = math.log(math.exp(4.0) + 1 + math.exp(-2.0))
    z1 = math.log(2 * math.exp(1.0) + 1)
    torch.testing.assert_close(got, torch.tensor([[4.0 - z0, 0.0 - z1]]))


def test_bad_shapes_name_the_argument():
    logp = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="advantages must be"):
        gspo_loss(logp, logp, torch.zeros(3), torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="same \\(B, T\\) shape"):
        gspo_loss(logp, torch.zeros(2, 4), torch.zeros(2), torch.ones(2, 3, dtype=torch.bool))
