"""`kfn local` runs each Python function on the version it declares, or says loudly that it cannot.

The real path needs a Python 3.13 on the machine (PATH, /usr/local/bin, /usr/bin or pyenv) and is
skipped without one. The substitution is shown on a "bare" kfn local whose PATH and pyenv hold no
3.13 (only a /usr/bin or /usr/local/bin python3.13 defeats that, and then those tests skip).
"""
from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.localmode import PYTHON, REPO, WHICH, LocalMode, http, write_manifest
from tests.support.waiting import wait_until


def python313() -> str | None:
    """A Python 3.13 where kfn local looks for one, found independently of kfn's own finder."""
    pyenv = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    found = [shutil.which("python3.13", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/bin:/usr/bin"])),
             *glob.glob(os.path.join(pyenv, "versions", "3.13*", "bin", "python3.13"))]
    for path in filter(None, found):
        probe = subprocess.run([path, "-c", "import sys; print(sys.version_info[:2] == (3, 13))"],
                               capture_output=True, text=True, timeout=30)
        if probe.stdout.strip() == "True":
            return path
    return None


HAS_313 = python313() is not None


@contextlib.contextmanager
def bare_machine(empty: Path) -> Iterator[None]:
    """Environment variables hiding every Python but the system directories' (kfn local inherits them)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PATH", "/usr/local/bin:/usr/bin:/bin")
        patch.setenv("PYENV_ROOT", str(empty))
        if python313() is not None:
            pytest.skip("this machine has a Python 3.13 in a system directory: nothing is substituted")
        yield


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMode]:
    directory = tmp_path_factory.mktemp("runtimes") / "functions"
    directory.mkdir()
    write_manifest(directory, "py311", WHICH, runtime="python3.11")
    write_manifest(directory, "py313", WHICH, runtime="python3.13")
    server = LocalMode(directory)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMode]:
    """kfn local serving a python3.13 function on a machine without Python 3.13."""
    directory = tmp_path_factory.mktemp("bare") / "functions"
    directory.mkdir()
    write_manifest(directory, "py311", WHICH, runtime="python3.11")
    write_manifest(directory, "py313", WHICH, runtime="python3.13")
    server = LocalMode(directory)
    with bare_machine(directory.parent / "no-pyenv"):
        server.start()
    try:
        yield server
    finally:
        server.stop()


def test_a_python311_function_runs_on_python311_and_says_so(local: LocalMode) -> None:
    result = local.invoke("py311")
    assert result.status == 200, result.body
    assert result.json() == {"version": "3.11", "executionEnv": "AWS_Lambda_python3.11"}
    info = local.function("py311")
    assert info is not None and info["runtimeUsed"] == "python3.11" and info["runtimeWarning"] is None
    assert "py311" not in {w["function"] for w in local.errors()["warnings"]}


@pytest.mark.skipif(not HAS_313, reason="no Python 3.13 on this machine (see the substitution tests)")
def test_a_python313_function_runs_on_python313_where_the_machine_has_one(local: LocalMode) -> None:
    result = local.invoke("py313")
    assert result.status == 200, result.body
    assert result.json() == {"version": "3.13", "executionEnv": "AWS_Lambda_python3.13"}


def test_a_python313_function_without_python313_runs_on_kfns_python_with_an_honest_execution_env(
        bare: LocalMode) -> None:
    result = bare.invoke("py313")
    assert result.status == 200, result.body
    assert result.json() == {"version": "3.11", "executionEnv": "AWS_Lambda_python3.11"}


def test_the_substitution_is_reported_at_load_in_the_listing_the_errors_and_the_log(bare: LocalMode) -> None:
    local = bare
    assert local.invoke("py313").status == 200   # an instance, whose log starts with it
    output = local.output()
    assert "function py313.default: spec.runtime python3.13: there is no Python 3.13 on this machine" in output
    assert "kfn local: warning: 1 function(s) run on another Python" in output and "py313" in output
    info = local.function("py313")
    assert info is not None and info["runtime"] == "python3.13" and info["runtimeUsed"] == "python3.11"
    assert "runs on Python 3.11" in info["runtimeWarning"]
    warnings = {w["function"]: w["warning"] for w in local.errors()["warnings"]}
    assert "no Python 3.13" in warnings["py313"]
    assert local.errors()["functions"] == []   # a warning, not an error: it serves
    logs = http("GET", f"{local.url}/system/logs/py313?tail=1000", timeout=5).body.decode()
    assert logs.splitlines()[0].startswith("[kfn] py313-1: spec.runtime python3.13: there is no Python 3.13")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KFN_")}
    listing = subprocess.run([PYTHON, "-m", "kfn", "list", "--gateway", local.url], capture_output=True, text=True,
                             timeout=30, env=env, cwd=REPO)
    assert listing.returncode == 0, listing.stderr
    rows = {line.split()[1]: line.split() for line in listing.stdout.splitlines()[1:]}
    assert rows["py313"][2] == "python3.13->3.11" and rows["py311"][2] == "python3.11"
    assert "warning: py313: spec.runtime python3.13" in listing.stderr


def test_strict_runtimes_refuses_a_function_whose_python_is_missing_and_serves_the_rest(tmp_path: Path) -> None:
    directory = tmp_path / "functions"
    directory.mkdir()
    write_manifest(directory, "py311", WHICH, runtime="python3.11")
    refused = write_manifest(directory, "py313", WHICH, runtime="python3.13")
    server = LocalMode(directory, extra_args=["--strict-runtimes"])
    try:
        with bare_machine(tmp_path / "no-pyenv"):
            server.start()
        assert server.invoke("py313").status == 404
        assert server.invoke("py311").status == 200
        problems = {p["file"]: p["error"] for p in server.errors()["manifests"]}
        assert "py313: spec.runtime: python3.13 needs Python 3.13" in problems[str(refused)]
        assert "--strict-runtimes" in problems[str(refused)]
        wait_until(lambda: "1 manifest file(s) with errors" in server.output(), timeout=5, what="the startup line")
    finally:
        server.stop()

