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

import asyncio
import contextlib
import datetime as dt
import logging
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import nats
import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import Client
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from kfn.core.natsurl import servers

logger = logging.getLogger(__name__)
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
        self._db: sqlite3.Connection | None = None
        self._thread: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        if self._thread is None:
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kfn-ticks-sqlite")
            await self._run(self._open)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=30000")
        db.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (key TEXT PRIMARY KEY, data BLOB NOT NULL)")
        self._db = db

    async def close(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return

        def close() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        with contextlib.suppress(Exception):
            await asyncio.get_running_loop().run_in_executor(thread, close)
        thread.shutdown(wait=False)

    async def _run(self, call: Callable[..., T], *args: Any) -> T:
        if self._thread is None:
            raise TicksUnavailable("the tick store is not open")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, call, *args)
        except sqlite3.Error as e:
            raise TicksUnavailable(f"the tick store failed: {e}") from e

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise sqlite3.ProgrammingError("the tick store is closed")
        return self._db

    async def get(self, key: str) -> TickRecord | None:
        row = await self._run(lambda: self._conn().execute(f"SELECT data FROM {TABLE} WHERE key = ?",
                                                            (key,)).fetchone())
        return None if row is None else TickRecord.decode(row[0])

    async def put(self, key: str, record: TickRecord) -> None:
        await self._run(lambda: self._conn().execute(f"INSERT OR REPLACE INTO {TABLE} (key, data) VALUES (?, ?)",
                                                     (key, record.encode())))

    async def delete(self, key: str) -> None:
        await self._run(lambda: self._conn().execute(f"DELETE FROM {TABLE} WHERE key = ?", (key,)))


_NATS_ERRORS = (nats.errors.Error, asyncio.TimeoutError, OSError)


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
        if self._nc is not None:
            return
        last: BaseException | None = None
        for attempt in range(self._connect_attempts):
            try:
                self._nc = await nats.connect(servers(self.url), name="kfn-schedules", max_reconnect_attempts=-1,
                                              reconnect_time_wait=0.5, connect_timeout=2,
                                              error_cb=self._on_error)
                break
            except (*_NATS_ERRORS, nats.errors.NoServersError) as e:
                last = e
                if attempt + 1 < self._connect_attempts:
                    await asyncio.sleep(1.0)
        if self._nc is None:
            raise TicksUnavailable(f"could not connect to NATS at {self.url}: {last}")
        js = self._nc.jetstream(timeout=self._timeout)
        try:
            try:
                self._kv = await js.key_value(self.bucket)
            except nats.js.errors.BucketNotFoundError:
                self._kv = await js.create_key_value(KeyValueConfig(
                    bucket=self.bucket, history=1, storage=StorageType.FILE,
                    description="kfn: how far each schedule trigger has fired"))
        except _NATS_ERRORS as e:
            await self.close()
            raise TicksUnavailable(f"could not open the key-value bucket {self.bucket}: {e!r}") from e

    async def _on_error(self, error: Exception) -> None:
        logger.debug("NATS (schedules): %s", error)

    async def close(self) -> None:
        nc, self._nc, self._kv = self._nc, None, None
        if nc is not None:
            with contextlib.suppress(*_NATS_ERRORS):
                await nc.close()

    def _bucket(self) -> KeyValue:
        if self._kv is None:
            raise TicksUnavailable("the tick store is not open")
        return self._kv

    async def get(self, key: str) -> TickRecord | None:
        try:
            entry = await self._bucket().get(key)
        except nats.js.errors.KeyNotFoundError:
            return None
        except _NATS_ERRORS as e:
            raise TicksUnavailable(f"could not read {key}: {e!r}") from e
        return None if entry.value is None else TickRecord.decode(entry.value)

    async def put(self, key: str, record: TickRecord) -> None:
        try:
            await self._bucket().put(key, record.encode())
        except _NATS_ERRORS as e:
            raise TicksUnavailable(f"could not write {key}: {e!r}") from e

    async def delete(self, key: str) -> None:
        try:
            await self._bucket().delete(key)
        except _NATS_ERRORS as e:
            raise TicksUnavailable(f"could not delete {key}: {e!r}") from e


def _iso(instant: dt.datetime) -> str:
    return instant.astimezone(dt.UTC).isoformat()


def _parse(text: str) -> dt.datetime:
    value = dt.datetime.fromisoformat(text)
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
