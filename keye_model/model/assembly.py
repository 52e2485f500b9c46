"""Assemble a Keye-VL checkpoint from parts: a vision tower, a DeepSeek-V3 LM, a new projector.

This is the start of the recipe (REFERENCE §2, stage 2 trains only the projector):

* vision: a SigLIP (``vision_model.*``) or KeyeViT (``visual.vision_model.*``) safetensors
  checkpoint; SigLIP's pooling ``head`` and text tower are dropped;
* language model: a DeepSeek-V3 HF checkpoint, FP8 e4m3 weights with 128x128 block scales
  (``weight_scale_inv``) dequantised to bf16, the MTP layer dropped;
* projector: freshly initialised.

The output is written shard by shard in the released Keye weight names (``visual.vision_model.*``,
``mlp_AR.*``, DeepSeek's ``model.layers.N.mlp.experts.E.*``), so memory stays bounded by one
input tensor and the released Keye SGLang build can read what we write. transformers fuses the
per-expert weights on load.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from keye_model.log import get_logger
from keye_model.model.configuration import KeyeVLMoeConfig
from keye_model.model.init_config import InitConfig
from keye_model.stage import StageResult

log = get_logger("init")

FP8_BLOCK = 128
DEFAULT_SHARD_BYTES = 4 * 1024**3
# Random initialisation materialises every weight in memory; beyond this, assemble from parts.
MAX_RANDOM_INIT_PARAMS = 5e9


def dequantize_fp8_blockwise(
    weight_fp8: torch.Tensor, scale_inv: torch.Tensor, block: int = FP8_BLOCK
) -> torch.Tensor:
    """``W[i, j] = W_fp8[i, j] * scale_inv[i // block, j // block]`` in float32."""
    rows, cols = weight_fp8.shape
    expected = (-(-rows // block), -(-cols // block))
    if tuple(scale_inv.shape) != expected:
        raise ValueError(
            f"weight_scale_inv has shape {tuple(scale_inv.shape)}; expected {expected} for a {rows}x{cols} weight"
        )
    scale = (
        scale_inv.float().repeat_interleave(block, 0)[:rows].repeat_interleave(block, 1)[:, :cols]
    )
    return weight_fp8.float() * scale


def _safetensors_files(path: str | Path) -> list[Path]:
    path = Path(path)
    if path.is_file() and path.suffix == ".safetensors":
        return [path]
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else []
    if not files:
        raise FileNotFoundError(
            f"{path}: no .safetensors files found (expected a HF checkpoint directory)"
        )
    return files


_BARE_VISION_ROOTS = {"embeddings", "encoder", "post_layernorm", "head"}


def iter_vision_tensors(path: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name under visual., tensor)`` from a SigLIP (either naming) or KeyeViT checkpoint."""
    for file in _safetensors_files(path):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                name = key.removeprefix("visual.")
                if name.split(".", 1)[0] in _BARE_VISION_ROOTS:
                    name = "vision_model." + name  # SiglipVisionModel as saved by transformers 5
                if not name.startswith("vision_model."):
                    continue  # SigLIP text tower, Keye LM weights, logit scale...
                if name.startswith("vision_model.head.") or "packing_position_embedding" in name:
                    continue  # SigLIP pooling head; Keye's unused packing table
                yield name, f.get_tensor(key)


def iter_lm_tensors(path: str | Path, num_hidden_layers: int) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield DeepSeek-V3 LM tensors, FP8 weights dequantised to bf16, MTP layers dropped."""
    layer_re = re.compile(r"^model\.layers\.(\d+)\.")
    for file in _safetensors_files(path):
        with safe_open(str(file), framework="pt") as f:
            keys = set(f.keys())
            for key in sorted(keys):
                if key.endswith("weight_scale_inv"):
                    continue
                match = layer_re.match(key)
                if match and int(match.group(1)) >= num_hidden_layers:
                    continue  # multi-token-prediction layer(s) after the main stack
                tensor = f.get_tensor(key)
                if tensor.dtype == torch.float8_e4m3fn:
                    scale_key = key + "_scale_inv"
                    if scale_key not in keys:
                        raise ValueError(
                            f"{file}: FP8 tensor {key} has no {scale_key} in the same shard"
                        )
                    tensor = dequantize_fp8_blockwise(tensor, f.get_tensor(scale_key)).to(
                        torch.bfloat16
                    )
                yield key, tensor


class ShardWriter:
    """Write tensors into ``model-XXXXX-of-YYYYY.safetensors`` shards plus the index file."""

    def __init__(self, output: Path, max_bytes: int = DEFAULT_SHARD_BYTES):
        self.output, self.max_bytes = output, max_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.shards: list[dict[str, torch.Tensor] | str] = []
        self.weight_map: dict[str, str] = {}
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name in self.weight_map or name in self.pending:
            raise ValueError(f"tensor {name} given twice")
        nbytes = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + nbytes > self.max_bytes:
            self._flush()
        self.pending[name] = tensor.contiguous()
        self.pending_bytes += nbytes
        self.total_bytes += nbytes

    def _flush(self) -> None:
        index = len(self.shards)
        tmp_name = f"shard-{index:05d}.tmp.safetensors"
        save_file(self.pending, str(self.output / tmp_name), metadata={"format": "pt"})
        for name in self.pending:
            self.weight_map[name] = tmp_name
        self.shards.append(tmp_name)
        self.pending, self.pending_bytes = {}, 0

    def close(self) -> list[str]:
        """Flush, give shards their final names, write the index; return the shard file names."""
        if self.pending:
            self._flush()
        n = len(self.shards)
        final = {
            tmp: ("model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors")
            for i, tmp in enumerate(self.shards)
        }
        for tmp, name in final.items():
            (self.output / tmp).replace(self.output / name)
        self.weight_map = {k: final[v] for k, v in self.weight_map.items()}
        if n > 1:
            index = {
                "metadata": {"total_size": self.total_bytes},
                "weight_map": dict(sorted(self.weight_map.items())),
            }
            (self.output / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        return list(final.values())


@dataclass
class AssemblyReport:
    """What ``assemble`` wrote and where each part came from."""

    output: str
    preset: str
    vision_source: str
    lm_source: str
    tensors: int
    bytes: int
    shards: list[str]


_LM_SHAPE_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "moe_intermediate_size",
    "num_hidden_layers",
    "first_k_dense_replace",
    "num_attention_heads",
    "q_lora_rank",
    "kv_lora_rank",
    "qk_nope_head_dim",
    "qk_rope_head_dim",
    "v_head_dim",
    "n_routed_experts",
    "num_experts_per_tok",
    "n_shared_experts",
    "n_group",
    "topk_group",
)
_FUSED_EXPERTS = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(gate_up_proj|down_proj)$")


def expected_lm_names(config: KeyeVLMoeConfig) -> set[str]:
    """Every LM tensor name a DeepSeek-V3 checkpoint must hold (per-expert names, as released)."""
    from transformers import DeepseekV3ForCausalLM

    with torch.device("meta"):
        names = set(DeepseekV3ForCausalLM(config.text_config).state_dict())
    expected = set()
    for name in names:
        match = _FUSED_EXPERTS.match(name)
        if not match:
            expected.add(name)
            continue
        projections = (
            ("gate_proj", "up_proj") if match.group(2) == "gate_up_proj" else ("down_proj",)
        )
        for e in range(config.text_config.n_routed_experts):
            expected.update(f"{match.group(1)}.{e}.{proj}.weight" for proj in projections)
    return expected


def _check_lm_config(lm: Path, config: KeyeVLMoeConfig) -> None:
    """Fail early, naming the field, when the LM checkpoint's config contradicts the preset."""
    cfg_file = lm / "config.json"
    if not cfg_file.exists():
        return
    theirs = json.loads(cfg_file.read_text())
    ours = config.text_config
    for key in _LM_SHAPE_FIELDS:
        if key in theirs and theirs[key] != getattr(ours, key):
            raise ValueError(
                f"{cfg_file}: {key}={theirs[key]} but the preset's text_config.{key}={getattr(ours, key)}"
            )


def build_processor(config: KeyeVLMoeConfig, preset: str, lm: Path | None):
    """The processor a model directory carries; sets the config's vision token ids to match it.

    A DeepSeek LM checkpoint brings its tokenizer (Keye's vision tokens are added when absent);
    the tiny preset uses the offline tiny tokenizer. Returns None when there is no tokenizer.
    """
    from keye_model.processing import KeyeProcessor, build_tiny_tokenizer, load_tokenizer
    from keye_model.processing.tokens import SPECIAL_TOKENS

    if lm is not None and any(
        (lm / f).exists() for f in ("tokenizer.json", "tokenizer_config.json")
    ):
        tokenizer = load_tokenizer(lm)
        missing = [t for t in SPECIAL_TOKENS if t not in tokenizer.get_vocab()]
        if missing:
            tokenizer.add_special_tokens(
                {"additional_special_tokens": missing}, replace_extra_special_tokens=False
            )
    elif preset == "tiny":
        tokenizer = build_tiny_tokenizer()
    else:
        log.warning("no tokenizer in --lm %s: the model directory will carry no processor", lm)
        return None
    if len(tokenizer) > config.text_config.vocab_size:
        raise ValueError(
            f"tokenizer has {len(tokenizer)} tokens but text_config.vocab_size is {config.text_config.vocab_size}"
        )
    processor = KeyeProcessor(tokenizer)
    config.image_token_id = processor.image_token_id
    config.video_token_id = processor.video_token_id
    config.fast_video_token_id = processor.fast_video_token_id
    config.vision_start_token_id = processor.vision_start_token_id
    config.vision_end_token_id = processor.vision_end_token_id
    return processor


def _random_part(module: torch.nn.Module, prefix: str) -> Iterator[tuple[str, torch.Tensor]]:
    for name, tensor in module.state_dict().items():
        yield prefix + name, tensor


def assemble(
    preset: str,
    output: str | Path,
    vision: str | Path | None = None,
    lm: str | Path | None = None,
    seed: int = 0,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> AssemblyReport:
    """Build a Keye-VL checkpoint in ``output`` from optional vision/LM parts and a new projector."""
    from keye_model.model.keye import KeyeVLMoeForConditionalGeneration
    from keye_model.model.params import count_parameters
    from keye_model.model.projector import KeyeProjector
    from keye_model.model.vision import KeyeVisionModel

    config = KeyeVLMoeConfig.from_preset(preset)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    for part, path in (("--vision", vision), ("--lm", lm)):
        if path is not None and not Path(path).exists():
            raise FileNotFoundError(f"{part} {path}: no such file or directory")
    if lm is not None:
        _check_lm_config(Path(lm), config)
    torch.manual_seed(seed)
    processor = build_processor(config, preset, Path(lm) if lm is not None else None)
    if processor is not None:
        processor.save_pretrained(output)

    if lm is None:
        n_params = count_parameters(config).total
        if n_params > MAX_RANDOM_INIT_PARAMS:
            raise ValueError(
                f"preset {preset!r} has {n_params / 1e9:.0f}B parameters: random initialisation would need "
                f"~{n_params * 2 / 1e9:.0f} GB; pass --lm (a DeepSeek-V3 checkpoint) and --vision instead"
            )
        model = KeyeVLMoeForConditionalGeneration(config)
        if vision is not None:
            state = dict(iter_vision_tensors(vision))
            missing, unexpected = model.visual.load_state_dict(state, strict=False)
            if missing or unexpected:
                raise ValueError(
                    f"--vision {vision}: missing {missing[:5]}, unexpected {unexpected[:5]}"
                )
        model.save_pretrained(output, max_shard_size=shard_bytes)
        stored = sum(p.numel() * p.element_size() for p in model.state_dict().values())
        report = AssemblyReport(
            str(output),
            preset,
            str(vision or "random"),
            "random",
            len(model.state_dict()),
            stored,
            sorted(p.name for p in output.glob("*.safetensors")),
        )
        log.info("wrote %s: %d tensors, %.1f MB", output, report.tensors, stored / 1e6)
        return report

    writer = ShardWriter(output, shard_bytes)
    expected_vision = KeyeVisionModel(config.vision_config) if vision is None else None
    vision_tensors = (
        _random_part(expected_vision, "visual.")
        if expected_vision is not None
        else (("visual." + n, t) for n, t in iter_vision_tensors(vision))
    )
    with torch.device("meta"):
        vision_shapes = {
            "visual." + n: p.shape
            for n, p in KeyeVisionModel(config.vision_config).state_dict().items()
        }
    seen_vision = set()
    for name, tensor in vision_tensors:
        if name not in vision_shapes:
            raise ValueError(f"--vision {vision}: unexpected tensor {name.removeprefix('visual.')}")
        if tuple(tensor.shape) != tuple(vision_shapes[name]):
            raise ValueError(
                f"--vision {vision}: {name} has shape {tuple(tensor.shape)}, preset expects {tuple(vision_shapes[name])}"
            )
        seen_vision.add(name)
        writer.add(name, tensor)
    if missing := sorted(set(vision_shapes) - seen_vision):
        raise ValueError(f"--vision {vision}: missing tensors {missing[:5]}")

    projector = KeyeProjector(
        config.vision_config.hidden_size,
        config.text_config.hidden_size,
        config.vision_config.spatial_merge_size,
        config.projector_layer_norm_eps,
    )
    for module in projector.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=config.initializer_range)
            torch.nn.init.zeros_(module.bias)
    for name, tensor in _random_part(projector, "mlp_AR."):
        writer.add(name, tensor)

    expected_lm = expected_lm_names(config)
    seen_lm = set()
    for name, tensor in iter_lm_tensors(lm, config.text_config.num_hidden_layers):
        if name not in expected_lm:
            raise ValueError(f"--lm {lm}: unexpected tensor {name} for preset {preset!r}")
        writer.add(name, tensor)
        seen_lm.add(name)
    if missing := sorted(expected_lm - seen_lm):
        # A missing shard would otherwise load as random weights with only a warning.
        raise ValueError(
            f"--lm {lm}: {len(missing)} tensors missing (a shard absent?), e.g. {missing[:3]}"
        )
    shards = writer.close()
    config.architectures = ["KeyeVLMoeForConditionalGeneration"]
    config.save_pretrained(output)
    report = AssemblyReport(
        str(output),
        preset,
        str(vision or "random"),
        str(lm),
        len(writer.weight_map),
        writer.total_bytes,
        shards,
    )
    log.info(
        "wrote %s: %d tensors in %d shard(s), %.1f MB",
        output,
        report.tensors,
        len(shards),
        writer.total_bytes / 1e6,
    )
    return report


def init_model(
    cfg: InitConfig,
    *,
    output: str,
    vision: str | None = None,
    lm: str | None = None,
) -> StageResult:
    """Stage entry: assemble the model into ``output`` (local or s3://) and track it in MLflow."""
    from keye_model.model.params import count_parameters
    from keye_model.stage import local_output
    from keye_model.tracking import stage_run

    preset, seed = cfg.preset, cfg.seed
    params = {"preset": preset, "vision": vision or "random", "lm": lm or "random", "seed": seed}
    with stage_run("init", params) as tracker:
        with local_output(output) as local:
            report = assemble(preset, local, vision=vision, lm=lm, seed=seed)
            counts = count_parameters(KeyeVLMoeConfig.from_pretrained(local))
        metrics = {
            "params_total": counts.total,
            "params_active": counts.active,
            "checkpoint_bytes": report.bytes,
        }
        tracker.log_metrics(metrics)
        tracker.log_dict(asdict(report), "init_report.json")
        return StageResult(
            stage="init",
            outputs={"model": output},
            metrics=metrics,
            message=f"model {preset} written to {output}: {counts.summary()}",
            details=asdict(report),
        )
