"""Invocation ids on both stores (SQLite, JetStream on a real nats-server): an id is one function's
(namespace, name, id), and it stays that function's for the de-duplication window, after its
event was delivered or dead-lettered too (issue 15, items 2 and 3)."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

import pytest

from kfn.core.asyncpolicy import AsyncConfig, Target
from kfn.core.functions import FunctionRef
from kfn.core.instances import InvocationResult
from kfn.events.delivery import DeliveryEngine
from kfn.events.store import Accepted, AcceptOptions, EventStore, StoreUnavailable
from tests.e2e.asyncstores import FAST, FN, Backend, FakeFunction, engine
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(90)

OTHER = FunctionRef("default", "other")          # another function of FN's namespace
TWIN = FunctionRef("team-b", FN.name)             # FN's name in another namespace


async def failing(payload: bytes, attempt: int) -> InvocationResult:
    return InvocationResult(payload=b'{"errorMessage": "boom", "errorType": "ValueError"}', function_error="Unhandled",
                            error_type="ValueError")


class PerFunction:
    """An `invoke` recording which function each invocation id ran on."""

    def __init__(self) -> None:
        self.calls: list[tuple[FunctionRef, str]] = []

    async def __call__(self, ref: FunctionRef, payload: bytes, invocation_id: str) -> InvocationResult:
        self.calls.append((ref, invocation_id))
        return InvocationResult(payload=b'{"ok": true}')


async def accept_when_ready(store: EventStore, invocation_id: str) -> Accepted:
    """Accept, retrying while the store is not ready again (a restarted nats-server recovering its streams)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return await store.accept(FN, b"{}", invocation_id)
        except StoreUnavailable:
            assert time.monotonic() < deadline, f"could not accept {invocation_id}"
            await asyncio.sleep(0.2)


def engine_for(store: EventStore, invoke: PerFunction, configs: Mapping[FunctionRef, AsyncConfig]) -> DeliveryEngine:
    return DeliveryEngine(store, invoke, lambda: configs, settings=FAST)


@pytest.mark.parametrize("second", [OTHER, TWIN], ids=["another-function", "another-namespace"])
async def test_the_same_id_for_another_function_is_stored_and_delivered_as_its_own_event(
        store: EventStore, second: FunctionRef) -> None:
    first = await store.accept(FN, b'{"to": "first"}', "order-42")
    again = await store.accept(second, b'{"to": "second"}', "order-42")
    assert (first.duplicate, again.duplicate) == (False, False)
    stats = await store.stats([FN, second])
    assert (stats[FN].depth, stats[second].depth) == (1, 1)
    invoke = PerFunction()
    delivery = engine_for(store, invoke, {ref: AsyncConfig(ref, timeout=1.0) for ref in (FN, second)})
    await delivery.start()
    try:
        await eventually(lambda: delivery.counters.delivered == 2, what="both events delivered")
    finally:
        await delivery.close()
    assert sorted(invoke.calls) == sorted([(FN, "order-42"), (second, "order-42")])


async def test_an_id_retried_after_its_event_was_delivered_is_a_duplicate_and_does_not_run_again(
        store: EventStore) -> None:
    assert not (await store.accept(FN, b"{}", "pay-7")).duplicate
    function = FakeFunction()
    delivery = engine(store, function)
    await delivery.start()
    try:
        await eventually(lambda: delivery.counters.delivered == 1, what="the delivery")
        retried = await store.accept(FN, b"{}", "pay-7")
        # Something accepted after it is delivered, so the engine had its chance at the retry.
        await store.accept(FN, b"{}", "pay-8")
        await eventually(lambda: delivery.counters.delivered == 2, what="the next event")
    finally:
        await delivery.close()
    assert retried.duplicate
    assert function.calls == ["pay-7", "pay-8"]
    assert (await store.stats([FN]))[FN].depth == 0


async def test_an_id_delivered_before_the_storage_restarted_is_still_a_duplicate_after(backend: Backend) -> None:
    store = backend.store()
    await store.start()
    try:
        await store.accept(FN, b"{}", "before-restart")
        [claimed] = await store.claim(FN, 1, wait=2.0)
        await store.complete(claimed)
        if backend.nats is not None:
            # A SIGKILL: JetStream's own duplicate window is in memory and forgets delivered ids.
            backend.nats.kill()
            backend.nats.start()
            connection = store._connection  # type: ignore[attr-defined]
            await eventually(lambda: connection.client is not None and connection.client.is_connected,
                             what="the reconnect")
        else:
            await store.close()
            store = backend.store()
            await store.start()
        assert (await accept_when_ready(store, "before-restart")).duplicate
        assert (await store.stats([FN]))[FN].depth == 0
    finally:
        await store.close()


async def test_an_id_retried_after_its_event_was_dead_lettered_is_a_duplicate(store: EventStore) -> None:
    await store.accept(FN, b"{}", "doomed")
    delivery = engine(store, FakeFunction(failing), AsyncConfig(FN, max_retry_attempts=0, timeout=1.0))
    await delivery.start()
    try:
        await eventually(lambda: delivery.counters.dead_lettered == 1, what="the dead letter")
    finally:
        await delivery.close()
    assert (await store.accept(FN, b"{}", "doomed")).duplicate
    assert (await store.stats([FN]))[FN].depth == 0
    assert [letter.id for letter in await store.dead_letters(FN)] == ["doomed"]


