"""Parameter accounting on the meta device: total, active per token, and per part.

The 671B preset is checked against the published numbers without allocating a single weight:
``count_parameters(KeyeVLMoeConfig.from_preset("keye-vl-671b-a37b"))``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from keye_model.model.configuration import KeyeVLMoeConfig


@dataclass
class ParameterCount:
    """Parameter counts of a Keye-VL model; the MTP layer is not built and is reported apart."""

    total: int
    active: int
    vision: int
    projector: int
    text: int
    routed_experts: int
    mtp_layer: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def summary(self) -> str:
        mtp = f" (+{_human(self.mtp_layer)} MTP layer, not built)" if self.mtp_layer else ""
        return (
            f"total {_human(self.total)}{mtp} | active/token {_human(self.active)} | "
            f"vision {_human(self.vision)} | projector {_human(self.projector)} | text {_human(self.text)}"
        )


def _human(n: int) -> str:
    """1234567 -> '1.23M'."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def _mtp_layer_params(config: KeyeVLMoeConfig, moe_layer_params: int) -> int:
    """One DeepSeek MTP module: a MoE decoder layer + enorm + hnorm + eh_proj + its final norm.

    Embedding and output head are shared with the main model, so they are not counted again.
    """
    hidden = config.text_config.hidden_size
    return moe_layer_params + 3 * hidden + 2 * hidden * hidden


def count_parameters(config: KeyeVLMoeConfig) -> ParameterCount:
    """Build the model on the meta device and count its parameters."""
    from keye_model.model.keye import KeyeVLMoeForConditionalGeneration

    with torch.device("meta"):
        model = KeyeVLMoeForConditionalGeneration(config)
    text_cfg = config.text_config
    parts = {"vision": 0, "projector": 0, "text": 0, "routed": 0}
    for name, param in model.named_parameters():
        n = param.numel()
        if name.startswith("visual."):
            parts["vision"] += n
        elif name.startswith("mlp_AR."):
            parts["projector"] += n
        else:
            parts["text"] += n
            if ".mlp.experts." in name:
                parts["routed"] += n
    total = parts["vision"] + parts["projector"] + parts["text"]
    # Active per token: everything a token's forward pass multiplies by. Routed experts count k of
    # n; the input embedding is a table lookup (no compute), so it is not counted as active.
    inactive = parts["routed"] * (1 - text_cfg.num_experts_per_tok / text_cfg.n_routed_experts)
    inactive += model.model.embed_tokens.weight.numel()
    moe_layers = text_cfg.num_hidden_layers - text_cfg.first_k_dense_replace
    last = text_cfg.num_hidden_layers - 1
    moe_layer_params = sum(
        p.numel() for n, p in model.named_parameters() if n.startswith(f"model.layers.{last}.")
    )
    mtp = _mtp_layer_params(config, moe_layer_params) * text_cfg.num_mtp_layers if moe_layers else 0
    return ParameterCount(
        total=total,
        active=int(total - inactive),
        vision=parts["vision"],
        projector=parts["projector"],
        text=parts["text"],
        routed_experts=parts["routed"],
        mtp_layer=mtp,
    )


def count_parameters_at(model_uri: str) -> ParameterCount:
    """Count a saved model's parameters from its config.json alone (local or s3://), no weights read."""
    import json

    from keye_model import storage

    config_uri = storage.join(model_uri, "config.json")
    if not storage.exists(config_uri):
        raise FileNotFoundError(
            f"{config_uri}: no model config (is {model_uri} a keye model directory?)"
        )
    return count_parameters(KeyeVLMoeConfig.from_dict(json.loads(storage.read_text(config_uri))))
