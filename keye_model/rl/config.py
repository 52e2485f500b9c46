"""Typed configuration of post-training: rollouts, verifier, cold-start filtering and GSPO.

Defaults follow the papers where they say something (GSPO arXiv 2507.18071; DAPO arXiv
2503.14476 for dynamic sampling; the Keye-VL reports for the 25-75% cold-start band) and common
public practice otherwise; each field's help says which. Optimizer and launch settings reuse the
training stages' ``OptimConfig`` / ``LaunchConfig`` / ``TrainConfig`` types.
"""

from __future__ import annotations

from dataclasses import dataclass

from keye_model.config_utils import field
from keye_model.train.config import MODULES, LaunchConfig, OptimConfig, TrainConfig, sft_stage

ROLLOUT_BACKENDS: tuple[str, ...] = ("in_process", "server")
THINKING_MODES: tuple[str, ...] = ("think", "no_think", "auto")
MALFORMED_FALLBACKS: tuple[str, ...] = ("rule", "zero")
# Keys of keye_model.rl.gspo.POLICY_LOSSES (kept here so configs load without torch).
POLICY_LOSS_NAMES: tuple[str, ...] = ("gspo", "gspo_token", "grpo")


@dataclass
class SamplingConfig:
    """How responses are sampled (the same fields go to the in-process sampler and to SGLang)."""

    temperature: float = field(
        1.0,
        help="Softmax temperature; 0 is greedy. RL samples at 1.0 so the trainer's log-probs "
        "score the distribution the rollout sampled from.",
    )
    top_p: float = field(1.0, help="Nucleus sampling mass (1.0 = off; RL usually keeps it off).")
    top_k: int = field(0, help="Keep only the k most likely tokens (0 = off).")
    max_new_tokens: int = field(
        1024, help="Response budget; a response that reaches it is truncated (and masked in GSPO)."
    )

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"sampling.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"sampling.top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"sampling.top_k must be >= 0, got {self.top_k}")
        if self.max_new_tokens < 1:
            raise ValueError(f"sampling.max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass
class RolloutConfig:
    """Where responses come from: the model in this process, or an SGLang (OpenAI-compatible) server."""

    backend: str = field(
        "in_process",
        help="in_process (batched sampling with the KV cache in this process; the tiny preset) "
        "or server (OpenAI-compatible endpoint such as SGLang; the 671B).",
    )
    endpoint: str = field("", help="Server backend: base URL, e.g. http://keye-serve:30000.")
    served_model: str = field("", help="Server backend: model name ('' = first of /v1/models).")
    concurrency: int = field(64, help="Server backend: requests in flight.")
    timeout_s: float = field(600.0, help="Server backend: per-request timeout.")
    max_batch: int = field(64, help="In-process backend: sequences sampled together.")
    use_cache: bool = field(
        True, help="In-process backend: reuse the KV cache while decoding (off only to measure it)."
    )

    def __post_init__(self):
        if self.backend not in ROLLOUT_BACKENDS:
            raise ValueError(
                f"rollout.backend must be one of {ROLLOUT_BACKENDS}, got {self.backend!r}"
            )


@dataclass
class VerifierConfig:
    """How a response is graded: rules first, optionally a verifier model; how rewards combine."""

    use_model: bool = field(
        False,
        help="Ask a verifier model for two verdicts (reasoning consistent, answer correct) after "
        "the rule check (Keye-VL: a Keye-VL-1.5-8B based verifier). Off = rule rewards only.",
    )
    judge_model: str = field(
        "", help="Verifier model directory for the in-process judge ('' with a server judge)."
    )
    judge: RolloutConfig = field(
        default_factory=RolloutConfig, help="Rollout backend the verifier model answers through."
    )
    judge_max_new_tokens: int = field(256, help="Token budget of one judge answer.")
    consistency_weight: float = field(
        0.5,
        help="Reward = (1 - w) * correct + w * (correct and consistent); w = 0 ignores the "
        "consistency verdict. Inferred (the reports give no weight): reasoning is only rewarded "
        "with a right answer, so a confident wrong chain never pays.",
    )
    on_malformed: str = field(
        "rule",
        help="Judge answer without both verdicts: 'rule' uses the rule verdict for correctness "
        "and consistency; 'zero' gives reward 0. Either way it is counted as a fallback.",
    )
    rel_tol: float = field(
        1e-4, help="Relative tolerance when both answer and reference are plain numbers."
    )
    abs_tol: float = field(
        1e-8, help="Absolute tolerance for plain numbers (OlympiadBench's default precision)."
    )
    cache_path: str = field(
        "", help="JSONL file holding judge verdicts across runs ('' = in memory only)."
    )

    def __post_init__(self):
        if self.on_malformed not in MALFORMED_FALLBACKS:
            raise ValueError(
                f"verifier.on_malformed must be one of {MALFORMED_FALLBACKS}, "
                f"got {self.on_malformed!r}"
            )
        if not 0 <= self.consistency_weight <= 1:
            raise ValueError(
                f"verifier.consistency_weight must be in [0, 1], got {self.consistency_weight}"
            )


def _cold_start_sft() -> TrainConfig:
    cfg = sft_stage(TrainConfig())
    cfg.think_mix = [1.0, 0.0, 0.0]
    return cfg


@dataclass
class ColdStartConfig:
    """Cold-start filtering (REFERENCE §2 step 6): keep prompts of medium difficulty, prune reflection."""

    k: int = field(
        8,
        help="Responses sampled per prompt to measure its pass rate (inferred: 8 gives 1/8 steps).",
    )
    pass_band: list[float] = field(
        default_factory=lambda: [0.25, 0.75],
        help="Keep prompts whose measured pass rate p satisfies low <= p <= high (Keye-VL: 25-75%).",
    )
    thinking: str = field(
        "think", help="Thinking mode of the sampled responses: think, no_think or auto."
    )
    prune: bool = field(
        True,
        help="Remove redundant reflection (re-checks after the answer is reached, duplicated "
        "sentences, post-answer text) from kept responses (ConCISE / NoWait practice).",
    )
    max_prompts: int = field(0, help="Use at most this many prompts (0 = all).")
    categories: list[str] = field(
        default_factory=list,
        help="Curated categories whose QA samples become prompts ([] = every verifiable sample).",
    )
    seed: int = field(0, help="Sampling seed.")
    sampling: SamplingConfig = field(
        default_factory=lambda: SamplingConfig(temperature=1.0, max_new_tokens=2048),
        help="Sampling of the k responses (temperature 1: the pass rate of the policy itself).",
    )
    rollout: RolloutConfig = field(default_factory=RolloutConfig, help="Rollout backend.")
    verifier: VerifierConfig = field(default_factory=VerifierConfig, help="Grading.")
    sft: TrainConfig = field(
        default_factory=lambda: _cold_start_sft(),
        help="Fine-tuning on the kept set with the SFT trainer (the SFT stage's settings, every "
        "sample in thinking mode: the kept responses are reasoning chains).",
    )

    def __post_init__(self):
        if self.k < 1:
            raise ValueError(f"cold_start.k must be >= 1, got {self.k}")
        if len(self.pass_band) != 2 or not 0 <= self.pass_band[0] <= self.pass_band[1] <= 1:
            raise ValueError(
                f"cold_start.pass_band must be [low, high] with 0 <= low <= high <= 1, "
                f"got {self.pass_band}"
            )
        if self.thinking not in THINKING_MODES:
            raise ValueError(
                f"cold_start.thinking must be one of {THINKING_MODES}, got {self.thinking!r}"
            )


def _rl_optim() -> OptimConfig:
    return OptimConfig(
        lr=1e-6, schedule="constant", warmup_steps=0, weight_decay=0.01, betas=[0.9, 0.999]
    )


@dataclass
class GSPOConfig:
    """Sequence-level GSPO with dynamic sampling (REFERENCE §3, §7)."""

    loss: str = field(
        "gspo", help="Policy loss: gspo (paper), gspo_token or grpo (comparison; set eps to 0.2)."
    )
    group_size: int = field(
        8, help="G responses per prompt; advantages are normalised within each group."
    )
    prompts_per_step: int = field(
        32, help="Prompts in one rollout batch (after dynamic sampling), i.e. groups per step."
    )
    minibatches: int = field(
        4,
        help="Optimizer steps per rollout batch. GSPO's clipping only acts off-policy, which "
        "needs several updates per batch (TRL's paper config: steps_per_generation = 4x).",
    )
    micro_batch_size: int = field(
        8, help="Sequences per forward/backward; a minibatch's micro-batches accumulate."
    )
    eps_low: float = field(
        3e-4,
        help="Lower clip 1 - eps_low of the sequence ratio (GSPO paper; GRPO's 0.2 is wrong here).",
    )
    eps_high: float = field(
        4e-4, help="Upper clip 1 + eps_high of the sequence ratio (GSPO paper)."
    )
    advantage_eps: float = field(1e-6, help="eps in A = (r - mean) / (std + eps).")
    kl_coef: float = field(
        0.0,
        help="Weight of the k3 KL to the initial policy; 0 = off and no reference model (paper).",
    )
    max_generation_rounds: int = field(
        10,
        help="Dynamic sampling: rollout rounds of fresh prompts allowed to fill one batch with "
        "groups of unequal rewards before the stage fails (DAPO max_num_gen_batches).",
    )
    pass_threshold: float = field(
        0.5, help="A reward at or above this counts as a pass (pass rate; too easy/too hard)."
    )
    old_logprobs: str = field(
        "trainer",
        help="trainer: recompute old log-probs with the policy before updating (rollout-engine "
        "numerics differ, and at eps 3e-4 that alone would clip); rollout: use the sampler's.",
    )
    steps: int = field(
        100,
        help="Rollout batches (policy iterations). Optimizer steps = steps * minibatches; the "
        "LR schedule counts optimizer steps, not generation rounds.",
    )
    thinking: str = field("auto", help="Thinking mode of the prompts: think, no_think or auto.")
    categories: list[str] = field(
        default_factory=list,
        help="Curated categories whose QA samples become prompts ([] = every verifiable sample).",
    )
    trainable: list[str] = field(
        default_factory=lambda: list(MODULES),
        help="Top-level modules that train (visual, mlp_AR, model, lm_head); the rest is frozen.",
    )
    precision: str = field("fp32", help="bf16 or fp32 (CPU tests use fp32).")
    sampling: SamplingConfig = field(default_factory=SamplingConfig, help="Response sampling.")
    rollout: RolloutConfig = field(default_factory=RolloutConfig, help="Rollout backend.")
    verifier: VerifierConfig = field(default_factory=VerifierConfig, help="Rewards.")
    optim: OptimConfig = field(
        default_factory=_rl_optim,
        help="AdamW (RL practice in verl/TRL GSPO examples: lr 1e-6, constant, no warmup).",
    )
    launch: LaunchConfig = field(default_factory=LaunchConfig, help="torchx + DeepSpeed.")
    save_every: int = field(10, help="Write a resumable checkpoint every this many rollout steps.")
    keep_last: int = field(2, help="Resumable checkpoints kept.")
    seed: int = field(0, help="Seed of prompt order and sampling.")

    def __post_init__(self):
        if self.loss not in POLICY_LOSS_NAMES:
            raise ValueError(f"gspo.loss must be one of {POLICY_LOSS_NAMES}, got {self.loss!r}")
        if self.group_size < 2:
            raise ValueError(f"gspo.group_size must be >= 2, got {self.group_size}")
        if self.minibatches < 1 or self.prompts_per_step % self.minibatches:
            raise ValueError(
                f"gspo.prompts_per_step ({self.prompts_per_step}) must split into "
                f"gspo.minibatches ({self.minibatches}) equal parts"
            )
        if self.max_generation_rounds < 1:
            raise ValueError(
                f"gspo.max_generation_rounds must be >= 1, got {self.max_generation_rounds}"
            )
        if self.old_logprobs not in ("trainer", "rollout"):
            raise ValueError(
                f"gspo.old_logprobs must be trainer or rollout, got {self.old_logprobs!r}"
            )
        if self.thinking not in THINKING_MODES:
            raise ValueError(
                f"gspo.thinking must be one of {THINKING_MODES}, got {self.thinking!r}"
            )
        if not 0 <= self.eps_low < 1 or self.eps_high < 0:
            raise ValueError(
                f"gspo.eps_low must be in [0, 1) and eps_high >= 0, got {self.eps_low}, {self.eps_high}"
            )
