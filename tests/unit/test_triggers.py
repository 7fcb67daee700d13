"""The trigger seam: the registry of kinds, the composite of sources, and the NATS trigger's events and ids."""
from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Sequence

from kfn.core.functions import Function, FunctionRef
from kfn.core.triggerspec import TRIGGER_KINDS
from kfn.triggers import registry
from kfn.triggers.base import EventSink, Triggers, triggers_of
from kfn.triggers.nats import NatsBinding, message_event, message_event_id, nats_bindings, stream_event_id
from kfn.triggers.ticks import MemoryTicks
from tests.support.functions import make_function

HELLO = FunctionRef("default", "hello")


# --- the registry and the composite


def test_every_trigger_kind_has_a_source_and_every_source_a_kind() -> None:
    assert set(registry.SOURCES) == set(TRIGGER_KINDS)


def test_each_registered_source_is_of_its_kind() -> None:
    settings = registry.TriggerSettings(nats_url="nats://127.0.0.1:4222", ticks=MemoryTicks(), region="us-east-1")
    for kind, factory in registry.SOURCES.items():
        assert factory(settings).kind == kind


def test_triggers_of_a_kind_keep_their_place_in_the_spec() -> None:
    function = make_function(triggers=[{"nats": {"subject": "a"}}, {"schedule": "rate(1 hour)"},
                                       {"schedule": "rate(2 hours)"}])
    assert triggers_of(function, "schedule") == [(1, "rate(1 hour)"), (2, "rate(2 hours)")]


def test_a_kind_that_cannot_run_is_reported_for_the_functions_using_it() -> None:
    triggers = registry.build(["schedule", "nats"], registry.TriggerSettings(ticks=MemoryTicks(), region="us-east-1"))
    assert set(triggers.sources) == {"schedule"}
    triggers.update([make_function(triggers=[{"nats": {"subject": "orders.created"}}]),
                     make_function("tick", triggers=[{"schedule": "rate(1 hour)"}])])
    assert triggers.problems() == {
        HELLO: ["nats triggers do not run: no NATS server configured (KFN_NATS_URL)"]}


class Recording:
    kind = "recording"

    def __init__(self) -> None:
        self.updates: list[list[str]] = []
        self.sink: EventSink | None = None
        self.closed = False

    async def start(self, sink: EventSink) -> None:
        self.sink = sink

    def update(self, functions: Sequence[Function]) -> None:
        self.updates.append([f.name for f in functions])

    async def close(self) -> None:
        self.closed = True

    def problems(self) -> dict[FunctionRef, str]:
        return {HELLO: "broken"} if self.updates else {}


async def test_the_composite_starts_updates_and_closes_every_source() -> None:
    source = Recording()
    triggers = Triggers([source])

    async def sink(function: FunctionRef, payload: bytes, invocation_id: str) -> None: ...

    await triggers.start(sink)
    triggers.update([make_function(), make_function("other")])
    assert source.sink is sink
    assert source.updates == [["hello", "other"]]
    assert triggers.problems() == {HELLO: ["broken"]}
    await triggers.close()
    assert source.closed


# --- NATS: bindings, events, ids


def test_each_nats_trigger_is_one_binding() -> None:
    bindings = nats_bindings([
        make_function(triggers=[{"nats": {"subject": "orders.*", "stream": "ORDERS"}}, {"schedule": "rate(1 hour)"},
                                {"nats": {"subject": "audit"}}, {"nats": {"subject": "audit"}}]),
        make_function("other", namespace="team-a", triggers=[{"nats": {"subject": "orders.*", "stream": "ORDERS"}}]),
    ])
    assert bindings == {
        NatsBinding(HELLO, "orders.*", "ORDERS"): 0,
        NatsBinding(HELLO, "audit", None): 2,
        NatsBinding(FunctionRef("team-a", "other"), "orders.*", "ORDERS"): 0,
    }


def test_consumer_and_queue_group_names_are_per_function_and_subject() -> None:
    a = NatsBinding(HELLO, "orders.*", "ORDERS")
    b = NatsBinding(HELLO, "orders.created", "ORDERS")
    c = NatsBinding(FunctionRef("team-a", "hello"), "orders.*", "ORDERS")
    assert len({a.consumer, b.consumer, c.consumer}) == 3
    assert a.consumer.startswith("kfn_default_hello_") and "." not in a.consumer and "*" not in a.consumer
    assert a.queue_group.startswith("kfn.default.hello.")
    assert NatsBinding(HELLO, "orders.*", "ORDERS").consumer == a.consumer   # the same in every replica


def test_a_json_message_is_the_event_as_published() -> None:
    body = b'{"orderId": 7, "items": [1, 2]}'
    assert message_event(body, "orders.created", {"Nats-Msg-Id": "x"}, stream="ORDERS", sequence=3) == body
    assert message_event(b"42", "n", None) == b"42"


def test_a_message_that_is_not_json_comes_in_an_envelope() -> None:
    body = b"\x00\xffnot json"
    event = json.loads(message_event(body, "orders.created", {"Kind": "bin"}, stream="ORDERS", sequence=3))
    assert event == {"eventSource": "kfn:nats", "subject": "orders.created",
                     "data": base64.b64encode(body).decode(), "headers": {"Kind": "bin"},
                     "stream": "ORDERS", "sequence": 3}


def test_an_empty_core_message_is_an_envelope_without_headers_or_stream() -> None:
    assert json.loads(message_event(b"", "ping", None)) == {"eventSource": "kfn:nats", "subject": "ping", "data": ""}


def test_a_stream_message_has_the_same_id_each_time_it_is_delivered() -> None:
    first = stream_event_id(HELLO, "ORDERS", 41)
    assert first == stream_event_id(HELLO, "ORDERS", 41)
    assert uuid.UUID(first).version == 5
    assert first != stream_event_id(HELLO, "ORDERS", 42)
    assert first != stream_event_id(FunctionRef("default", "other"), "ORDERS", 41)


def test_a_core_message_id_comes_from_its_msg_id_header_or_is_random() -> None:
    headers = {"Nats-Msg-Id": "order-7"}
    assert message_event_id(HELLO, "orders", headers) == message_event_id(HELLO, "orders", headers)
    assert message_event_id(HELLO, "orders", None) != message_event_id(HELLO, "orders", None)
