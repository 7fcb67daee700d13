"""The queue of the SQLite event store: claims, the leases they take, when to claim again, and
the queue statistics (and removing a function's queue, its events in flight excepted).

Leases live in the rows of `events` (`lease_until`, `lease_owner`), so an event claimed by a
process that dies is claimed again once its lease runs out, by whichever process sharing the
database claims first.

Waiting costs no queries: `Leases` remembers, per function, the earliest moment a claim could
find something (learned from the last claim's query: the next retry or lease expiry of what is
left), so a claim runs its query only when that moment has come or something changed. Changes
made through this store (accept, replay, reschedule, release: `notify`) wake the function's claim
at once; changes made by another connection are noticed by one `PRAGMA data_version` every
`poll` seconds (one query, however many functions), then one query for every function's next
due moment. Idle, with any number of functions, the store runs that one check per `poll`.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import sqlite3
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kfn._cogs.sqlite import Database
from kfn.core.functions import FunctionRef
from kfn.events.sqlite_commits import GroupCommit
from kfn.events.store import Delivery, Event, QueueStats, StoreUnavailable

logger = logging.getLogger(__name__)

# A claim's query, then when the function's next event is due (a retry's time, a lease's end).
_NEXT_DUE = "SELECT min(max(not_before, lease_until)) FROM events WHERE namespace = ? AND name = ?"
Rows = list[tuple[int, int, bytes]]

# The largest `seq` SQLite stores: `discard` without a bound removes up to it.
_LAST_SEQ = 2**63 - 1


@dataclass(frozen=True)
class Handle:
    """What a delivery of this store holds: its event's row, and the lease's owner."""

    seq: int
    owner: str


class Leases:
    """Claims of the events in `db` under leases of `lease` seconds (see the module docstring)."""

    def __init__(self, db: Database, commits: GroupCommit, *, lease: float, poll: float,
                 clock: Callable[[], float]) -> None:
        self.lease = lease
        self.poll = poll                  # how often changes by other connections are looked for
        self._db = db
        self._commits = commits
        self._clock = clock
        self._arrivals: dict[FunctionRef, asyncio.Event] = {}
        # Per function, the earliest epoch second a claim may find an event; absent: unknown.
        self._due: dict[FunctionRef, float] = {}
        self._watcher: asyncio.Task[None] | None = None
        self._version = 0                 # PRAGMA data_version as last seen

    def opened(self, db: sqlite3.Connection) -> None:
        """Note the database's version as it is opened (on its thread): what other connections
        commit from now on wakes the claims."""
        self._version = _data_version(db)

    async def stop(self) -> None:
        """Stop looking for other connections' changes; returns once the watcher has ended."""
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    # -- claiming ----------------------------------------------------------------------------------

    async def claim(self, function: FunctionRef, limit: int, *, wait: float) -> list[Delivery]:
        """Up to `limit` due events of `function`, each leased to a new owner; waits up to `wait`
        seconds for the first, woken by `notify`, by the moment the next one is due, or by the
        watcher. Raises StoreUnavailable when a query fails."""
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

                def claim(db: sqlite3.Connection, owner: str = owner) -> tuple[Rows, float]:
                    return self._lease(db, function, limit, owner)

                # Lowered by whatever is accepted or rescheduled while the query runs.
                self._due[function] = math.inf
                try:
                    rows, next_due = await self._commits.write(claim)
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

    def _lease(self, db: sqlite3.Connection, function: FunctionRef, limit: int, owner: str) -> tuple[Rows, float]:
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

    async def _delivery(self, function: FunctionRef, seq: int, count: int, data: bytes, owner: str) -> Delivery | None:
        """The claimed row as a delivery; None for one no kfn could have written (another
        version's envelope, a stray write), which is dropped as JetStream's store drops such a
        message: never deliverable, it would otherwise be claimed again and again before the
        function's other events."""
        try:
            return Delivery(Event.decode(data), count, Handle(seq, owner))
        except ValueError as e:
            logger.error("dropping an unreadable event of %s: %s", function, e)
            with contextlib.suppress(StoreUnavailable):   # else it comes again once its lease runs out
                await self._commits.statement("DELETE FROM events WHERE seq = ? AND lease_owner = ?", (seq, owner))
            return None

    def notify(self, function: FunctionRef, due: float) -> None:
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

    def _watch(self) -> None:
        """Start looking for other connections' changes (once; while the store is open)."""
        if self._db.is_open and (self._watcher is None or self._watcher.done()):
            self._watcher = asyncio.get_running_loop().create_task(self._watch_others(), name="kfn-events-watch")

    async def _watch_others(self) -> None:
        """Every `poll` seconds while the database is open, wake the claims of the functions whose
        events another connection changed (see the module docstring); a failed look is logged
        and tried again at the next."""
        while self._db.is_open:
            await asyncio.sleep(self.poll)
            try:
                seen = await self._commits.run(_data_version)
                if seen != self._version:
                    self._version = seen
                    for ref, due in await self._commits.run(_all_due):
                        self.notify(ref, due)
            except StoreUnavailable as e:
                logger.warning("could not look for new async events: %s", e)

    # -- ending or renewing a lease ----------------------------------------------------------------

    async def extend(self, delivery: Delivery) -> None:
        """Renew the lease of `delivery` for `lease` seconds from now, if it is still its owner's.
        Raises StoreUnavailable."""
        handle: Handle = delivery.handle
        await self._commits.statement("UPDATE events SET lease_until = ? WHERE seq = ? AND lease_owner = ?",
                                      (self._clock() + self.lease, handle.seq, handle.owner))

    async def complete(self, delivery: Delivery) -> None:
        """Remove the event of `delivery`. Raises StoreUnavailable."""
        handle: Handle = delivery.handle
        # Done is done, even if the lease ran out meanwhile (a second consumer's run is the duplicate).
        await self._commits.statement("DELETE FROM events WHERE seq = ?", (handle.seq,))

    async def release(self, delivery: Delivery) -> None:
        """End the lease of `delivery` (if it is still its owner's): due again at once. Raises
        StoreUnavailable."""
        handle: Handle = delivery.handle
        await self._commits.statement(
            "UPDATE events SET lease_until = 0, lease_owner = NULL WHERE seq = ? AND lease_owner = ?",
            (handle.seq, handle.owner))
        self.notify(delivery.event.function, 0.0)

    async def reschedule(self, delivery: Delivery, event: Event, *, delay: float) -> None:
        """Replace the event of `delivery` (if its lease is still its owner's) by `event`, due in
        `delay` seconds, and end the lease. Raises StoreUnavailable."""
        handle: Handle = delivery.handle
        not_before = self._clock() + delay
        await self._commits.statement("UPDATE events SET data = ?, not_before = ?, lease_until = 0, lease_owner = NULL "
                                      "WHERE seq = ? AND lease_owner = ?",
                                      (event.encode(), not_before, handle.seq, handle.owner))
        self.notify(event.function, not_before)

    # -- what is queued ----------------------------------------------------------------------------

    async def stats(self, functions: Sequence[FunctionRef]) -> dict[FunctionRef, QueueStats]:
        """Per function of `functions` (and any other with events), the events stored, those
        leased now and the oldest's accept: one query. Raises StoreUnavailable."""
        rows = await self._commits.run(self._stats)
        out = {ref: QueueStats(0, 0, None) for ref in functions}
        for namespace, name, depth, in_flight, oldest in rows:
            out[FunctionRef(namespace, name)] = QueueStats(depth, in_flight or 0, oldest)
        return out

    async def queued(self) -> dict[FunctionRef, int]:
        """Every function with stored events, and how many: one query. Raises StoreUnavailable."""
        rows = await self._commits.run(_queued)
        return {FunctionRef(namespace, name): count for namespace, name, count in rows}

    async def newest(self, function: FunctionRef) -> int:
        """The `seq` of the function's newest stored event (0: none): one query. Raises
        StoreUnavailable."""
        return await self._commits.run(functools.partial(_newest, function))

    async def discard(self, function: FunctionRef, *, through: int | None = None) -> int:
        """Remove the stored events of `function` that are not leased now (those in flight stay:
        their deliveries are not interrupted), only those with a `seq` up to `through` when given;
        returns how many. Raises StoreUnavailable."""
        return await self._commits.statement(
            "DELETE FROM events WHERE namespace = ? AND name = ? AND lease_until <= ? AND seq <= ?",
            (function.namespace, function.name, self._clock(), _LAST_SEQ if through is None else through))

    def _stats(self, db: sqlite3.Connection) -> list[tuple[str, str, int, int, float]]:
        now = self._clock()
        return db.execute(
            "SELECT namespace, name, count(*), sum(lease_until > ?), min(accepted_at) FROM events "
            "GROUP BY namespace, name", (now,)).fetchall()


def _data_version(db: sqlite3.Connection) -> int:
    # Changes only when another connection commits: one cheap query, however many functions.
    return int(db.execute("PRAGMA data_version").fetchone()[0])


def _newest(function: FunctionRef, db: sqlite3.Connection) -> int:
    row = db.execute("SELECT max(seq) FROM events WHERE namespace = ? AND name = ?",
                     (function.namespace, function.name)).fetchone()
    return int(row[0] or 0)


def _queued(db: sqlite3.Connection) -> list[tuple[str, str, int]]:
    return db.execute("SELECT namespace, name, count(*) FROM events GROUP BY namespace, name").fetchall()


def _all_due(db: sqlite3.Connection) -> list[tuple[FunctionRef, float]]:
    rows = db.execute(
        "SELECT namespace, name, min(max(not_before, lease_until)) FROM events GROUP BY namespace, name").fetchall()
    return [(FunctionRef(namespace, name), float(due)) for namespace, name, due in rows]
