"""``KeyeVLMoeForConditionalGeneration``: KeyeViT + mlp_AR + transformers' DeepSeek-V3 model.

Projector outputs are scattered, in order, into the positions of the image (or video) pad tokens
of the prompt; the LM then runs on plain 1-D positions (REFERENCE §1.3). Top-level module names
match the released checkpoints: ``visual.vision_model.*``, ``mlp_AR.*``, ``model.*``, ``lm_head``.
Model code runs on one device; parallelism and precision are applied from outside (``train/``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.initialization import normal_, zeros_
from transformers.modeling_outputs import ModelOutput
from transformers.models.deepseek_v3.modeling_deepseek_v3 import (
    DeepseekV3Experts,
    DeepseekV3Model,
    DeepseekV3TopkRouter,
)

from keye_model.model.configuration import KeyeVisionConfig, KeyeVLMoeConfig
from keye_model.model.projector import KeyeProjector
from keye_model.model.vision import KeyeVisionModel

__all__ = [
    "KeyeVisionConfig",
    "KeyeVLMoeConfig",
    "KeyeVLMoeForConditionalGeneration",
    "KeyeVisionModel",
]


@dataclass
class KeyeVLMoeOutput(ModelOutput):
    """Causal-LM output of the Keye-VL model."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    past_key_values: object | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


class KeyeVLMoePreTrainedModel(PreTrainedModel):
    config: KeyeVLMoeConfig
    config_class = KeyeVLMoeConfig
    base_model_prefix = ""
    supports_gradient_checkpointing = True
    _no_split_modules = ["DeepseekV3DecoderLayer", "KeyeVisionEncoderLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _keep_in_fp32_modules_strict = ["e_score_correction_bias"]
    # The MTP layer (model.layers.61) of HF DeepSeek checkpoints is not used here, nor is KeyeViT's
    # packing_position_embedding (present in released checkpoints, unused at inference).
    _keys_to_ignore_on_load_unexpected = [r"model\.layers\.61\.", r"packing_position_embedding"]

    @classmethod
    def _can_set_experts_implementation(cls) -> bool:
        # The MoE layers are transformers' DeepseekV3Experts, which dispatch on the experts
        # implementation (eager, grouped_mm, batched_mm); transformers detects that only by source.
        return True

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, DeepseekV3TopkRouter):
            normal_(module.weight, mean=0.0, std=std)
            zeros_(module.e_score_correction_bias)
        elif isinstance(module, DeepseekV3Experts):
            normal_(module.gate_up_proj, mean=0.0, std=std)
            normal_(module.down_proj, mean=0.0, std=std)


class KeyeVLMoeForConditionalGeneration(KeyeVLMoePreTrainedModel, GenerationMixin):
    """Image/video + text -> text. ``forward`` computes the LM loss when ``labels`` are given."""

    _tied_weights_keys: dict[str, str] = {}

    def __init__(self, config: KeyeVLMoeConfig):
        super().__init__(config)
        self.visual = KeyeVisionModel(config.vision_config)
        self.mlp_AR = KeyeProjector(
            config.vision_config.hidden_size,
            config.text_config.hidden_size,
            merge=config.vision_config.spatial_merge_size,
            eps=config.projector_layer_norm_eps,
        )
        self.model = DeepseekV3Model(config.text_config)
        self.lm_head = nn.Linear(
            config.text_config.hidden_size, config.text_config.vocab_size, bias=False
        )
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def get_visual_features(
        self, pixel_values: torch.Tensor, grid_thw: torch.Tensor
    ) -> torch.Tensor:
        """ViT + projector: patches -> one LM embedding per 2x2 patch group, in prompt order."""
        return self.mlp_AR(self.visual(pixel_values, grid_thw), grid_thw)

    def _splice(
        self,
        embeds_BLD: torch.Tensor,
        input_ids_BL: torch.Tensor,
        token_ids: tuple[int, ...],
        features_MD: torch.Tensor,
        kind: str,
    ) -> torch.Tensor:
        mask_BL = torch.isin(input_ids_BL, torch.tensor(token_ids, device=input_ids_BL.device))
        n_tokens, n_features = int(mask_BL.sum()), features_MD.shape[0]
        if n_tokens != n_features:
            raise ValueError(
                f"{kind}: the prompt has {n_tokens} {kind} pad tokens but the {kind}s give {n_features} "
                f"features; expand each placeholder to t*h*w/4 pads (KeyeProcessor does this)"
            )
        return embeds_BLD.masked_scatter(mask_BL[..., None], features_MD.to(embeds_BLD.dtype))

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_grid_thw: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        video_num_frames: torch.Tensor | None = None,
        video_frame_is_fast: torch.Tensor | None = None,
        video_timestamps: torch.Tensor | None = None,
        **kwargs,
    ) -> KeyeVLMoeOutput:
        # The video_* metadata the processor returns is already encoded in the prompt (frame markers,
        # fast/slow pad tokens); it is accepted so ``model(**processor(...))`` works, and not used.
        del video_num_frames, video_frame_is_fast, video_timestamps
        if inputs_embeds is not None and (
            pixel_values is not None or pixel_values_videos is not None
        ):
            raise ValueError(
                "pass input_ids with pixel_values/pixel_values_videos, not inputs_embeds"
            )
        if inputs_embeds is None:
            inputs_embeds = self.model.embed_tokens(input_ids)
            if pixel_values is not None:
                if image_grid_thw is None:
                    raise ValueError("pixel_values given without image_grid_thw")
                features = self.get_visual_features(pixel_values, image_grid_thw)
                inputs_embeds = self._splice(
                    inputs_embeds, input_ids, (self.config.image_token_id,), features, "image"
                )
            if pixel_values_videos is not None:
                if video_grid_thw is None:
                    raise ValueError("pixel_values_videos given without video_grid_thw")
                features = self.get_visual_features(pixel_values_videos, video_grid_thw)
                video_ids = (self.config.video_token_id, self.config.fast_video_token_id)
                inputs_embeds = self._splice(inputs_embeds, input_ids, video_ids, features, "video")

        if position_ids is None and attention_mask is not None and attention_mask.ndim == 2:
            # Left padding must not shift positions: a prompt gets the same positions alone or in a batch.
            positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
            position_ids = positions[:, -inputs_embeds.shape[1] :]

        outputs = self.model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
            **kwargs,
        )
        hidden = outputs.last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size
            )
        return KeyeVLMoeOutput(loss=loss, logits=logits, past_key_values=outputs.past_key_values)


def _register_auto_classes() -> None:
    """Make ``Auto*.from_pretrained`` resolve ``model_type`` keye_vl_moe / keye_vit to our classes."""
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
    )

    AutoConfig.register(KeyeVisionConfig.model_type, KeyeVisionConfig, exist_ok=True)
    AutoConfig.register(KeyeVLMoeConfig.model_type, KeyeVLMoeConfig, exist_ok=True)
    AutoModel.register(KeyeVisionConfig, KeyeVisionModel, exist_ok=True)
    AutoModelForImageTextToText.register(
        KeyeVLMoeConfig, KeyeVLMoeForConditionalGeneration, exist_ok=True
    )
    AutoModelForCausalLM.register(KeyeVLMoeConfig, KeyeVLMoeForConditionalGeneration, exist_ok=True)


_register_auto_classes()
