"""The SQLite event store (local mode) on its own: waiting costs no query per function, yet every
event is claimed as soon as it is due (accepted, retried, its lease run out, written by another
connection); invocation ids are kept per function for the de-duplication window, then purged; and
a database of an older kfn is brought up to date (issue 15, items 2, 3 and 14)."""
from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kfn.core.asyncpolicy import AsyncConfig
from kfn.core.functions import FunctionRef
from kfn.core.instances import InvocationResult
from kfn.events.delivery import DeliveryEngine, DeliverySettings
from kfn.events.sqlite import SqliteStore
from kfn.events.store import Event
from tests.support.waiting import eventually

FUNCTIONS = [FunctionRef("default", f"fn-{i:03d}") for i in range(300)]


def no_polling() -> DeliverySettings:
    """Nothing polls: only a wake-up (or a timer the store sets) can deliver anything."""
    return DeliverySettings(poll=3600.0, claim_wait=3600.0, stats_interval=3600.0)


class Statements:
    """Every SQL statement the store's connection runs (sqlite3's trace callback)."""

    def __init__(self, store: SqliteStore) -> None:
        self.seen: list[str] = []
        connection = store._db.connection
        assert connection is not None
        connection.set_trace_callback(self.seen.append)

    def claims(self) -> int:
        return sum(sql.startswith("UPDATE events SET lease_until") for sql in self.seen)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[FunctionRef, str]] = []

    async def __call__(self, ref: FunctionRef, payload: bytes, invocation_id: str) -> InvocationResult:
        self.calls.append((ref, invocation_id))
        return InvocationResult(payload=b"{}")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    opened = SqliteStore(tmp_path / "events.sqlite3", lease=30.0, poll=0.05)
    await opened.start()
    try:
        yield opened
    finally:
        await opened.close()


def engine(store: SqliteStore, invoke: Recorder, settings: DeliverySettings | None = None) -> DeliveryEngine:
    configs = {ref: AsyncConfig(ref, timeout=1.0) for ref in FUNCTIONS}
    return DeliveryEngine(store, invoke, lambda: configs, settings=settings or no_polling())


async def test_an_idle_engine_with_many_functions_runs_no_query_per_function(store: SqliteStore) -> None:
    statements = Statements(store)
    # Lambda's defaults: only the claims' own waiting differs between an idle and a busy store.
    delivery = engine(store, Recorder(), DeliverySettings(stats_interval=3600.0))
    await delivery.start()
    try:
        await eventually(lambda: statements.claims() >= len(FUNCTIONS), timeout=20)   # each function looked once
        before = len(statements.seen)
        await asyncio.sleep(1.0)
        idle = statements.seen[before:]
    finally:
        await delivery.close()
    # One look for other connections' changes per `poll` (0.05 s): O(1), however many functions.
    assert not [sql for sql in idle if sql.startswith("UPDATE events SET lease_until")]
    assert len(idle) < len(FUNCTIONS) / 2, idle[:10]


async def test_an_event_accepted_while_idle_is_delivered_at_once(store: SqliteStore) -> None:
    statements = Statements(store)
    recorder = Recorder()
    delivery = engine(store, recorder)
    await delivery.start()
    try:
        await eventually(lambda: statements.claims() >= len(FUNCTIONS), timeout=20)
        await store.accept(FUNCTIONS[137], b"{}", "wake-up")
        await eventually(lambda: delivery.counters.delivered == 1)
    finally:
        await delivery.close()
    assert recorder.calls == [(FUNCTIONS[137], "wake-up")]


async def test_a_retry_is_claimed_once_its_delay_is_over(store: SqliteStore) -> None:
    ref = FUNCTIONS[0]
    await store.accept(ref, b"{}", "later")
    [first] = await store.claim(ref, 1, wait=1.0)
    await store.reschedule(first, first.event.next(failures=1), delay=0.3)
    [again] = await store.claim(ref, 1, wait=30.0)   # the store's own timer: nothing else wakes it
    assert (again.event.id, again.event.failures, again.deliveries) == ("later", 1, 2)


