"""The event store of local mode: one SQLite database (WAL) in the work directory.

Durability: `journal_mode=WAL` with `synchronous=FULL`, so a commit returns only after the WAL
is fsync'd: an accepted event survives a SIGKILL of `kfn local` and a power loss alike. (With
`NORMAL` a commit survives a crash of the process but the last commits may roll back on a power
loss, which would break "202 means stored".) The fsync is paid once per group of writes
(`kfn.events.sqlite_commits`).

Several processes may open one database (SQLite's locking; every write is one short
transaction). `SqliteStore` is the `EventStore` over its parts, each owning what it names:
`kfn.events.sqlite_schema` (the tables, and those of an older kfn brought up to date),
`kfn.events.sqlite_ids` (the invocation ids each function accepted: de-duplication),
`kfn.events.sqlite_leases` (claims, leases, waking a claim when something is due, queue
statistics) and `kfn.events.sqlite_dead_letters` (dead letters, listed and replayed).

All SQLite calls run on one thread of the store's own (`kfn._cogs.sqlite.Database`), so the event
loop never blocks on disk.
"""
from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from kfn._cogs.sqlite import Database
from kfn.core.functions import FunctionRef
from kfn.events.sqlite_commits import GroupCommit
from kfn.events.sqlite_dead_letters import DeadLetters
from kfn.events.sqlite_ids import CallIds
from kfn.events.sqlite_leases import Leases
from kfn.events.sqlite_schema import migrate
from kfn.events.store import (
    DEDUP_WINDOW,
    NO_OPTIONS,
    Accepted,
    AcceptOptions,
    DeadLetter,
    Delivery,
    Event,
    QueueStats,
    StoreUnavailable,
)

FILE_NAME = "async-events.sqlite3"


class SqliteStore:
    """`EventStore` on the SQLite file `path` (see the module docstring): leases of `lease`
    seconds, other connections' changes looked for every `poll` seconds, ids kept for
    `dedup_window` seconds."""

    def __init__(self, path: Path | str, *, lease: float = 30.0, poll: float = 0.5, synchronous: str = "FULL",
                 dedup_window: float = DEDUP_WINDOW, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._clock = clock
        self._db = Database(self.path, thread_name="kfn-events-sqlite", synchronous=synchronous)
        self._commits = GroupCommit(self._db)
        self._ids = CallIds(dedup_window)
        self._leases = Leases(self._db, self._commits, lease=lease, poll=poll, clock=clock)
        self._dead = DeadLetters(self._commits, self._ids, clock=clock)

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the database (nothing if open), creating or migrating its tables: runs as long as
        that takes, waiting up to 30 s for another process's lock. Raises StoreUnavailable for
        SQLite's failures, OSError when the directory cannot be made."""
        try:
            await self._db.open(self._prepare)
        except sqlite3.Error as e:
            raise StoreUnavailable(f"the event store failed: {e}") from e

    def _prepare(self, db: sqlite3.Connection) -> None:
        migrate(db, self._ids)
        self._leases.opened(db)

    async def close(self) -> None:
        """Stop looking for other connections' changes, and close the database once the calls made
        before have run (it waits for them); nothing if it is not open."""
        if not self._db.is_open:
            return
        await self._leases.stop()
        await self._db.close()

    # -- accepting -------------------------------------------------------------------------------

    async def accept(self, function: FunctionRef, payload: bytes, invocation_id: str,
                     options: AcceptOptions = NO_OPTIONS) -> Accepted:
        now = self._clock()
        event = Event.new(function, payload, invocation_id, options, accepted_at=now)
        # The `id` columns hold the de-duplication key: the id, marked when the caller chose it.
        key = event.dedup_key
        row = (function.namespace, function.name, key, now, event.encode())
        take = self._ids.take(function, key, now)

        def insert(db: sqlite3.Connection) -> bool:
            if not take(db):
                return False
            # An event stored longer than the window still holds its id.
            cursor = db.execute(
                "INSERT OR IGNORE INTO events (namespace, name, id, accepted_at, data) VALUES (?, ?, ?, ?, ?)", row)
            return cursor.rowcount == 1

        stored = await self._commits.write(insert)
        if stored:
            self._leases.notify(function, now)
        return Accepted(invocation_id, duplicate=not stored)

    # -- delivering ------------------------------------------------------------------------------

    async def claim(self, function: FunctionRef, limit: int, *, wait: float) -> list[Delivery]:
        return await self._leases.claim(function, limit, wait=wait)

    async def extend(self, delivery: Delivery) -> None:
        await self._leases.extend(delivery)

    async def complete(self, delivery: Delivery) -> None:
        await self._leases.complete(delivery)

    async def release(self, delivery: Delivery) -> None:
        await self._leases.release(delivery)

    async def reschedule(self, delivery: Delivery, event: Event, *, delay: float) -> None:
        await self._leases.reschedule(delivery, event, delay=delay)

    async def dead_letter(self, delivery: Delivery, letter: DeadLetter) -> None:
        await self._dead.bury(delivery, letter)

    # -- dead letters ----------------------------------------------------------------------------

    async def dead_letters(self, function: FunctionRef, *, limit: int = 100) -> list[DeadLetter]:
        return await self._dead.read(function, limit=limit)

    async def replay(self, function: FunctionRef, ids: Sequence[str] | None = None) -> list[str]:
        replayed = await self._dead.replay(function, ids)
        if replayed:
            self._leases.notify(function, 0.0)
        return replayed

    # -- what is queued --------------------------------------------------------------------------

    async def stats(self, functions: Sequence[FunctionRef]) -> dict[FunctionRef, QueueStats]:
        return await self._leases.stats(functions)

    async def queued(self) -> dict[FunctionRef, int]:
        return await self._leases.queued()

    async def newest(self, function: FunctionRef) -> int:
        return await self._leases.newest(function)

    async def discard(self, function: FunctionRef, *, through: int | None = None) -> int:
        return await self._leases.discard(function, through=through)
