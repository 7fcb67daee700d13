"""The event store of local mode: one SQLite database (WAL) in the work directory.

Durability: `journal_mode=WAL` with `synchronous=FULL`, so a commit returns only after the WAL
is fsync'd: an accepted event survives a SIGKILL of `kfn local` and a power loss alike. (With
`NORMAL` a commit survives a crash of the process but the last commits may roll back on a power
loss, which would break "202 means stored".) The fsync is paid once per group: every write
(accepts, claims, completions, retries) that arrives while a commit is running is committed
together with the others by the next one.

Several processes may open one database (SQLite's locking; every write is one short
transaction): leases live in the rows (`lease_until`, `lease_owner`), so an event claimed by a
process that dies is claimed again once its lease runs out.

Waiting costs no queries: the store remembers, per function, the earliest moment a claim could
find something (`_due`: learned from the last claim's query, the next retry or lease expiry of
what is left), so a claim runs its query only when that moment has come or something changed.
Changes made through this store (accept, replay, reschedule, release) wake the function's claim
at once; changes made by another connection are noticed by one `PRAGMA data_version` every
`poll` seconds (one query, however many functions), then one query for every function's next
due moment. Idle, with any number of functions, the store runs that one check per `poll`.

De-duplication: an invocation id is kept per function (namespace, name, id) in `call_ids` for
`dedup_window` seconds after it was accepted (default 6 hours, the longest maximum event age):
accepting it again meanwhile stores nothing, whether its event is still queued or long
delivered; an event still stored keeps its id however old it is. Expired ids are purged by an
accept, at most once a minute, so the table holds about one window's accepts.

All SQLite calls run on one thread of the store's own, so the event loop never blocks on disk.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sqlite3
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from kfn.core.functions import FunctionRef
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

logger = logging.getLogger(__name__)
T = TypeVar("T")

FILE_NAME = "async-events.sqlite3"
SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    accepted_at REAL NOT NULL,
    not_before REAL NOT NULL DEFAULT 0,
    lease_until REAL NOT NULL DEFAULT 0,
    lease_owner TEXT,
    deliveries INTEGER NOT NULL DEFAULT 0,
    data BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS events_id ON events (namespace, name, id);
CREATE INDEX IF NOT EXISTS events_due ON events (namespace, name, seq);
CREATE TABLE IF NOT EXISTS call_ids (
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    id TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (namespace, name, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS call_ids_expiry ON call_ids (expires_at);
CREATE TABLE IF NOT EXISTS dead_letters (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    failed_at REAL NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_function ON dead_letters (namespace, name, seq);
"""
# Version 0 (kfn before issue 15) made `events.id` unique across every function; its rows move
# to the table above, and their ids start a de-duplication window.
_MIGRATE_FROM_0 = """
CREATE TABLE events_v1 (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    accepted_at REAL NOT NULL,
    not_before REAL NOT NULL DEFAULT 0,
    lease_until REAL NOT NULL DEFAULT 0,
    lease_owner TEXT,
    deliveries INTEGER NOT NULL DEFAULT 0,
    data BLOB NOT NULL
);
INSERT INTO events_v1 SELECT seq, id, namespace, name, accepted_at, not_before, lease_until, lease_owner,
    deliveries, data FROM events;
DROP TABLE events;
ALTER TABLE events_v1 RENAME TO events;
"""
# How often an accept also purges the expired ids.
PURGE_INTERVAL = 60.0
# A claim's query, then when the function's next event is due (a retry's time, a lease's end).
_NEXT_DUE = "SELECT min(max(not_before, lease_until)) FROM events WHERE namespace = ? AND name = ?"


@dataclass(frozen=True)
class _Handle:
    seq: int
    owner: str


