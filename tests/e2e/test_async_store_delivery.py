"""Asynchronous invocations on both stores, one scenario each: the same semantics on SQLite (local
mode) and on NATS JetStream (a real nats-server on 127.0.0.1)."""
from __future__ import annotations

import asyncio
import dataclasses
import json
import time

import pytest

from kfn.core.asyncpolicy import AsyncConfig, InvocationFailed, NotInvoked, Target
from kfn.core.functions import FunctionRef
from kfn.core.instances import InvocationResult
from kfn.events.store import AcceptOptions, EventStore
from tests.e2e.asyncstores import FAST, FN, Backend, FakeFunction, Receiver, engine, record
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(90)


async def accept_all(store: EventStore, count: int, prefix: str = "ev") -> list[str]:
    ids = [f"{prefix}-{i}" for i in range(count)]
    for i, invocation_id in enumerate(ids):
        await store.accept(FN, b'{"n": %d}' % i, invocation_id)
    return ids


async def failing(payload: bytes, attempt: int) -> InvocationResult:
    return InvocationResult(payload=b'{"errorMessage": "boom", "errorType": "ValueError"}', function_error="Unhandled",
                            error_type="ValueError")


async def test_every_accepted_event_is_delivered(backend: Backend, store: EventStore) -> None:
    ids = await accept_all(store, 50)
    function = FakeFunction()
    delivery = engine(store, function)
    await delivery.start()
    try:
        await eventually(lambda: delivery.counters.delivered >= 50, what="50 deliveries")
    finally:
        await delivery.close()
    assert function.distinct() == set(ids)
    assert (await store.stats([FN]))[FN].depth == 0
    record("healthy function", backend.name, accepted=50, delivered=len(function.distinct()), retried=0,
           dead_lettered=0, lost=len(set(ids) - function.distinct()), duplicates=len(function.calls) - 50)


async def test_an_id_accepted_twice_is_stored_once(store: EventStore) -> None:
    first = await store.accept(FN, b"{}", "same-id")
    second = await store.accept(FN, b"{}", "same-id")
    assert (first.duplicate, second.duplicate) == (False, True)
    assert (await store.stats([FN]))[FN].depth == 1


async def test_a_claimed_event_whose_lease_runs_out_is_handed_out_again(store: EventStore) -> None:
    await store.accept(FN, b"{}", "leased")
    [first] = await store.claim(FN, 10, wait=2.0)
    assert await store.claim(FN, 10, wait=0.2) == []
    [again] = await store.claim(FN, 10, wait=5.0)
    assert (again.event.id, first.deliveries, again.deliveries) == ("leased", 1, 2)


async def test_an_extended_lease_is_not_handed_out_again(store: EventStore) -> None:
    await store.accept(FN, b"{}", "long")
    [delivery] = await store.claim(FN, 1, wait=2.0)
    for _ in range(4):
        await asyncio.sleep(0.4)
        await store.extend(delivery)
        assert await store.claim(FN, 1, wait=0.05) == []
    await store.complete(delivery)


async def test_a_function_that_always_fails_is_retried_then_dead_lettered(backend: Backend,
                                                                          store: EventStore) -> None:
    ids = await accept_all(store, 5, "bad")
    function = FakeFunction(failing)
    failures = Receiver()
    await failures.start()
    config = AsyncConfig(FN, max_retry_attempts=2, timeout=1.0, on_failure=Target(url=failures.url),
                         function_arn="arn:aws:lambda:us-east-1:000000000000:function:worker:$LATEST")
    delivery = engine(store, function, config)
    await delivery.start()
    try:
        await eventually(lambda: delivery.counters.dead_lettered >= 5, what="5 dead letters")
        await eventually(lambda: len(failures.received) >= 5, what="5 failure records")
    finally:
        await delivery.close()
        await failures.stop()
    assert sorted(function.calls) == sorted(ids * 3)
    letters = await store.dead_letters(FN)
    assert sorted(letter.id for letter in letters) == ids
    assert {(letter.condition, letter.attempts, letter.error) for letter in letters} == {
        ("RetriesExhausted", 3, "ValueError")}
    [sample] = [r for r in failures.records() if r["requestContext"]["requestId"] == "bad-0"]
    assert sample["requestContext"]["condition"] == "RetriesExhausted"
    assert sample["requestContext"]["approximateInvokeCount"] == 3
    assert sample["requestPayload"] == {"n": 0}
    assert sample["responseContext"]["functionError"] == "Unhandled"
    assert sample["responsePayload"] == {"errorMessage": "boom", "errorType": "ValueError"}
    record("function always fails", backend.name, accepted=5, delivered=0, retried=delivery.counters.retried,
           dead_lettered=len(letters), lost=len(set(ids) - {letter.id for letter in letters}))


