"""The writes of the SQLite event store, committed in groups.

Every write (accepts, claims, completions, retries, dead letters, replays) is one step of a
transaction; the steps that arrive while a commit is running are committed together by the next
one, so the fsync `synchronous=FULL` costs is paid once per group, not once per write. A step's
caller learns its own result, or the group's failure, once that commit has returned.
"""
from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

from kfn._cogs.sqlite import Database, DatabaseClosed
from kfn.events.store import StoreUnavailable

T = TypeVar("T")
Step = Callable[[sqlite3.Connection], Any]


class GroupCommit:
    """The statements of the store on `db`: reads one at a time, writes in groups (see the module
    docstring)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._pending: list[tuple[Step, asyncio.Future[Any]]] = []
        self._flushing = False
        self._flush_task: asyncio.Task[None] | None = None

    async def run(self, call: Callable[[sqlite3.Connection], T]) -> T:
        """`call(connection)` on the database's thread, after every call made before it: runs as
        long as they and `call` take. Raises StoreUnavailable when the store is not open or SQLite
        fails."""
        try:
            return await self._db.call(call)
        except DatabaseClosed as e:
            raise StoreUnavailable("the event store is not open") from e
        except sqlite3.Error as e:
            raise StoreUnavailable(f"the event store failed: {e}") from e

    async def write(self, step: Callable[[sqlite3.Connection], T]) -> T:
        """Run `step` in a write transaction, committed (and fsync'd) together with every other
        write waiting when that commit starts; returns its result once committed, after the
        writes before it. Raises StoreUnavailable if the group's transaction fails (nothing of
        it is stored) or the store is not open."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((step, future))
        if not self._flushing:
            self._flushing = True
            # Kept, so the task is not collected while it runs.
            self._flush_task = asyncio.get_running_loop().create_task(self._flush(), name="kfn-events-commit")
        result: T = await future
        return result

    async def statement(self, sql: str, args: tuple[Any, ...]) -> int:
        """One statement as a write (see `write`); the number of rows it changed."""
        return await self.write(lambda db: db.execute(sql, args).rowcount)

    async def _flush(self) -> None:
        """Commit the waiting writes, group after group, until none is left; each one's future
        gets its result or the group's failure."""
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    results = await self.run(partial(_transaction, steps=[step for step, _ in batch]))
                except Exception as e:   # noqa: BLE001 - every waiting write learns of the failure
                    error = e if isinstance(e, StoreUnavailable) else StoreUnavailable(str(e))
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(error)
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._flushing = False


def _transaction(db: sqlite3.Connection, steps: list[Step]) -> list[Any]:
    """Run `steps` in one transaction, their results in order; rolled back if one raises."""
    db.execute("BEGIN IMMEDIATE")
    try:
        results = [step(db) for step in steps]
        db.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise
    return results
