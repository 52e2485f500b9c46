"""The GSPO loop, run on every rank; built on the training stages' engine, checkpoints and tracking.

Per rollout step (REFERENCE §3, §7):

1. Rank 0 samples G responses per prompt and grades them, with dynamic sampling (groups of equal
   rewards dropped, fresh prompts for up to ``max_generation_rounds`` rounds), and broadcasts the
   batch; every rank sees the same rows.
2. Group-normalised advantages; truncated responses carry no loss.
3. Old log-probs are recomputed by the trainer before any update of the step (rollout numerics
   differ, and at eps 3e-4 the difference alone would clip).
4. The batch is shuffled and split into ``minibatches`` optimizer steps; each step's rows are
   split over ranks and micro-batches. The loss of a micro-batch is normalised by the number of
   loss-carrying sequences of the whole minibatch on all ranks (``num_sequences``) and multiplied
   by ``grad_accum * world`` to undo DeepSpeed's own averaging, so the gradient is exactly that
   of the minibatch's seq-mean-token-mean loss for any split (the DP-denominator trap).
5. A server rollout gets the new policy (saved, then ``refresh``); in process, the rollout
   samples from the live parameters.

Resume: checkpoints hold DeepSpeed's state plus the number of prompts drawn (the data position)
and the RNG; every rollout seed is derived from (seed, step, round), so a resumed run samples
what an uninterrupted one would have.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from keye_model import storage
from keye_model.log import get_logger
from keye_model.rl.config import GSPOConfig
from keye_model.rl.gspo import POLICY_LOSSES, group_advantages, k3_kl, token_entropy, token_logprobs
from keye_model.rl.policy import build_policy_batch, response_logits, response_logprobs
from keye_model.rl.rollout import Sample
from keye_model.rl.sampling import RLPrompt, SamplingStats
from keye_model.stage import StageResult, local_output
from keye_model.train import checkpoint
from keye_model.train.config import TrainConfig
from keye_model.train.loop import local_model_dir, save_model


@dataclass
class GSPORun:
    """Where one GSPO run reads and writes, and how long it goes."""

    cfg: GSPOConfig
    output: str
    model: str
    data: str
    steps: int
    save_every: int
    resume: bool = False
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def checkpoints(self) -> str:
        return storage.join(self.output, "checkpoints")


@dataclass
class Row:
    """One response of the rollout batch, ready for the update."""

    prompt: RLPrompt
    sample: Sample
    advantage: float


def rows_per_minibatch(cfg: GSPOConfig) -> int:
    """Responses in one optimizer step: ``prompts_per_step * group_size / minibatches``."""
    return cfg.prompts_per_step * cfg.group_size // cfg.minibatches


def check_geometry(cfg: GSPOConfig, world: int) -> int:
    """Micro-batches per rank per optimizer step (DeepSpeed's grad_accum); errors name the fields."""
    per_step = rows_per_minibatch(cfg)
    if per_step % (cfg.micro_batch_size * world):
        raise ValueError(
            f"gspo: prompts_per_step * group_size / minibatches = {per_step} responses per "
            f"optimizer step must split into micro_batch_size ({cfg.micro_batch_size}) x "
            f"{world} rank(s)"
        )
    return per_step // (cfg.micro_batch_size * world)


def train_config(cfg: GSPOConfig, steps: int, world: int) -> TrainConfig:
    """The ``TrainConfig`` the shared engine is built from (optimizer, precision, batch geometry)."""
    return TrainConfig(
        trainable=list(cfg.trainable),
        max_steps=steps * cfg.minibatches,  # the LR schedule counts optimizer steps
        micro_batch_size=cfg.micro_batch_size,
        grad_accum=check_geometry(cfg, world),
        precision=cfg.precision,
        optim=cfg.optim,
        launch=cfg.launch,
        save_every=cfg.save_every,
        keep_last=cfg.keep_last,
        seed=cfg.seed,
    )


def round_seed(seed: int, step: int, round_index: int) -> int:
    """Sampling seed of one generation round: a function of (seed, step, round) only."""
    digest = hashlib.sha256(f"keye-gspo:{seed}:{step}:{round_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _sum_all(values: list[float]) -> list[float]:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor)
    return tensor.tolist()


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def update(
    engine, rows: list[Row], encode, cfg: GSPOConfig, step: int, pad_id: int, reference=None
) -> dict[str, float]:
    """The ``minibatches`` optimizer steps of one rollout batch on this rank; summed metrics."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    grad_accum = check_geometry(cfg, world)
    loss_fn = POLICY_LOSSES[cfg.loss]
    temperature = cfg.sampling.temperature
    generator = torch.Generator().manual_seed(round_seed(cfg.seed, step, -1))
    order = torch.randperm(len(rows), generator=generator).tolist()
    per_step = rows_per_minibatch(cfg)
    per_rank = per_step // world

    def batch_of(members: list[Row]):
        return build_policy_batch(
            [encode(r.prompt) for r in members],
            [r.sample.response_ids for r in members],
            [not r.sample.truncated for r in members],
            pad_id,
        )

    # This rank's micro-batches of every minibatch, fixed before any update.
    plan = []
    for m in range(cfg.minibatches):
        minibatch = [rows[i] for i in order[m * per_step : (m + 1) * per_step]]
        mine = minibatch[rank * per_rank : (rank + 1) * per_rank]
        valid = sum(1 for r in minibatch if not r.sample.truncated and r.sample.response_ids)
        plan.append((valid, _chunks(mine, cfg.micro_batch_size)))

    # Old log-probs of the policy that sampled (before this step's first update).
    old: list[list[torch.Tensor]] = []
    with torch.no_grad():
        for _valid, micros in plan:
            old.append([])
            for micro in micros:
                if cfg.old_logprobs == "rollout":
                    width = max(len(r.sample.response_ids) for r in micro)
                    old[-1].append(
                        torch.tensor(
                            [
                                r.sample.logprobs + [0.0] * (width - len(r.sample.logprobs))
                                for r in micro
                            ]
                        )
                    )
                else:
                    old[-1].append(response_logprobs(engine, batch_of(micro), temperature).float())

    sums = dict.fromkeys(
        ("loss", "kl", "clip", "clip_low", "clip_high", "ratio", "sequences", "entropy", "tokens"),
        0.0,
    )
    ratio_min, ratio_max, grad_norms = math.inf, -math.inf, []
    for (valid, micros), old_m in zip(plan, old):
        denominator = float(max(valid, 1))
        for micro, old_logp in zip(micros, old_m):
            batch = batch_of(micro)
            logits = response_logits(engine, batch)
            logp = token_logprobs(logits, batch.targets_BT.to(logits.device), temperature)
            mask = batch.mask_BT.to(logp.device)
            advantages = torch.tensor([r.advantage for r in micro], device=logp.device)
            loss, metrics = loss_fn(
                logp,
                old_logp.to(logp.device),
                advantages,
                mask,
                cfg.eps_low,
                cfg.eps_high,
                num_sequences=denominator,
            )
            if reference is not None and cfg.kl_coef > 0:
                with torch.no_grad():
                    ref_logp = response_logprobs(reference, batch, temperature)
                kl, kl_metrics = k3_kl(logp, ref_logp, mask, num_sequences=denominator)
                loss = loss + cfg.kl_coef * kl
                sums["kl"] += kl_metrics["kl"]
            # DeepSpeed divides by grad_accum and averages over ranks; undo both.
            engine.backward(loss * grad_accum * world)
            engine.step()
            with torch.no_grad():
                entropy = token_entropy(logits.detach(), temperature)
                sums["entropy"] += float(torch.where(mask, entropy, 0).sum())
                sums["tokens"] += float(mask.sum())
            n = metrics["sequences"]
            sums["loss"] += metrics["loss"]
            sums["clip"] += metrics["clip_fraction"] * n
            sums["clip_low"] += metrics["clip_low_fraction"] * n
            sums["clip_high"] += metrics["clip_high_fraction"] * n
            sums["ratio"] += metrics["ratio_mean"] * n
            sums["sequences"] += n
            if n:
                ratio_min = min(ratio_min, metrics["ratio_min"])
                ratio_max = max(ratio_max, metrics["ratio_max"])
        norm = engine.get_global_grad_norm()
        grad_norms.append(float(norm) if norm is not None else math.nan)
    keys = list(sums)
    totals = dict(zip(keys, _sum_all([sums[k] for k in keys])))
    seqs = max(totals["sequences"], 1.0)
    return {
        "loss": totals["loss"] / cfg.minibatches,
        "kl": totals["kl"] / cfg.minibatches,
        "clip_fraction": totals["clip"] / seqs,
        "clip_low_fraction": totals["clip_low"] / seqs,
        "clip_high_fraction": totals["clip_high"] / seqs,
        "ratio_mean": totals["ratio"] / seqs,
        "ratio_min": ratio_min if math.isfinite(ratio_min) else 1.0,
        "ratio_max": ratio_max if math.isfinite(ratio_max) else 1.0,
        "entropy": totals["entropy"] / max(totals["tokens"], 1.0),
        "grad_norm": sum(grad_norms) / len(grad_norms),
        "lr": engine.get_lr()[0],
    }


def rows_from_groups(groups, cfg: GSPOConfig) -> list[Row]:
    """Flatten graded groups into update rows with group-normalised advantages."""
    rewards = torch.tensor([r for g in groups for r in g.rewards], dtype=torch.float64)
    advantages = group_advantages(rewards, cfg.group_size, cfg.advantage_eps).tolist()
    flat = [(g.prompt, s) for g in groups for s in g.samples]
    return [Row(p, s, a) for (p, s), a in zip(flat, advantages)]


def sampling_metrics(stats: SamplingStats, rows: list[Row]) -> dict[str, float]:
    """What the rollout produced this step (all sampled responses, dropped groups included)."""
    rewards = stats.rewards
    mean = sum(rewards) / max(len(rewards), 1)
    std = (sum((r - mean) ** 2 for r in rewards) / max(len(rewards) - 1, 1)) ** 0.5
    lengths = [len(r.sample.response_ids) for r in rows]
    return {
        "reward_mean": mean,
        "reward_std": std,
        "pass_rate": stats.passes / max(stats.responses, 1),
        "response_length_mean": sum(lengths) / max(len(lengths), 1),
        "truncated_fraction": stats.truncated / max(stats.responses, 1),
        "groups_dropped": float(stats.groups_dropped),
        "groups_dropped_all_fail": float(stats.dropped_all_fail),
        "groups_dropped_all_pass": float(stats.dropped_all_pass),
        "groups_surplus": float(stats.groups_surplus),
        "generation_rounds": float(stats.rounds),
    }


def run_gspo(run: GSPORun) -> StageResult:
    """Run ``run.steps`` GSPO rollout steps on this rank; rank 0 returns the real result."""
    from keye_model import KeyeVLMoeForConditionalGeneration
    from keye_model.processing.processor import KeyeProcessor
    from keye_model.rl.data import load_prompts
    from keye_model.rl.rollout import build_rollout, message_encoder
    from keye_model.rl.sampling import PromptStream, collect_groups, sample_groups
    from keye_model.rl.verifier import build_verifier
    from keye_model.tracking import scratch_dir, stage_run
    from keye_model.train.engine import build_engine, freeze, init_distributed, validate

    cfg = dataclasses.replace(run.cfg, steps=run.steps, save_every=run.save_every)
    rank, world = init_distributed()
    tcfg = train_config(cfg, run.steps, world)
    validate(tcfg, "gspo")
    log = get_logger("gspo")
    scratch = scratch_dir("keye-gspo-")
    model_dir = local_model_dir(run.model, scratch)
    prompts = load_prompts(run.data, scratch / "media", scratch / "shards", cfg.categories)
    stream = PromptStream(prompts, cfg.seed)
    torch.manual_seed(cfg.seed)
    dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32
    policy = KeyeVLMoeForConditionalGeneration.from_pretrained(model_dir, dtype=dtype)
    processor = KeyeProcessor.from_pretrained(model_dir)
    freeze(policy, cfg.trainable)
    engine = build_engine(policy, tcfg, tcfg.max_steps)
    engine.train()
    reference = None
    if cfg.kl_coef > 0:
        reference = KeyeVLMoeForConditionalGeneration.from_pretrained(model_dir, dtype=dtype)
        reference.eval().requires_grad_(False)
    encoder = message_encoder(processor)
    encoded: dict[str, dict] = {}

    def encode(prompt: RLPrompt) -> dict:
        from keye_model.rl.rollout import with_thinking

        if prompt.id not in encoded:
            encoded[prompt.id] = encoder.encode(with_thinking(prompt.messages, cfg.thinking))
        return encoded[prompt.id]

    rollout = verifier = None
    if rank == 0:
        rollout = build_rollout(cfg.rollout, model=engine.module, processor=processor)
        verifier = build_verifier(cfg.verifier)
    start_step = 0
    if run.resume:
        state = checkpoint.load_latest(engine, run.checkpoints, scratch)
        if state is not None:
            start_step = state.step
            stream.take(state.data_position)  # the order is deterministic: replay the draws
            checkpoint.set_rng_state(state.rng)
            log.info("resumed at step %d (%d prompts drawn)", start_step, state.data_position)
    pad_id = processor.tokenizer.pad_token_id
    drawn = lambda: stream.epoch * len(stream.prompts) + stream.position  # noqa: E731

    tracking = stage_run("gspo", cfg) if rank == 0 else contextlib.nullcontext()
    with tracking as tracker, local_output(run.output) as out_dir:
        if tracker:
            tracker.set_tags({"model_in": run.model, "data": run.data, "world_size": str(world)})
            tracker.log_params({"prompts": len(prompts)})
        for step in range(start_step, run.steps):
            started = time.perf_counter()
            payload = [None]
            if rank == 0:

                def grade(batch, round_index, step=step):
                    seed = round_seed(cfg.seed, step, round_index)
                    return sample_groups(
                        rollout, verifier, batch, cfg.sampling, cfg.group_size, seed, cfg.thinking
                    )

                groups, stats = collect_groups(
                    stream.take,
                    grade,
                    cfg.prompts_per_step,
                    cfg.max_generation_rounds,
                    cfg.pass_threshold,
                )
                payload = [(groups, stats, drawn())]
            if world > 1:
                dist.broadcast_object_list(payload, src=0)
            groups, stats, position = payload[0]
            if rank != 0:
                stream.take(position - drawn())  # keep every rank's data position equal
            rows = rows_from_groups(groups, cfg)
            rollout_s = time.perf_counter() - started
            started = time.perf_counter()
            metrics = update(engine, rows, encode, cfg, step, pad_id, reference)
            metrics.update(sampling_metrics(stats, rows))
            metrics.update(rollout_s=rollout_s, update_s=time.perf_counter() - started)
            if cfg.rollout.backend == "server":
                _refresh_server(engine, processor, rollout, out_dir, run, step, rank)
            run.history.append({"step": step + 1, **metrics})
            if tracker:
                tracker.log_metrics(metrics, step=step + 1)
            if rank == 0:
                log.info(
                    "step %d/%d reward %.3f pass %.2f clip %.2f entropy %.3f dropped %d "
                    "rounds %d rollout %.1fs update %.1fs",
                    step + 1,
                    run.steps,
                    metrics["reward_mean"],
                    metrics["pass_rate"],
                    metrics["clip_fraction"],
                    metrics["entropy"],
                    metrics["groups_dropped"],
                    metrics["generation_rounds"],
                    metrics["rollout_s"],
                    metrics["update_s"],
                )
            if (step + 1) % run.save_every == 0 or step + 1 == run.steps:
                state = checkpoint.TrainerState(step + 1, drawn(), checkpoint.rng_state())
                checkpoint.save(engine, run.checkpoints, state, scratch, cfg.keep_last)
        save_model(engine, processor, out_dir / "final", cfg.launch.zero_stage, rank)
        if world > 1:
            dist.barrier()
        result = _result(run, out_dir, tracker) if rank == 0 else StageResult(stage="gspo")
    encoder.close()
    if rollout is not None:
        rollout.close()
    return result


def _refresh_server(engine, processor, rollout, out_dir: Path, run: GSPORun, step: int, rank: int):
    """Save the policy where the server reads it and make the server load it."""
    name = f"policy/step-{step + 1:08d}"
    save_model(engine, processor, out_dir / name, run.cfg.launch.zero_stage, rank)
    if rank == 0:
        target = storage.join(run.output, name)
        if storage.is_s3(run.output):
            storage.sync_up(out_dir / name, target)
        rollout.refresh(target)


def _result(run: GSPORun, out_dir: Path, tracker) -> StageResult:
    history = run.history
    plot = out_dir / "rewards.png"
    _plot(history, plot)
    if not history:
        metrics = {"steps": 0.0}
    else:
        metrics = {
            "reward_first": history[0]["reward_mean"],
            "reward_final": history[-1]["reward_mean"],
            "pass_rate_final": history[-1]["pass_rate"],
            "clip_fraction_mean": sum(h["clip_fraction"] for h in history) / len(history),
            "steps": float(len(history)),
        }
    if tracker:
        tracker.log_metrics({f"final_{k}": v for k, v in metrics.items()})
        tracker.log_artifact(plot, "plots")
        tracker.set_tags({"model_uri": storage.join(run.output, "final")})
    first, last = metrics.get("reward_first", math.nan), metrics.get("reward_final", math.nan)
    return StageResult(
        stage="gspo",
        outputs={
            "model": storage.join(run.output, "final"),
            "checkpoints": run.checkpoints,
            "reward_plot": storage.join(run.output, plot.name),
        },
        metrics=metrics,
        message=f"{len(history)} GSPO steps, reward {first:.3f} -> {last:.3f}; model in "
        f"{storage.join(run.output, 'final')}",
    )


def _plot(history: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_reward, ax_clip) = plt.subplots(1, 2, figsize=(9, 3.2))
    steps = [h["step"] for h in history]
    ax_reward.plot(steps, [h["reward_mean"] for h in history], marker=".")
    ax_reward.set(title="gspo: mean reward", xlabel="step", ylabel="reward")
    ax_clip.plot(steps, [h["clip_fraction"] for h in history], color="tab:orange")
    ax_clip.set(title="clip fraction", xlabel="step")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