async def test_no_retries_when_max_retry_attempts_is_zero(store: EventStore) -> None:
    await store.accept(FN, b"{}", "once")
    function = FakeFunction(failing)
    delivery = engine(store, function, AsyncConfig(FN, max_retry_attempts=0, timeout=1.0))
    await delivery.start()
    try:
        await eventually(lambda: delivery.counters.dead_lettered == 1, what="a dead letter")
    finally:
        await delivery.close()
    assert function.calls == ["once"]


async def test_a_function_slower_than_its_timeout_fails_its_attempts(backend: Backend, store: EventStore) -> None:
    ids = await accept_all(store, 3, "slow")

    async def slow(payload: bytes, attempt: int) -> InvocationResult:
        await asyncio.sleep(30)
        return InvocationResult(payload=b"late")

    function = FakeFunction(slow)
    delivery = engine(store, function, AsyncConfig(FN, max_retry_attempts=1, timeout=0.3))
    await delivery.start()
    try:
        await eventually(lambda: delivery.counters.dead_lettered >= 3, what="3 dead letters")
    finally:
        await delivery.close()
    letters = await store.dead_letters(FN)
    assert {(letter.condition, letter.error, letter.attempts) for letter in letters} == {
        ("RetriesExhausted", "Sandbox.Timedout", 2)}
    assert sorted(function.calls) == sorted(ids * 2)
    record("slower than its timeout", backend.name, accepted=3, delivered=0, retried=delivery.counters.retried,
           dead_lettered=len(letters), lost=len(set(ids) - {letter.id for letter in letters}))


async def test_a_function_that_dies_mid_invocation_is_a_failed_attempt(store: EventStore) -> None:
    await store.accept(FN, b"{}", "dies")

    async def dies(payload: bytes, attempt: int) -> InvocationResult:
        if attempt == 1:
            raise InvocationFailed("the environment exited", error_type="Runtime.ExitError")
        return InvocationResult(payload=b"{}")

    function = FakeFunction(dies)
    delivery = engine(store, function)
    await delivery.start()
    try:
        await eventually(lambda: delivery.counters.delivered == 1, what="the second attempt")
    finally:
        await delivery.close()
    assert (function.calls, delivery.counters.retried) == (["dies", "dies"], 1)


async def test_a_throttled_event_is_retried_without_spending_an_attempt(store: EventStore) -> None:
    await store.accept(FN, b"{}", "throttled")

    async def busy_twice(payload: bytes, attempt: int) -> InvocationResult:
        if attempt <= 2:
            raise NotInvoked("no free instance")
        return InvocationResult(payload=b"{}")

    function = FakeFunction(busy_twice)
    delivery = engine(store, function, AsyncConfig(FN, max_retry_attempts=0, timeout=1.0))
    await delivery.start()
    try:
        await eventually(lambda: delivery.counters.delivered == 1, what="a delivery after two throttles")
    finally:
        await delivery.close()
    assert (len(function.calls), delivery.counters.throttled, delivery.counters.dead_lettered) == (3, 2, 0)


async def test_an_event_older_than_its_maximum_age_is_given_up_unrun(store: EventStore) -> None:
    await store.accept(FN, b"{}", "stale")
    function = FakeFunction()
    # The engine's clock is two minutes ahead: the event is older than its 60 s.
    delivery = engine(store, function, AsyncConfig(FN, maximum_event_age=60, timeout=1.0),
                      clock=lambda: time.time() + 120)
    await delivery.start()
    try:
        await eventually(lambda: delivery.counters.dead_lettered == 1, what="a dead letter")
    finally:
        await delivery.close()
    [letter] = await store.dead_letters(FN)
    assert (letter.condition, function.calls) == ("EventAgeExceeded", [])


async def test_a_destination_that_is_down_gets_the_record_when_it_is_back(backend: Backend,
                                                                          store: EventStore) -> None:
    ids = await accept_all(store, 5, "dest")
    function = FakeFunction()
    destination = Receiver()   # not started: nothing listens
    delivery = engine(store, function, AsyncConfig(FN, timeout=1.0, on_success=Target(url=destination.url)))
    await delivery.start()
    try:
        await eventually(lambda: delivery.counters.destination_errors >= 10, what="destination errors")
        await destination.start()
        await eventually(lambda: delivery.counters.delivered >= 5, what="5 deliveries")
    finally:
        await delivery.close()
        await destination.stop()
    told = {r["requestContext"]["requestId"] for r in destination.records()}
    assert told == set(ids)
    assert {r["requestContext"]["condition"] for r in destination.records()} == {"Success"}
    # The function ran once per event: only the destination was retried.
    assert sorted(function.calls) == sorted(ids)
    assert (await store.stats([FN]))[FN].depth == 0
    record("destination URL down", backend.name, accepted=5, delivered=len(told),
           retried=delivery.counters.destination_errors, dead_lettered=delivery.counters.dead_lettered,
           lost=len(set(ids) - told))


