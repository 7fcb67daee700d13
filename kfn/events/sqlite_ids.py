"""The de-duplication ledger of the SQLite event store: table `call_ids`.

An invocation id is kept per function (namespace, name, id) for `window` seconds after it was
accepted (default 6 hours, the longest maximum event age): accepting it again meanwhile stores
nothing, whether its event is still queued or long delivered. The `id` column holds the
de-duplication key (`kfn.events.store.dedup_key`: the id, marked when the caller chose it).
Expired ids are purged by an accept, at most once a minute, so the table holds about one
window's accepts.

Each method here is a step of a write transaction (`kfn.events.sqlite_commits`), run on the
database's thread with the other statements of its accept or replay.
"""
from __future__ import annotations

import math
import sqlite3
from collections.abc import Callable

from kfn.core.functions import FunctionRef

# How often an accept also purges the expired ids.
PURGE_INTERVAL = 60.0


class CallIds:
    """The ids each function accepted within the last `window` seconds (see the module docstring)."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._purged_at = -math.inf

    def take(self, function: FunctionRef, key: str, now: float) -> Callable[[sqlite3.Connection], bool]:
        """The step that makes `key` `function`'s for a window from `now`: True if it was not
        (new, or expired and not purged yet), False if it is a duplicate. Whether the step also
        purges the expired ids is decided now, when it is made."""
        purge = now - self._purged_at >= PURGE_INTERVAL
        if purge:
            self._purged_at = now

        def step(db: sqlite3.Connection) -> bool:
            if purge:
                db.execute("DELETE FROM call_ids WHERE expires_at <= ?", (now,))
            fresh = db.execute(
                "INSERT INTO call_ids (namespace, name, id, expires_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (namespace, name, id) DO UPDATE SET expires_at = excluded.expires_at "
                "WHERE call_ids.expires_at <= ?", (function.namespace, function.name, key, now + self.window, now))
            return fresh.rowcount == 1

        return step

    def keep(self, db: sqlite3.Connection, function: FunctionRef, key: str, now: float) -> None:
        """Make `key` `function`'s for a window from `now`, whether or not it already was (a
        replay: a caller retrying the original invocation now finds it stored again)."""
        db.execute("INSERT INTO call_ids (namespace, name, id, expires_at) VALUES (?, ?, ?, ?) "
                   "ON CONFLICT (namespace, name, id) DO UPDATE SET expires_at = excluded.expires_at",
                   (function.namespace, function.name, key, now + self.window))

    def seed(self, db: sqlite3.Connection) -> None:
        """Take the ids of the events stored (a database of an older kfn), each for a window from
        its accept; ids already kept stay as they are."""
        db.execute("INSERT OR IGNORE INTO call_ids (namespace, name, id, expires_at) "
                   "SELECT namespace, name, id, accepted_at + ? FROM events", (self.window,))
