"""A SQLite database on a thread of its own (`kfn._cogs.sqlite`): every call on that one thread in
order, the connection set up as both local stores need it, and the thread gone once closed,
whatever failed or was cancelled on the way."""
from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from kfn._cogs.sqlite import Database, DatabaseClosed
from tests.support.waiting import eventually


def threads(prefix: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(prefix)]


async def no_thread_left(prefix: str) -> None:
    await eventually(lambda: not threads(prefix), timeout=10, what=f"the end of the thread {prefix}")


def unique() -> str:
    return f"test-sqlite-{uuid.uuid4().hex[:8]}"


def create(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE IF NOT EXISTS t (n INTEGER)")


async def test_the_connection_is_opened_and_used_on_one_thread_as_the_stores_need_it(tmp_path: Path) -> None:
    name = unique()
    database = Database(tmp_path / "deep" / "dir" / "x.sqlite3", thread_name=name)
    seen: list[str] = []

    def setup(db: sqlite3.Connection) -> None:
        seen.append(threading.current_thread().name)
        create(db)

    await database.open(setup)
    try:
        assert database.is_open and (tmp_path / "deep" / "dir" / "x.sqlite3").exists()
        pragmas = await database.call(lambda db: (db.execute("PRAGMA journal_mode").fetchone()[0],
                                                  db.execute("PRAGMA synchronous").fetchone()[0],
                                                  db.execute("PRAGMA busy_timeout").fetchone()[0],
                                                  db.isolation_level, threading.current_thread().name))
        assert pragmas[:4] == ("wal", 2, 30000, None)      # WAL, FULL, 30 s, autocommit
        assert pragmas[4] == seen[0] and seen[0].startswith(name)
        assert len(threads(name)) == 1
    finally:
        await database.close()
    await no_thread_left(name)


async def test_calls_run_one_at_a_time_in_the_order_they_were_made(tmp_path: Path) -> None:
    database = Database(tmp_path / "x.sqlite3", thread_name=unique())
    await database.open(create)
    running = 0
    most = 0

    def insert(n: int) -> Callable[[sqlite3.Connection], int]:
        def run(db: sqlite3.Connection) -> int:
            nonlocal running, most
            running += 1
            most = max(most, running)
            time.sleep(0.001)
            db.execute("INSERT INTO t (n) VALUES (?)", (n,))
            running -= 1
            return n
        return run

    try:
        assert await asyncio.gather(*(database.call(insert(n)) for n in range(50))) == list(range(50))
        rows = await database.call(lambda db: [n for (n,) in db.execute("SELECT n FROM t ORDER BY rowid")])
        assert rows == list(range(50)) and most == 1
    finally:
        await database.close()


async def test_what_a_call_raises_reaches_its_caller_and_the_database_stays_usable(tmp_path: Path) -> None:
    database = Database(tmp_path / "x.sqlite3", thread_name=unique())
    await database.open()
    try:
        with pytest.raises(sqlite3.OperationalError, match="no such table"):
            await database.call(lambda db: db.execute("SELECT * FROM missing"))
        assert await database.call(lambda db: db.execute("SELECT 1").fetchone()) == (1,)
    finally:
        await database.close()


async def test_a_database_not_open_refuses_calls_and_may_be_opened_again(tmp_path: Path) -> None:
    name = unique()
    database = Database(tmp_path / "x.sqlite3", thread_name=name)
    with pytest.raises(DatabaseClosed):
        await database.call(lambda db: None)
    await database.close()                                  # closing what is not open: nothing
    await database.open(create)
    await database.open(lambda db: pytest.fail("opened twice"))   # open already: nothing
    await database.call(lambda db: db.execute("INSERT INTO t (n) VALUES (7)"))
    await database.close()
    await database.close()
    assert not database.is_open and database.connection is None
    with pytest.raises(DatabaseClosed):
        await database.call(lambda db: None)
    await no_thread_left(name)
    await database.open()
    try:
        assert await database.call(lambda db: db.execute("SELECT n FROM t").fetchall()) == [(7,)]
    finally:
        await database.close()


async def test_close_waits_for_the_calls_made_before_it(tmp_path: Path) -> None:
    name = unique()
    database = Database(tmp_path / "x.sqlite3", thread_name=name)
    await database.open()

    def slow(db: sqlite3.Connection) -> int:
        time.sleep(0.2)
        return int(db.execute("SELECT 42").fetchone()[0])

    call = asyncio.ensure_future(database.call(slow))
    await asyncio.sleep(0)                  # the call is made (queued on the thread)
    await database.close()
    assert call.done() and call.result() == 42
    await no_thread_left(name)


async def test_a_setup_that_fails_leaves_the_database_closed_and_no_thread(tmp_path: Path) -> None:
    name = unique()
    database = Database(tmp_path / "x.sqlite3", thread_name=name)
    opened: list[sqlite3.Connection] = []

    def failing(db: sqlite3.Connection) -> None:
        opened.append(db)
        db.execute("NOT SQL")

    with pytest.raises(sqlite3.OperationalError):
        await database.open(failing)
    assert not database.is_open
    with pytest.raises(sqlite3.ProgrammingError):           # the connection was closed
        opened[0].execute("SELECT 1")
    await no_thread_left(name)
    await database.open(create)                             # and it may be opened again
    await database.close()


async def test_an_open_cancelled_midway_closes_the_connection_it_made(tmp_path: Path) -> None:
    name = unique()
    database = Database(tmp_path / "x.sqlite3", thread_name=name)
    entered, release = threading.Event(), threading.Event()
    opened: list[sqlite3.Connection] = []

    def blocking(db: sqlite3.Connection) -> None:
        opened.append(db)
        entered.set()
        release.wait(10)

    opening = asyncio.ensure_future(database.open(blocking))
    assert await asyncio.to_thread(entered.wait, 10)
    opening.cancel()
    with pytest.raises(asyncio.CancelledError):
        await opening
    assert not database.is_open
    release.set()
    await no_thread_left(name)
    with pytest.raises(sqlite3.ProgrammingError):
        opened[0].execute("SELECT 1")


async def test_a_lock_held_by_another_connection_is_waited_for_up_to_the_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "x.sqlite3"
    database = Database(path, thread_name=unique(), synchronous="NORMAL", busy_timeout=0.3)
    await database.open(create)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        assert await database.call(lambda db: db.execute("PRAGMA synchronous").fetchone()[0]) == 1   # NORMAL
        other.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            await database.call(lambda db: db.execute("BEGIN IMMEDIATE"))
        assert 0.25 <= time.monotonic() - started < 5
        other.execute("COMMIT")
        await database.call(lambda db: db.execute("INSERT INTO t (n) VALUES (1)"))
    finally:
        other.close()
        await database.close()
