"""The queued events of a deleted function, on both stores (SQLite, and JetStream on a real
nats-server): removed once the function has been gone for the grace, counted, and kept by a
function recreated within it (`kfn.events.orphans`, deciding by `kfn.core.orphans`)."""
from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kfn.core import naming
from kfn.core.functions import FunctionRef
from kfn.core.orphans import REASON_FUNCTION_DELETED
from kfn.events.orphans import Orphans, OrphanSettings
from kfn.events.store import EventStore
from kfn_gateway.asyncinvoke import AsyncDelivery
from tests.e2e.asyncstores import FAST, FN, Backend
from tests.support.backend import FakeBackend
from tests.support.clocks import FakeClock
from tests.support.events import KnownFunctions
from tests.support.functions import make_function
from tests.support.gateway import running_gateway
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(90)
GRACE = 60.0
NEIGHBOUR = FunctionRef("default", "neighbour")




async def queue_of(store: EventStore, *functions: FunctionRef, count: int = 3) -> None:
    for function in functions:
        for i in range(count):
            await store.accept(function, b'{"n": %d}' % i, f"{function.name}-{i}")


async def depth(store: EventStore, function: FunctionRef) -> int:
    return (await store.stats([function]))[function].depth


def sweeper(store: EventStore, functions: KnownFunctions, clock: FakeClock, *,
            namespaces: tuple[str, ...] = ()) -> Orphans:
    return Orphans(store, functions, settings=OrphanSettings(grace=GRACE, namespaces=namespaces), clock=clock)


async def test_the_events_of_a_function_deleted_for_longer_than_the_grace_are_removed_and_counted(
        store: EventStore) -> None:
    await queue_of(store, FN, NEIGHBOUR)
    functions, clock = KnownFunctions(FN, NEIGHBOUR), FakeClock()
    orphans = sweeper(store, functions, clock)
    assert await orphans.sweep() == {}
    functions.known.discard(FN)
    assert await orphans.sweep() == {}               # gone: its grace starts
    clock.now += GRACE
    assert await orphans.sweep() == {FN: 3}
    assert (await depth(store, FN), await depth(store, NEIGHBOUR)) == (0, 3)
    assert FN not in await store.queued()
    assert orphans.discarded == {(FN, REASON_FUNCTION_DELETED): 3}


async def test_a_function_deleted_for_less_than_the_grace_keeps_its_events(store: EventStore) -> None:
    await queue_of(store, FN)
    functions, clock = KnownFunctions(), FakeClock()
    orphans = sweeper(store, functions, clock)
    await orphans.sweep()
    clock.now += GRACE - 1
    assert await orphans.sweep() == {}
    assert await depth(store, FN) == 3


async def test_a_function_recreated_within_the_grace_keeps_its_events(store: EventStore) -> None:
    await queue_of(store, FN)
    functions, clock = KnownFunctions(), FakeClock()
    orphans = sweeper(store, functions, clock)
    await orphans.sweep()                            # deleted
    clock.now += GRACE / 2
    functions.known.add(FN)                          # recreated (`kubectl replace --force`)
    await orphans.sweep()
    clock.now += GRACE
    assert await orphans.sweep() == {}
    assert await depth(store, FN) == 3
    assert orphans.discarded == {}


async def test_a_queue_with_an_event_in_flight_is_removed_once_its_delivery_has_ended(store: EventStore) -> None:
    await queue_of(store, FN)
    functions, clock = KnownFunctions(), FakeClock()
    orphans = sweeper(store, functions, clock)
    [delivery] = await store.claim(FN, 1, wait=5.0)
    await orphans.sweep()
    clock.now += GRACE
    assert await orphans.sweep() == {}               # not while it runs
    assert await depth(store, FN) == 3
    await store.complete(delivery)
    assert await orphans.sweep() == {FN: 2}
    assert await depth(store, FN) == 0


async def test_two_gateways_removing_one_queue_count_each_event_once(backend: Backend, store: EventStore) -> None:
    other_store = backend.store()
    await other_store.start()
    try:
        await queue_of(store, FN, count=4)
        clock = FakeClock()
        first, second = sweeper(store, KnownFunctions(), clock), sweeper(other_store, KnownFunctions(), clock)
        await first.sweep()
        await second.sweep()
        clock.now += GRACE
        removed = [await first.sweep(), await second.sweep()]
    finally:
        await other_store.close()
    assert removed == [{FN: 4}, {}]
    assert sum(first.discarded.values()) + sum(second.discarded.values()) == 4


async def test_a_queue_of_a_namespace_the_gateway_does_not_watch_is_left_alone(store: EventStore) -> None:
    elsewhere = FunctionRef("team-b", "worker")
    await queue_of(store, elsewhere)
    clock = FakeClock()
    orphans = sweeper(store, KnownFunctions(), clock, namespaces=("default",))
    await orphans.sweep()
    clock.now += GRACE
    assert await orphans.sweep() == {}
    assert await depth(store, elsewhere) == 3


# -- through a gateway -----------------------------------------------------------------------------------

def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of the first sample of `name` with these labels in a /metrics page; None if none."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


async def test_a_gateway_removes_a_deleted_functions_queue_counts_it_on_its_metrics_and_its_gauge_goes(
        store: EventStore) -> None:
    backend = FakeBackend(make_function("worker"), start_on_scale=False)
    async with backend, running_gateway(backend, events=store) as gw:
        for i in range(3):
            status, _, _ = await gw.json("POST", "/async-function/worker", data=b"%d" % i)
            assert status == 202
        backend.remove_function("worker")
        # A gateway started after the deletion: it never knew the function, so its grace starts now.
        delivery = AsyncDelivery(gw.gateway, store, settings=FAST, orphans=OrphanSettings(grace=0.5))
        await delivery.start()
        labels = {"function": "worker", "namespace": "default"}
        try:
            async def scraped() -> str:
                _, text, _ = await gw.json("GET", "/metrics")
                return str(text)

            async def removed() -> bool:
                return metric(await scraped(), naming.METRIC_ASYNC_DISCARDED, **labels,
                              reason=REASON_FUNCTION_DELETED) == 3.0

            await eventually(removed, timeout=30, interval=0.1, what="3 events counted as discarded")
            assert metric(await scraped(), naming.METRIC_ASYNC_QUEUE_DEPTH, **labels) in (None, 0.0)
            assert await depth(store, FN) == 0
        finally:
            await delivery.close()
