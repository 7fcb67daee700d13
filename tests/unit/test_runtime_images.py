"""The Python each runtime image runs: the published build's bases and the local build's Debian suites."""
from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TAGS = ("3.11", "3.12", "3.13")


def test_the_published_build_puts_each_runtime_tag_on_the_official_python_image_of_that_version() -> None:
    # `make images-docker` with an echoing "docker": the commands it would run, nothing built.
    result = subprocess.run(["make", "-s", "--no-print-directory", "images-docker", "DOCKER=echo docker"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    bases = {}
    for line in result.stdout.splitlines():
        words = shlex.split(line) if line.startswith("docker build ") else []
        if "runtime-images/python" in words:
            tag = words[words.index("-t") + 1]
            bases[tag.rsplit(":", 1)[1]] = words[words.index("--build-arg") + 1]
    assert bases == {v: f"BASE_IMAGE=python:{v}-slim" for v in TAGS}


def test_the_local_build_runs_each_tag_on_its_version_except_a_documented_3_12() -> None:
    script = (REPO / "scripts" / "images").read_text()
    suites = dict(re.findall(r"\[(3\.\d+)\]=(\w+)", re.search(r"declare -A runtime_suite=\((.*)\)", script)[1]))
    runs = dict(re.findall(r"\[(3\.\d+)\]=([\d.]+)", re.search(r"declare -A runtime_python=\((.*)\)", script)[1]))
    debian_python = {"bookworm": "3.11", "trixie": "3.13"}
    assert {v: debian_python[suites[v]] for v in TAGS} == runs
    assert [v for v in TAGS if runs[v] != v] == ["3.12"]
    readme = (REPO / "charts" / "kfn" / "README.md").read_text()
    assert "runtime-python:3.12" in readme and "runs Python 3.11" in readme

