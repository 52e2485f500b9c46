"""Configuration of the gradient-training stages: align, pretrain, anneal and SFT (REFERENCE §2).

One ``TrainConfig`` type serves every stage; the stages differ only by values (which modules train,
data mixture, schedule). Presets in ``keye_model.recipe`` fill them for tiny and for the 671B.
Launch (torchx) and parallelism (DeepSpeed) settings live here too, never in model code.
"""

from __future__ import annotations

from dataclasses import dataclass

from keye_model.config_utils import field

# Top-level module names of KeyeVLMoeForConditionalGeneration (the released checkpoint prefixes).
MODULES: tuple[str, ...] = ("visual", "mlp_AR", "model", "lm_head")
SCHEDULES: tuple[str, ...] = ("wsd", "cosine", "constant")
PRECISIONS: tuple[str, ...] = ("bf16", "fp32")
SCHEDULERS: tuple[str, ...] = ("local_cwd", "kubernetes")


@dataclass
class OptimConfig:
    """AdamW, the learning-rate schedule and gradient clipping."""

    lr: float = field(1e-4, help="Peak learning rate (reached after warmup).")
    min_lr_ratio: float = field(
        0.1,
        help="Final LR as a share of the peak for cosine/wsd; 0 decays to zero (annealing).",
    )
    schedule: str = field(
        "wsd",
        help="wsd: warmup-stable-decay (linear warmup, flat, then a linear decay over the last "
        "decay_fraction of steps; DeepSeek-V3 pretraining shape); cosine; constant (after warmup).",
    )
    warmup_steps: int = field(10, help="Linear warmup steps from 0 to lr.")
    decay_fraction: float = field(
        0.2, help="wsd only: share of max_steps spent in the final decay."
    )
    weight_decay: float = field(0.1, help="AdamW decoupled weight decay (DeepSeek-V3: 0.1).")
    betas: list[float] = field(
        default_factory=lambda: [0.9, 0.95], help="AdamW betas (DeepSeek-V3: 0.9, 0.95)."
    )
    eps: float = field(1e-8, help="AdamW epsilon.")
    grad_clip: float = field(1.0, help="Clip the global gradient norm to this (0 = off).")


@dataclass
class MoEConfig:
    """DeepSeek-V3's load balancing: aux-loss-free bias updates plus a tiny sequence-wise loss."""

    bias_update_rate: float = field(
        1e-3,
        help="gamma of aux-loss-free balancing (DeepSeek-V3 §2.1.2): after each optimizer step, "
        "e_score_correction_bias -= gamma * sign(load - mean load) per layer; 0 turns it off.",
    )
    seq_aux_loss_weight: float = field(
        1e-4,
        help="alpha of the complementary sequence-wise balance loss (DeepSeek-V3 eq. 17-20); "
        "0 turns it off. Kept tiny on purpose: the bias does the balancing.",
    )


@dataclass
class LaunchConfig:
    """How a training stage is launched (torchx) and parallelised (DeepSpeed ZeRO)."""

    scheduler: str = field(
        "local_cwd",
        help="torchx scheduler: local_cwd (torchrun on this machine, gloo on CPU) or kubernetes "
        "(a Volcano job of nodes x gpus_per_node).",
    )
    nproc_per_node: int = field(
        1, help="Processes per node (local CPU: 1 or 2; cluster: GPUs per node)."
    )
    nodes: int = field(1, help="Nodes (kubernetes scheduler).")
    gpus_per_node: int = field(8, help="GPUs requested per node on the cluster.")
    gpu_mem_gb: float = field(80.0, help="Memory of one GPU in GB (H800/H100: 80).")
    zero_stage: int = field(
        2,
        help="DeepSpeed ZeRO stage (0-3); 3 shards parameters and registers MoE blocks as leaves.",
    )
    image: str = field(
        "", help="Training image on the cluster ('' = components.images.TRAIN_IMAGE)."
    )
    queue: str = field("default", help="Volcano queue of the kubernetes scheduler.")
    shm_size: str = field("64Gi", help="Memory-backed /dev/shm per pod (NCCL, dataloader workers).")
    cpu_per_node: int = field(96, help="CPU cores requested per node.")
    memory_per_node_gb: int = field(1600, help="Host memory requested per node in GB.")
    namespace: str = field("kubeflow", help="Kubernetes namespace of the training job.")
    env_secrets: list[str] = field(
        default_factory=lambda: ["keye-s3", "keye-mlflow"],
        help="Secrets whose keys become the training pods' environment (S3/MLflow credentials; "
        "optional). Credential variables are never copied into the job object itself.",
    )
    timeout_s: float = field(7 * 24 * 3600.0, help="Fail the stage if the job runs longer.")


