"""Attacks on the async changes of issue 18, on both stores (SQLite, and JetStream on a real
nats-server): the removal of deleted functions' queues (`kfn.events.orphans`) never takes an
event accepted for a function that exists again, and what a stopping engine releases is never lost."""
from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pytest

from kfn.core.asyncpolicy import AsyncConfig
from kfn.core.functions import FunctionRef
from kfn.core.instances import InvocationResult
from kfn.events.orphans import Orphans, OrphanSettings
from kfn.events.sqlite import FILE_NAME, SqliteStore
from kfn.events.store import EventStore
from kfn.local.app import STATE_DIR_NAME
from tests.e2e.asyncstores import FAST, FN, Backend, FakeFunction, engine
from tests.support.clocks import FakeClock
from tests.support.events import KnownFunctions
from tests.support.localmode import FAST_ASYNC, LocalMode, lines, recording, write_manifest
from tests.support.nats import NatsServer
from tests.support.waiting import eventually, wait_until

pytestmark = pytest.mark.timeout(90)
GRACE = 60.0




class AcceptedJustBeforeThePurge:
    """The store, where another gateway (whose informer already saw the function recreated)
    accepts an event for it just before this gateway's purge reaches the store."""

    def __init__(self, store: EventStore) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def discard(self, function: FunctionRef, *args: Any, **kwargs: Any) -> int:
        await self._store.accept(function, b'{"new": true}', "accepted-for-the-recreated-function")
        return await self._store.discard(function, *args, **kwargs)


async def depth(store: EventStore, function: FunctionRef) -> int:
    return (await store.stats([function]))[function].depth


async def test_an_event_accepted_for_a_recreated_function_while_its_old_queue_is_removed_is_kept(
        store: EventStore) -> None:
    for i in range(3):
        await store.accept(FN, b'{"n": %d}' % i, f"old-{i}")
    clock = FakeClock()
    # This gateway's informer has not seen the function recreated yet; another gateway's has.
    orphans = Orphans(AcceptedJustBeforeThePurge(store), KnownFunctions(),
                      settings=OrphanSettings(grace=GRACE), clock=clock)
    await orphans.sweep()
    clock.now += GRACE
    assert await orphans.sweep() == {FN: 3}
    assert await depth(store, FN) == 1


async def test_events_accepted_after_a_function_was_found_gone_are_removed_at_a_later_look(
        store: EventStore) -> None:
    # A gateway that had not seen the deletion yet accepted one more: it goes too, one look later.
    for i in range(3):
        await store.accept(FN, b'{"n": %d}' % i, f"old-{i}")
    clock = FakeClock()
    orphans = Orphans(store, KnownFunctions(), settings=OrphanSettings(grace=GRACE), clock=clock)
    await orphans.sweep()
    await store.accept(FN, b'{"late": true}', "late")
    clock.now += GRACE
    removed = [await orphans.sweep()]
    clock.now += 1
    removed.append(await orphans.sweep())
    assert sum(count for r in removed for count in r.values()) == 4
    assert await depth(store, FN) == 0


class Unreadable(KnownFunctions):
    """The functions a process knows, or None while some cannot be read (a broken manifest)."""

    def __init__(self, *known: FunctionRef) -> None:
        super().__init__(*known)
        self.readable = False

    def __call__(self) -> Collection[FunctionRef] | None:  # type: ignore[override]
        return super().__call__() if self.readable else None


async def test_no_queue_is_removed_and_no_grace_runs_while_some_functions_cannot_be_read(store: EventStore) -> None:
    for i in range(3):
        await store.accept(FN, b'{"n": %d}' % i, f"old-{i}")
    clock, functions = FakeClock(), Unreadable()
    orphans = Orphans(store, functions, settings=OrphanSettings(grace=GRACE), clock=clock)
    await orphans.sweep()
    clock.now += GRACE * 2
    assert await orphans.sweep() == {}
    functions.readable = True     # readable again, and the function really is gone: its grace starts now
    assert await orphans.sweep() == {}
    assert await depth(store, FN) == 3


async def queue_in_local_state(directory: Path, function: FunctionRef, keys: list[str]) -> None:
    """Events stored by an earlier run of kfn local in `directory` (its state, .kfn/)."""
    state = directory / STATE_DIR_NAME
    state.mkdir(exist_ok=True)
    store = SqliteStore(state / FILE_NAME)
    await store.start()
    try:
        for key in keys:
            await store.accept(function, json.dumps({"body": key}).encode(), key)
    finally:
        await store.close()


def test_kfn_local_started_with_a_broken_manifest_keeps_the_queued_events_of_its_function(tmp_path: Path) -> None:
    directory = tmp_path / "functions"
    directory.mkdir()
    log = tmp_path / "deliveries.log"
    keys = [f"order-{i}" for i in range(3)]
    asyncio.run(queue_in_local_state(directory, FunctionRef("default", "slow"), keys))
    # Saved half-edited while kfn local was stopped: which functions it defines cannot be read.
    (directory / "slow.yaml").write_text("apiVersion: kfn.dev/v1alpha1\nkind: Function\nmetadata: {name: slow\n")
    local = LocalMode(directory, extra_args=[*FAST_ASYNC, "--async-discard-after", "1s"],
                      log_path=tmp_path / "kfn-local.log").start()
    try:
        wait_until(lambda: local.errors()["manifests"], timeout=30, what="the broken manifest reported")
        time.sleep(4)   # the grace (1 s) and several looks at the queues (one a second)
        write_manifest(directory, "slow", recording(log))   # fixed
        wait_until(lambda: sorted(set(lines(log, "done"))) == keys, timeout=60, interval=0.1,
                   what="every queued event delivered")
    finally:
        local.stop()


# -- a gateway stopping while NATS is down ---------------------------------------------------------

async def hang(payload: bytes, attempt: int) -> InvocationResult:
    await asyncio.sleep(3600)
    raise AssertionError("never returns")


async def test_an_engine_and_store_stopping_with_nats_down_end_within_their_bounds_and_the_event_survives(
        nats_server: NatsServer, tmp_path: Path) -> None:
    backend = Backend("jetstream", tmp_path, nats_server)
    store = backend.store(lease=30.0)
    await store.start()
    draining = dataclasses.replace(FAST, drain_timeout=0.3, release_timeout=1.0)
    stopping = engine(store, FakeFunction(hang), AsyncConfig(FN, timeout=60.0, concurrency=2), settings=draining)
    try:
        await store.accept(FN, b"{}", "held")
        await stopping.start()
        await eventually(lambda: stopping.counters.invocations == 1, what="the event running")
        nats_server.stop()
        # Bounded: the drain, the release and the store's hand-back each have their limit.
        async with asyncio.timeout(20):
            await stopping.close()
            await store.close()
    finally:
        await stopping.close()
        await store.close()
    nats_server.start()   # same storage: what was accepted is still there
    again = backend.store(lease=30.0)
    await again.start()
    try:
        assert (await again.stats([FN]))[FN].depth == 1
    finally:
        await again.close()
