"""Where the scheduler remembers, per schedule trigger, how far it has fired.

A `TickRecord` says: every tick of `expression` up to `through` has been fired (or skipped by the
missed-tick policy). A scheduler that starts (a restart, a new leader) plans from it, so a tick
missed while no scheduler ran is fired late (within the catch-up window) and a tick already fired
is not fired again. Keys are `NAMESPACE.NAME.INDEX` (the trigger's place in spec.triggers).

- `SqliteTicks` (local mode): a table in the work directory's database, next to the async
  events, written with `synchronous=FULL`.
- `KvTicks` (Kubernetes): a JetStream key-value bucket, `KFN_SCHEDULES`, on the NATS server that
  stores the async events. Chosen over a ConfigMap or an annotation on the Function: the record
  is only useful together with the events it describes, so it lives with the same durability
  (the chart's `sync_interval: always`) and availability (when NATS is down no tick can be
  stored anyway); a rate(1 minute) schedule writes every minute, which on the API server would
  be a write, and a watch event for every gateway and operator, per function per minute; and the
  operator needs no RBAC to write ConfigMaps or Function metadata for it.
- `MemoryTicks`: for tests, and a scheduler that may forget.

Only the scheduler's leader writes, after the tick's event was stored: a leader that dies
between the two fires that tick again (same invocation id: stored once while the store still
knows the id), never loses it.
"""
from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import nats.js.errors
import orjson
from nats.aio.client import Client
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from kfn._cogs.nats import NATS_ERRORS, Backoff, NatsUnreachable, connect, disconnect
from kfn._cogs.sqlite import Database, DatabaseClosed

T = TypeVar("T")

BUCKET = "KFN_SCHEDULES"
TABLE = "schedule_ticks"


class TicksUnavailable(Exception):
    """The record could not be read or written (the scheduler tries again later)."""


@dataclass(frozen=True)
class TickRecord:
    expression: str           # the schedule the record is about: another expression starts afresh
    through: dt.datetime      # every tick up to here is done

    def encode(self) -> bytes:
        return orjson.dumps({"expression": self.expression, "through": _iso(self.through)})

    @classmethod
    def decode(cls, data: bytes) -> TickRecord:
        raw = orjson.loads(data)
        return cls(str(raw["expression"]), _parse(str(raw["through"])))


class TickStore(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def get(self, key: str) -> TickRecord | None:
        """The record of one trigger, or None. Raises TicksUnavailable."""

    async def put(self, key: str, record: TickRecord) -> None:
        """Store it durably; returns once it is. Raises TicksUnavailable."""

    async def delete(self, key: str) -> None:
        """Forget a trigger that was removed. Raises TicksUnavailable."""


class MemoryTicks:
    def __init__(self) -> None:
        self.records: dict[str, TickRecord] = {}

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def get(self, key: str) -> TickRecord | None:
        return self.records.get(key)

    async def put(self, key: str, record: TickRecord) -> None:
        self.records[key] = record

    async def delete(self, key: str) -> None:
        self.records.pop(key, None)


class SqliteTicks:
    """Tick records in a SQLite database (WAL, synchronous=FULL); one thread of its own does the I/O."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._db = Database(self.path, thread_name="kfn-ticks-sqlite")

    async def start(self) -> None:
        """Open the database and create the table (nothing if open): waits up to 30 s for another
        process's lock. Raises TicksUnavailable for SQLite's failures, OSError when the directory
        cannot be made."""
        try:
            await self._db.open(_create_table)
        except sqlite3.Error as e:
            raise TicksUnavailable(f"the tick store failed: {e}") from e

    async def close(self) -> None:
        """Close the database once the calls made before have run; nothing if it is not open."""
        await self._db.close()

    async def _run(self, call: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return await self._db.call(call)
        except DatabaseClosed as e:
            raise TicksUnavailable("the tick store is not open") from e
        except sqlite3.Error as e:
            raise TicksUnavailable(f"the tick store failed: {e}") from e

    async def get(self, key: str) -> TickRecord | None:
        row = await self._run(lambda db: db.execute(f"SELECT data FROM {TABLE} WHERE key = ?", (key,)).fetchone())
        return None if row is None else TickRecord.decode(row[0])

    async def put(self, key: str, record: TickRecord) -> None:
        await self._run(lambda db: db.execute(f"INSERT OR REPLACE INTO {TABLE} (key, data) VALUES (?, ?)",
                                              (key, record.encode())))

    async def delete(self, key: str) -> None:
        await self._run(lambda db: db.execute(f"DELETE FROM {TABLE} WHERE key = ?", (key,)))


def _create_table(db: sqlite3.Connection) -> None:
    db.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (key TEXT PRIMARY KEY, data BLOB NOT NULL)")


class KvTicks:
    """Tick records in the JetStream key-value bucket `bucket` (file storage, one revision kept)."""

    def __init__(self, url: str, *, bucket: str = BUCKET, timeout: float = 5.0, connect_attempts: int = 30) -> None:
        self.url = url
        self.bucket = bucket
        self._timeout = timeout
        self._connect_attempts = connect_attempts
        self._nc: Client | None = None
        self._kv: KeyValue | None = None

    async def start(self) -> None:
        """Connect, then open the bucket, creating it if missing (each request up to `timeout`).
        Connecting makes up to `connect_attempts` attempts a second apart, each bounded
        (`kfn._cogs.nats.connect`). Raises TicksUnavailable."""
        if self._nc is not None:
            return
        try:
            self._nc = await connect(self.url, name="kfn-schedules", attempts=self._connect_attempts,
                                     backoff=Backoff(1.0))
        except NatsUnreachable as e:
            raise TicksUnavailable(str(e)) from e
        js = self._nc.jetstream(timeout=self._timeout)
        try:
            try:
                self._kv = await js.key_value(self.bucket)
            except nats.js.errors.BucketNotFoundError:
                self._kv = await js.create_key_value(KeyValueConfig(
                    bucket=self.bucket, history=1, storage=StorageType.FILE,
                    description="kfn: how far each schedule trigger has fired"))
        except NATS_ERRORS as e:
            await self.close()
            raise TicksUnavailable(f"could not open the key-value bucket {self.bucket}: {e!r}") from e

    async def close(self) -> None:
        nc, self._nc, self._kv = self._nc, None, None
        await disconnect(nc)

    def _bucket(self) -> KeyValue:
        if self._kv is None:
            raise TicksUnavailable("the tick store is not open")
        return self._kv

    async def get(self, key: str) -> TickRecord | None:
        try:
            entry = await self._bucket().get(key)
        except nats.js.errors.KeyNotFoundError:
            return None
        except NATS_ERRORS as e:
            raise TicksUnavailable(f"could not read {key}: {e!r}") from e
        return None if entry.value is None else TickRecord.decode(entry.value)

    async def put(self, key: str, record: TickRecord) -> None:
        try:
            await self._bucket().put(key, record.encode())
        except NATS_ERRORS as e:
            raise TicksUnavailable(f"could not write {key}: {e!r}") from e

    async def delete(self, key: str) -> None:
        try:
            await self._bucket().delete(key)
        except NATS_ERRORS as e:
            raise TicksUnavailable(f"could not delete {key}: {e!r}") from e


def _iso(instant: dt.datetime) -> str:
    return instant.astimezone(dt.UTC).isoformat()


def _parse(text: str) -> dt.datetime:
    value = dt.datetime.fromisoformat(text)
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
