"""Attacks on kfn local's archive cache (DEPS/archives): two kfn local processes sharing it, and a disk
that fills up. pip runs for real, offline, on a wheel written by the test; the two processes are real."""
from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kfn.processes.code import ARCHIVES, CodeStore, Unsupported
from tests.support.functions import make_function
from tests.support.localmode import REPO, make_wheel

# One kfn local process's build: the tree's path and inode once `dependencies` returns.
BUILD = """
import asyncio, os, sys
from pathlib import Path
from kfn.processes.code import CodeStore
from tests.support.functions import make_function
work, deps, python, wheel = sys.argv[1:]
store = CodeStore(Path(work), Path(deps), python=python, pip_timeout=120)
tree = asyncio.run(store.dependencies(make_function("probe", requirements=[wheel]), log=lambda line: None))
print(tree, os.stat(tree).st_ino, flush=True)
"""


def gated_python(tmp_path: Path, name: str) -> Path:
    """A `python` that, before running pip, says it arrived (NAME.arrived) and waits for NAME.go."""
    script = tmp_path / f"python-{name}"
    arrived, go = tmp_path / f"{name}.arrived", tmp_path / f"{name}.go"
    script.write_text(f'#!/bin/sh\ncase " $* " in *" pip install "*) touch "{arrived}"\n'
                      f'  while [ ! -e "{go}" ]; do sleep 0.05; done;; esac\nexec "{sys.executable}" "$@"\n')
    script.chmod(0o755)
    return script


def wait_for(path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_a_tree_another_process_published_first_is_kept_not_replaced_under_its_instances(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path, "kfnprobe", "VALUE = 1\n")
    deps = tmp_path / "deps"
    processes = {name: subprocess.Popen(
        [sys.executable, "-c", BUILD, str(tmp_path / f"work-{name}"), str(deps), str(gated_python(tmp_path, name)),
         str(wheel)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO) for name in ("a", "b")}
    try:
        wait_for(tmp_path / "a.arrived")
        wait_for(tmp_path / "b.arrived")   # both found no tree and are building it
        (tmp_path / "a.go").touch()
        first_out, first_err = processes["a"].communicate(timeout=120)
        (tmp_path / "b.go").touch()
        second_out, second_err = processes["b"].communicate(timeout=120)
    finally:
        for process in processes.values():
            with contextlib.suppress(ProcessLookupError):
                process.kill()

    assert processes["a"].returncode == 0, first_err
    assert processes["b"].returncode == 0, second_err
    first, second = first_out.split(), second_out.split()
    assert first == second   # the same tree, the first process's: its instances never lost it
    assert os.stat(first[0]).st_ino == int(first[1]) and (Path(first[0]) / "kfnprobe.py").is_file()
    assert [p.name for p in deps.iterdir() if p.name.startswith(".partial-")] == []


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB filesystem of its own (a tmpfs: root only)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                                           capture_output=True, timeout=30).returncode != 0:
        pytest.skip("cannot mount a small filesystem here")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30)


def fill(disk: Path) -> Path:
    """Fill `disk` to the last byte; the file that does."""
    filler = disk / "filler"
    with filler.open("wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    return filler


async def test_a_full_disk_while_unpacking_keeps_the_cached_archive_and_says_so(
        small_disk: Path, tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path, "kfnprobe", "VALUE = 'x' * 100_000\n" + "# padding\n" * 50_000)
    store = CodeStore(tmp_path / "work", small_disk / "deps", python=sys.executable, pip_timeout=120)
    function = make_function("probe", requirements=[str(wheel)])
    tree = await store.dependencies(function, log=lambda line: None)
    [cached] = (small_disk / "deps" / ARCHIVES).glob("*.tar.gz")
    original = cached.read_bytes()
    for directory, dirs, files in os.walk(tree, topdown=False):
        for name in files:
            os.unlink(os.path.join(directory, name))
        for name in dirs:
            os.rmdir(os.path.join(directory, name))
    os.rmdir(tree)
    filler = fill(small_disk)

    with pytest.raises(OSError, match="No space left"):
        await store.dependencies(function, log=lambda line: None)

    assert cached.read_bytes() == original
    filler.unlink()
    logged: list[str] = []
    again = await store.dependencies(function, log=logged.append)
    assert (again / "kfnprobe.py").is_file() and any("unpacked from" in line for line in logged)


async def test_a_fifo_in_place_of_the_cached_archive_is_replaced_by_a_fresh_build_not_waited_on(
        tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path, "kfnprobe", "VALUE = 1\n")
    store = CodeStore(tmp_path / "work", tmp_path / "deps", python=sys.executable, pip_timeout=120)
    function = make_function("probe", requirements=[str(wheel)])
    tree = await store.dependencies(function, log=lambda line: None)
    [cached] = (tmp_path / "deps" / ARCHIVES).glob("*.tar.gz")
    cached.unlink()
    os.mkfifo(cached)
    shutil.rmtree(tree)

    try:
        again = await asyncio.wait_for(store.dependencies(function, log=lambda line: None), 60)
    finally:
        with contextlib.suppress(OSError):   # a reader still waiting on the FIFO: let it go
            os.close(os.open(cached, os.O_WRONLY | os.O_NONBLOCK))

    assert (again / "kfnprobe.py").is_file() and cached.is_file() and not stat.S_ISFIFO(cached.stat().st_mode)


async def test_a_failed_install_printing_megabytes_quotes_a_bounded_tail_and_logs_everything(tmp_path: Path) -> None:
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\ncase " $* " in *" pip install "*)\n'
                      f'  exec "{sys.executable}" -c "import sys\nfor i in range(30): print(str(i % 10) * 200_000)\n'
                      f'sys.stdout.write(\'x\' * 3_000_000)\nprint()\nprint(\'ERROR: the reason\')\nsys.exit(1)";;\n'
                      f'esac\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    store = CodeStore(tmp_path / "work", tmp_path / "deps", python=str(python), pip_timeout=120)
    function = make_function("probe", requirements=["kfnprobe"])

    with pytest.raises(Unsupported) as failed:
        await store.dependencies(function, log=lambda line: None)

    message = str(failed.value)
    assert message.startswith("spec.requirements: pip install failed (exit code 1)")
    assert message.endswith("ERROR: the reason") and len(message) < 64 * 1024
    build_log = store.build_log(function.ref)
    assert build_log is not None and build_log.stat().st_size > 9_000_000
