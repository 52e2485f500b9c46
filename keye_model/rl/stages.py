"""Entry functions of the post-training stages: cold-start filtering (+ SFT) and GSPO.

    keye stage cold-start --model DIR --data DIR --output DIR   # filter, prune, fine-tune
    keye stage gspo       --model DIR --data DIR --output DIR   # sequence-level RL

``data`` is a curated dataset (``<data>/shards/*.tar``) whose QA turns carry verifiable answers.
Both stages use the training stages' machinery: the SFT of cold-start is the SFT stage's own
entry (``keye_model.train.stages.train_stage``), and GSPO builds its DeepSpeed engine, writes its
resumable checkpoints and logs to MLflow with the same code (``keye_model.rl.loop``). With one
local process (the tiny default) GSPO runs in this process on a 1-rank gloo group; otherwise
torchx launches ``keye_model.train.worker --stage gspo`` on every rank, as training does.
"""

from __future__ import annotations

import json

from keye_model import storage
from keye_model.rl.config import ColdStartConfig, GSPOConfig
from keye_model.stage import StageResult
from keye_model.train.worker import RESULT_FILE

KEPT = "kept"  # <output>/kept/shards: the cold-start SFT data


def validate_gspo(cfg: GSPOConfig) -> None:
    """Refuse GSPO settings that cannot work, naming the field, before any model is loaded."""
    if cfg.rollout.backend == "in_process" and cfg.launch.zero_stage == 3:
        raise ValueError(
            "gspo.launch.zero_stage=3 shards the policy, which an in-process rollout cannot "
            "sample from; use rollout.backend=server (SGLang) or ZeRO stage <= 2"
        )
    if cfg.old_logprobs == "rollout" and cfg.rollout.backend != "in_process":
        raise ValueError(
            "gspo.old_logprobs=rollout needs the in-process rollout (a server's log-probs are "
            "not the trainer's); use old_logprobs=trainer"
        )
    if cfg.rollout.backend == "server" and not cfg.rollout.endpoint:
        raise ValueError("gspo.rollout.endpoint is required for rollout.backend=server")
    if cfg.kl_coef < 0:
        raise ValueError(f"gspo.kl_coef must be >= 0, got {cfg.kl_coef}")
    if cfg.sampling.temperature == 0:
        raise ValueError(
            "gspo.sampling.temperature must be > 0: greedy groups are all equal and dynamic "
            "sampling would drop every one"
        )


def gspo(
    cfg: GSPOConfig,
    output: str,
    *,
    model: str,
    data: str,
    resume: bool = False,
    max_steps: int | None = None,
    save_every: int | None = None,
) -> StageResult:
    """GSPO on ``data``'s verifiable prompts, starting from ``model``; the policy in ``<output>/final``."""
    from keye_model.rl.loop import GSPORun, run_gspo

    validate_gspo(cfg)
    run = GSPORun(
        cfg, output, model, data, max_steps or cfg.steps, save_every or cfg.save_every, resume
    )
    if cfg.launch.scheduler == "local_cwd" and cfg.launch.nproc_per_node == 1:
        return run_gspo(run)
    from keye_model.config_utils import to_dict
    from keye_model.rl.loop import train_config
    from keye_model.train.launch import app_def, submit_and_follow

    argv = [
        "--stage", "gspo", "--config-json", json.dumps(to_dict(cfg)), "--output", output, "--model", model,
        "--data", data, "--max-steps", str(run.steps), "--save-every", str(run.save_every),
        *(["--resume"] if resume else []),
    ]  # fmt: skip
    world = cfg.launch.nproc_per_node * cfg.launch.nodes
    tcfg = train_config(cfg, run.steps, world)
    submit_and_follow(app_def("gspo", tcfg, argv), tcfg)
    return StageResult(**json.loads(storage.read_text(storage.join(output, RESULT_FILE))))


def cold_start(
    cfg: ColdStartConfig,
    output: str,
    *,
    model: str,
    data: str,
    resume: bool = False,
    max_steps: int | None = None,
    save_every: int | None = None,
) -> StageResult:
    """Filter ``data`` to prompts of medium pass rate with pruned correct answers, then SFT on them."""
    from keye_model.rl.cold_start import run_cold_start, write_cold_start
    from keye_model.rl.data import load_prompts, write_sft_shards
    from keye_model.rl.rollout import build_rollout
    from keye_model.rl.verifier import build_verifier
    from keye_model.stage import local_output
    from keye_model.tracking import scratch_dir, stage_run
    from keye_model.train.engine import validate
    from keye_model.train.loop import local_model_dir
    from keye_model.train.stages import train_stage

    validate(cfg.sft, "cold_start.sft")  # bad SFT settings fail before any sampling
    kept_uri = storage.join(output, KEPT)
    report_uri = storage.join(output, "filter", "report.json")
    if resume and storage.exists(report_uri):
        metrics = json.loads(storage.read_text(report_uri))
    else:
        with stage_run("cold_start", cfg) as tracker, local_output(output) as out_dir:
            scratch = scratch_dir("keye-cold-start-")
            model_dir = local_model_dir(model, scratch)
            prompts = load_prompts(data, scratch / "media", scratch / "shards", cfg.categories)
            if cfg.max_prompts:
                prompts = prompts[: cfg.max_prompts]
            from keye_model.processing.processor import KeyeProcessor

            processor = KeyeProcessor.from_pretrained(model_dir)
            rollout = build_rollout(cfg.rollout, processor=processor, model_dir=model_dir)
            verifier = build_verifier(cfg.verifier)
            try:
                examples, outcomes, report = run_cold_start(
                    rollout, verifier, prompts, cfg, processor.tokenizer
                )
            finally:
                rollout.close()
            files = write_cold_start(out_dir / "filter", examples, outcomes, report, cfg.thinking)
            write_sft_shards(examples, out_dir / KEPT)
            metrics = report.metrics()
            metrics["judge_fallbacks"] = verifier.stats.fallbacks
            tracker.log_metrics(metrics)
            for path in files.values():
                tracker.log_artifact(path, "cold_start")
        if not examples:
            raise ValueError(
                f"cold-start kept no prompt: of {report.prompts}, {report.too_hard} were too hard "
                f"and {report.too_easy} too easy for the band {cfg.pass_band} "
                f"(see {storage.join(output, 'filter', 'rejected.jsonl')})"
            )
    sft = train_stage(
        "cold-start-sft",
        cfg.sft,
        output=storage.join(output, "sft"),
        model=model,
        data=kept_uri,
        max_steps=max_steps,
        save_every=save_every,
        resume=resume,
    )
    kept = int(metrics["prompts_kept"])
    return StageResult(
        stage="cold_start",
        outputs={
            "model": sft.outputs["model"],
            "data": kept_uri,
            "filter": storage.join(output, "filter"),
        },
        metrics={**{k: float(v) for k, v in metrics.items()}, **sft.metrics},
        message=f"kept {kept} of {int(metrics['prompts'])} prompts "
        f"({int(metrics['responses_kept'])} responses, {int(metrics['tokens_cut'])} tokens of "
        f"reflection cut); {sft.message}",
    )
