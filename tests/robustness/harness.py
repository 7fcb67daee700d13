"""`kfn local` under test in the robustness tier, and raw HTTP to it.

By default the kfn of this checkout runs. `KFN_ROBUSTNESS_TARGET=/path/to/checkout` runs another
one instead (its `.venv/bin/python -m kfn`), so the same reproducers show how an older version
behaved: options that version does not know are left out (its defaults apply), and each test
still asserts the behaviour wanted now.

Every process started here is stopped by its PID and its process group is killed afterwards.
"""
from __future__ import annotations

import contextlib
import functools
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tests.support.localmode import REPO, LocalMode
from tests.support.waiting import wait_until

TARGET = Path(os.environ.get("KFN_ROBUSTNESS_TARGET") or REPO).resolve()
TARGET_PYTHON = str(TARGET / ".venv" / "bin" / "python") if TARGET != REPO else None
# `python -m kfn` needs kfn/__main__.py, which older versions lack; the entry point they all have:
KFN = ["-c", "import sys; from kfn.cli import main; sys.exit(main())"]


@functools.cache
def supported_flags() -> frozenset[str]:
    """The long options `kfn local` of the target accepts."""
    python = TARGET_PYTHON or _current_python()
    out = subprocess.run([python, *KFN, "local", "--help"], cwd=TARGET, capture_output=True, text=True,
                         timeout=60).stdout
    return frozenset(word.split("=")[0].rstrip(",") for word in out.split() if word.startswith("--"))


def _current_python() -> str:
    import sys
    return sys.executable


def usable(args: list[str]) -> list[str]:
    """`args` without the options (and their values) the target does not know."""
    out: list[str] = []
    skip = False
    flags = supported_flags()
    for arg in args:
        if skip:
            skip = False
            continue
        if arg.startswith("--") and arg.split("=")[0] not in flags:
            skip = "=" not in arg
            continue
        out.append(arg)
    return out


class Local(LocalMode):
    """kfn local of the target checkout."""

    def start(self, *, timeout: float = 30.0) -> Local:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KFN_")}
        env["XDG_CACHE_HOME"] = str(self.directory.parent / "cache")
        python = TARGET_PYTHON or _current_python()
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [python, *KFN, "local", str(self.directory), "--port", str(self.port),
                 *usable(self.extra_args)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=TARGET,
                start_new_session=True)
        wait_until(self._serving, timeout=timeout, interval=0.05, what=f"kfn local on {self.url}")
        return self

    def rss_kib(self) -> int:
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0


@contextlib.contextmanager
def serving(directory: Path, *args: str) -> Iterator[Local]:
    local = Local(directory, extra_args=list(args))
    try:
        yield local.start()
    finally:
        local.stop()


def kfn(*args: str, timeout: float = 30.0, input: bytes | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the target's `kfn` command line; a hang is a failure (TimeoutExpired), not a stuck test."""
    python = TARGET_PYTHON or _current_python()
    return subprocess.run([python, *KFN, *args], cwd=TARGET, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})},
                          input=input.decode() if input is not None else None)


# -- raw HTTP ---------------------------------------------------------------------------------------

def connect(port: int, *, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.settimeout(timeout)
    return sock


def closed_by_server(sock: socket.socket, *, deadline: float) -> tuple[bool, bytes]:
    """(whether the server closed the connection within `deadline` s, what it sent before)."""
    sock.settimeout(1.0)
    data = b""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return True, data
        if not chunk:
            return True, data
        data += chunk
    return False, data


def status_of(answer: bytes) -> int | None:
    line = answer.split(b"\r\n", 1)[0].split()
    return int(line[1]) if len(line) >= 2 and line[1].isdigit() else None
