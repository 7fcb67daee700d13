"""Schedule triggers in real processes over both stores: SQLite events with SQLite tick records (local
mode), and JetStream events with the JetStream key-value tick records (Kubernetes), on a real
nats-server. Schedulers run `tests/e2e/schedule_worker.py` with a simulated clock running 30 or
60 times faster than real time, so minute ticks come every 1-2 real seconds; one scheduler leads
per lock file (`kfn.triggers.leader.FileLock`, local mode's election; the Lease is tested on the
real cluster).

What is checked is what was stored and what was fired (each worker logs every tick whose event
the store accepted), never how long anything took.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kfn.events.jetstream import JetStreamStore
from kfn.triggers.schedule import ScheduleSource
from kfn.triggers.ticks import KvTicks
from tests.e2e.workers import WorkerProcess
from tests.support.functions import make_function
from tests.support.nats import NatsServer, nats_server_binary
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(120)
MINUTE = dt.timedelta(minutes=1)


@dataclass
class Setup:
    """One combination of stores, and how a worker opens them."""

    name: str
    directory: Path
    nats: NatsServer | None = None

    def store(self) -> dict[str, Any]:
        if self.nats is not None:
            return {"kind": "jetstream", "url": self.nats.url, "lease": 5.0}
        return {"kind": "sqlite", "path": str(self.directory / "events.sqlite3"), "lease": 5.0}

    def ticks(self) -> dict[str, Any]:
        if self.nats is not None:
            return {"kind": "kv", "url": self.nats.url}
        return {"kind": "sqlite", "path": str(self.directory / "events.sqlite3")}

    def stored_ids(self) -> set[str]:
        """The ids of the events stored (no delivery engine runs: every event is still queued)."""
        if self.nats is None:
            with sqlite3.connect(self.directory / "events.sqlite3") as db:
                return {row[0] for row in db.execute("SELECT id FROM events")}
        return asyncio.run(_jetstream_ids(self.nats.url))


async def _jetstream_ids(url: str) -> set[str]:
    import nats

    from kfn.events import jetstream_layout
    from kfn.events.store import Event
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        ids: set[str] = set()
        seq = 1
        while True:
            try:
                raw = await js.get_msg(jetstream_layout.STREAM, seq=seq, next=True)
            except Exception:  # noqa: BLE001 - no message at or after seq: done
                break
            assert raw.data is not None and raw.seq is not None
            ids.add(Event.decode(raw.data).id)
            seq = raw.seq + 1
        return ids
    finally:
        await nc.close()


@pytest.fixture(params=["sqlite", "jetstream"])
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Setup]:
    if request.param == "sqlite":
        yield Setup("sqlite", tmp_path)
        return
    nats_server_binary()
    server = NatsServer(tmp_path)
    server.start()
    try:
        yield Setup("jetstream", tmp_path, server)
    finally:
        server.stop()


class Scheduler(WorkerProcess):
    """tests/e2e/schedule_worker.py in its own process, stopped (or killed) by its PID."""

    module = "tests.e2e.schedule_worker"

    def __init__(self, setup: Setup, log: Path, clock: dict[str, float], schedule: str = "rate(1 minute)") -> None:
        super().__init__(log, {"store": setup.store(), "ticks": setup.ticks(),
                               "lock": str(setup.directory / "scheduler.lock"), "log": str(log), "schedule": schedule,
                               "clock": clock})


def records(log: Path, kind: str) -> list[list[str]]:
    if not log.exists():
        return []
    return [line.split()[1:] for line in log.read_text().splitlines() if line.startswith(kind + " ")]


def fired(log: Path) -> list[tuple[dt.datetime, str, int]]:
    return [(dt.datetime.fromisoformat(tick), invocation_id, int(pid))
            for tick, invocation_id, pid in records(log, "fired")]


def leaders(log: Path) -> list[int]:
    return [int(r[0]) for r in records(log, "leading")]


def led_at(log: Path, pid: int) -> dt.datetime:
    """When (on the simulated clock) the scheduler `pid` started leading."""
    return next(dt.datetime.fromisoformat(r[1]) for r in records(log, "leading") if int(r[0]) == pid)


def simulated_clock(speed: float, *, start: dt.datetime | None = None) -> dict[str, float]:
    """A clock for the workers starting 10 simulated seconds past a whole minute."""
    base = start or dt.datetime(2026, 3, 2, 12, 0, 10, tzinfo=dt.UTC)
    return {"base": base.timestamp(), "real": time.time(), "speed": speed}


def test_two_schedulers_fire_each_tick_once_across_a_sigkill_of_the_leader(setup: Setup, tmp_path: Path) -> None:
    log = tmp_path / "ticks.log"
    clock = simulated_clock(30)   # a minute every 2 real seconds
    first = Scheduler(setup, log, clock).start()
    second = Scheduler(setup, log, clock)
    try:
        wait_until(lambda: leaders(log) == [first.pid], timeout=30, what="the first scheduler to lead")
        second.start()
        wait_until(lambda: len(fired(log)) >= 3, timeout=60, what="three ticks")
        assert {pid for _, _, pid in fired(log)} == {first.pid}      # the second one only waits
        first.kill()
        before = len(fired(log))
        wait_until(lambda: len([f for f in fired(log) if f[2] == second.pid]) >= 3, timeout=60,
                   what="the second scheduler to take over and fire three ticks")
        second.stop()
    finally:
        first.stop()
        second.stop()
    ticks = [tick for tick, _, _ in fired(log)]
    by_tick = Counter(ticks)
    distinct = sorted(by_tick)
    # Every minute from the first tick to the last fired, none left out across the SIGKILL ...
    assert distinct == [distinct[0] + i * MINUTE for i in range(len(distinct))], ticks
    # ... at most the tick in progress at the SIGKILL fired by both (stored, not yet recorded), and
    # then under the same id, which the store kept once.
    assert [t for t, n in by_tick.items() if n > 1] in ([], [ticks[before - 1]])
    ids = {invocation_id for _, invocation_id, _ in fired(log)}
    assert len(ids) == len(distinct)
    assert setup.stored_ids() == ids
    assert leaders(log) == [first.pid, second.pid]


def test_a_tick_missed_while_no_scheduler_ran_fires_once_late(setup: Setup, tmp_path: Path) -> None:
    log = tmp_path / "ticks.log"
    clock = simulated_clock(60)   # a minute every real second
    first = Scheduler(setup, log, clock).start()
    try:
        wait_until(lambda: len(fired(log)) >= 2, timeout=60, what="two ticks")
    finally:
        first.stop()
    last_before = max(tick for tick, _, _ in fired(log))
    time.sleep(3.5)   # down for more than three simulated minutes
    second = Scheduler(setup, log, clock).start()
    try:
        wait_until(lambda: len([t for t, _, p in fired(log) if p == second.pid]) >= 2, timeout=60,
                   what="two ticks after the restart")
    finally:
        second.stop()
    after = [tick for tick, _, pid in fired(log) if pid == second.pid]
    restarted = led_at(log, second.pid)
    skipped = sum(int(r[0]) for r in records(log, "skipped"))
    # The first tick after the restart is the latest one missed (at or before the restart: fired
    # late), the ones between were skipped, then the schedule goes on minute by minute.
    assert after[0] == restarted.replace(second=0, microsecond=0)
    assert skipped == (after[0] - last_before) // MINUTE - 1 >= 2
    assert after == [after[0] + i * MINUTE for i in range(len(after))]


def test_after_more_than_an_hour_down_nothing_from_the_past_fires(setup: Setup, tmp_path: Path) -> None:
    daily = "cron(0 9 * * ? *)"
    log = tmp_path / "ticks.log"
    day1 = dt.datetime(2026, 3, 2, 8, 55, tzinfo=dt.UTC)   # 5 real seconds before 09:00
    first = Scheduler(setup, log, simulated_clock(60, start=day1), schedule=daily).start()
    try:
        wait_until(lambda: len(fired(log)) >= 1, timeout=60, what="the 09:00 tick")
    finally:
        first.stop()
    assert [tick for tick, _, _ in fired(log)] == [day1.replace(hour=9, minute=0, second=0)]
    # Back the next day at 10:31: that day's 09:00 tick was missed an hour and a half ago, beyond
    # the catch-up window, so it is skipped, not fired.
    later = Scheduler(setup, log, simulated_clock(60, start=day1 + dt.timedelta(days=1, hours=1, minutes=31)),
                      schedule=daily).start()
    try:
        wait_until(lambda: records(log, "skipped"), timeout=60, what="the missed tick to be skipped")
    finally:
        later.stop()
    assert [pid for _, _, pid in fired(log)] == [first.pid]
    assert records(log, "skipped") == [["1"]]


async def test_kv_tick_records_survive_a_nats_server_restart(tmp_path: Path) -> None:
    nats_server_binary()
    server = NatsServer(tmp_path)
    server.start()
    try:
        from kfn.triggers.ticks import TickRecord
        ticks = KvTicks(server.url)
        await ticks.start()
        record = TickRecord("rate(1 minute)", dt.datetime(2026, 3, 2, 12, 1, tzinfo=dt.UTC))
        await ticks.put("default.ticker.0", record)
        await ticks.close()
        server.kill()
        server.start()
        ticks = KvTicks(server.url, connect_attempts=10)
        await ticks.start()
        try:
            assert await ticks.get("default.ticker.0") == record
            assert await ticks.get("default.other.0") is None
        finally:
            await ticks.close()
    finally:
        server.stop()


async def test_a_scheduler_stores_its_ticks_in_jetstream(tmp_path: Path) -> None:
    # The pieces the operator's leader wires, in one process: JetStream events, KV records.
    nats_server_binary()
    server = NatsServer(tmp_path)
    server.start()
    store = JetStreamStore(server.url, connect_attempts=5)
    ticks = KvTicks(server.url)
    try:
        await store.start()
        await ticks.start()
        now = [dt.datetime(2026, 3, 2, 12, 0, 30, tzinfo=dt.UTC)]
        source = ScheduleSource(ticks, clock=lambda: now[0], region="us-east-1")
        source._sink = store.accept   # driven by hand, as in the unit tests
        source.update([make_function(triggers=[{"schedule": "rate(1 minute)"}])])
        await source.fire_due()
        for minute in (1, 1, 2):
            now[0] = now[0].replace(minute=minute, second=0)
            await source.fire_due()
        from kfn.core.functions import FunctionRef
        stats = await store.stats([FunctionRef("default", "hello")])
        assert stats[FunctionRef("default", "hello")].depth == 2
    finally:
        await ticks.close()
        await store.close()
        server.stop()
