"""Configuration of the evaluation stage (owned by ``keye_model.eval``)."""

from __future__ import annotations

from dataclasses import dataclass

from keye_model.config_utils import field
from keye_model.eval.benchmarks import BENCHMARKS

# Every benchmark of the recipe (REFERENCE §2.8), in registry order (the order reports use).
ALL_BENCHMARKS = tuple(BENCHMARKS)


@dataclass
class EvalConfig:
    """Evaluation on the recipe's benchmarks (REFERENCE §2.8, §5)."""

    benchmarks: list[str] = field(
        default_factory=lambda: ["mmbench_en", "mathvista"],
        help=f"Benchmarks to run: {', '.join(ALL_BENCHMARKS)}.",
    )
    thinking: str = field(
        "no_think",
        help="Thinking-mode suffix on every question: think (/think) | no_think (/no_think) | auto (none).",
    )
    max_new_tokens: int = field(
        64, help="Generation budget per question (the 671B reports use long budgets)."
    )
    seed: int = field(
        0, help="Seed of any random fallback (MMMU parser, judge failures); recorded in the report."
    )
    limit: int = field(
        0, help="Questions per benchmark (0 = all); MMBench keeps whole circular groups."
    )
    batching: str = field(
        "exact",
        help="In-process batching: exact (equal prompt lengths only, answers independent of batch "
        "neighbours) | padded (left-padded batches, faster; equal up to float ties).",
    )
    batch_size: int = field(
        8, help="In-process backend: requests per generate call (equal prompt lengths only)."
    )
    concurrency: int = field(8, help="HTTP backend: requests in flight at once.")
    timeout_s: float = field(600.0, help="HTTP backend: seconds before one request times out.")
    retries: int = field(
        4, help="HTTP backend: retries per request (exponential backoff with jitter)."
    )
    backoff_base_s: float = field(0.5, help="HTTP backend: first backoff delay; doubles per retry.")
    served_model: str = field(
        "", help="HTTP backend: model name to request (default: first of /v1/models)."
    )
    media_urls: str = field(
        "data",
        help="HTTP backend: how images and videos travel - 'data' (base64 data URLs read per request, any "
        "server) or 'file' (file:// URLs, a server sharing this filesystem: keye serve local).",
    )
    judge_endpoint: str = field(
        "",
        help="OpenAI-compatible endpoint of an optional LLM judge (VLMEvalKit/MathVista/MMVU fallbacks).",
    )
    judge_model: str = field("", help="Model name at the judge endpoint (default: first listed).")
    judge_max_new_tokens: int = field(256, help="Completion budget of one judge request.")
    synthetic_size: int = field(
        24, help="Questions per held-out synthetic benchmark when no --data is given."
    )
    synthetic_seed: int = field(
        900_001,
        help="Seed of the held-out synthetic sets; differs from every curation seed so they are never trained on.",
    )
    compare_runs: int = field(
        5, help="Earlier evaluate runs (MLflow) drawn in the comparison plot."
    )
    synthetic_max_params: float = field(
        1e8,
        help="Largest model (parameters) that may be scored on the held-out synthetic sets when no "
        "benchmark data is given; anything larger, or an endpoint without --model, needs --data.",
    )
    max_in_process_params: float = field(
        5e9,
        help="Largest model (parameters) evaluated in-process; bigger ones need --endpoint (SGLang).",
    )
    register_as: str = field(
        "keye-vl",
        help="MLflow registered-model name under which an evaluated --model is recorded as a new "
        "version carrying its scores ('' = do not register; endpoints are never registered).",
    )
