"""Memory and communication plan of the training stages under DeepSpeed ZeRO (``keye plan``).

Per stage (align, pretrain, anneal, sft) and its ``TrainConfig``: bytes per GPU for weights,
gradients, optimizer state and activations at the configured micro-batch and sequence length, the
nodes the stage needs, and the bytes each GPU sends per optimizer step. Parameter counts come from
the model config on the meta device (``keye_model.model.params``); everything else is the closed
form written in each function's docstring, so a reviewer can redo any number by hand.

Accounting follows the ZeRO paper (Rajbhandari et al. 2020): mixed precision keeps bf16 weights
and gradients plus fp32 master weights and Adam moments (12 bytes per trainable parameter). It is a
lower bound: no CUDA context, allocator fragmentation or communication buckets, and the vision
tower's activations are left out (they scale with the share of image tokens, not with seq_len).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from keye_model.model.configuration import KeyeVLMoeConfig
from keye_model.model.params import ParameterCount, count_parameters
from keye_model.train.config import MODULES, TrainConfig

STAGES: tuple[str, ...] = ("align", "pretrain", "anneal", "sft")
GB = 1e9  # decimal, like GPU datasheets ("80 GB")
DEFAULT_LINK_GBPS = 400.0  # one 400 Gb/s NIC per GPU (H800/H100 clusters)

# Read from the installed deepspeed 0.19.8 (paths relative to site-packages/deepspeed/).
AUTOEP_FINDING = (
    "DeepSpeed AutoEP (deepspeed 0.19.8) does NOT support aux-loss-free balancing for deepseek_v3: "
    "the preset sets supports_expert_bias=False and load_balance_coeff=None "
    "(module_inject/auto_ep_presets/deepseek_v3.py:31-32, note at :37-38); a non-null "
    "load_balance_coeff is rejected (module_inject/auto_ep_config.py:74-76 and :121-122, "
    "module_inject/auto_ep_layer.py:575-577). The checkpoint's e_score_correction_bias is copied "
    "into AutoEP's router (auto_ep_layer.py:606-608) and added to the routing scores "
    "(moe/ep_router.py:166-168), but nothing in the package ever updates it: the per-expert load "
    "is accumulated in tokens_per_expert (auto_ep_layer.py:982) and never read. Under AutoEP the "
    "bias stays frozen unless keye's own post-step update writes router.e_score_correction_bias "
    "from those counts."
)


@dataclass(frozen=True)
class Hardware:
    """The cluster a plan is made for."""

    nodes: int
    gpus_per_node: int = 8
    gpu_mem_gb: float = 80.0
    link_gbps: float = DEFAULT_LINK_GBPS

    @property
    def world(self) -> int:
        return self.nodes * self.gpus_per_node


@dataclass(frozen=True)
class Precision:
    """Bytes per element: weights, gradients, activations and optimizer state per parameter."""

    weight: int
    grad: int
    act: int
    optim: int


def precision_bytes(precision: str) -> Precision:
    """bf16: 2-byte weights/grads/activations + 12-byte optimizer (fp32 master, m, v); fp32: 4 + 8."""
    if precision == "bf16":
        return Precision(weight=2, grad=2, act=2, optim=12)
    if precision == "fp32":
        # fp32 weights are their own master copy: Adam adds only m and v.
        return Precision(weight=4, grad=4, act=4, optim=8)
    raise ValueError(f"precision: {precision!r} is not bf16 or fp32")


def module_params(counts: ParameterCount, config: KeyeVLMoeConfig) -> dict[str, int]:
    """Parameters of each top-level module: lm_head = vocab x hidden, model = text - lm_head."""
    text = config.text_config
    lm_head = text.vocab_size * text.hidden_size
    return {
        "visual": counts.vision,
        "mlp_AR": counts.projector,
        "model": counts.text - lm_head,
        "lm_head": lm_head,
    }


def moe_layers(config: KeyeVLMoeConfig) -> int:
    """Decoder layers with a routed MoE block: all but the first ``first_k_dense_replace``."""
    text = config.text_config
    return max(text.num_hidden_layers - text.first_k_dense_replace, 0)


def moe_block_params(counts: ParameterCount, config: KeyeVLMoeConfig) -> int:
    """One MoE block, the ZeRO-3 leaf: routed/moe_layers + n_shared x 3 h I_moe + router E x h."""
    layers = moe_layers(config)
    if not layers:
        return 0
    text = config.text_config
    routed = counts.routed_experts // layers
    shared = text.n_shared_experts * 3 * text.hidden_size * text.moe_intermediate_size
    return routed + shared + text.n_routed_experts * text.hidden_size


def largest_gather(
    counts: ParameterCount, config: KeyeVLMoeConfig
) -> tuple[str, tuple[str, ...], int]:
    """(what, owning modules, params) of the biggest unit ZeRO-3 gathers whole.

    G = max(moe_block_params, vocab x hidden): with MoE blocks registered as leaves all their
    experts are gathered at once; the embedding (in model) and lm_head are single tables.
    """
    text = config.text_config
    table = text.vocab_size * text.hidden_size
    block = moe_block_params(counts, config)
    if block >= table:
        return ("one MoE block (all routed experts + shared + router)", ("model",), block)
    return ("the embedding / lm_head table", ("model", "lm_head"), table)


def layer_activation_elems(config: KeyeVLMoeConfig, moe: bool) -> int:
    """Elements one decoder layer keeps for backward, per token (flash attention: no s x s scores).

    attention = 2h (input, norm) + 2 r_q (q down-projection and its norm; r_q = 0 without q-LoRA)
              + (r_kv + d_rope) + r_kv (kv down-projection, its norm)
              + n_h d_qk (q) + n_h (d_nope + d_v) (kv up-projection) + n_h d_qk (k with rope)
              + n_h d_v (attention output),   d_qk = d_nope + d_rope
    dense MLP = 2h (residual, norm) + 3 I (gate, up, act x up)
    MoE MLP   = 2h + E (router scores) + k (h + 3 I_moe + h) (per routed copy: input, gate/up/act,
                output) + n_shared 3 I_moe
    """
    t = config.text_config
    h, n_h = t.hidden_size, t.num_attention_heads
    d_qk = t.qk_nope_head_dim + t.qk_rope_head_dim
    r_q = t.q_lora_rank or 0
    attention = (
        2 * h
        + 2 * r_q
        + (t.kv_lora_rank + t.qk_rope_head_dim)
        + t.kv_lora_rank
        + n_h * d_qk
        + n_h * (t.qk_nope_head_dim + t.v_head_dim)
        + n_h * d_qk
        + n_h * t.v_head_dim
    )
    if not moe:
        return attention + 2 * h + 3 * t.intermediate_size
    i_m, k = t.moe_intermediate_size, t.num_experts_per_tok
    return (
        attention
        + 2 * h
        + t.n_routed_experts
        + k * (h + 3 * i_m + h)
        + t.n_shared_experts * 3 * i_m
    )


def activation_bytes(config: KeyeVLMoeConfig, tokens: int, act: int, recompute: bool) -> int:
    """Language-model activations of one micro-batch of ``tokens`` tokens on one GPU.

    logits = tokens V (act + 4)       (the logits and the fp32 copy the loss upcasts to)
    recompute (checkpoint every decoder layer):
        tokens (L h act + max(a_dense, a_moe) act) + logits
        (each layer's input, plus one layer's full activations while it is recomputed)
    no recompute: tokens act (k_dense a_dense + (L - k_dense) a_moe) + logits
    """
    t = config.text_config
    layers, dense = t.num_hidden_layers, min(t.first_k_dense_replace, t.num_hidden_layers)
    a_dense = layer_activation_elems(config, moe=False)
    a_moe = layer_activation_elems(config, moe=True)
    logits = tokens * t.vocab_size * (act + 4)
    if recompute:
        worst = max(a_dense if dense else 0, a_moe if layers > dense else 0)
        return tokens * (layers * t.hidden_size + worst) * act + logits
    return tokens * act * (dense * a_dense + (layers - dense) * a_moe) + logits


def backward_params(modules: dict[str, int], trainable: list[str]) -> int:
    """Parameters backward passes through: every module from the first trainable one (forward order
    visual -> mlp_AR -> model -> lm_head) to the loss. Align trains mlp_AR, so backward crosses the
    whole frozen LM too."""
    first = min(MODULES.index(name) for name in trainable)
    return sum(modules[name] for name in MODULES[first:])


@dataclass
class StagePlan:
    """One stage's per-GPU memory (bytes), nodes needed and per-GPU traffic per optimizer step."""

    stage: str
    zero_stage: int
    precision: str
    world: int
    total_params: int
    trainable_params: int
    tokens_per_micro_batch: int
    weights: int
    gathered: int
    gradients: int
    optimizer: int
    activations: int
    sharded: int  # the part that divides by the world size
    gpu_mem: int
    comm_bytes: int
    comm_seconds: float
    nodes_needed: int | None  # None: does not fit at any scale under this ZeRO stage
    fits: bool  # constant + sharded / world <= gpu_mem, exactly (the rule nodes_needed inverts)
    gathered_what: str = ""

    @property
    def total(self) -> int:
        return self.weights + self.gathered + self.gradients + self.optimizer + self.activations


