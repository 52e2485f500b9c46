"""One benchmark registry and the evaluation rules that live in the library, not the CLI.

- ``keye_model.eval.benchmarks`` holds the only table of benchmarks; the modules holding
  per-benchmark functions (prompts, scorers, synthetic writers, extraction) never import it, so
  the evaluation package has no import cycle.
- ``evaluate`` itself refuses to score a non-tiny (or unknown) model on the held-out synthetic
  sets, so a pipeline run gets the rule too.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

import keye_model.eval as eval_pkg
from keye_model.eval import scoring, synthetic
from keye_model.eval.benchmarks import BENCHMARKS, get_benchmark, score, write_synthetic
from keye_model.eval.config import ALL_BENCHMARKS, EvalConfig
from keye_model.eval.stage import evaluate

EVAL_DIR = Path(eval_pkg.__file__).parent


def _eval_imports(path: Path) -> set[str]:
    """``keye_model.eval`` modules imported anywhere in ``path`` (function-level imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "keye_model.eval":
                found |= {f"keye_model.eval.{a.name}" for a in node.names}
            elif node.module.startswith("keye_model.eval."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("keye_model.eval.")}
    return {m for m in found if (EVAL_DIR / f"{m.rsplit('.', 1)[1]}.py").is_file()}


def test_eval_modules_import_each_other_without_a_cycle():
    graph = {
        f"keye_model.eval.{p.stem}": _eval_imports(p)
        for p in EVAL_DIR.glob("*.py")
        if p.stem != "__init__"
    }
    # the per-benchmark layers never reach the registry
    for low in ("scoring", "prompts", "synthetic", "extract"):
        assert "keye_model.eval.benchmarks" not in graph[f"keye_model.eval.{low}"], low
    done: set[str] = set()

    def visit(node: str, path: tuple[str, ...]) -> None:
        assert node not in path, f"import cycle: {' -> '.join((*path, node))}"
        if node in done:
            return
        for dep in graph.get(node, ()):
            visit(dep, (*path, node))
        done.add(node)

    for module in graph:
        visit(module, ())


def test_one_registry_drives_scoring_synthesis_and_the_recipe_list():
    assert ALL_BENCHMARKS == tuple(BENCHMARKS)
    assert all(
        name in EvalConfig.__dataclass_fields__["benchmarks"].metadata["help"]
        for name in BENCHMARKS
    )
    # no parallel tables left beside the registry
    assert not hasattr(scoring, "SCORERS") and not hasattr(synthetic, "WRITERS")
    for name, spec in BENCHMARKS.items():
        assert spec.name == name
        assert callable(spec.build) and callable(spec.scorer) and callable(spec.synthesize)
    assert get_benchmark("mmbench_cn").scorer is get_benchmark("mmbench_en").scorer
    with pytest.raises(ValueError, match="unknown benchmark 'mmbench_xx'"):
        score("mmbench_xx", [], [])


def test_write_synthetic_checks_every_name_before_writing(tmp_path):
    with pytest.raises(ValueError, match="unknown benchmark 'nope'"):
        write_synthetic(tmp_path / "data", ["mmstar", "nope"], n=2, seed=1)
    assert not (tmp_path / "data").exists()


def test_non_tiny_model_without_data_is_refused_by_the_library(tmp_path):
    from keye_model.model.configuration import KeyeVLMoeConfig

    big = tmp_path / "keye-671b-config-only"  # config.json alone: the size is read from it
    KeyeVLMoeConfig.from_preset("keye-vl-671b-a37b").save_pretrained(big)
    out = tmp_path / "out"
    cfg = EvalConfig(benchmarks=["mmbench_en"])
    with pytest.raises(
        ValueError, match=r"no benchmark data \(--data\) for .*synthetic_max_params"
    ):
        evaluate(cfg, model=str(big), output=str(out))
    with pytest.raises(ValueError, match="size of the model behind the endpoint is unknown"):
        evaluate(cfg, endpoint="http://127.0.0.1:9", output=str(out))
    assert not out.exists()  # refused before any work
    # the same model with data given passes this rule (and stops later, at the data folder)
    with pytest.raises(FileNotFoundError, match="data not found"):
        evaluate(cfg, model=str(big), data=str(tmp_path / "no-data"), output=str(out))
    # a limit raised explicitly lets a larger model through to the next check
    raised = dataclasses.replace(cfg, synthetic_max_params=1e12, max_in_process_params=1e6)
    with pytest.raises(ValueError, match="over evaluate.max_in_process_params"):
        evaluate(raised, model=str(big), output=str(out))
