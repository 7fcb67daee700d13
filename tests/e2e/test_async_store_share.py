"""A delivery engine's share of a function's async concurrency follows the live replica count it
is told (`DeliveryEngine.set_replicas`), on both stores."""
from __future__ import annotations

import asyncio

import pytest

from kfn.core.asyncpolicy import AsyncConfig
from kfn.core.instances import InvocationResult
from kfn.events.store import EventStore
from tests.e2e.asyncstores import FAST, FN, FakeFunction, engine
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(90)

CONFIG = AsyncConfig(FN, timeout=60.0, concurrency=4)


async def test_an_engine_delivers_more_at_once_when_fewer_replicas_share_the_queue(store: EventStore) -> None:
    for i in range(8):
        await store.accept(FN, b"{}", f"ev-{i}")
    gate = asyncio.Event()

    async def held(payload: bytes, attempt: int) -> InvocationResult:
        await gate.wait()
        return InvocationResult(payload=b"{}")

    function = FakeFunction(held)
    delivery = engine(store, function, CONFIG, settings=FAST)
    delivery.set_replicas(4)   # a share of 1
    await delivery.start()
    try:
        await eventually(lambda: function.running == 1, what="one delivery at once")
        await asyncio.sleep(0.5)   # several claim rounds: still one
        assert function.most_running == 1
        delivery.set_replicas(1)   # the other replicas went away: all 4
        await eventually(lambda: function.running == 4, what="four deliveries at once")
        gate.set()
        await eventually(lambda: delivery.counters.delivered == 8, what="every event delivered")
    finally:
        gate.set()
        await delivery.close()
    assert function.most_running == 4
