"""The chart's SGLang launch flags, parsed by SGLang's own ``prepare_server_args``.

``make setup`` installs sglang 0.5.2 (the base of Kwai's keye branch, the serve image's pin) and
0.5.20 (first release with ``--cuda-graph-max-bs-decode``) --no-deps into ``.venv/sglang/<ver>``,
outside the venv. Each version parses the rendered leader command lines in one subprocess with
those folders on PYTHONPATH, so SGLang's pins never touch our torch/transformers.

Two things the pod has and this machine lacks, and what stands in for them:
- ``ServerArgs.__post_init__`` calls ``get_device()``, which raises "No accelerator (CUDA, XPU,
  HPU) is available" without a GPU, so ``--device cpu`` is appended (a real SGLang flag).
- ``__post_init__`` reads the HF config of ``--model-path`` (``model_specific_adjustments``);
  the 671B checkpoint lives only in the pod, so the path is swapped for a folder holding a tiny
  DeepSeek-V3 ``config.json`` (the Keye language model's architecture). Nothing else is read.
Every other flag is exactly what the chart renders, with the LWS variables expanded as LWS does.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from keye_model.serve import helm
from keye_model.serve.validate import load_documents

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "helm" / "keye-serve"
SGLANG_DIR = REPO / ".venv" / "sglang"
PINNED, RENAMED = "0.5.2", "0.5.20"
MASTER = "10.0.0.1"

# Runs inside the subprocess: SGLang's prepare_server_args on each argv; a rejected command line
# (argparse's SystemExit) is reported with SGLang's own message instead of ending the run.
_PARSE = r"""
import contextlib, io, json, sys
import sglang
from sglang.srt.server_args import prepare_server_args

jobs = json.load(sys.stdin)
out = []
for job in jobs:
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = prepare_server_args(job["argv"])
    except SystemExit as exc:
        out.append({"ok": False, "code": exc.code, "stderr": err.getvalue()})
        continue
    out.append({"ok": True, "values": {k: getattr(args, k, "<missing>") for k in job["keys"]}})
print("RESULT " + json.dumps({"version": sglang.__version__, "results": out}))
"""

# sglang 0.5.20's sglang.srt.utils.common does `from torchvision.io import decode_jpeg` at import
# time. PyPI's torchvision wheels for torch 2.13 are CUDA builds (they need libc10_cuda.so from a
# CUDA torch) and the CPU builds live only on download.pytorch.org, which is unreachable here, so
# this stand-in module is put on 0.5.20's path. Argument parsing never decodes a JPEG; a call
# would raise. 0.5.2 needs no stand-in.
_TORCHVISION_STANDIN = {
    "torchvision/__init__.py": '"""Stand-in: no CPU torchvision build reachable (see test)."""\n',
    "torchvision/io.py": (
        "def decode_jpeg(*args, **kwargs):\n"
        '    raise RuntimeError("torchvision stand-in: decode_jpeg is not available here")\n'
    ),
}

KEYS = [
    "model_path",
    "host",
    "port",
    "tp_size",
    "dp_size",
    "ep_size",
    "nnodes",
    "node_rank",
    "dist_init_addr",
    "trust_remote_code",
    "attention_backend",
    "mm_attention_backend",
    "disable_radix_cache",
    "mem_fraction_static",
    "model_loader_extra_config",
    "cuda_graph_max_bs",
    "cuda_graph_max_bs_decode",
    "enable_dp_attention",
    "moe_a2a_backend",
    "chunked_prefill_size",
    "enable_two_batch_overlap",
    "enable_dp_lm_head",
    "moe_dense_tp_size",
    "watchdog_timeout",
    "device",
]


def leader_argv(model_dir: Path, *sets: str, values_file: str = "") -> tuple[list[str], int]:
    """The rendered leader's launch_server flags as LWS would run them, and the group size."""
    files = [CHART / values_file] if values_file else []
    docs = load_documents(helm.template(CHART, "keye-serve", "serving", files, list(sets)))
    (lws,) = [d for d in docs if d["kind"] == "LeaderWorkerSet"]
    size = lws["spec"]["leaderWorkerTemplate"]["size"]
    args = lws["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"]["containers"][0]["args"]
    assert args[:3] == ["python3", "-m", "sglang.launch_server"]
    env = {"LWS_LEADER_ADDRESS": MASTER, "LWS_GROUP_SIZE": str(size), "LWS_WORKER_INDEX": "0"}
    argv = [re.sub(r"\$\((LWS_[A-Z_]+)\)", lambda m: env[m.group(1)], a) for a in args[3:]]
    i = argv.index("--model-path")
    assert argv[i + 1] == "/models/Keye-VL-671B-A37B"
    argv[i + 1] = str(model_dir)
    return argv + ["--device", "cpu"], size


