"""The registry of recipe stages: the one list that ``keye stage``, the KFP components and the run
summary all read.

    curate -> init -> align -> pretrain -> anneal -> sft -> cold_start -> gspo -> evaluate -> deploy

Each ``StageSpec`` names the entry function (imported lazily, so ``keye --help`` stays fast), the
recipe section that configures it, its named inputs and its options. ``run_stage`` is the only
caller of entry functions: it writes the manifest beside the payload and reports start and end.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from keye_model import storage
from keye_model.stage import MANIFEST, StageResult, emit_event


@dataclass(frozen=True)
class Input:
    """A named input URI of a stage (the entry function's keyword of the same name)."""

    name: str
    help: str
    required: bool = True
    many: bool = False  # a list of URIs (a repeatable flag)
    flag: str = ""  # CLI flag; default --<name>

    @property
    def cli_flag(self) -> str:
        return self.flag or f"--{self.name.replace('_', '-')}"


@dataclass(frozen=True)
class Option:
    """A run option of a stage that is not part of the recipe (resume, step limits, sharding)."""

    name: str
    type: type
    help: str
    default: Any = None

    @property
    def cli_flag(self) -> str:
        return f"--{self.name.replace('_', '-')}"


@dataclass(frozen=True)
class StageSpec:
    """One stage: its entry function, recipe section, inputs, options and what it produces."""

    name: str
    entry: str  # "module:function"
    config: str  # attribute of keye_model.recipe.Recipe
    help: str
    inputs: tuple[Input, ...] = ()
    options: tuple[Option, ...] = ()
    produces: str = ""  # the output key the next stage consumes ("model", "data", ...)
    headline: str = ""  # the metric printed on the console line at the end of the stage

    @property
    def cli_name(self) -> str:
        return self.name.replace("_", "-")

    def function(self) -> Callable[..., StageResult]:
        module, name = self.entry.split(":")
        return getattr(importlib.import_module(module), name)

    def config_of(self, recipe) -> Any:
        return getattr(recipe, self.config)


_MODEL = Input("model", "Model directory or s3:// prefix (Keye HF format) to start from.")
_DATA = Input("data", "Curated WebDataset shards (the curate stage's output), local or s3://.")
_TRAIN_OPTIONS = (
    Option("max_steps", int, "Stop after this many optimizer steps (overrides the recipe)."),
    Option("save_every", int, "Checkpoint every K steps (overrides the recipe)."),
    Option(
        "resume", bool, "Continue from the newest complete checkpoint under <output>/checkpoints."
    ),
)


def _train_stage(name: str, help: str) -> StageSpec:
    return StageSpec(
        name=name,
        entry=f"keye_model.train.stages:{name}",
        config=name,
        help=help,
        inputs=(_MODEL, _DATA),
        options=_TRAIN_OPTIONS,
        produces="model",
        headline="loss_final",
    )


STAGES: tuple[StageSpec, ...] = (
    StageSpec(
        name="curate",
        entry="keye_model.data.curate:curate",
        config="curate",
        help="Filter, de-duplicate, re-sample and synthesise training data into WebDataset shards.",
        inputs=(
            Input(
                "inputs",
                "Input file or prefix: WebDataset .tar, .parquet, .jsonl (local or s3://); "
                "repeatable. None: the built-in synthesizers are the source.",
                required=False,
                many=True,
                flag="--input",
            ),
        ),
        options=(
            Option("shard_index", int, "Scan only work units with index %% num-shards == this."),
            Option("num_shards", int, "Parallel scan tasks (with --shard-index).", default=1),
        ),
        produces="data",
        headline="kept_samples",
    ),
    StageSpec(
        name="init",
        entry="keye_model.model.assembly:init_model",
        config="init",
        help="Assemble KeyeViT + a new mlp_AR projector + the DeepSeek-V3 LM (random parts where none given).",
        inputs=(
            Input(
                "vision",
                "SigLIP or KeyeViT checkpoint (directory or .safetensors).",
                required=False,
            ),
            Input(
                "lm", "DeepSeek-V3 HF checkpoint directory (FP8 is dequantised).", required=False
            ),
        ),
        produces="model",
        headline="params_total",
    ),
    _train_stage("align", "Projector alignment: only mlp_AR trains; ViT and LM are frozen."),
    _train_stage("pretrain", "Full pretraining: every configured module trains."),
    _train_stage(
        "anneal", "Annealing: the higher-quality mixture, learning rate decaying to zero."
    ),
    _train_stage(
        "sft",
        "Supervised fine-tuning: instructions mixed with long CoT, loss on assistant tokens only.",
    ),
    StageSpec(
        name="cold_start",
        entry="keye_model.rl.stages:cold_start",
        config="cold_start",
        help="Cold-start: sample k answers per prompt, keep prompts with a 25-75% pass rate and "
        "their correct, de-duplicated reasoning, then fine-tune on them.",
        inputs=(_MODEL, _DATA),
        options=_TRAIN_OPTIONS,
        produces="model",
        headline="prompts_kept",
    ),
    StageSpec(
        name="gspo",
        entry="keye_model.rl.stages:gspo",
        config="gspo",
        help="GSPO: group rollouts, verifier rewards, sequence-level clipped policy updates.",
        inputs=(_MODEL, _DATA),
        options=_TRAIN_OPTIONS,
        produces="model",
        headline="reward_final",
    ),
    StageSpec(
        name="evaluate",
        entry="keye_model.eval.stage:evaluate",
        config="evaluate",
        help="Score a model on the recipe's benchmarks with their official rules.",
        inputs=(
            Input(
                "model",
                "Model directory or s3:// prefix: answered in process, or, with --endpoint, the "
                "checkpoint the endpoint serves (registered in MLflow with the scores).",
                required=False,
            ),
            Input(
                "endpoint",
                "OpenAI-compatible base URL that answers (SGLang, keye serve local).",
                required=False,
            ),
            Input(
                "data",
                "Root of the released benchmark files (local or s3://), one folder per benchmark; "
                "without it, held-out synthetic sets (tiny preset only).",
                required=False,
            ),
        ),
        produces="report",
        headline="mean/overall",
    ),
    StageSpec(
        name="deploy",
        entry="keye_model.serve.deploy:deploy",
        config="serve",
        help="Render + validate the keye-serve chart for a model; install it if a cluster is reachable.",
        inputs=(
            Input("model", "Model URI the release serves: s3://bucket/prefix or a directory."),
        ),
        produces="manifests",
        headline="deployed",
    ),
)


def registered() -> dict[str, StageSpec]:
    """Stages by name, in recipe order."""
    return {spec.name: spec for spec in STAGES}


def get(name: str) -> StageSpec:
    """The spec of stage ``name`` (``cold-start`` and ``cold_start`` both work)."""
    stages = registered()
    key = name.replace("-", "_")
    if key not in stages:
        raise ValueError(f"unknown stage {name!r}; stages: {', '.join(stages)}")
    return stages[key]


def headline(spec: StageSpec, result: StageResult) -> str:
    """``name=value`` of the stage's headline metric, or '' when it did not report one."""
    value = result.metrics.get(spec.headline)
    if value is None:
        return ""
    return (
        f"{spec.headline}={value:.4g}" if isinstance(value, float) else f"{spec.headline}={value}"
    )


def run_stage(
    name: str,
    recipe,
    output: str,
    inputs: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
) -> StageResult:
    """Run one stage: check its inputs, call its entry, write ``<output>/stage_result.json``."""
    spec = get(name)
    inputs = dict(inputs or {})
    unknown = set(inputs) - {i.name for i in spec.inputs}
    if unknown:
        raise ValueError(f"stage {spec.name}: unknown inputs {sorted(unknown)}")
    for item in spec.inputs:
        value = inputs.get(item.name)
        if item.required and not value:
            raise ValueError(f"stage {spec.name}: input {item.cli_flag} is required ({item.help})")
        if item.many:
            inputs[item.name] = list(value or [])
        else:
            inputs[item.name] = value or None
    opts = {k: v for k, v in (options or {}).items() if v is not None}
    # One curation scan shard of a ParallelFor is a part of the stage, not the stage itself.
    part = (
        f"scan {opts['shard_index'] + 1}/{opts.get('num_shards', 1)}"
        if "shard_index" in opts
        else ""
    )
    emit_event(spec.name, "start", part=part)
    started = time.time()
    try:
        result = spec.function()(spec.config_of(recipe), output=output, **inputs, **opts)
    except BaseException as err:
        emit_event(
            spec.name, "fail", part=part, seconds=time.time() - started, error=str(err)[:300]
        )
        raise
    # A result without the stage's product is one partial step (a curation scan shard): it must
    # not mark the stage as done for readers of the manifest.
    if not spec.produces or spec.produces in result.outputs:
        result.write(storage.join(output, MANIFEST))
    emit_event(
        spec.name,
        "end",
        part=part,
        seconds=time.time() - started,
        headline=headline(spec, result),
        message=result.message,
    )
    return result


def run_step(
    name: str,
    recipe_json: str,
    storage_root: str,
    run_id: str,
    parent_run_id: str,
    artifact=None,
    options: Mapping[str, Any] | None = None,
    **inputs: Any,
) -> StageResult:
    """The body of every KFP component: resolve upstream artifacts to URIs, run, publish.

    An input given as a KFP artifact is replaced by the URI its producer published under the
    input's name (``model`` reads the upstream manifest's ``outputs["model"]``).
    """
    from keye_model.recipe import Recipe
    from keye_model.stage import enter_pipeline_step, publish, read_manifest, stage_output

    enter_pipeline_step(parent_run_id, run_id)
    resolved = {}
    for key, value in inputs.items():
        if hasattr(value, "path") and hasattr(value, "metadata"):  # an Input[...] artifact
            outputs = read_manifest(value).outputs
            if key not in outputs:
                raise ValueError(
                    f"stage {name}: upstream artifact has no {key!r} output: {outputs}"
                )
            value = outputs[key]
        resolved[key] = value
    output = stage_output(storage_root, run_id, name)
    result = run_stage(name, Recipe.from_json(recipe_json), output, resolved, options)
    if artifact is not None:
        publish(result, artifact)
    return result
