"""A delivery engine shutting down on both stores (SQLite, and JetStream on a real nats-server): the
events still running when its drain time runs out are released to other engines at once, not
left leased for the whole lease (30 s here, as on Kubernetes)."""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kfn.core.asyncpolicy import AsyncConfig
from kfn.core.instances import InvocationResult
from kfn.events.store import EventStore
from tests.e2e.asyncstores import FAST, FN, Backend, FakeFunction, engine, record
from tests.support.nats import NatsServer
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(90)

# Far longer than any wait below: an event comes again sooner only if it was released.
LONG_LEASE = 30.0
DRAINING = dataclasses.replace(FAST, drain_timeout=0.3)
# Long enough never to time out an attempt in these tests.
PATIENT = AsyncConfig(FN, timeout=60.0, concurrency=4)


@pytest.fixture
async def leased_store(backend: Backend) -> AsyncIterator[EventStore]:
    """`backend`'s store with 30 s leases."""
    opened = backend.store(lease=LONG_LEASE)
    await opened.start()
    try:
        yield opened
    finally:
        await opened.close()


async def hang(payload: bytes, attempt: int) -> InvocationResult:
    await asyncio.sleep(3600)
    raise AssertionError("never returns")


async def test_an_event_running_at_the_drain_timeout_is_handed_out_again_at_once(leased_store: EventStore) -> None:
    await leased_store.accept(FN, b"{}", "held")
    stopping = engine(leased_store, FakeFunction(hang), PATIENT, settings=DRAINING)
    await stopping.start()
    await eventually(lambda: stopping.counters.invocations == 1, what="the event running")
    await stopping.close()
    # Well inside the 30 s lease: there only if it was released.
    again = await leased_store.claim(FN, 1, wait=5.0)
    assert [(d.event.id, d.deliveries) for d in again] == [("held", 2)]


async def test_events_released_at_the_drain_timeout_are_counted(leased_store: EventStore) -> None:
    for i in range(3):
        await leased_store.accept(FN, b"{}", f"held-{i}")
    stopping = engine(leased_store, FakeFunction(hang), PATIENT, settings=DRAINING)
    await stopping.start()
    await eventually(lambda: stopping.counters.invocations == 3, what="three events running")
    await stopping.close()
    assert stopping.counters.released == 3


async def test_another_engine_delivers_what_a_stopping_engine_released(backend: Backend,
                                                                      leased_store: EventStore) -> None:
    await leased_store.accept(FN, b"{}", "moved")
    first = FakeFunction(hang)
    stopping = engine(leased_store, first, PATIENT, settings=DRAINING)
    await stopping.start()
    await eventually(lambda: first.calls == ["moved"], what="the first engine running the event")
    second = FakeFunction()
    staying = engine(leased_store, second, PATIENT)
    await staying.start()
    try:
        await stopping.close()
        await eventually(lambda: staying.counters.delivered == 1, timeout=10.0,
                         what="the other engine delivering the released event (inside the 30 s lease)")
    finally:
        await staying.close()
    assert second.calls == ["moved"]
    # It may have run in the first engine: at least once, and the possible duplicate is counted.
    record("gateway drain timeout", backend.name, accepted=1, delivered=1, released=stopping.counters.released,
           duplicates=len(first.calls) + len(second.calls) - 1, lost=0)


async def test_a_delivery_finishing_within_the_drain_time_is_completed_not_released(
        leased_store: EventStore) -> None:
    await leased_store.accept(FN, b"{}", "quick")
    finishing = asyncio.Event()

    async def slow(payload: bytes, attempt: int) -> InvocationResult:
        await finishing.wait()
        return InvocationResult(payload=b"{}")

    function = FakeFunction(slow)
    stopping = engine(leased_store, function, PATIENT, settings=dataclasses.replace(FAST, drain_timeout=20.0))
    await stopping.start()
    await eventually(lambda: function.calls == ["quick"], what="the event running")
    closing = asyncio.create_task(stopping.close())
    await asyncio.sleep(0.2)
    finishing.set()
    await asyncio.wait_for(closing, timeout=25.0)
    assert (stopping.counters.delivered, stopping.counters.released) == (1, 0)
    assert (await leased_store.stats([FN]))[FN].depth == 0


@pytest.fixture
def nats_backend(nats_server: NatsServer, tmp_path: Path) -> Backend:
    """JetStream only: its claims are pull requests the server answers later."""
    return Backend("jetstream", tmp_path, nats_server)


async def test_events_sent_to_a_stopped_claim_are_handed_out_at_once_once_its_store_closes(
        nats_backend: Backend) -> None:
    stopping, other = nats_backend.store(lease=LONG_LEASE), nats_backend.store(lease=LONG_LEASE)
    await stopping.start()
    await other.start()
    try:
        # A consumer stopping mid-claim: its pull request stays at the server, which answers it.
        claim = asyncio.create_task(stopping.claim(FN, 5, wait=30.0))
        await asyncio.sleep(0.2)
        claim.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await claim
        ids = [f"sent-{i}" for i in range(3)]
        for invocation_id in ids:
            await other.accept(FN, b"{}", invocation_id)
        async def leased() -> bool:
            """Some event of FN is leased (to the stopped claim: nobody else claims)."""
            return (await other.stats([FN]))[FN].in_flight > 0

        await eventually(leased, what="an event sent to the stopped claim")
        await stopping.close()
        claimed: list[str] = []
        for _ in range(10):   # well inside the 30 s lease: there only if handed back
            claimed += [d.event.id for d in await other.claim(FN, 5, wait=0.5)]
            if len(claimed) >= 3:
                break
        assert sorted(claimed) == ids
    finally:
        await stopping.close()
        await other.close()
