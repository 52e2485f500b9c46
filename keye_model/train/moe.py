"""DeepSeek-V3 MoE load balancing for training, applied from outside the model (router hooks).

Shape legend: T tokens, E routed experts, K experts per token, S sequences (samples).

- Aux-loss-free balancing (DeepSeek-V3 §2.1.2): after each optimizer step every router's
  ``e_score_correction_bias`` moves by ``gamma`` against its expert's load,
  ``b_i <- b_i + gamma * sign(mean_j load_j - load_i)``. The bias only changes which experts are
  chosen (the gate weights use unbiased scores), so it is updated outside backprop.
- The complementary sequence-wise balance loss (eq. 17-20), per sequence of T tokens:
  ``s'_it = s_it / sum_j s_jt``, ``P_i = mean_t s'_it``, ``f_i = E / (K T) * sum_t 1[i in topK(t)]``,
  ``L_bal = alpha * sum_i f_i P_i``, averaged over the sequences of the batch.
"""

from __future__ import annotations

import torch
from torch import nn


def sequence_balance_loss(
    scores_TE: torch.Tensor, topk_TK: torch.Tensor, segments_T: torch.Tensor, top_k: int
) -> torch.Tensor:
    """Mean over sequences of ``sum_i f_i P_i`` (DeepSeek-V3 eq. 17-20); tokens with segment -1 are ignored."""
    num_experts = scores_TE.shape[-1]
    terms = []
    for segment in torch.unique(segments_T):
        if segment < 0:
            continue
        rows = segments_T == segment
        scores = scores_TE[rows]
        normalised = scores / scores.sum(-1, keepdim=True)
        probability_E = normalised.mean(0)
        chosen = torch.zeros_like(scores).scatter_(1, topk_TK[rows], 1.0)
        fraction_E = chosen.sum(0) * num_experts / (top_k * scores.shape[0])
        terms.append((fraction_E * probability_E).sum())
    if not terms:
        return scores_TE.sum() * 0.0
    return torch.stack(terms).mean()


def update_bias(bias_E: torch.Tensor, load_E: torch.Tensor, rate: float) -> torch.Tensor:
    """Aux-loss-free step: raise under-loaded experts' bias, lower over-loaded ones, by ``rate``."""
    return bias_E + rate * torch.sign(load_E.float().mean() - load_E.float())


def load_balance(load_LE: torch.Tensor) -> torch.Tensor:
    """Max load over mean load per layer (1.0 = perfectly balanced); a number people can compare."""
    load = load_LE.float()
    return load.max(-1).values / load.mean(-1).clamp_min(1e-9)


def routers(model: nn.Module) -> list[nn.Module]:
    """Every MoE router of the model (modules carrying ``e_score_correction_bias``), in layer order."""
    return [m for m in model.modules() if hasattr(m, "e_score_correction_bias")]


def moe_block_class(model: nn.Module) -> type[nn.Module]:
    """The MoE block class, taken from a MoE layer: the first ``first_k_dense_replace`` layers are dense."""
    for module in model.modules():
        if hasattr(module, "gate") and hasattr(module.gate, "e_score_correction_bias"):
            return type(module)
    raise ValueError("the model has no MoE layer (no router with e_score_correction_bias)")


class RouterMonitor:
    """Hooks on every router: expert load per layer and, optionally, the sequence-wise balance loss.

    Set ``segments`` (the micro-batch's flattened segment ids) before each forward; read
    ``aux_loss()`` after it. ``load`` accumulates token counts until ``reset_load()``.
    """

    def __init__(self, model: nn.Module, aux_weight: float):
        self.routers = routers(model)
        self.aux_weight = aux_weight
        self.segments: torch.Tensor | None = None
        experts = self.routers[0].e_score_correction_bias.numel() if self.routers else 0
        self.load = torch.zeros(len(self.routers), experts, dtype=torch.long)
        self._aux: list[torch.Tensor] = []
        self._handles = [
            router.register_forward_hook(self._hook(i)) for i, router in enumerate(self.routers)
        ]

    def _hook(self, layer: int):
        def hook(module: nn.Module, _inputs, output) -> None:
            logits, _weights, topk = output
            keep = self.segments >= 0 if self.segments is not None else None
            chosen = topk if keep is None else topk[keep.to(topk.device)]
            counts = torch.bincount(chosen.reshape(-1).cpu(), minlength=self.load.shape[1])
            self.load[layer] += counts
            if self.aux_weight > 0 and module.training and self.segments is not None:
                scores = logits.float().sigmoid()
                self._aux.append(
                    sequence_balance_loss(
                        scores, topk, self.segments.to(scores.device), module.top_k
                    )
                )

        return hook

    def aux_loss(self) -> torch.Tensor | None:
        """``alpha`` times the mean of this forward's per-layer balance losses (None when off)."""
        if not self._aux:
            return None
        loss = self.aux_weight * torch.stack(self._aux).mean()
        self._aux = []
        return loss

    def reset_load(self) -> torch.Tensor:
        """Return the accumulated load (layers, experts) and start counting afresh."""
        load, self.load = self.load, torch.zeros_like(self.load)
        return load

    @torch.no_grad()
    def apply_bias_update(self, load_LE: torch.Tensor, rate: float) -> None:
        """One aux-loss-free step on every router from the (all-reduced) load."""
        if rate <= 0:
            return
        for router, load in zip(self.routers, load_LE):
            bias = router.e_score_correction_bias
            bias.copy_(update_bias(bias, load.to(bias.device), rate))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
