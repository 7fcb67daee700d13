"""NATS subject triggers against a real nats-server, into both event stores (SQLite, and JetStream on the
same nats_server): each message stored once, acknowledged only after it was stored, and stored once even
when the trigger's process is SIGKILLed between storing and acknowledging."""
from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
import pytest
from nats.aio.client import Client
from nats.js.api import StreamConfig

from kfn.core.functions import Function, FunctionRef
from kfn.events.jetstream import JetStreamStore
from kfn.events.sqlite import SqliteStore
from kfn.events.store import Event, EventStore
from kfn.triggers.nats import HEADER_SERVICE_ERROR_CODE, NatsBinding, NatsSubjectSource, stream_event_id
from tests.e2e.asyncstores import record
from tests.e2e.workers import WorkerProcess
from tests.support.functions import make_function
from tests.support.nats import NatsServer
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(120)
ORDERS = FunctionRef("default", "orders")


@pytest.fixture(params=["sqlite", "jetstream"])
def store_spec(request: pytest.FixtureRequest, tmp_path: Path, nats_server: NatsServer) -> dict[str, Any]:
    """How a store is opened (here and in a worker process): the events stay queued, none is delivered."""
    if request.param == "sqlite":
        return {"kind": "sqlite", "path": str(tmp_path / "events.sqlite3"), "lease": 5.0}
    return {"kind": "jetstream", "url": nats_server.url, "lease": 5.0}


def open_store(spec: dict[str, Any]) -> EventStore:
    if spec["kind"] == "jetstream":
        return JetStreamStore(spec["url"], lease=spec["lease"], connect_attempts=5)
    return SqliteStore(spec["path"], lease=spec["lease"])


@pytest.fixture
async def store(store_spec: dict[str, Any]) -> AsyncIterator[EventStore]:
    store = open_store(store_spec)
    await store.start()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def client(nats_server: NatsServer) -> AsyncIterator[Client]:
    nc = await nats.connect(nats_server.url)
    try:
        yield nc
    finally:
        await nc.close()


async def stored_events(store: EventStore, function: FunctionRef = ORDERS) -> list[Event]:
    """Every event of `function` in the store, claimed and handed back (nothing else consumes)."""
    deliveries = await store.claim(function, 10_000, wait=0.2)
    for delivery in deliveries:
        await store.release(delivery)
    return [d.event for d in deliveries]


async def running_source(nats_server: NatsServer, store: EventStore, *functions: Function,
                         **kwargs: Any) -> NatsSubjectSource:
    source = NatsSubjectSource(nats_server.url, fetch_wait=0.2, **kwargs)
    await source.start(store.accept)
    source.update(list(functions))
    wanted = sum(len(f.spec.triggers) for f in functions)

    async def consuming() -> bool:
        return len(source.consuming()) == wanted

    await eventually(consuming, what="the triggers to subscribe")
    return source


def orders(**trigger: Any) -> Function:
    return make_function("orders", triggers=[{"nats": trigger}])


async def test_stream_messages_are_stored_once_then_acknowledged(nats_server, store, client) -> None:
    js = client.jetstream()
    await js.add_stream(StreamConfig(name="ORDERS", subjects=["orders.>"]))
    source = await running_source(nats_server, store, orders(subject="orders.>", stream="ORDERS"))
    try:
        for i in range(20):
            await js.publish(f"orders.{i % 3}", json.dumps({"order": i}).encode())
        await js.publish("orders.raw", b"\x00binary", headers={"Kind": "raw"})

        async def all_stored() -> bool:
            return (await store.stats([ORDERS]))[ORDERS].depth == 21

        await eventually(all_stored, what="21 events")
        binding = NatsBinding(ORDERS, "orders.>", "ORDERS")

        async def all_acked() -> bool:
            info = await js.consumer_info("ORDERS", binding.consumer)
            return info.num_ack_pending == 0 and info.num_pending == 0

        await eventually(all_acked, what="every message acknowledged")
        events = await stored_events(store)
        payloads = [json.loads(e.payload) for e in events]
        assert sorted(p["order"] for p in payloads if "order" in p) == list(range(20))
        raw = next(p for p in payloads if "eventSource" in p)
        assert (raw["subject"], raw["data"], raw["headers"], raw["stream"]) == ("orders.raw", "AGJpbmFyeQ==",
                                                                                 {"Kind": "raw"}, "ORDERS")
        assert {e.id for e in events} == {stream_event_id(ORDERS, "ORDERS", seq) for seq in range(1, 22)}
    finally:
        await source.close()


