"""Instance output on a stream, written in batches: one system call per batch, not per line.

Execution environments print, and the host adds a REPORT line per invocation; at thousands of
invocations a second, a write per line would cost more than the invocation. Lines wait at most
`delay` seconds (or until `limit` bytes are pending), so a developer watching sees them at once.
"""
from __future__ import annotations

import asyncio
import contextlib

TYPE_CHECKING = False  # importing typing costs milliseconds on every cold start
if TYPE_CHECKING:
    from typing import TextIO


class BatchedLines:
    """Collects lines for `stream` and writes them together; call `flush` before exiting."""

    def __init__(self, stream: TextIO, *, delay: float = 0.05, limit: int = 64 * 1024) -> None:
        self._stream = stream
        self._delay = delay
        self._limit = limit
        self._pending: list[str] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None

    def write(self, lines: list[str]) -> None:
        for line in lines:
            self._pending.append(line)
            self._pending.append("\n")
            self._size += len(line) + 1
        if self._size >= self._limit:
            self.flush()
        elif self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(self._delay, self.flush)
            except RuntimeError:   # no loop (shutting down): write at once
                self.flush()

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        text = "".join(self._pending)
        self._pending.clear()
        self._size = 0
        # A closed or broken stream (the terminal went away) must not stop the instance.
        with contextlib.suppress(OSError, ValueError):
            self._stream.write(text)
            self._stream.flush()
