"""Faults, counted, on both stores: a consumer SIGKILLed mid-delivery, the process that accepted
events SIGKILLed, the storage restarted mid-run. Nothing accepted is lost; duplicates (at least
once) are counted, not forbidden."""
from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

import nats
import pytest

from kfn.core.instances import InvocationResult
from kfn.events import jetstream_layout
from kfn.events.store import EventStore, QueueStats, StoreUnavailable
from tests.e2e.asyncstores import FN, Backend, FakeFunction, engine, record
from tests.e2e.workers import WorkerProcess
from tests.support.waiting import eventually, wait_until

pytestmark = pytest.mark.timeout(120)


class Worker(WorkerProcess):
    """tests/e2e/async_worker.py in its own process, stopped (or killed) by its PID."""

    module = "tests.e2e.async_worker"

    def __init__(self, backend: Backend, log: Path, **args: Any) -> None:
        super().__init__(log, {"store": backend.worker_store(), "log": str(log), **args})


def lines(log: Path, kind: str) -> list[str]:
    if not log.exists():
        return []
    return [line.split(" ", 1)[1] for line in log.read_text().splitlines() if line.startswith(kind + " ")]


async def eventually_empty(store: EventStore) -> None:
    """Wait (at most 30 s) until no event of FN is stored; an unavailable store counts as "not yet"."""
    async def empty() -> bool:
        return (await store.stats([FN]))[FN].depth == 0

    await eventually(empty, timeout=30, interval=0.1, what="no event of the function left in the store",
                     ignoring=(StoreUnavailable,))


async def test_a_consumer_killed_mid_delivery_loses_nothing(backend: Backend, tmp_path: Path) -> None:
    store = backend.store()
    await store.start()
    try:
        ids = [f"kill-{i}" for i in range(40)]
        for invocation_id in ids:
            await store.accept(FN, b"{}", invocation_id)
        log = tmp_path / "deliveries.log"
        first = Worker(backend, log, work=0.3, concurrency=4)
        first.start()

        def mid_delivery() -> bool:
            done = lines(log, "done")
            return len(done) >= 8 and bool(set(lines(log, "start")) - set(done))

        try:
            # Killed while a delivery has started and not finished (each takes 0.3 s), not between claims.
            wait_until(mid_delivery, timeout=30, what="8 deliveries and one in progress before the kill")
        finally:
            first.kill()
        interrupted = len(set(lines(log, "start")) - set(lines(log, "done")))
        second = Worker(backend, log, work=0.01, concurrency=4)
        second.start()
        try:
            wait_until(lambda: set(ids) <= set(lines(log, "done")), timeout=60, what="every event delivered")
            # Delivered is not yet completed: wait until the store has none left.
            await eventually_empty(store)
        finally:
            second.stop()
        done = Counter(lines(log, "done"))
        assert set(done) == set(ids)
        record("consumer SIGKILLed mid-delivery", backend.name, accepted=len(ids), delivered=len(done),
               retried=0, dead_lettered=0, lost=len(set(ids) - set(done)),
               duplicates=sum(done.values()) - len(done), interrupted=interrupted)
        assert interrupted >= 1   # the kill did land mid-delivery
    finally:
        await store.close()


async def test_the_accepting_process_killed_loses_nothing_it_acknowledged(backend: Backend, tmp_path: Path) -> None:
    log = tmp_path / "deliveries.log"
    offered = [f"acc-{i}" for i in range(300)]
    first = Worker(backend, log, work=0.05, concurrency=4, accept=offered)
    first.start()
    try:
        wait_until(lambda: len(lines(log, "accepted")) >= 40, timeout=30, what="40 acknowledged accepts")
    finally:
        first.kill()
    acknowledged = set(lines(log, "accepted"))
    assert len(acknowledged) < len(offered)   # killed mid-way
    second = Worker(backend, log, work=0.01, concurrency=8)
    second.start()
    try:
        wait_until(lambda: acknowledged <= set(lines(log, "done")), timeout=60, what="every acknowledged event")
    finally:
        second.stop()
    done = Counter(lines(log, "done"))
    record("accepting process (kfn local) SIGKILLed", backend.name, accepted=len(acknowledged),
           delivered=len(acknowledged & set(done)), retried=0, dead_lettered=0, lost=len(acknowledged - set(done)),
           duplicates=sum(done.values()) - len(done))
    assert acknowledged <= set(done)


