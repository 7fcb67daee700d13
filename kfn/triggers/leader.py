"""One scheduler per work directory in local mode: an exclusive lock on a file.

`FileLock.run(lead)` has the shape of `kfn.kube.lease.LeaseElection.run`: it waits for the lock
(`flock(LOCK_EX | LOCK_NB)`, tried every `retry` seconds), runs `lead()` while holding it, and
gives it up when cancelled. The kernel drops the lock of a process that dies, SIGKILL included,
so a second `kfn local` on the same directory takes over at its next try, and two never lead
at once (a lock, unlike a Lease, cannot expire under a paused holder).
"""
from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

logger = logging.getLogger(__name__)


class FileLock:
    def __init__(self, path: Path | str, *, retry: float = 1.0, what: str = "scheduler") -> None:
        self.path = Path(path)
        self._retry = retry
        self._what = what
        self.leading = asyncio.Event()

    def _try_lock(self) -> int | None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return fd

    async def run(self, lead: Callable[[], Awaitable[None]]) -> None:
        """Wait for the lock, then lead until cancelled (or until `lead` returns)."""
        fd = None
        try:
            while fd is None:
                fd = self._try_lock()
                if fd is None:
                    await asyncio.sleep(self._retry)
            logger.info("%s: this process (%d) holds %s", self._what, os.getpid(), self.path)
            self.leading.set()
            await lead()
            # Nothing more to lead, but keep the lock: another process must not start leading.
            await asyncio.Event().wait()
        finally:
            self.leading.clear()
            if fd is not None:
                with contextlib.suppress(OSError):
                    fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