def nodes_needed(constant: int, sharded: int, gpu_mem: int, gpus_per_node: int) -> int | None:
    """Smallest node count with constant + sharded / (nodes g) <= gpu_mem; None if constant alone
    does not fit: nodes = ceil(sharded / ((gpu_mem - constant) g))."""
    if constant >= gpu_mem:
        return None
    return max(1, math.ceil(sharded / ((gpu_mem - constant) * gpus_per_node)))


def plan_stage(
    stage: str,
    cfg: TrainConfig,
    config: KeyeVLMoeConfig,
    counts: ParameterCount,
    hardware: Hardware,
    recompute: bool = True,
) -> StagePlan:
    """Memory per GPU, nodes needed and communication per step for one stage (ZeRO paper layout).

    With P all parameters, T trainable, N GPUs, A = grad_accum, G the largest ZeRO-3 gather:
        weights     P w                  ZeRO 0-2 | P w / N + G w + [G trains] G g     ZeRO-3
        gradients   T g                  ZeRO 0-1 | T g / N                            ZeRO 2-3
        optimizer   T o                  ZeRO 0   | T o / N                            ZeRO 1-3
    Per-GPU bytes sent per step (ring collectives, f = (N - 1) / N; P_b from backward_params):
        ZeRO-0  2 f T g              all-reduce of gradients
        ZeRO-1  f T (g + w)          reduce-scatter gradients, all-gather updated weights
        ZeRO-2  f T (A g + w)        reduce-scatter every micro-batch, all-gather once
        ZeRO-3  A f ((P + P_b) w + T g)   gather forward and backward, reduce-scatter, per micro-batch
    """
    launch = cfg.launch
    zero = launch.zero_stage
    if zero not in (0, 1, 2, 3):
        raise ValueError(f"{stage}.launch.zero_stage: {zero} is not 0, 1, 2 or 3")
    unknown = [name for name in cfg.trainable if name not in MODULES]
    if unknown or not cfg.trainable:
        raise ValueError(
            f"{stage}.trainable: {cfg.trainable} must name some of {', '.join(MODULES)}"
        )
    for name in ("micro_batch_size", "seq_len", "grad_accum"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{stage}.{name} must be >= 1, got {getattr(cfg, name)}")
    b = precision_bytes(cfg.precision)
    modules = module_params(counts, config)
    p_all = counts.total
    p_train = sum(modules[name] for name in set(cfg.trainable))
    n = hardware.world

    gathered, what = 0, ""
    if zero == 3:
        what, owners, g_params = largest_gather(counts, config)
        trains = any(name in cfg.trainable for name in owners)
        gathered = g_params * b.weight + (g_params * b.grad if trains else 0)
    weights_sharded = p_all * b.weight if zero == 3 else 0
    grads_sharded = p_train * b.grad if zero >= 2 else 0
    optim_sharded = p_train * b.optim if zero >= 1 else 0
    tokens = cfg.micro_batch_size * cfg.seq_len
    activations = activation_bytes(config, tokens, b.act, recompute)
    constant = (
        (0 if zero == 3 else p_all * b.weight)
        + gathered
        + (0 if zero >= 2 else p_train * b.grad)
        + (0 if zero >= 1 else p_train * b.optim)
        + activations
    )
    sharded = weights_sharded + grads_sharded + optim_sharded

    f = (n - 1) / n
    accum = cfg.grad_accum
    if zero == 0:
        comm = 2 * f * p_train * b.grad
    elif zero == 1:
        comm = f * p_train * (b.grad + b.weight)
    elif zero == 2:
        comm = f * p_train * (accum * b.grad + b.weight)
    else:
        p_back = backward_params(modules, cfg.trainable)
        comm = accum * f * ((p_all + p_back) * b.weight + p_train * b.grad)
    gpu_mem = int(hardware.gpu_mem_gb * GB)
    return StagePlan(
        stage=stage,
        zero_stage=zero,
        precision=cfg.precision,
        world=n,
        total_params=p_all,
        trainable_params=p_train,
        tokens_per_micro_batch=tokens,
        weights=(p_all * b.weight if zero < 3 else weights_sharded // n),
        gathered=gathered,
        gradients=(p_train * b.grad if zero < 2 else grads_sharded // n),
        optimizer=(p_train * b.optim if zero < 1 else optim_sharded // n),
        activations=activations,
        sharded=sharded,
        gpu_mem=gpu_mem,
        comm_bytes=int(comm),
        comm_seconds=comm / (hardware.link_gbps / 8 * GB),
        nodes_needed=nodes_needed(constant, sharded, gpu_mem, hardware.gpus_per_node),
        fits=constant + sharded / n <= gpu_mem,
        gathered_what=what,
    )


@dataclass
class Plan:
    """Every stage's plan plus the notes on experts (ZeRO-3 alone vs expert parallelism, AutoEP)."""

    model: str
    hardware: Hardware
    recompute: bool
    counts: ParameterCount
    stages: list[StagePlan]
    notes: list[str] = field(default_factory=list)


def zero3_expert_note(
    config: KeyeVLMoeConfig, counts: ParameterCount, cfg: TrainConfig, hardware: Hardware
) -> str:
    """What ZeRO-3 alone means for a MoE layer, and what expert parallelism (EP) would change.

    ZeRO-3 gather per MoE layer   = routed/moe_layers params (bf16: x 2 bytes) on every rank;
    its expert traffic per step   = A 2 f routed w          (forward + backward gathers)
    EP over e ranks (e = min(N, E)) holds routed/e params per rank with their full state
    (w + g + o bytes each) and replaces the gathers by token all-to-all:
                                    A moe_layers 4 tokens k h act
    (dispatch and combine, forward and backward; an upper bound: tokens staying local are free).
    """
    layers = moe_layers(config)
    if not layers:
        return "The model has no MoE layers: expert parallelism does not apply."
    t = config.text_config
    b = precision_bytes(cfg.precision)
    per_layer = counts.routed_experts // layers
    n = hardware.world
    f = (n - 1) / n
    gather_step = cfg.grad_accum * 2 * f * counts.routed_experts * b.weight
    ep = min(n, t.n_routed_experts)
    tokens = cfg.micro_batch_size * cfg.seq_len
    a2a_step = cfg.grad_accum * layers * 4 * tokens * t.num_experts_per_tok * t.hidden_size * b.act
    ep_state = counts.routed_experts / ep * (b.weight + b.grad + b.optim)
    return (
        f"ZeRO-3 alone, MoE blocks as leaves: every rank gathers ALL {t.n_routed_experts} experts of "
        f"a MoE layer at once, {_count(per_layer)} params = {per_layer * b.weight / GB:.1f} GB in "
        f"{cfg.precision}, in forward and again in backward, for each of the {layers} MoE layers "
        f"and every micro-batch: {gather_step / GB:,.0f} GB of expert weights per GPU per step "
        f"({gather_step / (hardware.link_gbps / 8 * GB):,.1f} s at {hardware.link_gbps:g} Gb/s) "
        f"although each token uses {t.num_experts_per_tok} of them. Expert parallelism over "
        f"{ep} ranks instead keeps {t.n_routed_experts // ep} expert(s) per layer resident on "
        f"each rank ({ep_state / GB:,.1f} GB with gradients and Adam state for all layers), never "
        f"gathers them, and moves tokens instead: all-to-all of at most {a2a_step / GB:,.1f} GB "
        f"per GPU per step at micro-batch {cfg.micro_batch_size} x {cfg.seq_len}; the "
        f"{_count(counts.total - counts.routed_experts)} non-expert params still need ZeRO (or "
        f"tensor/pipeline parallelism) across ranks. DeepSeek-V3's "
        f"group-limited routing (each token to at most topk_group={t.topk_group} of n_group="
        f"{t.n_group} groups) bounds how many nodes a token's copies reach."
    )


def make_plan(
    stages: dict[str, TrainConfig],
    config: KeyeVLMoeConfig,
    hardware: Hardware,
    model_name: str = "",
    recompute: bool = True,
    counts: ParameterCount | None = None,
) -> Plan:
    """Plan every given stage on ``hardware`` and add the expert notes (pretrain's config for them)."""
    if hardware.nodes < 1 or hardware.gpus_per_node < 1 or hardware.gpu_mem_gb <= 0:
        raise ValueError(f"nodes, gpus per node and GPU memory must be positive: {hardware}")
    counts = counts or count_parameters(config)
    plans = [
        plan_stage(name, cfg, config, counts, hardware, recompute) for name, cfg in stages.items()
    ]
    reference = stages.get("pretrain") or next(iter(stages.values()))
    notes = [zero3_expert_note(config, counts, reference, hardware)]
    # ZeRO-3 alone on one node, whatever the stages are configured with: the question asked most.
    one_node = Hardware(1, hardware.gpus_per_node, hardware.gpu_mem_gb, hardware.link_gbps)
    for name, cfg in stages.items():
        z3 = _with_zero(cfg, 3)
        single = plan_stage(name, z3, config, counts, one_node, recompute)
        needed = single.nodes_needed
        notes.append(
            f"{name}: ZeRO-3 alone on one {hardware.gpus_per_node} x {hardware.gpu_mem_gb:g} GB "
            f"node needs {single.total / GB:,.1f} GB per GPU -> "
            + (
                "fits."
                if single.fits
                else "does NOT fit; "
                + (f"needs >= {needed} nodes." if needed else "does not fit at any node count.")
            )
        )
    if moe_layers(config):
        notes.append(AUTOEP_FINDING)
    return Plan(model_name, hardware, recompute, counts, plans, notes)


def _with_zero(cfg: TrainConfig, stage: int) -> TrainConfig:
    import copy

    out = copy.deepcopy(cfg)
    out.launch.zero_stage = stage
    return out


def _count(n: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:g}"


def format_plan(plan: Plan) -> str:
    """The plan as a fixed-width table (GB per GPU) followed by the notes."""
    hw = plan.hardware
    lines = [
        f"keye plan: {plan.model or 'model'} | {_count(plan.counts.total)} params "
        f"(MTP layer not built) | {hw.nodes} node(s) x {hw.gpus_per_node} GPU x "
        f"{hw.gpu_mem_gb:g} GB | activations {'with' if plan.recompute else 'without'} "
        f"per-layer recompute | comm time at {hw.link_gbps:g} Gb/s per GPU",
        "",
        f"{'stage':<9}{'ZeRO':>5}{'train':>9}{'weights':>9}{'gather':>8}{'grads':>8}{'optim':>8}"
        f"{'activ':>8}{'total':>9}{'fits':>6}{'nodes':>7}{'comm GB':>9}{'comm s':>8}",
    ]
    for s in plan.stages:
        needed = str(s.nodes_needed) if s.nodes_needed else "never"
        lines.append(
            f"{s.stage:<9}{s.zero_stage:>5}{_count(s.trainable_params):>9}"
            f"{s.weights / GB:>9.1f}{s.gathered / GB:>8.1f}{s.gradients / GB:>8.1f}"
            f"{s.optimizer / GB:>8.1f}{s.activations / GB:>8.1f}{s.total / GB:>9.1f}"
            f"{'yes' if s.fits else 'NO':>6}{needed:>7}{s.comm_bytes / GB:>9.1f}"
            f"{s.comm_seconds:>8.1f}"
        )
    lines.append("")
    lines.append(
        "GB per GPU (1e9 bytes). 'gather': ZeRO-3's largest whole-module gather (weights, plus its "
        "gradient when it trains). 'nodes': fewest nodes where the stage fits under its ZeRO stage."
    )
    lines += ["", *(f"- {note}" for note in plan.notes)]
    return "\n".join(lines)
