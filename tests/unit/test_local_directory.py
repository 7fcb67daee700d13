"""The manifest directory of kfn local on its own, with a sink standing for the process backend."""
from __future__ import annotations

import os
from pathlib import Path

import yaml

from kfn.core.functions import Function, FunctionRef
from kfn.local.directory import ManifestDirectory
from tests.support.functions import function_manifest

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
