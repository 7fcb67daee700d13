"""The manifest directory of kfn local on its own, with a sink standing for the process backend: what
it serves, and that an idle directory is not listed again while the kernel reports no change."""
from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kfn.core.functions import Function, FunctionRef
from kfn.local.directory import ManifestDirectory
from kfn.local.watch import ChangeWatch
from tests.support.functions import function_manifest
from tests.support.waiting import eventually

HELLO = "def handler(event, context):\n    return 'hi'\n"


class Sink:
    def __init__(self) -> None:
        self.functions: dict[FunctionRef, Function] = {}

    def function(self, ref: FunctionRef) -> Function | None:
        return self.functions.get(ref)

    def set_function(self, function: Function) -> None:
        self.functions[function.ref] = function

    def remove_function(self, ref: FunctionRef) -> None:
        self.functions.pop(ref, None)


def write(directory: Path, name: str) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(function_manifest(name, HELLO)))
    return path


async def test_a_symlink_loop_is_reported_like_an_unreadable_file_and_the_rest_is_served(tmp_path: Path) -> None:
    write(tmp_path, "hello")
    os.symlink(tmp_path / "b.yaml", tmp_path / "a.yaml")
    os.symlink(tmp_path / "a.yaml", tmp_path / "b.yaml")
    sink = Sink()
    manifests = ManifestDirectory(tmp_path, sink)
    await manifests.poll()
    assert [ref.name for ref in sink.functions] == ["hello"]
    errors = {e["file"]: e["error"] for e in manifests.errors()}
    assert set(errors) == {str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml")}
    assert "symbolic links" in errors[str(tmp_path / "a.yaml")]


async def test_a_repaired_symlink_loop_is_served_at_the_next_poll(tmp_path: Path) -> None:
    os.symlink(tmp_path / "b.yaml", tmp_path / "a.yaml")
    os.symlink(tmp_path / "a.yaml", tmp_path / "b.yaml")
    sink = Sink()
    manifests = ManifestDirectory(tmp_path, sink)
    await manifests.poll()
    os.unlink(tmp_path / "b.yaml")
    write(tmp_path, "b")
    await manifests.poll()
    assert sorted(ref.name for ref in sink.functions) == ["b"]   # a.yaml now leads to b.yaml: served once
    assert not [e for e in manifests.errors() if "symbolic links" in str(e["error"])]


# -- polling only when something changed (kfn.local.watch) -------------------------------------------

def _inotify() -> bool:
    watch = ChangeWatch.open()
    if watch is None:
        return False
    watch.close()
    return True


needs_inotify = pytest.mark.skipif(not _inotify(), reason="the kernel's change reports (inotify) are Linux's")
TICK = 0.01


class Listings:
    """Counts the times a ManifestDirectory lists its directory (each poll lists it once)."""

    def __init__(self, manifests: ManifestDirectory, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        original = manifests._list

        def counted() -> Any:
            self.count += 1
            return original()

        monkeypatch.setattr(manifests, "_list", counted)


class SilentWatch:
    """A change watch that never reports anything (as on a filesystem the kernel cannot see into)."""

    def watch(self, directories: Any) -> bool:
        return True

    def changed(self) -> bool:
        return False

    def close(self) -> None:
        pass


@contextlib.asynccontextmanager
async def running(manifests: ManifestDirectory) -> AsyncIterator[None]:
    task = asyncio.create_task(manifests.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@needs_inotify
async def test_an_unchanged_directory_is_not_listed_again_while_the_kernel_reports_no_change(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "hello")
    manifests = ManifestDirectory(tmp_path, Sink(), interval=TICK, rescan=3600)
    await manifests.poll()
    listings = Listings(manifests, monkeypatch)
    async with running(manifests):
        await asyncio.sleep(50 * TICK)
    assert manifests.trusts_watch
    assert listings.count <= 1   # the first look under the watch, then none for 50 ticks


@needs_inotify
async def test_a_file_edited_in_place_is_served_at_the_next_tick_without_waiting_for_the_rescan(
        tmp_path: Path) -> None:
    path = write(tmp_path, "hello")
    sink = Sink()
    manifests = ManifestDirectory(tmp_path, sink, interval=TICK, rescan=3600)
    await manifests.poll()
    async with running(manifests):
        await asyncio.sleep(5 * TICK)
        with path.open("r+") as f:   # the same file, rewritten (as editors that save in place do)
            f.truncate()
            f.write(yaml.safe_dump(function_manifest("hello", HELLO, timeout=7)))
        await eventually(lambda: sink.functions[FunctionRef.parse("hello")].spec.timeout == 7, timeout=10,
                         what="the edit served")
        write(tmp_path, "added")
        await eventually(lambda: FunctionRef.parse("added") in sink.functions, timeout=10, what="the new file served")
        path.unlink()
        await eventually(lambda: FunctionRef.parse("hello") not in sink.functions, timeout=10,
                         what="the removal served")
    assert manifests.trusts_watch


@needs_inotify
async def test_an_edit_behind_a_symbolic_link_to_another_directory_is_served_without_waiting_for_the_rescan(
        tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    directory = tmp_path / "functions"
    directory.mkdir()
    target = write(elsewhere, "linked")
    os.symlink(target, directory / "linked.yaml")
    sink = Sink()
    manifests = ManifestDirectory(directory, sink, interval=TICK, rescan=3600)
    await manifests.poll()
    async with running(manifests):
        await asyncio.sleep(5 * TICK)
        target.write_text(yaml.safe_dump(function_manifest("linked", HELLO, timeout=9)))
        await eventually(lambda: sink.functions[FunctionRef.parse("linked")].spec.timeout == 9, timeout=10,
                         what="the edit of the link's target served")
    assert manifests.trusts_watch


async def test_a_change_the_kernel_never_reported_is_found_by_the_rescan_and_every_tick_is_polled_from_then_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "hello")
    sink = Sink()
    manifests = ManifestDirectory(tmp_path, sink, interval=TICK, rescan=20 * TICK, watch=SilentWatch)
    await manifests.poll()
    async with running(manifests):
        await asyncio.sleep(5 * TICK)
        write(tmp_path, "unreported")
        await eventually(lambda: FunctionRef.parse("unreported") in sink.functions, timeout=10,
                         what="the rescan finding the new file")
        assert not manifests.trusts_watch
        listings = Listings(manifests, monkeypatch)
        await eventually(lambda: listings.count >= 5, timeout=10, what="polls at every tick again")


async def test_without_a_change_watch_every_tick_is_polled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "hello")
    manifests = ManifestDirectory(tmp_path, Sink(), interval=TICK, watch=None)
    await manifests.poll()
    listings = Listings(manifests, monkeypatch)
    async with running(manifests):
        await eventually(lambda: listings.count >= 5, timeout=10, what="a poll at every tick")
    assert not manifests.trusts_watch
