"""A kfn command run as a process of its own for a test: its output in a log file, signals, exit."""
from __future__ import annotations

import asyncio
import signal
from pathlib import Path


class CommandProcess:
    """A process started in a session of its own, its output in `log`."""

    def __init__(self, process: asyncio.subprocess.Process, log: Path) -> None:
        self.process = process
        self.log = log

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def signal(self, sig: int = signal.SIGTERM) -> None:
        if self.process.returncode is None:
            self.process.send_signal(sig)

    async def wait(self, timeout: float) -> int | None:
        """The exit code, or None if it still runs after `timeout` seconds."""
        try:
            return await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            return None
