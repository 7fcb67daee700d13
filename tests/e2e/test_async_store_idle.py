"""An idle delivery engine with many functions, on both stores (SQLite, JetStream on a real
nats-server): it asks the store nothing per function while nothing happens, and still delivers an
event the moment it is accepted (issue 15, item 14)."""
from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from kfn.core.asyncpolicy import AsyncConfig
from kfn.core.functions import FunctionRef
from kfn.events.delivery import DeliveryEngine
from kfn.events.jetstream import JetStreamStore
from kfn.events.store import Delivery, EventStore
from tests.e2e.asyncstores import FAST, Backend, FakeFunction
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(120)

FUNCTIONS = [FunctionRef("default", f"fn-{i:03d}") for i in range(100)]
IDLE = 1.0   # seconds watched; FAST polls every 0.1 s, so polling would show 10 times per function
WINDOWS = 5


class CountingClaims:
    """Wraps a store's `claim`, counting the calls per function."""

    def __init__(self, store: EventStore) -> None:
        self.calls: dict[FunctionRef, int] = {}
        self._claim = store.claim

        async def claim(function: FunctionRef, limit: int, *, wait: float) -> list[Delivery]:
            self.calls[function] = self.calls.get(function, 0) + 1
            return await self._claim(function, limit, wait=wait)

        store.claim = claim  # type: ignore[method-assign]

    def total(self) -> int:
        return sum(self.calls.values())


def requests_sent(store: EventStore) -> int:
    """Messages the JetStream store's connection published (pull requests, API requests); 0 for SQLite."""
    if isinstance(store, JetStreamStore) and store._connection.client is not None:
        return int(store._connection.client.stats["out_msgs"])
    return 0


def quiet(window: tuple[int, int]) -> bool:
    """A few claims at most, and (JetStream) the queue statistics' one request every 0.2 s, not a
    request per function."""
    claims, requests = window
    return claims < 5 and requests < len(FUNCTIONS) / 4


def engine(store: EventStore, function: FakeFunction, functions: Sequence[FunctionRef]) -> DeliveryEngine:
    configs = {ref: AsyncConfig(ref, timeout=1.0) for ref in functions}
    return DeliveryEngine(store, function, lambda: configs, settings=FAST)


async def test_an_idle_engine_asks_the_store_nothing_per_function_and_delivers_an_event_at_once(
        backend: Backend) -> None:
    store = backend.store()
    await store.start()
    claims = CountingClaims(store)
    function = FakeFunction()
    delivery = engine(store, function, FUNCTIONS)
    await delivery.start()
    try:
        await eventually(lambda: len(claims.calls) == len(FUNCTIONS), what="every function's first claim")
        # Idle: some window of IDLE seconds in which nothing is asked per function (the consumers'
        # first requests, still going out in the first one, are allowed to settle).
        windows: list[tuple[int, int]] = []
        for _ in range(WINDOWS):
            calls, requests = claims.total(), requests_sent(store)
            await asyncio.sleep(IDLE)
            windows.append((claims.total() - calls, requests_sent(store) - requests))
            if quiet(windows[-1]):
                break
        await store.accept(FUNCTIONS[57], b"{}", "wake-up")
        await eventually(lambda: function.calls == ["wake-up"], what="the event delivered")
    finally:
        await delivery.close()
        await store.close()
    assert quiet(windows[-1]), f"(claims, requests to NATS) per {IDLE}s window of idleness: {windows}"
