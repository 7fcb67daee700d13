"""A function's recent output lines, bounded in lines and in bytes, fanned out to followers."""
from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
from collections.abc import AsyncIterator
from pathlib import Path

# Kept per function for `kfn logs`.
DEFAULT_LOG_LINES = 2000
DEFAULT_LOG_BYTES = 4 * 1024 * 1024
# A single line is cut here: one print of a huge string must not hold megabytes per line.
MAX_LINE_BYTES = 16 * 1024
# A follower that cannot keep up loses lines rather than slowing down the instances.
FOLLOWER_QUEUE = 1000


def clip(line: str, limit: int = MAX_LINE_BYTES) -> str:
    """`line`, cut to about `limit` bytes with a note of how much was cut."""
    if len(line) <= limit // 4:
        return line  # cannot exceed the limit even in 4-byte UTF-8
    data = line.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return line
    kept = data[:limit].decode("utf-8", "ignore")
    return f"{kept}… [{len(data) - limit} more bytes cut]"


class LogBuffer:
    """The last lines of a function's output, and a fan-out of new lines to followers."""

    def __init__(self, *, max_lines: int = DEFAULT_LOG_LINES, max_bytes: int = DEFAULT_LOG_BYTES,
                 path: Path | None = None) -> None:
        self._lines: collections.deque[str] = collections.deque()
        self._max_lines = max_lines
        self._max_bytes = max_bytes
        self._bytes = 0
        self._followers: set[asyncio.Queue[str | None]] = set()
        self._file = path.open("a", encoding="utf-8", buffering=1) if path is not None else None
        self._closed = False

    @property
    def size(self) -> int:
        """Bytes (as characters) of the lines kept."""
        return self._bytes

    def append(self, line: str) -> None:
        """Keep `line` (cut at MAX_LINE_BYTES), dropping the oldest past the bounds, and pass it on to
        the file and the followers. Called for every line an instance prints (three more per
        invocation): the common case (a short line, nobody following) does the least."""
        if len(line) > MAX_LINE_BYTES // 4:
            line = clip(line)
        lines = self._lines
        lines.append(line)
        self._bytes += len(line)
        if len(lines) > self._max_lines or self._bytes > self._max_bytes:
            while lines and (len(lines) > self._max_lines or self._bytes > self._max_bytes):
                self._bytes -= len(lines.popleft())
        if self._file is not None:
            self._file.write(line + "\n")
        if self._followers:
            for queue in self._followers:
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(line)

    def tail(self, n: int | None = None) -> list[str]:
        """The last `n` lines (all kept lines when `n` is None)."""
        if n is None:
            return list(self._lines)
        if n <= 0:
            return []
        return list(itertools.islice(self._lines, max(0, len(self._lines) - n), None))

    @contextlib.asynccontextmanager
    async def follow(self, *, tail: int | None = 0) -> AsyncIterator[AsyncIterator[str]]:
        """The last `tail` lines, then every new line until the buffer closes.

        Subscribing and taking the tail happen without a suspension point in between, so no
        line is missed or repeated.
        """
        queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=FOLLOWER_QUEUE)
        backlog = self.tail(tail)
        if self._closed:
            queue.put_nowait(None)
        self._followers.add(queue)

        async def lines() -> AsyncIterator[str]:
            for line in backlog:
                yield line
            while (item := await queue.get()) is not None:
                yield item

        try:
            yield lines()
        finally:
            self._followers.discard(queue)

    @contextlib.asynccontextmanager
    async def read(self, *, tail: int, follow: bool) -> AsyncIterator[AsyncIterator[str]]:
        """`follow` when following, else just the last `tail` lines (the backends' `logs`)."""
        if follow:
            async with self.follow(tail=tail) as lines:
                yield lines
            return
        backlog = self.tail(tail)

        async def kept() -> AsyncIterator[str]:
            for line in backlog:
                yield line

        yield kept()

    def close(self) -> None:
        """End every follow; lines kept so far stay readable."""
        self._closed = True
        for queue in self._followers:
            # A full queue gets its end marker by dropping one line: ending matters more.
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(None)
        if self._file is not None:
            self._file.close()
            self._file = None
