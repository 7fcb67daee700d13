"""`kfn local` builds a requirement set once into an archive of the cluster's format, kept in its cache.

pip runs for real, offline, on a wheel written by the test, through a `python` that records each call.
"""
from __future__ import annotations

import asyncio
import shutil
import sys
import tarfile
from pathlib import Path

import pytest

from kfn.processes.code import ARCHIVES, CodeStore
from kfn.processes.interpreters import Choice
from kfn_runtime import archive
from tests.support.functions import make_function
from tests.support.localmode import make_wheel


@pytest.fixture
def python(tmp_path: Path) -> Path:
    """A `python` that appends its arguments to calls.txt beside it, then runs this interpreter."""
    script = tmp_path / "python"
    script.write_text(f'#!/bin/sh\necho "$@" >> "{tmp_path / "calls.txt"}"\nexec "{sys.executable}" "$@"\n')
    script.chmod(0o755)
    return script


def pip_runs(python: Path) -> int:
    calls = python.parent / "calls.txt"
    return sum(" pip install " in f" {line} " for line in calls.read_text().splitlines()) if calls.exists() else 0


@pytest.fixture
def store(tmp_path: Path, python: Path) -> CodeStore:
    return CodeStore(tmp_path / "work", tmp_path / "deps", python=str(python), pip_timeout=120)


@pytest.fixture
def wheel(tmp_path: Path) -> Path:
    return make_wheel(tmp_path, "kfnprobe", "VALUE = 'from a wheel'\n")


def the_archive(tmp_path: Path) -> Path:
    [path] = (tmp_path / "deps" / ARCHIVES).glob("*.tar.gz")
    return path


def noop(line: str) -> None:
    pass


async def test_a_built_set_leaves_an_archive_of_format_1_naming_its_key_and_requirements(
        store: CodeStore, wheel: Path, tmp_path: Path) -> None:
    tree = await store.dependencies(make_function("probe", requirements=[str(wheel)]), log=noop)

    assert (tree / "kfnprobe.py").is_file()
    path = the_archive(tmp_path)
    with tarfile.open(path) as tar:
        first = tar.next()
        assert first is not None and first.name == archive.MANIFEST_NAME
    with path.open("rb") as f:
        meta = archive.unpack(f, str(tmp_path / "check"))
    assert meta["format"] == archive.FORMAT == 1
    assert meta["key"] == tree.name == path.name.removesuffix(".tar.gz")
    assert meta["requirements"] == [str(wheel)] and meta["installer"] == "pip"
    assert (tmp_path / "check" / "kfnprobe.py").read_text() == "VALUE = 'from a wheel'\n"


async def test_the_installers_output_is_kept_beside_the_archive_as_the_build_log(
        store: CodeStore, wheel: Path, tmp_path: Path) -> None:
    function = make_function("probe", requirements=[str(wheel)])
    logged: list[str] = []
    tree = await store.dependencies(function, log=logged.append)

    build_log = store.build_log(function.ref)
    assert build_log == tmp_path / "deps" / ARCHIVES / f"{tree.name}.log"
    assert "kfnprobe" in build_log.read_text()
    assert [f"[pip] {line}" for line in build_log.read_text().splitlines()] == [
        line for line in logged if line.startswith("[pip] ")]


async def test_an_archived_set_whose_tree_was_deleted_is_unpacked_without_running_pip(
        store: CodeStore, wheel: Path, python: Path) -> None:
    function = make_function("probe", requirements=[str(wheel)])
    tree = await store.dependencies(function, log=noop)
    assert pip_runs(python) == 1
    shutil.rmtree(tree)

    logged: list[str] = []
    again = await store.dependencies(function, log=logged.append)

    assert again == tree and (tree / "kfnprobe.py").read_text() == "VALUE = 'from a wheel'\n"
    assert pip_runs(python) == 1
    assert any("unpacked from" in line for line in logged)


async def test_an_archive_copied_into_an_empty_cache_is_used_without_running_pip(
        store: CodeStore, wheel: Path, python: Path, tmp_path: Path) -> None:
    function = make_function("probe", requirements=[str(wheel)])
    await store.dependencies(function, log=noop)
    elsewhere = CodeStore(tmp_path / "work2", tmp_path / "deps2", python=str(python))
    (tmp_path / "deps2" / ARCHIVES).mkdir(parents=True)
    shutil.copy(the_archive(tmp_path), tmp_path / "deps2" / ARCHIVES)

    tree = await elsewhere.dependencies(function, log=noop)

    assert (tree / "kfnprobe.py").is_file() and pip_runs(python) == 1


async def test_a_corrupt_archive_in_the_cache_is_replaced_by_a_fresh_build(
        store: CodeStore, wheel: Path, python: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    function = make_function("probe", requirements=[str(wheel)])
    tree = await store.dependencies(function, log=noop)
    shutil.rmtree(tree)
    path = the_archive(tmp_path)
    path.write_bytes(path.read_bytes()[:200])

    again = await store.dependencies(function, log=noop)

    assert (again / "kfnprobe.py").is_file() and pip_runs(python) == 2
    with path.open("rb") as f:
        assert archive.unpack(f, str(tmp_path / "check"))["key"] == tree.name
    assert sum("unusable" in r.getMessage() for r in caplog.records) == 1


async def test_an_archive_whose_manifest_names_another_key_is_replaced_by_a_fresh_build(
        store: CodeStore, wheel: Path, python: Path, tmp_path: Path) -> None:
    function = make_function("probe", requirements=[str(wheel)])
    first = await store.dependencies(function, log=noop)
    elsewhere = Choice(runtime="python3.99", python=str(python), version="3.99")
    other_key = archive.deps_key(runtime="python3.99", image="local", requirements=[str(wheel)])
    other_archive = tmp_path / "deps" / ARCHIVES / f"{other_key}.tar.gz"
    shutil.copy(tmp_path / "deps" / ARCHIVES / f"{first.name}.tar.gz", other_archive)

    tree = await store.dependencies(function, log=noop, python=elsewhere)

    assert tree.name == other_key and pip_runs(python) == 2
    with other_archive.open("rb") as f:
        assert archive.unpack(f, str(tmp_path / "check"))["key"] == other_key


async def test_two_pythons_build_under_two_keys(store: CodeStore, wheel: Path, python: Path, tmp_path: Path) -> None:
    function = make_function("probe", requirements=[str(wheel)])
    trees = [await store.dependencies(function, log=noop,
                                      python=Choice(runtime="python3.12", python=str(python), version=version))
             for version in ("3.12", "3.13")]

    assert trees[0] != trees[1] and pip_runs(python) == 2
    assert len(list((tmp_path / "deps" / ARCHIVES).glob("*.tar.gz"))) == 2
    assert {archive.valid_key(tree.name) for tree in trees} == {True}


async def test_concurrent_callers_for_one_set_share_one_build(store: CodeStore, wheel: Path, python: Path) -> None:
    function = make_function("probe", requirements=[str(wheel)])
    trees = await asyncio.gather(*(store.dependencies(function, log=noop) for _ in range(3)))

    assert len(set(trees)) == 1 and pip_runs(python) == 1
