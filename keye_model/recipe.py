"""The recipe: one typed object holding the configuration of every stage.

Presets are functions (``tiny()``, ``keye_vl_671b_a37b()``); YAML/JSON files and ``a.b=c`` flags
only override fields. The pipeline receives the recipe as one JSON parameter and logs it to
MLflow, so a run is reproducible from its params.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from keye_model.config_utils import apply_overrides, field, to_dict
from keye_model.data.config import CurateConfig
from keye_model.eval.config import ALL_BENCHMARKS, EvalConfig
from keye_model.model.init_config import InitConfig
from keye_model.rl.config import ColdStartConfig, GSPOConfig, SamplingConfig
from keye_model.serve.config import ServeConfig
from keye_model.train.config import (
    OptimConfig,
    TrainConfig,
    align_stage,
    anneal_stage,
    sft_stage,
)


@dataclass
class Recipe:
    """Every stage's configuration for one run of the Keye-VL recipe."""

    name: str = field("tiny", help="Preset this recipe was built from.")
    curate: CurateConfig = field(default_factory=CurateConfig, help="Data curation stage.")
    init: InitConfig = field(default_factory=InitConfig, help="Model assembly stage.")
    align: TrainConfig = field(
        default_factory=lambda: align_stage(TrainConfig()),
        help="Projector alignment: only mlp_AR trains.",
    )
    pretrain: TrainConfig = field(default_factory=TrainConfig, help="Full pretraining.")
    anneal: TrainConfig = field(
        default_factory=lambda: anneal_stage(TrainConfig()),
        help="Annealing: high-quality data, LR decaying to zero.",
    )
    sft: TrainConfig = field(
        default_factory=lambda: sft_stage(TrainConfig()),
        help="Supervised fine-tuning on instructions + long CoT.",
    )
    cold_start: ColdStartConfig = field(
        default_factory=ColdStartConfig,
        help="Cold-start: keep prompts of 25-75% pass rate, prune reflection, fine-tune.",
    )
    gspo: GSPOConfig = field(
        default_factory=GSPOConfig, help="GSPO reinforcement learning with a verifier."
    )
    evaluate: EvalConfig = field(default_factory=EvalConfig, help="Evaluation stage.")
    serve: ServeConfig = field(default_factory=ServeConfig, help="Serving deploy step.")

    def __post_init__(self) -> None:
        # Held-out evaluation sets come from the same synthesizers as the training data: only a
        # different seed keeps them out of training.
        if self.curate.seed == self.evaluate.synthetic_seed:
            raise ValueError(
                f"evaluate.synthetic_seed ({self.evaluate.synthetic_seed}) must differ from curate.seed: "
                "the held-out sets would repeat training samples"
            )

    def to_json(self, indent: int | None = 2) -> str:
        """Serialise to JSON (the pipeline's single recipe parameter uses one line: indent=None)."""
        return json.dumps(to_dict(self), indent=indent, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Recipe:
        """Parse and validate a recipe written by ``to_json``."""
        return apply_overrides(cls(), json.loads(text))

    def override(self, overrides: dict[str, Any]) -> Recipe:
        """A copy with nested overrides applied (unknown fields are errors)."""
        return apply_overrides(self, overrides)


def _tiny_train(cfg: TrainConfig, steps: int, lr: float) -> TrainConfig:
    """A few real optimizer steps on packed 1k-token rows, one CPU process, fp32, ZeRO-2."""
    cfg.max_steps, cfg.save_every = steps, steps
    cfg.seq_len, cfg.micro_batch_size = 1024, 2
    cfg.optim.lr, cfg.optim.warmup_steps = lr, 1
    return cfg


def _tiny_post_training() -> tuple[TrainConfig, ColdStartConfig, GSPOConfig]:
    """SFT that teaches the rendered one-digit sums (and the answer format) well enough that
    cold-start finds prompts of medium pass rate and GSPO finds groups whose rewards differ.

    Adam's beta2 = 0.999 rather than DeepSeek's 0.95: at this size and step count, 0.95 learns
    the format but not the sums (measured in tests/test_rl_stages.py).
    """
    optim = OptimConfig(
        lr=3e-3, schedule="constant", warmup_steps=10, weight_decay=0.0, betas=[0.9, 0.999]
    )
    sft = sft_stage(TrainConfig())
    sft.categories, sft.long_cot_ratio = {"math_cot": 1.0}, 0.25
    sft.max_steps, sft.save_every, sft.seq_len, sft.micro_batch_size = 100, 100, 768, 1
    sft.optim = optim
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=12)
    cold = ColdStartConfig(
        k=4, max_prompts=48, categories=["math_cot"], thinking="no_think", sampling=sampling
    )
    cold.sft = dataclasses.replace(sft, max_steps=8, save_every=8, categories={})
    cold.sft.optim = dataclasses.replace(optim, lr=1e-3, warmup_steps=1)
    gspo = GSPOConfig(
        group_size=4, prompts_per_step=8, minibatches=2, micro_batch_size=8, steps=4,
        thinking="no_think", categories=["math_cot"], sampling=sampling, max_generation_rounds=8,
        optim=dataclasses.replace(optim, lr=5e-4, warmup_steps=0), save_every=4,
    )  # fmt: skip
    return sft, cold, gspo


