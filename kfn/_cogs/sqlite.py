"""A SQLite database on a thread of its own, so the event loop never waits for the disk: the
event store (`kfn.events.sqlite`) and the tick store (`kfn.triggers.ticks`) of local mode.

`Database` holds one connection, opened, used and closed on one dedicated thread: every `call`
runs there, one at a time, in the order they were made. The connection is in autocommit mode
(`isolation_level=None`: a caller that wants a transaction says BEGIN and COMMIT itself), its
journal is a WAL, and a statement waits up to `busy_timeout` seconds for a lock another
connection (another process) holds before it fails with `sqlite3.OperationalError`.
"""
from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class DatabaseClosed(Exception):
    """The database is not open: never opened, being opened, or closed."""


class Database:
    """The SQLite file `path` on a thread named `thread_name` (see the module docstring), written
    with `PRAGMA synchronous=<synchronous>`."""

    def __init__(self, path: Path, *, thread_name: str, synchronous: str = "FULL", busy_timeout: float = 30.0) -> None:
        self.path = path
        self._thread_name = thread_name
        self._synchronous = synchronous
        self._busy_timeout = busy_timeout
        self._thread: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None

    @property
    def is_open(self) -> bool:
        """From the start of `open` until `close`."""
        return self._thread is not None

    @property
    def connection(self) -> sqlite3.Connection | None:
        """The open connection (None when not open), to look at (a test's trace callback); every
        statement goes through `call`."""
        return self._db

    async def open(self, setup: Callable[[sqlite3.Connection], None] | None = None) -> None:
        """Start the thread, and on it create the file's directory, connect, and run `setup` (a
        schema, say) on the new connection; nothing if it is open already. Runs as long as that
        takes (a lock held by another connection: up to `busy_timeout` per statement). On failure
        (OSError for the directory, sqlite3.Error, or whatever `setup` raises) or cancellation
        the connection is closed, the thread ends, the error propagates and the database stays
        closed (it may be opened again)."""
        if self._thread is not None:
            return
        thread = self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._thread_name)
        opening = thread.submit(self._connect, setup)
        try:
            self._db = await asyncio.wrap_future(opening)
        except BaseException:
            # Cancelled while it runs: it is closed once connected (the thread runs one thing at a time).
            thread.submit(_discard, opening)
            self._thread = None
            thread.shutdown(wait=False)
            raise

    def _connect(self, setup: Callable[[sqlite3.Connection], None] | None) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=self._busy_timeout)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self._synchronous}")
            db.execute(f"PRAGMA busy_timeout={round(self._busy_timeout * 1000)}")
            if setup is not None:
                setup(db)
        except BaseException:
            db.close()
            raise
        return db

    async def call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """`fn(connection)` on the database's thread, after the calls made before it: runs as long
        as they and `fn` take. Raises DatabaseClosed when not open, and whatever `fn` raises
        (sqlite3.Error for the database's own failures). Cancelling the wait does not stop `fn`."""
        thread, db = self._thread, self._db
        if thread is None or db is None:
            raise DatabaseClosed(f"{self.path} is not open")
        return await asyncio.get_running_loop().run_in_executor(thread, fn, db)

    async def close(self) -> None:
        """Close the connection once the calls made before have run (it waits for them), then let
        the thread end; nothing if it is not open. Calls made from now on raise DatabaseClosed.
        A connection that cannot close cleanly is dropped all the same."""
        thread, db = self._thread, self._db
        self._thread = self._db = None
        if thread is None:
            return
        try:
            if db is not None:
                with contextlib.suppress(sqlite3.Error):
                    await asyncio.get_running_loop().run_in_executor(thread, db.close)
        finally:
            thread.shutdown(wait=False)


def _discard(opening: Future[sqlite3.Connection]) -> None:
    """Close the connection `opening` made, if it made one."""
    if not opening.cancelled() and opening.exception() is None:
        opening.result().close()
