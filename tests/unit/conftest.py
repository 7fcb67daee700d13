"""Fixtures of the unit tests."""
from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kfn.archives.directory import DirectoryArchives


@pytest.fixture
def module_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A path (without .py) for a module of this test's own name, importable from tmp_path."""
    monkeypatch.syspath_prepend(str(tmp_path))
    prefix = "kfnrt_" + "".join(c if c.isalnum() else "_" for c in request.node.name)
    yield tmp_path / prefix
    for name in [m for m in sys.modules if m.startswith(prefix)]:
        del sys.modules[name]


@pytest.fixture
def temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The directory the gateway's temporary files go to in this test."""
    directory = tmp_path / "tmp"
    directory.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    return directory


@pytest.fixture
def store(tmp_path: Path) -> DirectoryArchives:
    """The gateway's archive store, a directory (modules testing another kind of store define their own)."""
    return DirectoryArchives(tmp_path / "store")
