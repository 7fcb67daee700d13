"""Asynchronous invocations at the gateway: events stored before they are acknowledged, the
/async-function/ form of an HTTP request, the delivery engine's invoker, and /system/async."""
from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from kfn.core.functions import FunctionRef
from kfn.events.store import NO_OPTIONS, Accepted, AcceptOptions, DeadLetter, QueueStats, StoreUnavailable
from kfn_gateway.server import Gateway, GatewayError, GatewaySettings

from .fakes import FakeBackend, make_function

HELLO = FunctionRef("default", "hello")


@dataclass
class Stored:
    function: FunctionRef
    payload: bytes
    invocation_id: str
    options: AcceptOptions


@dataclass
class FakeStore:
    """An EventStore's accepting side and its dead letters, in memory. `gate`, when set, holds
    every accept until it is set (a slow fsync); `failing` makes accepts raise StoreUnavailable."""

    events: dict[str, Stored] = field(default_factory=dict)
    letters: dict[FunctionRef, list[DeadLetter]] = field(default_factory=dict)
    failing: bool = False
    gate: asyncio.Event | None = None
    accepts: int = 0

    async def accept(self, function: FunctionRef, payload: bytes, invocation_id: str,
                     options: AcceptOptions = NO_OPTIONS) -> Accepted:
        self.accepts += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.failing:
            raise StoreUnavailable("JetStream did not confirm it")
        if invocation_id in self.events:
            return Accepted(invocation_id, duplicate=True)
        self.events[invocation_id] = Stored(function, payload, invocation_id, options)
        return Accepted(invocation_id)

    async def stats(self, functions: Sequence[FunctionRef]) -> dict[FunctionRef, QueueStats]:
        if self.failing:
            raise StoreUnavailable("the store is down")
        out = {}
        for ref in functions:
            mine = [e for e in self.events.values() if e.function == ref]
            out[ref] = QueueStats(len(mine), 0, 100.0 if mine else None)
        return out

    async def dead_letters(self, function: FunctionRef, *, limit: int = 100) -> list[DeadLetter]:
        if self.failing:
            raise StoreUnavailable("the store is down")
        return self.letters.get(function, [])[:limit]

    async def replay(self, function: FunctionRef, ids: Sequence[str] | None = None) -> list[str]:
        if self.failing:
            raise StoreUnavailable("the store is down")
        letters = self.letters.get(function, [])
        chosen = [letter for letter in letters if ids is None or letter.id in ids]
        self.letters[function] = [letter for letter in letters if letter not in chosen]
        for letter in chosen:
            self.events[letter.id] = Stored(function, letter.payload, letter.id, NO_OPTIONS)
        return [letter.id for letter in chosen]


def gateway(store: FakeStore | None, *, settings: GatewaySettings | None = None) -> Gateway:
    return Gateway(FakeBackend(make_function("hello")), settings=settings or GatewaySettings(), events=store)  # type: ignore[arg-type]


# -- accept_event ---------------------------------------------------------------------------------------

async def test_accept_event_returns_only_once_the_store_holds_the_event() -> None:
    store = FakeStore(gate=asyncio.Event())
    gw = gateway(store)
    accepting = asyncio.create_task(gw.accept_event(make_function("hello"), b'{"a": 1}', invocation_id="id-1",
                                                    callback_url="http://127.0.0.1:9/cb"))
    await asyncio.sleep(0.01)
    assert not accepting.done()
    store.gate.set()  # type: ignore[union-attr]
    assert await accepting == "id-1"
    stored = store.events["id-1"]
    assert (stored.function, stored.payload, stored.options.callback_url) == (HELLO, b'{"a": 1}', "http://127.0.0.1:9/cb")


async def test_accept_event_with_an_id_already_stored_answers_the_same_and_stores_nothing_new() -> None:
    store = FakeStore()
    gw = gateway(store)
    function = make_function("hello")
    first = await gw.accept_event(function, b"1", invocation_id="same")
    again = await gw.accept_event(function, b"2", invocation_id="same")
    assert first == again == "same"
    assert list(store.events) == ["same"] and store.events["same"].payload == b"1"


async def test_accept_event_is_503_when_the_store_does_not_confirm() -> None:
    gw = gateway(FakeStore(failing=True))
    with pytest.raises(GatewayError) as caught:
        await gw.accept_event(make_function("hello"), b"{}", invocation_id="x")
    assert caught.value.status == 503 and "could not store" in str(caught.value)
    assert caught.value.retry_after is not None


async def test_accept_event_is_503_without_an_event_store() -> None:
    with pytest.raises(GatewayError) as caught:
        await gateway(None).accept_event(make_function("hello"), b"{}", invocation_id="x")
    assert caught.value.status == 503 and "KFN_NATS_URL" in str(caught.value)


async def test_accept_event_is_413_over_the_async_payload_limit_and_stores_nothing() -> None:
    store = FakeStore()
    gw = gateway(store, settings=GatewaySettings(max_async_payload_bytes=100))
    await gw.accept_event(make_function("hello"), b"x" * 100, invocation_id="fits")
    with pytest.raises(GatewayError) as caught:
        await gw.accept_event(make_function("hello"), b"x" * 101, invocation_id="too-big")
    assert caught.value.status == 413
    assert list(store.events) == ["fits"] and store.accepts == 1


def test_the_async_payload_limit_is_lambdas_1_mb_by_default() -> None:
    assert GatewaySettings().max_async_payload_bytes == 1024 * 1024
