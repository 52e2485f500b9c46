"""Re-sampling to a target category mixture under a token budget (pure, streaming decisions).

Given the tokens available per category after filtering and dedup, each category ``c`` gets a
repeat factor ``f_c = B * t_c / T_c`` (``B`` the budget, ``t_c`` the target share, ``T_c`` the
available tokens), capped at ``max_repeat``. A sample is then emitted ``floor(f_c)`` times plus
once more with probability ``frac(f_c)``, decided by a hash of (seed, key): deterministic, needing
no memory per sample, and independent of worker count or order.
"""

from __future__ import annotations

import hashlib
import math

from keye_model.data.config import MixtureConfig


def target_shares(weights: dict[str, float], available: dict[str, int]) -> dict[str, float]:
    """Configured weights renormalised over categories that have data."""
    present = {c: w for c, w in weights.items() if w > 0 and available.get(c, 0) > 0}
    total = sum(present.values())
    return {c: w / total for c, w in sorted(present.items())} if total else {}


def repeat_factors(cfg: MixtureConfig, available: dict[str, int]) -> tuple[dict[str, float], int]:
    """Per-category repeat factor and the token budget it aims at."""
    if not cfg.enabled:
        return {c: 1.0 for c in available}, sum(available.values())
    shares = target_shares(cfg.weights, available)
    budget = cfg.token_budget or sum(available[c] for c in shares)
    factors = {c: 0.0 for c in available}
    for c, share in shares.items():
        factors[c] = min(cfg.max_repeat, budget * share / available[c])
    return factors, budget


def unit_uniform(seed: int, key: str) -> float:
    """A uniform number in [0, 1) fixed by (seed, key)."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def repeats(factor: float, seed: int, key: str) -> int:
    """How many times to emit one sample of a category with repeat ``factor``."""
    whole = math.floor(factor)
    return whole + (unit_uniform(seed, key) < factor - whole)


def achieved_shares(emitted_tokens: dict[str, int]) -> dict[str, float]:
    """Token share of each category in what was emitted."""
    total = sum(emitted_tokens.values())
    return {c: (t / total if total else 0.0) for c, t in sorted(emitted_tokens.items())}