async def test_a_new_stream_trigger_starts_with_new_messages(nats_server, store, client) -> None:
    js = client.jetstream()
    await js.add_stream(StreamConfig(name="ORDERS", subjects=["orders.>"]))
    await js.publish("orders.old", b'{"old": true}')
    source = await running_source(nats_server, store, orders(subject="orders.>", stream="ORDERS"))
    try:
        await js.publish("orders.new", b'{"new": true}')

        async def stored() -> bool:
            return (await store.stats([ORDERS]))[ORDERS].depth >= 1

        await eventually(stored, what="the new message")
        assert [json.loads(e.payload) for e in await stored_events(store)] == [{"new": True}]
    finally:
        await source.close()


async def test_a_request_is_answered_once_its_event_is_stored(nats_server, store, client) -> None:
    source = await running_source(nats_server, store, orders(subject="orders.created"))
    try:
        reply = await client.request("orders.created", b'{"order": 1}', timeout=10)
        invocation_id = json.loads(reply.data)["invocationId"]
        (event,) = await stored_events(store)
        assert (event.id, json.loads(event.payload)) == (invocation_id, {"order": 1})
    finally:
        await source.close()


async def test_a_request_retried_with_its_msg_id_is_stored_once(nats_server, store, client) -> None:
    source = await running_source(nats_server, store, orders(subject="orders.created"))
    try:
        answers = [await client.request("orders.created", b'{"order": 1}', timeout=10,
                                        headers={"Nats-Msg-Id": "order-1"}) for _ in range(2)]
        assert len({json.loads(a.data)["invocationId"] for a in answers}) == 1
        assert len(await stored_events(store)) == 1
    finally:
        await source.close()


async def test_a_request_the_store_could_not_take_is_answered_with_an_error(nats_server, store, client) -> None:
    source = NatsSubjectSource(nats_server.url, fetch_wait=0.2)

    async def broken(function: FunctionRef, payload: bytes, invocation_id: str) -> None:
        raise ConnectionError("the store is down")

    await source.start(broken)
    source.update([orders(subject="orders.created")])
    try:
        async def consuming() -> bool:
            return bool(source.consuming())

        await eventually(consuming, what="the subscription")
        reply = await client.request("orders.created", b"{}", timeout=10)
        assert reply.headers is not None and reply.headers[HEADER_SERVICE_ERROR_CODE] == "503"
    finally:
        await source.close()


async def test_queue_subscribers_share_the_messages(nats_server, store, client) -> None:
    function = orders(subject="orders.created")
    sources = [await running_source(nats_server, store, function) for _ in range(2)]
    try:
        for i in range(30):
            await client.request("orders.created", json.dumps({"order": i}).encode(), timeout=10)
        assert len(await stored_events(store)) == 30
        assert sum(s.counters.stored for s in sources) == 30
    finally:
        for source in sources:
            await source.close()


async def test_a_trigger_on_a_missing_stream_is_reported_and_starts_once_it_exists(nats_server, store, client) -> None:
    source = NatsSubjectSource(nats_server.url, fetch_wait=0.2, retry=0.2)
    await source.start(store.accept)
    source.update([orders(subject="orders.>", stream="ORDERS")])
    try:
        async def reported() -> bool:
            return ORDERS in source.problems()

        await eventually(reported, what="the missing stream to be reported")
        await client.jetstream().add_stream(StreamConfig(name="ORDERS", subjects=["orders.>"]))

        async def consuming() -> bool:
            return bool(source.consuming())

        await eventually(consuming, what="the trigger to consume")
        assert source.problems() == {}
    finally:
        await source.close()