@dataclass
class TrainConfig:
    """One gradient-training stage: what trains, on which data, with which schedule."""

    trainable: list[str] = field(
        default_factory=lambda: list(MODULES),
        help="Top-level modules that train (visual, mlp_AR, model, lm_head); the rest is frozen.",
    )
    categories: dict[str, float] = field(
        default_factory=dict,
        help="Curated categories to train on with their sampling weights ({} = every category, "
        "weight 1).",
    )
    max_steps: int = field(100, help="Optimizer steps.")
    micro_batch_size: int = field(2, help="Packed sequences per micro-batch per rank.")
    grad_accum: int = field(1, help="Micro-batches accumulated per optimizer step.")
    seq_len: int = field(2048, help="Tokens per packed sequence (samples are packed up to this).")
    packing: bool = field(
        True,
        help="Pack several samples per sequence (per-sample attention and positions); "
        "false pads each sample to the longest in its micro-batch.",
    )
    loss_on: str = field(
        "assistant",
        help="Which tokens carry loss: assistant (answers and their <think> blocks) or all "
        "(every text token; captions in pretraining).",
    )
    think_mix: list[float] = field(
        default_factory=lambda: [0.4, 0.3, 0.3],
        help="Share of SFT prompts in /think, /no_think and auto mode (must sum to 1).",
    )
    long_cot_ratio: float = field(
        0.5,
        help="SFT: share of samples with a long chain of thought (instruction data fills the "
        "rest); the report found 50B mixed beat 30B instruct-only.",
    )
    precision: str = field("fp32", help="bf16 or fp32 (CPU tests use fp32).")
    experts_implementation: str = field(
        "grouped_mm",
        help="MoE expert kernel (transformers): eager (a loop over experts), grouped_mm (one "
        "grouped GEMM; 2.95x eager on a 102M CPU proxy, 4.8x on an H100) or batched_mm.",
    )
    attention: str = field(
        "packed_sdpa",
        help="LM attention over packed rows without flash-attn: packed_sdpa (causal SDPA per "
        "sample, sum of len^2) or sdpa (transformers' dense block-diagonal mask, row_len^2). "
        "Same maths, different rounding; flash-attn varlen is used whenever installed.",
    )
    optim: OptimConfig = field(default_factory=OptimConfig, help="Optimizer and schedule.")
    moe: MoEConfig = field(default_factory=MoEConfig, help="MoE load balancing.")
    launch: LaunchConfig = field(default_factory=LaunchConfig, help="torchx + DeepSpeed.")
    save_every: int = field(50, help="Write a resumable checkpoint every this many steps.")
    keep_last: int = field(2, help="Resumable checkpoints kept (older ones are deleted).")
    log_every: int = field(1, help="Log step metrics every this many steps.")
    seed: int = field(0, help="Seed of data order, dropout and init of anything new.")


def align_stage(cfg: TrainConfig) -> TrainConfig:
    """Projector alignment: only the new mlp_AR trains, at a higher LR, on every category."""
    cfg.trainable = ["mlp_AR"]
    cfg.optim.lr = 1e-3
    return cfg


def anneal_stage(cfg: TrainConfig) -> TrainConfig:
    """Annealing: the higher-quality mixture, the LR decaying to exactly zero (cosine to 0)."""
    cfg.optim.schedule = "cosine"
    cfg.optim.min_lr_ratio = 0.0
    cfg.categories = {"chart": 1.0, "table": 1.0, "document": 1.0, "ocr": 1.0, "math_cot": 2.0}
    return cfg


def sft_stage(cfg: TrainConfig) -> TrainConfig:
    """SFT: instruction data mixed with long CoT, loss on assistant tokens, all thinking modes."""
    cfg.loss_on = "assistant"
    cfg.optim.lr = 5e-5
    cfg.optim.schedule = "cosine"
    return cfg