async def test_a_destination_that_stays_down_leaves_a_dead_letter(store: EventStore) -> None:
    await store.accept(FN, b"{}", "never-told")
    destination = Receiver()
    settings = dataclasses.replace(FAST, destination_retry_for=0.5)
    delivery = engine(store, FakeFunction(), AsyncConfig(FN, timeout=1.0, on_success=Target(url=destination.url)),
                      settings)
    await delivery.start()
    try:
        await eventually(lambda: delivery.counters.dead_lettered == 1, what="a dead letter")
    finally:
        await delivery.close()
    [letter] = await store.dead_letters(FN)
    assert letter.condition == "DestinationFailed"
    assert destination.url in (letter.error or "")


async def test_a_destination_function_gets_the_record_as_its_event(store: EventStore) -> None:
    audit = FunctionRef("ops", "audit")
    await store.accept(FN, b'{"order": 1}', "told")
    delivery = engine(store, FakeFunction(), AsyncConfig(FN, timeout=1.0, on_success=Target(function=audit)))
    await delivery.start()
    try:
        await eventually(lambda: delivery.counters.delivered == 1, what="a delivery")
    finally:
        await delivery.close()
    [handed] = await store.claim(audit, 10, wait=5.0)
    record_ = json.loads(handed.event.payload)
    assert record_["requestContext"]["requestId"] == "told"
    assert record_["requestPayload"] == {"order": 1}


async def test_the_callback_url_receives_the_result(store: EventStore) -> None:
    callback = Receiver()
    await callback.start()
    await store.accept(FN, b"{}", "called-back", AcceptOptions(callback_url=callback.url))
    delivery = engine(store, FakeFunction())
    await delivery.start()
    try:
        await eventually(lambda: len(callback.received) == 1, what="the callback")
    finally:
        await delivery.close()
        await callback.stop()
    [(headers, body)] = callback.received
    assert (headers["X-Call-Id"], headers["X-Function-Status"], body) == ("called-back", "200", b'{"ok": true}')


async def test_replay_sends_dead_letters_again(store: EventStore) -> None:
    ids = await accept_all(store, 3, "again")
    failing_function = FakeFunction(failing)
    delivery = engine(store, failing_function, AsyncConfig(FN, max_retry_attempts=0, timeout=1.0))
    await delivery.start()
    try:
        await eventually(lambda: delivery.counters.dead_lettered == 3, what="3 dead letters")
    finally:
        await delivery.close()
    assert await store.replay(FN, ["again-1"]) == ["again-1"]
    assert sorted(letter.id for letter in await store.dead_letters(FN)) == ["again-0", "again-2"]
    assert sorted(await store.replay(FN)) == ["again-0", "again-2"]
    assert await store.dead_letters(FN) == []
    healthy = FakeFunction()
    delivery = engine(store, healthy)
    await delivery.start()
    try:
        await eventually(lambda: delivery.counters.delivered == 3, what="3 replayed deliveries")
    finally:
        await delivery.close()
    assert healthy.distinct() == set(ids)


async def test_queue_stats_count_events_and_their_age(store: EventStore) -> None:
    await accept_all(store, 4)
    [claimed] = await store.claim(FN, 1, wait=2.0)
    stats = (await store.stats([FN, FunctionRef("default", "other")]))
    assert (stats[FN].depth, stats[FN].in_flight) == (4, 1)
    assert stats[FN].oldest_accepted_at is not None
    assert stats[FunctionRef("default", "other")].depth == 0
    await store.complete(claimed)
    assert (await store.stats([FN]))[FN].depth == 3


async def test_deliveries_never_exceed_the_functions_async_concurrency(store: EventStore) -> None:
    await accept_all(store, 30)

    async def busy(payload: bytes, attempt: int) -> InvocationResult:
        await asyncio.sleep(0.05)
        return InvocationResult(payload=b"{}")

    function = FakeFunction(busy)
    delivery = engine(store, function, AsyncConfig(FN, timeout=1.0, concurrency=3))
    await delivery.start()
    try:
        await eventually(lambda: delivery.counters.delivered == 30, what="30 deliveries")
    finally:
        await delivery.close()
    assert function.most_running == 3


async def test_two_engines_share_the_work(backend: Backend) -> None:
    stores = [backend.store(), backend.store()]
    for each in stores:
        await each.start()
    try:
        ids = await accept_all(stores[0], 60, "shared")

        async def busy(payload: bytes, attempt: int) -> InvocationResult:
            await asyncio.sleep(0.02)
            return InvocationResult(payload=b"{}")

        function = FakeFunction(busy)
        engines = [engine(each, function, AsyncConfig(FN, timeout=1.0, concurrency=4)) for each in stores]
        for started in engines:
            await started.start()
        try:
            await eventually(lambda: sum(e.counters.delivered for e in engines) >= 60, what="60 deliveries")
        finally:
            for started in engines:
                await started.close()
        assert function.distinct() == set(ids)
        assert all(e.counters.delivered > 0 for e in engines)
        record("two consumers", backend.name, accepted=60, delivered=len(function.distinct()), retried=0,
               dead_lettered=0, lost=len(set(ids) - function.distinct()), duplicates=len(function.calls) - 60)
    finally:
        for each in stores:
            await each.close()