async def test_a_replayed_id_is_a_duplicate_while_queued_again(store: EventStore) -> None:
    await store.accept(FN, b"{}", "again")
    delivery = engine(store, FakeFunction(failing), AsyncConfig(FN, max_retry_attempts=0, timeout=1.0))
    await delivery.start()
    try:
        await eventually(lambda: delivery.counters.dead_lettered == 1, what="the dead letter")
    finally:
        await delivery.close()
    assert await store.replay(FN) == ["again"]
    assert (await store.accept(FN, b"{}", "again")).duplicate
    assert (await store.stats([FN]))[FN].depth == 1


async def test_an_id_is_taken_again_once_its_window_is_over(backend: Backend) -> None:
    store = backend.store(dedup_window=1.0)
    await store.start()
    try:
        assert not (await store.accept(FN, b"{}", "short")).duplicate
        assert (await store.accept(FN, b"{}", "short")).duplicate
        [claimed] = await store.claim(FN, 1, wait=2.0)
        await store.complete(claimed)
        deadline = time.monotonic() + 20
        while (await store.accept(FN, b"{}", "short")).duplicate:
            assert time.monotonic() < deadline, "the id was never taken again"
            await asyncio.sleep(0.1)
        assert (await store.stats([FN]))[FN].depth == 1
    finally:
        await store.close()


async def test_two_functions_with_the_same_id_each_tell_their_destination_function(store: EventStore) -> None:
    audit = FunctionRef("default", "audit")
    configs = {ref: AsyncConfig(ref, timeout=1.0, on_success=Target(function=audit)) for ref in (FN, OTHER)}
    configs[audit] = AsyncConfig(audit, timeout=1.0)
    await store.accept(FN, b"{}", "shared-id")
    await store.accept(OTHER, b"{}", "shared-id")
    invoke = PerFunction()
    delivery = engine_for(store, invoke, configs)
    await delivery.start()
    try:
        await eventually(lambda: delivery.counters.delivered == 4, what="two events and two records")
    finally:
        await delivery.close()
    assert sum(ref == audit for ref, _ in invoke.calls) == 2


async def test_an_id_a_caller_chose_is_kept_apart_from_the_same_id_derived_by_kfn(store: EventStore) -> None:
    chosen = AcceptOptions(caller_chosen=True)
    derived = "5f0c2a8e-0d5b-5c3e-9c1a-4d6f7e8a9b0c"   # a schedule tick's, say: anyone can compute it
    assert not (await store.accept(FN, b'{"from": "caller"}', derived, chosen)).duplicate
    assert not (await store.accept(FN, b'{"from": "schedule"}', derived)).duplicate
    assert (await store.accept(FN, b"{}", derived, chosen)).duplicate
    assert (await store.accept(FN, b"{}", derived)).duplicate
    assert (await store.stats([FN]))[FN].depth == 2


async def test_two_events_of_one_function_with_the_same_id_are_each_retried(store: EventStore) -> None:
    attempts: dict[bytes, int] = {}

    async def fails_first(payload: bytes, attempt: int) -> InvocationResult:
        attempts[payload] = attempts.get(payload, 0) + 1   # per event: the two share their id
        if attempts[payload] == 1:
            return await failing(payload, attempt)
        return InvocationResult(payload=b"{}")

    await store.accept(FN, b'{"from": "caller"}', "same", AcceptOptions(caller_chosen=True))
    await store.accept(FN, b'{"from": "schedule"}', "same")
    function = FakeFunction(fails_first)
    delivery = engine(store, function, AsyncConfig(FN, max_retry_attempts=2, timeout=1.0, concurrency=1))
    await delivery.start()
    try:
        await eventually(lambda: delivery.counters.delivered == 2, what="both events delivered after a retry")
    finally:
        await delivery.close()
    assert sorted(attempts.values()) == [2, 2]
    assert (await store.stats([FN]))[FN].depth == 0


async def test_a_replayed_dead_letter_keeps_its_caller_chosen_id_apart_from_kfns_own(store: EventStore) -> None:
    # A caller sends ahead the id of a function's next schedule tick (anyone can compute it) with a
    # payload the function fails on; an operator replays the dead letter. The tick must still run.
    derived = "5f0c2a8e-0d5b-5c3e-9c1a-4d6f7e8a9b0c"
    await store.accept(FN, b'{"from": "caller"}', derived, AcceptOptions(caller_chosen=True))
    delivery = engine(store, FakeFunction(failing), AsyncConfig(FN, max_retry_attempts=0, timeout=1.0))
    await delivery.start()
    try:
        await eventually(lambda: delivery.counters.dead_lettered == 1, what="the dead letter")
    finally:
        await delivery.close()
    assert await store.replay(FN) == [derived]
    assert not (await store.accept(FN, b'{"from": "schedule"}', derived)).duplicate
    assert (await store.accept(FN, b"{}", derived, AcceptOptions(caller_chosen=True))).duplicate
    assert (await store.stats([FN]))[FN].depth == 2