def parse_with_sglang(version: str, argvs: list[list[str]], tmp: Path) -> list[dict]:
    """Run ``prepare_server_args`` of sglang ``version`` on each argv in one subprocess."""
    root = SGLANG_DIR / version
    assert (root / "sglang" / "srt" / "server_args.py").is_file(), (
        f"sglang {version} not found under {root}; run `make setup` (it installs it there)"
    )
    path = [str(root), str(SGLANG_DIR / "common")]
    if version != PINNED:
        standin = tmp / "standin"
        for rel, text in _TORCHVISION_STANDIN.items():
            (standin / rel).parent.mkdir(parents=True, exist_ok=True)
            (standin / rel).write_text(text)
        path.append(str(standin))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(path),
        "HF_HUB_OFFLINE": "1",
        "CUDA_VISIBLE_DEVICES": "",
    }
    jobs = [{"argv": a, "keys": KEYS} for a in argvs]
    proc = subprocess.run(
        [sys.executable, "-c", _PARSE],
        input=json.dumps(jobs),
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp,
        timeout=120,
        check=False,
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert proc.returncode == 0 and line, f"sglang {version} subprocess failed:\n{proc.stderr}"
    report = json.loads(line[len("RESULT ") :])
    assert report["version"] == version
    return report["results"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A folder with only a tiny DeepSeek-V3 config.json, standing in for the 671B checkpoint."""
    from transformers import DeepseekV3Config

    path = tmp_path_factory.mktemp("keye-config")
    cfg = DeepseekV3Config(
        vocab_size=1024,
        hidden_size=64,
        intermediate_size=128,
        moe_intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        n_routed_experts=8,
    )
    cfg.architectures = ["DeepseekV3ForCausalLM"]
    cfg.save_pretrained(path)
    return path


def test_chart_default_version_is_the_installed_pin():
    """The parser tested below is the version the chart renders for by default."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["sglang"]["version"] == PINNED


def test_pinned_sglang_parses_default_and_4x8_deepep(model_dir, tmp_path):
    default, size = leader_argv(model_dir)
    deepep, size_4x8 = leader_argv(model_dir, values_file="values-4x8-deepep.yaml")
    renamed, _ = leader_argv(model_dir, f"sglang.version={RENAMED}")
    res_default, res_deepep, res_renamed = parse_with_sglang(
        PINNED, [default, deepep, renamed], tmp_path
    )

    assert res_default["ok"], res_default
    v = res_default["values"]
    assert (v["tp_size"], v["nnodes"], v["node_rank"]) == (16, size, 0) and size == 2
    assert v["dist_init_addr"] == f"{MASTER}:29500"
    assert (v["host"], v["port"]) == ("0.0.0.0", 30000)
    assert v["attention_backend"] == v["mm_attention_backend"] == "fa3"
    assert v["disable_radix_cache"] is True and v["trust_remote_code"] is True
    assert v["mem_fraction_static"] == 0.8
    assert v["cuda_graph_max_bs"] == 64
    assert json.loads(v["model_loader_extra_config"]) == {
        "enable_multithread_load": True,
        "num_threads": 32,
    }
    assert v["model_path"] == str(model_dir) and v["device"] == "cpu"

    assert res_deepep["ok"], res_deepep
    v = res_deepep["values"]
    assert (v["tp_size"], v["dp_size"], v["ep_size"]) == (32, 32, 32)
    assert (v["nnodes"], size_4x8) == (4, 4)
    assert v["enable_dp_attention"] is True and v["moe_a2a_backend"] == "deepep"
    assert v["enable_two_batch_overlap"] is True and v["enable_dp_lm_head"] is True
    # With DP attention SGLang divides the rendered 262144 by dp_size (per-rank chunk).
    assert (v["moe_dense_tp_size"], v["chunked_prefill_size"]) == (1, 262144 // 32)
    assert v["mem_fraction_static"] == 0.7

    # The 0.5.20 spelling is unknown to the pinned parser: rendering for the wrong version fails.
    assert not res_renamed["ok"] and res_renamed["code"] == 2
    assert "unrecognized arguments: --cuda-graph-max-bs-decode" in res_renamed["stderr"]


def test_sglang_0_5_20_rejects_old_flag_and_parses_the_renamed_one(model_dir, tmp_path):
    old, _ = leader_argv(model_dir)
    new, _ = leader_argv(model_dir, f"sglang.version={RENAMED}")
    deepep, _ = leader_argv(
        model_dir, f"sglang.version={RENAMED}", values_file="values-4x8-deepep.yaml"
    )
    res_old, res_new, res_deepep = parse_with_sglang(RENAMED, [old, new, deepep], tmp_path)

    # argparse's prefix matching makes the old name ambiguous rather than unknown; either way
    # SGLang exits 2 before launching anything.
    assert not res_old["ok"] and res_old["code"] == 2
    assert "--cuda-graph-max-bs could match --cuda-graph-max-bs-decode" in res_old["stderr"]

    assert res_new["ok"], res_new
    v = res_new["values"]
    assert v["cuda_graph_max_bs_decode"] == 64 and v["cuda_graph_max_bs"] == "<missing>"
    assert (v["tp_size"], v["nnodes"], v["dist_init_addr"]) == (16, 2, f"{MASTER}:29500")
    assert v["mem_fraction_static"] == 0.8 and v["disable_radix_cache"] is True

    assert res_deepep["ok"], res_deepep
    v = res_deepep["values"]
    assert (v["tp_size"], v["dp_size"], v["ep_size"], v["moe_a2a_backend"]) == (
        32,
        32,
        32,
        "deepep",
    )
