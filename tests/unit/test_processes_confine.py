"""Cgroups left by a `kfn local` that was SIGKILLed are removed at the next start: a fake cgroup
tree in a temporary directory stands for /sys/fs/cgroup."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from kfn.processes import confine
from kfn.processes.confine import Confinement


def gone_pid() -> int:
    """A PID no process can have (above the kernel's maximum)."""
    return int(Path("/proc/sys/kernel/pid_max").read_text()) + 1


@pytest.fixture
def v1_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A machine with only the cgroup v1 memory hierarchy, this process in its /own cgroup."""
    own = tmp_path / "memory" / "own"
    own.mkdir(parents=True)
    monkeypatch.setattr(confine, "V1_MEMORY_ROOT", tmp_path / "memory")
    monkeypatch.setattr(confine, "_v2_root", lambda: None)
    monkeypatch.setattr(confine, "_own_cgroup", lambda controller: "/own" if controller == "memory" else None)
    return own


def test_v1_memory_cgroups_of_a_killed_kfn_local_are_removed_at_the_next_start(v1_only: Path) -> None:
    stale = v1_only / f"kfn-local-{gone_pid()}"
    (stale / "default.hello-1").mkdir(parents=True)
    (stale / "default.hello-2").mkdir()
    Confinement.create(f"kfn-local-{os.getpid()}")
    assert not stale.exists()


def test_v1_memory_cgroups_of_a_running_kfn_local_are_left_alone(v1_only: Path) -> None:
    live = v1_only / f"kfn-local-{os.getppid()}"
    (live / "default.hello-1").mkdir(parents=True)
    Confinement.create(f"kfn-local-{os.getpid()}")
    assert (live / "default.hello-1").is_dir()
