"""The tables of the SQLite event store, and how a database of an older kfn is brought up to date.

`events` holds the stored events, each row with its lease (`lease_until`, `lease_owner`) and the
moment it is due (`not_before`); `call_ids` the ids each function accepted
(`kfn.events.sqlite_ids`); `dead_letters` the events given up. `PRAGMA user_version` is the
schema's version.
"""
from __future__ import annotations

import contextlib
import sqlite3

from kfn.events.sqlite_ids import CallIds

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


def migrate(db: sqlite3.Connection, ids: CallIds) -> None:
    """Create the tables, or bring those of an older kfn up to date, the ids of its events taken
    in `ids`: in one transaction, so a second process opening the same file at the same moment
    waits, then finds it done. Nothing if the database is up to date. Raises sqlite3.Error (and
    rolls back) if a statement fails, after waiting up to the connection's busy timeout for
    another connection's lock."""
    if db.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version < SCHEMA_VERSION:
            old = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'events'").fetchone()
            if old is not None and version == 0:
                _script(db, _MIGRATE_FROM_0)
            _script(db, _SCHEMA)
            ids.seed(db)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise


def _script(db: sqlite3.Connection, script: str) -> None:
    """Run the statements of `script` one by one, inside the transaction (`executescript` would commit it)."""
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)