def tiny() -> Recipe:
    """Trains end to end on 2 CPU cores in minutes; every stage does its real job at toy scale."""
    post_training = _tiny_post_training()
    return Recipe(
        name="tiny",
        init=InitConfig(preset="tiny"),
        align=_tiny_train(align_stage(TrainConfig()), steps=3, lr=2e-3),
        pretrain=_tiny_train(TrainConfig(), steps=4, lr=1e-3),
        anneal=_tiny_train(anneal_stage(TrainConfig()), steps=3, lr=1e-3),
        sft=post_training[0],
        cold_start=post_training[1],
        gspo=post_training[2],
        # A few hundred small synthetic samples: the whole curate stage runs in seconds on 1 core.
        # A few hundred small synthetic samples; rendered one-digit sums for post-training.
        curate=dataclasses.replace(
            CurateConfig(),
            num_synthetic=300,
            shard_size=64,
            synthetic_max_side=320,
            num_workers=1,
            synthetic_kinds=[
                "chart",
                "table",
                "document",
                "receipt",
                "math",
                "arithmetic",
                "arithmetic",
            ],
        ),
        # The chart asks for 2 x 8 GPUs: a tiny model is rendered and validated, never installed
        # (--set serve.install=true to try the install path on a cluster anyway).
        serve=dataclasses.replace(ServeConfig(), install=False),
    )


def _cluster_train(cfg: TrainConfig, nodes: int, tokens: float, seq_len: int) -> TrainConfig:
    """bf16 ZeRO-3 on ``nodes`` x 8 GPUs via torchx/Volcano; steps from the stage's token budget.

    Global batch: 1 packed row x 2 accumulation x 8 GPUs x nodes; ``keye plan`` shows the memory.
    """
    cfg.precision, cfg.seq_len, cfg.micro_batch_size, cfg.grad_accum = "bf16", seq_len, 1, 2
    cfg.launch.scheduler, cfg.launch.nodes, cfg.launch.nproc_per_node = "kubernetes", nodes, 8
    cfg.launch.zero_stage = 3
    cfg.max_steps = max(1, round(tokens / (seq_len * 2 * 8 * nodes)))
    cfg.save_every = 500
    cfg.optim.warmup_steps = min(2000, cfg.max_steps // 20)
    return cfg


def keye_vl_671b_a37b() -> Recipe:
    """The published Keye-VL-671B-A37B recipe (2 x 8 H800 serving, TP 16)."""
    return Recipe(
        name="keye-vl-671b-a37b",
        init=InitConfig(preset="keye-vl-671b-a37b"),
        # Token budgets: REFERENCE §2 (300B pretrain; 50B SFT mix); align/anneal are inferred.
        align=_cluster_train(align_stage(TrainConfig()), nodes=64, tokens=20e9, seq_len=8192),
        pretrain=_cluster_train(TrainConfig(), nodes=64, tokens=300e9, seq_len=8192),
        anneal=_cluster_train(anneal_stage(TrainConfig()), nodes=64, tokens=50e9, seq_len=32768),
        sft=_cluster_train(sft_stage(TrainConfig()), nodes=64, tokens=50e9, seq_len=32768),
        curate=dataclasses.replace(
            CurateConfig(),
            num_synthetic=1_000_000,
            shard_size=10_000,
            synthetic_max_side=1024,
            num_workers=0,
        ),
        # All ten benchmarks against the SGLang endpoint; thinking mode and budget are inferred
        # (the report does not state them per benchmark).
        evaluate=dataclasses.replace(
            EvalConfig(),
            benchmarks=list(ALL_BENCHMARKS),
            thinking="think",
            max_new_tokens=32768,
            concurrency=64,
            timeout_s=3600.0,
        ),
    )


PRESETS: dict[str, Callable[[], Recipe]] = {"tiny": tiny, "keye-vl-671b-a37b": keye_vl_671b_a37b}


def load_recipe(preset: str = "tiny", overrides: dict[str, Any] | None = None) -> Recipe:
    """Build a preset and apply overrides; unknown presets name the known ones."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    recipe = PRESETS[preset]()
    return recipe.override(overrides) if overrides else recipe