async def test_a_waiting_claim_gets_an_event_another_connection_accepts(store: SqliteStore, tmp_path: Path) -> None:
    other = SqliteStore(store.path, poll=3600.0)
    await other.start()
    try:
        claiming = asyncio.create_task(store.claim(FUNCTIONS[5], 1, wait=30.0))
        await asyncio.sleep(0)
        await other.accept(FUNCTIONS[5], b"{}", "from-elsewhere")
        [claimed] = await asyncio.wait_for(claiming, timeout=30.0)
    finally:
        await other.close()
    assert claimed.event.id == "from-elsewhere"


async def test_an_event_whose_consumer_died_is_claimed_when_its_lease_runs_out(store: SqliteStore) -> None:
    dying = SqliteStore(store.path, lease=0.3, poll=3600.0)
    await dying.start()
    try:
        await dying.accept(FUNCTIONS[9], b"{}", "orphan")
        [held] = await dying.claim(FUNCTIONS[9], 1, wait=1.0)   # and never completed
        [claimed] = await store.claim(FUNCTIONS[9], 1, wait=30.0)
    finally:
        await dying.close()
    assert (claimed.event.id, claimed.deliveries, held.deliveries) == ("orphan", 2, 1)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as db:
        return db.execute(sql).fetchall()


async def test_ids_are_kept_for_the_window_then_purged(tmp_path: Path) -> None:
    clock = Clock()
    store = SqliteStore(tmp_path / "events.sqlite3", dedup_window=600.0, clock=clock)
    await store.start()
    ref = FUNCTIONS[0]
    try:
        for i in range(5):
            await store.accept(ref, b"{}", f"id-{i}")
        for claimed in await store.claim(ref, 5, wait=0):
            await store.complete(claimed)
        clock.now += 599
        assert (await store.accept(ref, b"{}", "id-0")).duplicate
        clock.now += 101
        # Its window is over; the others' too, and this accept purges them (a minute after the last purge).
        assert not (await store.accept(ref, b"{}", "id-1")).duplicate
        assert rows(store.path, "SELECT id FROM call_ids") == [("id-1",)]
    finally:
        await store.close()


OLD_SCHEMA = """
CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, namespace TEXT NOT NULL, name TEXT NOT NULL,
    accepted_at REAL NOT NULL, not_before REAL NOT NULL DEFAULT 0, lease_until REAL NOT NULL DEFAULT 0,
    lease_owner TEXT, deliveries INTEGER NOT NULL DEFAULT 0, data BLOB NOT NULL);
CREATE INDEX events_due ON events (namespace, name, seq);
CREATE TABLE dead_letters (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
    failed_at REAL NOT NULL, data BLOB NOT NULL);
CREATE INDEX dead_letters_function ON dead_letters (namespace, name, seq);
"""


async def test_a_database_of_an_older_kfn_keeps_its_events_and_takes_ids_per_function(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    ref, other = FUNCTIONS[0], FUNCTIONS[1]
    event = Event(id="kept", function=ref, payload=b'{"a": 1}', accepted_at=1.0)
    with sqlite3.connect(path) as db:
        db.executescript(OLD_SCHEMA)
        db.execute("INSERT INTO events (id, namespace, name, accepted_at, data) VALUES (?, ?, ?, ?, ?)",
                   ("kept", ref.namespace, ref.name, 1.0, event.encode()))
    store = SqliteStore(path)
    await store.start()
    try:
        assert not (await store.accept(other, b"{}", "kept")).duplicate   # another function's own id
        assert (await store.accept(ref, b"{}", "kept")).duplicate
        [claimed] = await store.claim(ref, 5, wait=0)
        assert (claimed.event.id, claimed.event.payload) == ("kept", b'{"a": 1}')
    finally:
        await store.close()
    reopened = SqliteStore(path)
    await reopened.start()   # a second start finds it up to date
    try:
        assert (await reopened.stats([ref, other]))[other].depth == 1
    finally:
        await reopened.close()
