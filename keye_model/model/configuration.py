"""Configs of the Keye-VL model: KeyeViT vision encoder + ``mlp_AR`` projector + DeepSeek-V3 LM.

``KeyeVLMoeConfig`` nests a ``KeyeVisionConfig`` and transformers' own ``DeepseekV3Config`` (the text
part), plus the vision token ids the processor and the splice agree on (REFERENCE §1.5).
Presets: ``KeyeVLMoeConfig.from_preset("tiny" | "keye-vl-671b-a37b")``.
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import DeepseekV3Config, PreTrainedConfig


@strict
class KeyeVisionConfig(PreTrainedConfig):
    """KeyeViT: SigLIP-so400m-patch14-384 shapes with 2D RoPE and native resolution (REFERENCE §1.1)."""

    model_type = "keye_vit"
    base_config_key = "vision_config"

    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_hidden_layers: int = 27
    num_attention_heads: int = 16
    num_channels: int = 3
    patch_size: int = 14
    # The learned absolute position table is image_size/patch_size squared (27x27 at 384 px).
    image_size: int = 384
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6
    attention_dropout: float = 0.0
    rope_theta: float = 10000.0
    spatial_merge_size: int = 2
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"vision_config.hidden_size ({self.hidden_size}) must be divisible by "
                f"vision_config.num_attention_heads ({self.num_attention_heads})"
            )
        if (self.hidden_size // self.num_attention_heads) % 4:
            raise ValueError(
                "vision head_dim must be divisible by 4 for 2D RoPE (two axes, rotate-half)"
            )
        super().__post_init__(**kwargs)


# Token ids of the 671B checkpoint's vision tokens in the DeepSeek vocabulary (129,280 rows, of which
# the tail is reserved for added tokens). *Inferred*: the released config.json is authoritative and
# overrides these when a real checkpoint is loaded.
_DEEPSEEK_VISION_TOKEN_IDS = {
    "image_token_id": 128815,
    "video_token_id": 128816,
    "vision_start_token_id": 128817,
    "vision_end_token_id": 128818,
    "fast_video_token_id": 128819,
}


@strict
class KeyeVLMoeConfig(PreTrainedConfig):
    """Keye-VL-671B-A37B: KeyeViT -> mlp_AR projector -> DeepSeek-V3(-Terminus) MoE language model."""

    model_type = "keye_vl_moe"
    sub_configs_defaults = {"vision_config": KeyeVisionConfig, "text_config": DeepseekV3Config}
    keys_to_ignore_at_inference = ["past_key_values"]

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    image_token_id: int = _DEEPSEEK_VISION_TOKEN_IDS["image_token_id"]
    video_token_id: int = _DEEPSEEK_VISION_TOKEN_IDS["video_token_id"]
    vision_start_token_id: int = _DEEPSEEK_VISION_TOKEN_IDS["vision_start_token_id"]
    vision_end_token_id: int = _DEEPSEEK_VISION_TOKEN_IDS["vision_end_token_id"]
    fast_video_token_id: int = _DEEPSEEK_VISION_TOKEN_IDS["fast_video_token_id"]
    projector_layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False

    @classmethod
    def from_preset(cls, name: str, **overrides) -> KeyeVLMoeConfig:
        """Build a named preset: ``tiny`` (CPU, seconds) or ``keye-vl-671b-a37b`` (published shapes)."""
        if name not in MODEL_PRESETS:
            raise ValueError(
                f"unknown model preset {name!r}; choose one of {sorted(MODEL_PRESETS)}"
            )
        config = MODEL_PRESETS[name]()
        for key, value in overrides.items():
            setattr(config, key, value)
        return config


def keye_vl_671b_a37b() -> KeyeVLMoeConfig:
    """The published Keye-VL-671B-A37B architecture (REFERENCE §1.1, §1.2, §1.4)."""
    text = DeepseekV3Config(
        vocab_size=129280,
        hidden_size=7168,
        intermediate_size=18432,
        moe_intermediate_size=2048,
        num_hidden_layers=61,
        first_k_dense_replace=3,
        num_attention_heads=128,
        num_key_value_heads=128,
        q_lora_rank=1536,
        kv_lora_rank=512,
        qk_nope_head_dim=128,
        qk_rope_head_dim=64,
        v_head_dim=128,
        n_routed_experts=256,
        num_experts_per_tok=8,
        n_shared_experts=1,
        n_group=8,
        topk_group=4,
        norm_topk_prob=True,
        routed_scaling_factor=2.5,
        hidden_act="silu",
        rms_norm_eps=1e-6,
        max_position_embeddings=163840,
        rope_parameters={
            "rope_type": "yarn",
            "rope_theta": 10000.0,
            "factor": 40.0,
            "original_max_position_embeddings": 4096,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "mscale": 1.0,
            "mscale_all_dim": 1.0,
        },
        bos_token_id=0,
        eos_token_id=1,
        num_mtp_layers=1,
        tie_word_embeddings=False,
    )
    return KeyeVLMoeConfig(vision_config=KeyeVisionConfig(), text_config=text)


def tiny() -> KeyeVLMoeConfig:
    """A 2-layer ViT + 3-layer MoE LM that trains on 2 CPU cores in seconds.

    Same structure as the 671B (MLA attention, a dense first layer then MoE layers with grouped
    sigmoid routing and a shared expert) at toy width; special token ids follow the tiny tokenizer.
    """
    from keye_model.processing import tokens

    vision = KeyeVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=56,  # a 4x4 learned position table, interpolated to each image's grid
    )
    text = DeepseekV3Config(
        vocab_size=2048,
        hidden_size=64,
        intermediate_size=128,
        moe_intermediate_size=32,
        num_hidden_layers=3,
        first_k_dense_replace=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        q_lora_rank=32,
        kv_lora_rank=16,
        qk_nope_head_dim=16,
        qk_rope_head_dim=8,
        v_head_dim=16,
        n_routed_experts=8,
        num_experts_per_tok=2,
        n_shared_experts=1,
        n_group=2,
        topk_group=1,
        routed_scaling_factor=2.5,
        max_position_embeddings=8192,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        pad_token_id=tokens.tiny_token_id(tokens.PAD),
        bos_token_id=tokens.tiny_token_id(tokens.IM_START),
        eos_token_id=tokens.tiny_token_id(tokens.IM_END),
        num_mtp_layers=0,
        tie_word_embeddings=False,
    )
    return KeyeVLMoeConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokens.tiny_token_id(tokens.IMAGE_PAD),
        video_token_id=tokens.tiny_token_id(tokens.VIDEO_PAD),
        vision_start_token_id=tokens.tiny_token_id(tokens.VISION_START),
        vision_end_token_id=tokens.tiny_token_id(tokens.VISION_END),
        fast_video_token_id=tokens.tiny_token_id(tokens.FAST_VIDEO_PAD),
    )


MODEL_PRESETS = {"tiny": tiny, "keye-vl-671b-a37b": keye_vl_671b_a37b}