async def accept_with_retries(store: EventStore, invocation_id: str) -> None:
    """The store's contract for a failed accept: try again with the same id (bounded)."""
    for _ in range(40):
        try:
            await store.accept(FN, b"{}", invocation_id)
            return
        except StoreUnavailable:
            await asyncio.sleep(0.25)
    raise AssertionError(f"could not accept {invocation_id}")


async def test_the_storage_restarted_mid_run_loses_nothing(backend: Backend) -> None:
    async def slow(payload: bytes, attempt: int) -> InvocationResult:
        await asyncio.sleep(0.05)
        return InvocationResult(payload=b"{}")

    function = FakeFunction(slow)
    store = backend.store()
    await store.start()
    delivery = engine(store, function)
    await delivery.start()
    ids = [f"restart-{i}" for i in range(60)]
    try:
        for invocation_id in ids[:30]:
            await accept_with_retries(store, invocation_id)
        await eventually(lambda: len(function.distinct()) >= 5, what="deliveries before the restart")
        if backend.nats is not None:
            # nats-server SIGKILLed and started again on the same store; the engine and the
            # accepting client keep their connection objects and reconnect.
            backend.nats.kill()
            await asyncio.sleep(0.5)
            backend.nats.start()
        else:
            # SQLite lives in the process: a restart is a new store on the same file.
            await delivery.close()
            await store.close()
            store = backend.store()
            await store.start()
            delivery = engine(store, function)
            await delivery.start()
        for invocation_id in ids[30:]:
            await accept_with_retries(store, invocation_id)
        await eventually(lambda: function.distinct() >= set(ids), timeout=60, what="every event delivered")
        await eventually_empty(store)
    finally:
        await delivery.close()
        await store.close()
    calls = Counter(function.calls)
    record("storage restarted mid-run", backend.name, accepted=len(ids), delivered=len(calls), retried=0,
           dead_lettered=0, lost=len(set(ids) - set(calls)), duplicates=sum(calls.values()) - len(calls))
    assert set(calls) == set(ids)


async def store_unreadable(backend: Backend, data: bytes) -> None:
    """Put a message no kfn wrote into FN's queue (another version's envelope, a stray publish)."""
    if backend.nats is None:
        with sqlite3.connect(backend.directory / "events.sqlite3") as db:
            db.execute("INSERT INTO events (id, namespace, name, accepted_at, data) VALUES (?, ?, ?, ?, ?)",
                       ("stray", FN.namespace, FN.name, time.time(), data))
        return
    client = await nats.connect(backend.nats.url)
    try:
        await client.jetstream().publish(jetstream_layout.subject(FN), data)
    finally:
        await client.close()


@pytest.mark.parametrize("data", [b'{"id": "stray"}', b"[1, 2]"], ids=["fields-missing", "not-an-object"])
async def test_an_event_the_store_cannot_read_does_not_hold_up_the_others(backend: Backend, data: bytes) -> None:
    store = backend.store()
    await store.start()
    try:
        await store_unreadable(backend, data)
        await store.accept(FN, b"{}", "readable")
        function = FakeFunction()
        delivery = engine(store, function)
        await delivery.start()
        try:
            await eventually(lambda: function.calls == ["readable"], what="the readable event delivered")
            await eventually(lambda: delivery.queue_stats().get(FN, QueueStats(1, 0, None)).depth == 0,
                             what="the unreadable one out of the queue")
        finally:
            await delivery.close()
    finally:
        await store.close()