async def test_a_removed_stream_trigger_deletes_its_consumer(nats_server, store, client) -> None:
    js = client.jetstream()
    await js.add_stream(StreamConfig(name="ORDERS", subjects=["orders.>"]))
    binding = NatsBinding(ORDERS, "orders.>", "ORDERS")
    source = await running_source(nats_server, store, orders(subject="orders.>", stream="ORDERS"))
    try:
        assert (await js.consumer_info("ORDERS", binding.consumer)).name == binding.consumer
        source.update([make_function("orders")])

        async def deleted() -> bool:
            try:
                await js.consumer_info("ORDERS", binding.consumer)
            except nats.js.errors.NotFoundError:
                return True
            return False

        await eventually(deleted, what="the consumer to be deleted")
    finally:
        await source.close()


# --- SIGKILL between storing and acknowledging


class TriggerProcess(WorkerProcess):
    """tests/e2e/trigger_worker.py in its own process, stopped (or killed) by its PID."""

    module = "tests.e2e.trigger_worker"

    def __init__(self, log: Path, **args: Any) -> None:
        super().__init__(log, {"log": str(log), **args})


def lines(log: Path, kind: str) -> list[str]:
    if not log.exists():
        return []
    return [line.split(" ", 1)[1] if " " in line else "" for line in log.read_text().splitlines()
            if line.split(" ", 1)[0] == kind]


async def wait_lines(log: Path, kind: str, count: int, *, what: str) -> None:
    async def enough() -> bool:
        return len(lines(log, kind)) >= count

    await eventually(enough, timeout=60, what=what)


async def test_a_message_stored_but_not_acked_when_the_trigger_is_killed_is_stored_once(
        nats_server, store_spec, tmp_path) -> None:
    messages = 10
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="ORDERS", subjects=["orders.>"]))
    common = {"nats": nats_server.url, "store": store_spec, "subject": "orders.>", "stream": "ORDERS", "ack_wait": 2}
    first = TriggerProcess(tmp_path / "first.log", hold_acks=True, **common).start()
    second = TriggerProcess(tmp_path / "second.log", **common)
    try:
        await wait_lines(first.log, "ready", 1, what="the first trigger process")
        for i in range(messages):
            await js.publish("orders.created", json.dumps({"order": i}).encode())
        # Every event stored, none acknowledged: SIGKILL now lands between the two.
        await wait_lines(first.log, "stored", messages, what="the first process to store every message")
        first.kill()
        second.start()
        # JetStream offers each unacknowledged message again after ack_wait; the second process
        # stores each one again (the same id) and acknowledges it.
        await wait_lines(second.log, "stored", messages, what="the second process to take them again")
        binding = NatsBinding(ORDERS, "orders.>", "ORDERS")

        async def all_acked() -> bool:
            info = await js.consumer_info("ORDERS", binding.consumer)
            return info.num_ack_pending == 0 and info.num_pending == 0

        await eventually(all_acked, what="every message acknowledged")
    finally:
        first.stop()
        second.stop()
        await nc.close()
    store = open_store(store_spec)
    await store.start()
    try:
        events = await stored_events(store)
    finally:
        await store.close()
    offered = len(lines(first.log, "stored")) + len(lines(second.log, "stored"))
    assert sorted(json.loads(e.payload)["order"] for e in events) == list(range(messages))
    assert {e.id for e in events} == set(lines(first.log, "stored")) == set(lines(second.log, "stored"))
    record("nats trigger SIGKILLed between store and ack", store_spec["kind"], published=messages,
           offered_to_store=offered, stored=len(events), lost=messages - len(events))
