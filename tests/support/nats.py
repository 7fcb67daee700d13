"""A JetStream nats-server on 127.0.0.1 for tests (Debian's; `make install` installs it), stopped by its PID."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.ports import free_port


def nats_server_binary() -> str:
    found = shutil.which("nats-server") or next(
        (p for p in ("/usr/sbin/nats-server", "/usr/bin/nats-server") if os.path.exists(p)), None)
    if found is None:
        pytest.skip("nats-server is not installed (make install installs Debian's)")
    return found


class NatsServer:
    """A JetStream nats-server on 127.0.0.1 with its store in `directory`; with `user` and
    `password`, it refuses clients without them."""

    def __init__(self, directory: Path, *, user: str | None = None, password: str | None = None) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.login = ["--user", user, "--pass", password] if user and password else []

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = open(self.directory / "nats-server.log", "ab")
        self.process = subprocess.Popen(
            [nats_server_binary(), "-js", "-sd", str(self.directory / "store"), "-a", "127.0.0.1",
             "-p", str(self.port), *self.login], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"nats-server exited: {(self.directory / 'nats-server.log').read_text()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return
            time.sleep(0.05)
        raise AssertionError("nats-server did not listen within 20 s")

    def kill(self) -> None:
        """SIGKILL: no chance to flush anything."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
