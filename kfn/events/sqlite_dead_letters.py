"""The dead letters of the SQLite event store: table `dead_letters`, one row per event given up
(`DeadLetter.encode`), listed and replayed per function, oldest first."""
from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence

from kfn.core.functions import FunctionRef
from kfn.events.sqlite_commits import GroupCommit
from kfn.events.sqlite_ids import CallIds
from kfn.events.sqlite_leases import Handle
from kfn.events.store import DeadLetter, Delivery


class DeadLetters:
    """The dead letters kept through `commits`; a replay takes the ids again in `ids`."""

    def __init__(self, commits: GroupCommit, ids: CallIds, *, clock: Callable[[], float]) -> None:
        self._commits = commits
        self._ids = ids
        self._clock = clock

    async def bury(self, delivery: Delivery, letter: DeadLetter) -> None:
        """Move the event of `delivery` to the dead letters as `letter`, in one transaction; nothing
        if its lease is no longer its owner's (someone else has it now). Raises StoreUnavailable."""
        handle: Handle = delivery.handle

        def move(db: sqlite3.Connection) -> None:
            gone = db.execute("DELETE FROM events WHERE seq = ? AND lease_owner = ?", (handle.seq, handle.owner))
            if gone.rowcount == 1:
                db.execute("INSERT INTO dead_letters (id, namespace, name, failed_at, data) VALUES (?, ?, ?, ?, ?)",
                           (letter.id, letter.function.namespace, letter.function.name, letter.failed_at,
                            letter.encode()))

        await self._commits.write(move)

    async def read(self, function: FunctionRef, *, limit: int) -> list[DeadLetter]:
        """Up to `limit` dead letters of `function`, oldest first. Raises StoreUnavailable."""
        rows = await self._commits.run(lambda db: _select(db, function, limit, None))
        return [DeadLetter.decode(data) for _, data in rows]

    async def replay(self, function: FunctionRef, ids: Sequence[str] | None) -> list[str]:
        """Store the dead letters of `function` (all, or those with these ids) as events again
        and remove them, in one transaction; returns the ids replayed (not one whose id is
        queued already). Raises StoreUnavailable (then none is)."""
        wanted = list(ids) if ids is not None else None
        return await self._commits.write(lambda db: self._replay(db, function, wanted))

    def _replay(self, db: sqlite3.Connection, function: FunctionRef, ids: list[str] | None) -> list[str]:
        now = self._clock()
        out: list[str] = []
        for seq, data in _select(db, function, 1_000_000, ids):
            letter = DeadLetter.decode(data)
            event = letter.replayed(now)
            # Under the key it was accepted with: a caller's id stays apart from kfn's own.
            key = event.dedup_key
            inserted = db.execute("INSERT OR IGNORE INTO events (id, namespace, name, accepted_at, data) "
                                  "VALUES (?, ?, ?, ?, ?)",
                                  (key, function.namespace, function.name, now, event.encode()))
            if inserted.rowcount == 1:
                db.execute("DELETE FROM dead_letters WHERE seq = ?", (seq,))
                self._ids.keep(db, function, key, now)
                out.append(letter.id)
        return out


def _select(db: sqlite3.Connection, function: FunctionRef, limit: int,
            ids: Sequence[str] | None) -> list[tuple[int, bytes]]:
    """Up to `limit` dead letters of `function` (with one of `ids`, if given), oldest first, with their rows."""
    if ids is None:
        cursor = db.execute("SELECT seq, data FROM dead_letters WHERE namespace = ? AND name = ? ORDER BY seq "
                            "LIMIT ?", (function.namespace, function.name, limit))
    else:
        marks = ",".join("?" * len(ids))
        cursor = db.execute(f"SELECT seq, data FROM dead_letters WHERE namespace = ? AND name = ? AND id IN "
                            f"({marks}) ORDER BY seq", (function.namespace, function.name, *ids))
    return cursor.fetchall()