class SqliteStore:
    """`EventStore` on a SQLite file (see the module docstring)."""

    def __init__(self, path: Path | str, *, lease: float = 30.0, poll: float = 0.5, synchronous: str = "FULL",
                 dedup_window: float = DEDUP_WINDOW, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.lease = lease
        self.poll = poll                  # how often changes by other connections are looked for
        self.dedup_window = dedup_window
        self._synchronous = synchronous
        self._clock = clock
        self._db: sqlite3.Connection | None = None
        self._thread: ThreadPoolExecutor | None = None
        self._pending: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]] = []
        self._flushing = False
        self._flush_task: asyncio.Task[None] | None = None
        self._arrivals: dict[FunctionRef, asyncio.Event] = {}
        # Per function, the earliest epoch second a claim may find an event; absent: unknown.
        self._due: dict[FunctionRef, float] = {}
        self._watcher: asyncio.Task[None] | None = None
        self._version = 0                 # PRAGMA data_version as last seen
        self._purged_at = -math.inf

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kfn-events-sqlite")
        await self._run(self._open)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self._synchronous}")
            db.execute("PRAGMA busy_timeout=30000")
            self._migrate(db)
            self._version = int(db.execute("PRAGMA data_version").fetchone()[0])
        except BaseException:
            db.close()
            raise
        self._db = db

    def _migrate(self, db: sqlite3.Connection) -> None:
        """Create the tables, or bring those of an older kfn up to date (in one transaction,
        so a second process opening the same file at the same moment waits, then finds it done)."""
        if db.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version < SCHEMA_VERSION:
                old = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'events'").fetchone()
                if old is not None and version == 0:
                    for statement in _MIGRATE_FROM_0.split(";"):
                        if statement.strip():
                            db.execute(statement)
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute("INSERT OR IGNORE INTO call_ids (namespace, name, id, expires_at) "
                           "SELECT namespace, name, id, accepted_at + ? FROM events", (self.dedup_window,))
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        thread = self._thread
        if thread is None:
            return
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        with contextlib.suppress(Exception):
            await self._run(self._close_db)
        self._thread = None
        thread.shutdown(wait=False)

    def _close_db(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def _run(self, call: Callable[..., T], *args: Any) -> T:
        if self._thread is None:
            raise StoreUnavailable("the event store is not open")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._thread, call, *args)
        except sqlite3.Error as e:
            raise StoreUnavailable(f"the event store failed: {e}") from e

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise sqlite3.ProgrammingError("the event store is closed")
        return self._db

    # -- group commit ----------------------------------------------------------------------------

    async def _write(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """Run `op` in a write transaction, committed (and fsync'd) together with every other
        write waiting when that commit starts: one fsync for a whole burst of accepts, claims
        and completions."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((op, future))
        if not self._flushing:
            self._flushing = True
            # Kept, so the task is not collected while it runs.
            self._flush_task = asyncio.get_running_loop().create_task(self._flush(), name="kfn-events-commit")
        result: T = await future
        return result

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    results = await self._run(self._transaction, [op for op, _ in batch])
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

    def _transaction(self, ops: list[Callable[[sqlite3.Connection], Any]]) -> list[Any]:
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            results = [op(db) for op in ops]
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        return results

    # -- accepting -------------------------------------------------------------------------------

    async def accept(self, function: FunctionRef, payload: bytes, invocation_id: str,
                     options: AcceptOptions = NO_OPTIONS) -> Accepted:
        now = self._clock()
        event = Event(id=invocation_id, function=function, payload=payload, accepted_at=now,
                      callback_url=options.callback_url, caller_chosen=options.caller_chosen)
        # The `id` columns hold the de-duplication key: the id, marked when the caller chose it.
        key = (function.namespace, function.name, event.dedup_key)
        row = (*key, now, event.encode())
        purge = now - self._purged_at >= PURGE_INTERVAL
        if purge:
            self._purged_at = now

        def insert(db: sqlite3.Connection) -> bool:
            if purge:
                db.execute("DELETE FROM call_ids WHERE expires_at <= ?", (now,))
            # New, or expired and not purged yet: the id is (again) the function's for a window.
            fresh = db.execute(
                "INSERT INTO call_ids (namespace, name, id, expires_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (namespace, name, id) DO UPDATE SET expires_at = excluded.expires_at "
                "WHERE call_ids.expires_at <= ?", (*key, now + self.dedup_window, now))
            if fresh.rowcount != 1:
                return False
            # An event stored longer than the window still holds its id.
            cursor = db.execute(
                "INSERT OR IGNORE INTO events (namespace, name, id, accepted_at, data) VALUES (?, ?, ?, ?, ?)", row)
            return cursor.rowcount == 1

        stored = await self._write(insert)
        if stored:
            self._notify(function, now)
        return Accepted(invocation_id, duplicate=not stored)

    def _notify(self, function: FunctionRef, due: float) -> None:
        """An event of `function` is due at `due` (epoch seconds): wake its claims if that is
        sooner than they wait for."""
        known = self._due.get(function)
        if known is not None:
            if due >= known:
                return
            self._due[function] = due
        arrival = self._arrivals.get(function)
        if arrival is not None:
            arrival.set()

    # -- delivering ------------------------------------------------------------------------------

    async def claim(self, function: FunctionRef, limit: int, *, wait: float) -> list[Delivery]:
        if limit <= 0:
            return []
        deadline = time.monotonic() + wait
        arrival = self._arrivals.setdefault(function, asyncio.Event())
        self._watch()
        while True:
            arrival.clear()
            due = self._due.get(function)
            if due is None or due <= self._clock():
                owner = uuid.uuid4().hex

                def claim(db: sqlite3.Connection, owner: str = owner) -> tuple[list[tuple[int, int, bytes]], float]:
                    return self._claim(db, function, limit, owner)

                # Lowered by whatever is accepted or rescheduled while the query runs.
                self._due[function] = math.inf
                try:
                    rows, next_due = await self._write(claim)
                except BaseException:
                    self._due.pop(function, None)
                    raise
                due = min(self._due.get(function, math.inf), next_due)
                self._due[function] = due
                if due != math.inf:
                    arrival.set()     # another claim of this function waiting recomputes its timer
                deliveries = [delivery for seq, count, data in rows
                              if (delivery := await self._delivery(function, seq, count, data, owner)) is not None]
                if deliveries:
                    return deliveries
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            if arrival.is_set():
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(arrival.wait(), timeout=min(remaining, max(0.0, due - self._clock())))

    async def _delivery(self, function: FunctionRef, seq: int, count: int, data: bytes, owner: str) -> Delivery | None:
        """The claimed row as a delivery; None for one no kfn could have written (another
        version's envelope, a stray write), which is dropped as JetStream's store drops such a
        message: never deliverable, it would otherwise be claimed again and again before the
        function's other events."""
        try:
            return Delivery(Event.decode(data), count, _Handle(seq, owner))
        except ValueError as e:
            logger.error("dropping an unreadable event of %s: %s", function, e)
            with contextlib.suppress(StoreUnavailable):   # else it comes again once its lease runs out
                await self._statement("DELETE FROM events WHERE seq = ? AND lease_owner = ?", (seq, owner))
            return None

    def _claim(self, db: sqlite3.Connection, function: FunctionRef, limit: int,
               owner: str) -> tuple[list[tuple[int, int, bytes]], float]:
        """Lease up to `limit` due events of `function`; also when the next of the rest is due
        (infinity: none left; now when `limit` were leased, as more may be due: not looked up)."""
        now = self._clock()
        cursor = db.execute(
            "UPDATE events SET lease_until = ?, lease_owner = ?, deliveries = deliveries + 1 WHERE seq IN ("
            " SELECT seq FROM events WHERE namespace = ? AND name = ? AND not_before <= ? AND lease_until <= ?"
            " ORDER BY seq LIMIT ?) RETURNING seq, deliveries, data",
            (now + self.lease, owner, function.namespace, function.name, now, now, limit))
        rows = cursor.fetchall()
        rows.sort()
        if len(rows) == limit:
            return rows, now
        (next_due,) = db.execute(_NEXT_DUE, (function.namespace, function.name)).fetchone()
        return rows, math.inf if next_due is None else float(next_due)

    def _watch(self) -> None:
        """Start looking for other connections' changes (once; while the store is open)."""
        if self._thread is not None and (self._watcher is None or self._watcher.done()):
            self._watcher = asyncio.get_running_loop().create_task(self._watch_others(), name="kfn-events-watch")

    async def _watch_others(self) -> None:
        while self._thread is not None:
            await asyncio.sleep(self.poll)
            try:
                seen = await self._run(self._data_version)
                if seen != self._version:
                    self._version = seen
                    for ref, due in await self._run(self._all_due):
                        self._notify(ref, due)
            except StoreUnavailable as e:
                logger.warning("could not look for new async events: %s", e)

    def _data_version(self) -> int:
        # Changes only when another connection commits: one cheap query, however many functions.
        return int(self._conn().execute("PRAGMA data_version").fetchone()[0])

    def _all_due(self) -> list[tuple[FunctionRef, float]]:
        rows = self._conn().execute(
            "SELECT namespace, name, min(max(not_before, lease_until)) FROM events GROUP BY namespace, name").fetchall()
        return [(FunctionRef(namespace, name), float(due)) for namespace, name, due in rows]

    async def extend(self, delivery: Delivery) -> None:
        handle: _Handle = delivery.handle
        await self._statement("UPDATE events SET lease_until = ? WHERE seq = ? AND lease_owner = ?",
                              (self._clock() + self.lease, handle.seq, handle.owner))

    async def complete(self, delivery: Delivery) -> None:
        handle: _Handle = delivery.handle
        # Done is done, even if the lease ran out meanwhile (a second consumer's run is the duplicate).
        await self._statement("DELETE FROM events WHERE seq = ?", (handle.seq,))

    async def release(self, delivery: Delivery) -> None:
        handle: _Handle = delivery.handle
        await self._statement("UPDATE events SET lease_until = 0, lease_owner = NULL WHERE seq = ? AND lease_owner = ?",
                              (handle.seq, handle.owner))
        self._notify(delivery.event.function, 0.0)

    async def reschedule(self, delivery: Delivery, event: Event, *, delay: float) -> None:
        handle: _Handle = delivery.handle
        not_before = self._clock() + delay
        await self._statement("UPDATE events SET data = ?, not_before = ?, lease_until = 0, lease_owner = NULL "
                              "WHERE seq = ? AND lease_owner = ?",
                              (event.encode(), not_before, handle.seq, handle.owner))
        self._notify(event.function, not_before)

    async def dead_letter(self, delivery: Delivery, letter: DeadLetter) -> None:
        handle: _Handle = delivery.handle

        def move(db: sqlite3.Connection) -> None:
            gone = db.execute("DELETE FROM events WHERE seq = ? AND lease_owner = ?", (handle.seq, handle.owner))
            if gone.rowcount == 1:
                db.execute("INSERT INTO dead_letters (id, namespace, name, failed_at, data) VALUES (?, ?, ?, ?, ?)",
                           (letter.id, letter.function.namespace, letter.function.name, letter.failed_at,
                            letter.encode()))

        await self._write(move)

    async def _statement(self, sql: str, args: tuple[Any, ...]) -> int:
        return await self._write(lambda db: db.execute(sql, args).rowcount)

    # -- dead letters ----------------------------------------------------------------------------

    async def dead_letters(self, function: FunctionRef, *, limit: int = 100) -> list[DeadLetter]:
        rows = await self._run(self._select_dead, function, limit, None)
        return [DeadLetter.decode(data) for _, data in rows]

    def _select_dead(self, function: FunctionRef, limit: int, ids: Sequence[str] | None) -> list[tuple[int, bytes]]:
        db = self._conn()
        if ids is None:
            cursor = db.execute("SELECT seq, data FROM dead_letters WHERE namespace = ? AND name = ? ORDER BY seq "
                                "LIMIT ?", (function.namespace, function.name, limit))
        else:
            marks = ",".join("?" * len(ids))
            cursor = db.execute(f"SELECT seq, data FROM dead_letters WHERE namespace = ? AND name = ? AND id IN "
                                f"({marks}) ORDER BY seq", (function.namespace, function.name, *ids))
        return cursor.fetchall()

    async def replay(self, function: FunctionRef, ids: Sequence[str] | None = None) -> list[str]:
        wanted = list(ids) if ids is not None else None
        replayed = await self._write(lambda db: self._replay(db, function, wanted))
        if replayed:
            self._notify(function, 0.0)
        return replayed

    def _replay(self, db: sqlite3.Connection, function: FunctionRef, ids: list[str] | None) -> list[str]:
        now = self._clock()
        out: list[str] = []
        for seq, data in self._select_dead(function, 1_000_000, ids):
            letter = DeadLetter.decode(data)
            event = Event(id=letter.id, function=function, payload=letter.payload, accepted_at=now,
                          caller_chosen=letter.caller_chosen)
            # Under the key it was accepted with: a caller's id stays apart from kfn's own.
            key = event.dedup_key
            inserted = db.execute("INSERT OR IGNORE INTO events (id, namespace, name, accepted_at, data) "
                                  "VALUES (?, ?, ?, ?, ?)",
                                  (key, function.namespace, function.name, now, event.encode()))
            if inserted.rowcount == 1:
                db.execute("DELETE FROM dead_letters WHERE seq = ?", (seq,))
                # A caller retrying the original invocation now finds it stored again.
                db.execute("INSERT INTO call_ids (namespace, name, id, expires_at) VALUES (?, ?, ?, ?) "
                           "ON CONFLICT (namespace, name, id) DO UPDATE SET expires_at = excluded.expires_at",
                           (function.namespace, function.name, key, now + self.dedup_window))
                out.append(letter.id)
        return out

    # -- what is queued --------------------------------------------------------------------------

    async def stats(self, functions: Sequence[FunctionRef]) -> dict[FunctionRef, QueueStats]:
        rows = await self._run(self._stats)
        out = {ref: QueueStats(0, 0, None) for ref in functions}
        for namespace, name, depth, in_flight, oldest in rows:
            out[FunctionRef(namespace, name)] = QueueStats(depth, in_flight or 0, oldest)
        return out

    def _stats(self) -> list[tuple[str, str, int, int, float]]:
        now = self._clock()
        return self._conn().execute(
            "SELECT namespace, name, count(*), sum(lease_until > ?), min(accepted_at) FROM events "
            "GROUP BY namespace, name", (now,)).fetchall()
