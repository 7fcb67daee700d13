"""Which interpreter a Python runtime runs on in kfn local: found by its real version, else
substituted and said. Fake interpreters are shell scripts answering the version probe."""
from __future__ import annotations

import concurrent.futures
import sys
import threading
from pathlib import Path

import pytest

from kfn.processes import interpreters
from kfn.processes.interpreters import Choice, Interpreters, find_python

OWN = f"{sys.version_info.major}.{sys.version_info.minor}"
OTHER = "3.13" if OWN != "3.13" else "3.12"


def fake_python(directory: Path, name: str, version: str) -> Path:
    """An executable that says it is Python `version` when asked as kfn asks."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(f"#!/bin/sh\necho {version}\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def nowhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A machine whose only interpreters are the ones a test puts in tmp_path/bin or its pyenv."""
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "pyenv"))
    monkeypatch.setattr(interpreters, "KNOWN_DIRS", ())
    return tmp_path


def test_a_python_of_the_declared_version_on_path_is_found(nowhere: Path) -> None:
    python = fake_python(nowhere / "bin", "python3.13", "3.13")
    assert find_python("3.13") == str(python)


def test_an_interpreter_named_for_a_version_it_is_not_is_passed_over(nowhere: Path) -> None:
    fake_python(nowhere / "bin", "python3.13", "3.11")
    assert find_python("3.13") is None


def test_a_pyenv_install_of_the_version_is_found(nowhere: Path) -> None:
    fake_python(nowhere / "pyenv" / "versions" / "3.12.4" / "bin", "python3.12", "3.11")   # lies: skipped
    python = fake_python(nowhere / "pyenv" / "versions" / "3.12.7" / "bin", "python3.12", "3.12")
    assert find_python("3.12") == str(python)


def test_the_declared_version_is_used_when_the_machine_has_it() -> None:
    asked: list[str] = []
    choice = Interpreters(find=lambda v: asked.append(v) or "/opt/py/bin/python" + v).choose(f"python{OTHER}")
    assert choice == Choice(f"python{OTHER}", f"/opt/py/bin/python{OTHER}", OTHER)
    assert not choice.substituted and choice.warning() is None and choice.refusal() is None
    assert asked == [OTHER]


def test_kfns_own_interpreter_serves_its_own_version_without_a_search() -> None:
    def find(version: str) -> str | None:
        raise AssertionError("no search for kfn's own version")

    choice = Interpreters(find=find).choose(f"python{OWN}")
    assert choice.python == sys.executable and not choice.substituted


def test_a_missing_version_runs_on_kfns_own_python_and_says_so() -> None:
    choice = Interpreters(find=lambda v: None).choose(f"python{OTHER}")
    assert (choice.python, choice.version, choice.running) == (sys.executable, OWN, f"python{OWN}")
    assert choice.substituted
    warning = choice.warning()
    assert warning is not None and f"no Python {OTHER}" in warning and f"runs on Python {OWN}" in warning
    assert "--strict-runtimes" in warning
    refusal = choice.refusal()
    assert refusal is not None and refusal.startswith(f"spec.runtime: python{OTHER} needs Python {OTHER}")


def test_each_runtime_is_looked_for_once() -> None:
    asked: list[str] = []
    chooser = Interpreters(find=lambda v: asked.append(v) or None)
    first = chooser.choose(f"python{OTHER}")
    assert chooser.choose(f"python{OTHER}") is first and asked == [OTHER]


def test_a_shim_resolves_to_the_interpreter_it_runs(nowhere: Path) -> None:
    real = fake_python(nowhere / "real", "python3.13", "3.13")
    shim = nowhere / "bin" / "python3.13"
    shim.parent.mkdir()
    shim.write_text(f"#!/bin/sh\necho 3.13 {real}\n")
    shim.chmod(0o755)
    assert find_python("3.13") == str(real)


def test_an_interpreter_answering_nonsense_is_passed_over(nowhere: Path) -> None:
    fake_python(nowhere / "bin", "python3.13", "pyenv: python3.13: command not found")
    assert find_python("3.13") is None


def test_a_choice_asked_for_while_another_thread_makes_it_waits_for_it_and_searches_no_more() -> None:
    searching = threading.Event()
    release = threading.Event()
    asked: list[str] = []

    def find(version: str) -> str | None:
        asked.append(version)
        searching.set()
        release.wait(timeout=10)
        return "/opt/py/bin/python" + version

    chooser = Interpreters(find=find)
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        first = pool.submit(chooser.choose, f"python{OTHER}")
        assert searching.wait(timeout=10)
        second = pool.submit(chooser.choose, f"python{OTHER}")
        with pytest.raises(concurrent.futures.TimeoutError):
            second.result(timeout=0.2)   # waiting for the first's search, not searching again
        release.set()
        assert first.result(timeout=10) == second.result(timeout=10)
    assert asked == [OTHER]
