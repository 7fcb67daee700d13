"""Asynchronous invocations at the gateway: events stored before they are acknowledged, the
/async-function/ form of an HTTP request, the delivery engine's invoker, and /system/async."""
from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kfn.core.asyncpolicy import InvocationFailed, NotInvoked
from kfn.core.functions import FunctionRef, parse_function
from kfn.events.delivery import DeliverySettings
from kfn.events.sqlite import SqliteStore
from kfn.events.store import NO_OPTIONS, Accepted, AcceptOptions, DeadLetter, QueueStats, StoreUnavailable
from kfn_gateway.asyncinvoke import AsyncDelivery, async_configs, gateway_invoker
from kfn_gateway.dispatch import MAX_ATTEMPTS
from kfn_gateway.outcomes import Accepted as Stored_
from kfn_gateway.outcomes import NotRun, Reason
from kfn_gateway.server import Gateway
from kfn_gateway.settings import GatewaySettings
from kfn_runtime import contract
from tests.support.backend import (
    TRANSPORTS,
    ControlledFunctions,
    Die,
    FakeBackend,
    FunctionError,
    Headers,
    Rejected,
    raising,
    returning,
    serving,
)
from tests.support.functions import make_function
from tests.support.gateway import dead_instance, running_gateway
from tests.support.keys import ADMIN, OTHER, TEAM, MutableKeys, bearer
from tests.support.waiting import eventually

HELLO = FunctionRef("default", "hello")
KEYS = MutableKeys()


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
    gw = gateway(store).dispatcher
    accepting = asyncio.create_task(gw.accept_event(make_function("hello"), b'{"a": 1}', invocation_id="id-1",
                                                    callback_url="http://127.0.0.1:9/cb"))
    await asyncio.sleep(0.01)
    assert not accepting.done()
    store.gate.set()  # type: ignore[union-attr]
    assert await accepting == Stored_("id-1")
    stored = store.events["id-1"]
    assert (stored.function, stored.payload, stored.options.callback_url) == (HELLO, b'{"a": 1}', "http://127.0.0.1:9/cb")


async def test_accept_event_with_an_id_already_stored_answers_the_same_and_stores_nothing_new() -> None:
    store = FakeStore()
    gw = gateway(store).dispatcher
    function = make_function("hello")
    first = await gw.accept_event(function, b"1", invocation_id="same")
    again = await gw.accept_event(function, b"2", invocation_id="same")
    assert first == again == Stored_("same")
    assert list(store.events) == ["same"] and store.events["same"].payload == b"1"


async def test_accept_event_is_not_run_for_now_when_the_store_does_not_confirm() -> None:
    outcome = await gateway(FakeStore(failing=True)).dispatcher.accept_event(make_function("hello"), b"{}",
                                                                             invocation_id="x")
    assert isinstance(outcome, NotRun) and outcome.reason is Reason.STORE_FAILED
    assert "could not store" in outcome.message and outcome.retry_after is not None


async def test_accept_event_is_not_run_without_an_event_store() -> None:
    outcome = await gateway(None).dispatcher.accept_event(make_function("hello"), b"{}", invocation_id="x")
    assert isinstance(outcome, NotRun) and outcome.reason is Reason.NO_STORE and "KFN_NATS_URL" in outcome.message


async def test_accept_event_over_the_async_payload_limit_is_too_large_and_stores_nothing() -> None:
    store = FakeStore()
    gw = gateway(store, settings=GatewaySettings(max_async_payload_bytes=100)).dispatcher
    await gw.accept_event(make_function("hello"), b"x" * 100, invocation_id="fits")
    outcome = await gw.accept_event(make_function("hello"), b"x" * 101, invocation_id="too-big")
    assert isinstance(outcome, NotRun) and outcome.reason is Reason.TOO_LARGE
    assert list(store.events) == ["fits"] and store.accepts == 1


def test_the_async_payload_limit_is_lambdas_1_mb_by_default() -> None:
    assert GatewaySettings().max_async_payload_bytes == 1024 * 1024


# -- /async-function/ ------------------------------------------------------------------------------------

async def test_an_async_request_is_answered_202_with_its_id_and_stores_the_event_function_would_send() -> None:
    store = FakeStore()
    backend = FakeBackend(make_function("hello"))
    async with backend, running_gateway(backend, events=store) as gw:
        await backend.add_instance("hello")
        status, body, headers = await gw.json("POST", "/async-function/hello/items/1?x=1", data=b"payload",
                                              headers={"X-Custom": "kept"})
        _, sync_event, _ = await gw.json("POST", "/function/hello/items/1?x=1", data=b"payload",
                                         headers={"X-Custom": "kept"})
    assert status == 202
    request_id = body["requestId"]
    assert headers["X-Call-Id"] == headers["X-Kfn-Request-Id"] == request_id
    stored = store.events[request_id]
    assert stored.function == HELLO
    event = json.loads(stored.payload)
    for key in ("version", "rawQueryString", "body", "isBase64Encoded", "queryStringParameters"):
        assert event[key] == sync_event[key], key
    assert event["rawPath"] == sync_event["rawPath"] == "/items/1"
    assert event["headers"]["x-custom"] == "kept"
    assert event["requestContext"]["http"]["method"] == "POST"


async def test_an_async_request_is_not_answered_before_the_store_confirms() -> None:
    store = FakeStore(gate=asyncio.Event())
    backend = FakeBackend(make_function("hello"))
    async with backend, running_gateway(backend, events=store) as gw:
        answer = asyncio.create_task(gw.json("POST", "/async-function/hello", data=b"{}"))
        await eventually(lambda: store.accepts == 1)
        await asyncio.sleep(0.05)
        assert not answer.done() and store.events == {}
        store.gate.set()  # type: ignore[union-attr]
        status, body, _ = await answer
    assert status == 202 and body["requestId"] in store.events


async def test_an_async_request_neither_runs_nor_starts_the_function() -> None:
    store = FakeStore()
    backend = FakeBackend(make_function("hello"))
    async with backend, running_gateway(backend, events=store) as gw:
        status, _, _ = await gw.json("POST", "/async-function/hello", data=b"{}")
    assert status == 202 and backend.scale_calls == [] and backend.ready(HELLO) == []


async def test_x_callback_url_is_stored_with_the_event() -> None:
    store = FakeStore()
    backend = FakeBackend(make_function("hello"))
    async with backend, running_gateway(backend, events=store) as gw:
        _, body, _ = await gw.json("POST", "/async-function/hello", data=b"{}",
                                   headers={"X-Callback-Url": "https://example.test/done?x=1"})
    assert store.events[body["requestId"]].options.callback_url == "https://example.test/done?x=1"


@pytest.mark.parametrize("url", ["ftp://example.test/x", "not a url", "/relative", "http://", "http://" + "a" * 3000,
                                 "http://a..b/x", "https://" + "a" * 64 + ".test/x"])
async def test_a_callback_url_that_is_not_http_is_a_400_and_nothing_is_stored(url: str) -> None:
    store = FakeStore()
    backend = FakeBackend(make_function("hello"))
    async with backend, running_gateway(backend, events=store) as gw:
        status, body, _ = await gw.json("POST", "/async-function/hello", data=b"{}", headers={"X-Callback-Url": url})
    assert status == 400 and "X-Callback-Url" in body["error"] and body["function"] == "hello"
    assert store.events == {}


async def test_a_caller_naming_its_invocation_with_x_call_id_stores_one_event_however_often_it_retries() -> None:
    store = FakeStore()
    backend = FakeBackend(make_function("hello"))
    async with backend, running_gateway(backend, events=store) as gw:
        answers = [await gw.json("POST", "/async-function/hello", data=b"{}", headers={"X-Call-Id": "order-42"})
                   for _ in range(3)]
    assert [(status, body) for status, body, _ in answers] == [(202, {"requestId": "order-42"})] * 3
    assert list(store.events) == ["order-42"]


@pytest.mark.parametrize("call_id", ["-leading-dash", "has space", "x" * 129, "semi;colon"])
async def test_an_unusable_x_call_id_is_a_400(call_id: str) -> None:
    store = FakeStore()
    backend = FakeBackend(make_function("hello"))
    async with backend, running_gateway(backend, events=store) as gw:
        status, body, _ = await gw.json("POST", "/async-function/hello", data=b"{}", headers={"X-Call-Id": call_id})
    assert status == 400 and "X-Call-Id" in body["error"]
    assert store.events == {}


async def test_an_async_request_the_store_cannot_take_is_a_503_json_with_retry_after() -> None:
    backend = FakeBackend(make_function("hello"))
    async with backend, running_gateway(backend, events=FakeStore(failing=True)) as gw:
        status, body, headers = await gw.json("POST", "/async-function/hello", data=b"{}")
    assert status == 503 and "could not store" in body["error"] and body["function"] == "hello"
    assert "Retry-After" in headers


async def test_an_async_request_to_a_gateway_without_a_store_is_a_503_saying_why() -> None:
    backend = FakeBackend(make_function("hello"))
    async with backend, running_gateway(backend) as gw:
        status, body, _ = await gw.json("POST", "/async-function/hello", data=b"{}")
    assert status == 503 and "no event store" in body["error"]


async def test_an_async_body_over_the_limit_is_a_413_json() -> None:
    store = FakeStore()
    backend = FakeBackend(make_function("hello"))
    async with backend, running_gateway(backend, events=store,
                                        settings=GatewaySettings(max_async_payload_bytes=1000)) as gw:
        status, body, _ = await gw.json("POST", "/async-function/hello", data=b"x" * 2000)
        small_status, _, _ = await gw.json("POST", "/async-function/hello", data=b"x" * 10)
    assert status == 413 and body["function"] == "hello"
    # The body fits; its event (the body, headers and context) may still be over: that is a 413 too.
    assert small_status == 202
    assert len(store.events) == 1


async def test_an_async_request_to_an_unknown_function_is_a_404_json() -> None:
    store = FakeStore()
    backend = FakeBackend(make_function("hello"))
    async with backend, running_gateway(backend, events=store) as gw:
        status, body, _ = await gw.json("POST", "/async-function/nope", data=b"{}")
    assert status == 404 and body == {"error": "no function named 'nope'", "function": "nope"}


@pytest.mark.parametrize(("headers", "status"), [({}, 401), (bearer(OTHER), 403), (bearer(TEAM), 202),
                                                  (bearer(ADMIN), 202)])
async def test_a_key_protected_function_takes_async_requests_only_with_a_key_of_its_namespace(
        headers: dict[str, str], status: int) -> None:
    store = FakeStore()
    backend = FakeBackend(make_function("secret", namespace="team", http={"auth": {"type": "key"}}))
    async with backend, running_gateway(backend, events=store, keys=KEYS) as gw:
        got, body, _ = await gw.json("POST", "/async-function/secret.team", data=b"{}",
                                     headers={**headers, "X-Other": "kept"})
    assert got == status
    if status != 202:
        assert store.events == {}
        return
    event = json.loads(store.events[body["requestId"]].payload)
    assert "authorization" not in event["headers"] and event["headers"]["x-other"] == "kept"


# -- the delivery engine's invoker ----------------------------------------------------------------------

async def test_the_invoker_returns_the_functions_result_and_counts_it_in_the_functions_metrics() -> None:
    backend = FakeBackend(make_function("hello"), fn=returning({"ok": True}))
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        result = await gateway_invoker(gw.gateway.dispatcher)(HELLO, b'{"a": 1}', "inv-1")
        stats = gw.gateway.stats(HELLO)
    assert (json.loads(result.payload), result.function_error) == ({"ok": True}, None)
    assert stats.invocations == 1 and stats.in_flight == 0


async def test_the_invoker_passes_the_invocation_id_the_function_sees() -> None:
    seen: list[str] = []

    def fn(_event: dict[str, object], headers: Headers) -> str:
        seen.append(headers[contract.HEADER_REQUEST_ID])
        return "ok"

    backend = FakeBackend(make_function("hello"), fn=serving(fn))
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        await gateway_invoker(gw.gateway.dispatcher)(HELLO, b"{}", "the-stored-id")
    assert seen == ["the-stored-id"]


async def test_a_function_error_comes_back_as_the_result_not_an_exception() -> None:
    backend = FakeBackend(make_function("hello"), fn=raising(FunctionError("ValueError", "bad input")))
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        result = await gateway_invoker(gw.gateway.dispatcher)(HELLO, b"{}", "inv-1")
    assert (result.function_error, result.error_type) == ("Unhandled", "ValueError")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_the_invoker_scales_a_function_from_zero_as_a_request_does(transport: str) -> None:
    backend = FakeBackend.of(transport, make_function("hello"), fn=returning("ok"))
    async with backend, running_gateway(backend) as gw:
        result = await gateway_invoker(gw.gateway.dispatcher)(HELLO, b"{}", "inv-1")
    assert result.function_error is None
    assert [(c.replicas, c.reason) for c in backend.scale_calls] == [(1, "cold start")]


async def test_no_instance_within_the_queue_timeout_is_not_invoked_not_an_attempt() -> None:
    backend = FakeBackend(make_function("hello"), start_on_scale=False)
    async with backend, running_gateway(backend, settings=GatewaySettings(queue_timeout=0.05)) as gw:
        with pytest.raises(NotInvoked) as caught:
            await gateway_invoker(gw.gateway.dispatcher)(HELLO, b"{}", "inv-1")
    assert caught.value.retry_after is not None


async def test_an_instance_that_stays_full_is_not_invoked_with_retry_after() -> None:
    backend = FakeBackend(make_function("hello"), fn=raising(Rejected(contract.REJECTED_CONCURRENCY)))
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        with pytest.raises(NotInvoked) as caught:
            await gateway_invoker(gw.gateway.dispatcher)(HELLO, b"{}", "inv-1")
    assert caught.value.retry_after == GatewaySettings().retry_after


async def test_instances_that_could_not_be_reached_are_not_invoked() -> None:
    backend = FakeBackend(make_function("hello"), start_on_scale=False)
    async with backend, running_gateway(backend) as gw:
        for i in range(MAX_ATTEMPTS):
            backend.mark_ready(dead_instance(f"hello-dead-{i}"))
        with pytest.raises(NotInvoked):
            await gateway_invoker(gw.gateway.dispatcher)(HELLO, b"{}", "inv-1")


async def test_an_event_does_not_join_a_queue_that_is_half_full_of_waiting_requests() -> None:
    backend = FakeBackend(make_function("hello"), start_on_scale=False)
    settings = GatewaySettings(queue_limit=4, queue_timeout=30)
    async with backend, running_gateway(backend, settings=settings) as gw:
        waiting = [asyncio.create_task(gw.json("GET", "/function/hello")) for _ in range(2)]
        await eventually(lambda: gw.gateway.stats(HELLO).queued == 2)
        with pytest.raises(NotInvoked):
            await gateway_invoker(gw.gateway.dispatcher)(HELLO, b"{}", "inv-1")
        assert gw.gateway.stats(HELLO).queued == 2
        await backend.add_instance("hello")
        assert [(await task)[0] for task in waiting] == [200, 200]


async def test_an_event_joins_a_queue_that_is_less_than_half_full() -> None:
    backend = FakeBackend(make_function("hello"), start_on_scale=False)
    settings = GatewaySettings(queue_limit=4, queue_timeout=30)
    async with backend, running_gateway(backend, settings=settings) as gw:
        request = asyncio.create_task(gw.json("GET", "/function/hello"))
        await eventually(lambda: gw.gateway.stats(HELLO).queued == 1)
        delivery = asyncio.ensure_future(gateway_invoker(gw.gateway.dispatcher)(HELLO, b"{}", "inv-1"))
        await eventually(lambda: gw.gateway.stats(HELLO).queued == 2)
        await backend.add_instance("hello")
        assert (await request)[0] == 200
        assert (await delivery).function_error is None


async def test_a_function_that_is_gone_is_not_invoked() -> None:
    backend = FakeBackend(make_function("hello"))
    async with backend, running_gateway(backend) as gw:
        with pytest.raises(NotInvoked):
            await gateway_invoker(gw.gateway.dispatcher)(FunctionRef("default", "gone"), b"{}", "inv-1")


async def test_an_instance_dying_mid_invocation_is_an_invocation_failure_an_attempt() -> None:
    backend = FakeBackend(make_function("hello"), fn=raising(Die(crash=True)))
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        with pytest.raises(InvocationFailed) as caught:
            await gateway_invoker(gw.gateway.dispatcher)(HELLO, b"{}", "inv-1")
    assert caught.value.error_type == "Runtime.ExitError"


async def test_an_instance_slower_than_the_timeout_is_an_invocation_failure_timed_out() -> None:
    functions = ControlledFunctions()
    backend = FakeBackend(make_function("hello", timeout=0.1), fn=functions)
    async with backend, running_gateway(backend, settings=GatewaySettings(upstream_timeout_margin=0.05)) as gw:
        await backend.add_instance("hello")
        event = json.dumps({"rawPath": "/hold/forever"}).encode()
        with pytest.raises(InvocationFailed) as caught:
            await gateway_invoker(gw.gateway.dispatcher)(HELLO, event, "inv-1")
    assert caught.value.error_type == "Sandbox.Timedout"


def test_async_configs_has_every_functions_async_settings() -> None:
    quick = parse_function({"apiVersion": "kfn.dev/v1alpha1", "kind": "Function", "metadata": {"name": "quick"},
                            "spec": {"handler": "main.handler", "timeout": "3s", "concurrency": 2,
                                     "scale": {"maxReplicas": 4},
                                     "source": {"files": {"main.py": "def handler(e, c): pass\n"}},
                                     "async": {"maxRetryAttempts": 0, "maximumEventAgeSeconds": 60,
                                               "onFailure": {"function": "failures"}}}})
    configs = async_configs(FakeBackend(make_function("hello"), quick), region="us-east-1")
    assert set(configs) == {HELLO, quick.ref}
    config = configs[quick.ref]
    assert (config.max_retry_attempts, config.maximum_event_age, config.timeout, config.concurrency) == (0, 60, 3, 8)
    assert config.on_failure is not None and config.on_failure.function == FunctionRef("default", "failures")
    assert configs[HELLO].max_retry_attempts == 2


# -- /system/async ------------------------------------------------------------------------------------------

def letter(letter_id: str, *, payload: bytes = b'{"n": 1}') -> DeadLetter:
    return DeadLetter(id=letter_id, function=HELLO, payload=payload, accepted_at=1_700_000_000.0,
                      failed_at=1_700_000_060.5, condition="RetriesExhausted", attempts=3, error="ValueError",
                      response=b'{"errorType": "ValueError"}')


async def test_the_async_view_has_the_queue_and_the_dead_letters() -> None:
    store = FakeStore(letters={HELLO: [letter("a"), letter("b", payload=b"not json")]})
    store.events["queued"] = Stored(HELLO, b"{}", "queued", NO_OPTIONS)
    backend = FakeBackend(make_function("hello"))
    async with backend, running_gateway(backend, events=store) as gw:
        status, body, _ = await gw.json("GET", "/system/async/hello")
    assert status == 200
    assert body["name"] == "hello" and body["namespace"] == "default"
    assert body["queue"]["depth"] == 1 and body["queue"]["inFlight"] == 0
    assert [d["id"] for d in body["deadLetters"]] == ["a", "b"]
    first = body["deadLetters"][0]
    assert first == {"id": "a", "condition": "RetriesExhausted", "attempts": 3, "error": "ValueError",
                     "acceptedAt": "2023-11-14T22:13:20.000Z", "failedAt": "2023-11-14T22:14:20.500Z",
                     "payload": {"n": 1}, "response": {"errorType": "ValueError"}}
    assert body["deadLetters"][1]["payload"] == "not json"


async def test_the_async_view_takes_a_limit_and_refuses_a_bad_one() -> None:
    store = FakeStore(letters={HELLO: [letter(str(i)) for i in range(5)]})
    backend = FakeBackend(make_function("hello"))
    async with backend, running_gateway(backend, events=store) as gw:
        _, body, _ = await gw.json("GET", "/system/async/hello?limit=2")
        bad = [(await gw.json("GET", f"/system/async/hello?limit={value}"))[:2] for value in ("0", "x", "100000")]
    assert len(body["deadLetters"]) == 2
    assert all(status == 400 and "limit" in answer["error"] for status, answer in bad)


async def test_replay_stores_every_dead_letter_again_by_default() -> None:
    store = FakeStore(letters={HELLO: [letter("a"), letter("b")]})
    backend = FakeBackend(make_function("hello"))
    async with backend, running_gateway(backend, events=store) as gw:
        status, body, _ = await gw.json("POST", "/system/async/hello/replay")
    assert (status, body) == (200, {"replayed": ["a", "b"]})
    assert set(store.events) == {"a", "b"} and store.letters[HELLO] == []


async def test_replay_with_ids_stores_only_those() -> None:
    store = FakeStore(letters={HELLO: [letter("a"), letter("b")]})
    backend = FakeBackend(make_function("hello"))
    async with backend, running_gateway(backend, events=store) as gw:
        status, body, _ = await gw.json("POST", "/system/async/hello/replay", json={"ids": ["b", "unknown"]})
    assert (status, body) == (200, {"replayed": ["b"]})
    assert [left.id for left in store.letters[HELLO]] == ["a"]


@pytest.mark.parametrize("data", [b"{not json", b'{"ids": "a"}', b'{"ids": [1]}', b"[]"])
async def test_replay_with_a_body_that_is_not_a_list_of_ids_is_a_400(data: bytes) -> None:
    store = FakeStore(letters={HELLO: [letter("a")]})
    backend = FakeBackend(make_function("hello"))
    async with backend, running_gateway(backend, events=store) as gw:
        status, body, _ = await gw.json("POST", "/system/async/hello/replay", data=data)
    assert status == 400 and "ids" in body["error"]
    assert store.events == {}


@pytest.mark.parametrize(("method", "path"), [("GET", "/system/async/nope"), ("POST", "/system/async/nope/replay")])
async def test_the_async_routes_of_an_unknown_function_are_404(method: str, path: str) -> None:
    backend = FakeBackend(make_function("hello"))
    async with backend, running_gateway(backend, events=FakeStore()) as gw:
        status, body, _ = await gw.json(method, path)
    assert status == 404 and body["function"] == "nope"


@pytest.mark.parametrize(("method", "path"), [("GET", "/system/async/hello"), ("POST", "/system/async/hello/replay")])
@pytest.mark.parametrize("store", [None, FakeStore(failing=True)], ids=["no store", "store down"])
async def test_the_async_routes_without_a_working_store_are_503(method: str, path: str,
                                                                store: FakeStore | None) -> None:
    backend = FakeBackend(make_function("hello"))
    async with backend, running_gateway(backend, events=store) as gw:
        status, body, _ = await gw.json(method, path)
    assert status == 503 and body["function"] == "hello" and body["error"]


async def test_get_on_replay_is_405() -> None:
    backend = FakeBackend(make_function("hello"))
    async with backend, running_gateway(backend, events=FakeStore()) as gw:
        status, _, _ = await gw.json("GET", "/system/async/hello/replay")
    assert status == 405


@pytest.mark.parametrize(("headers", "status"), [({}, 401), (bearer(TEAM), 403), (bearer(ADMIN), 200)])
@pytest.mark.parametrize(("method", "path"), [("GET", "/system/async/hello"), ("POST", "/system/async/hello/replay")])
async def test_the_async_routes_need_an_admin_key_when_the_system_api_does(method: str, path: str,
                                                                           headers: dict[str, str],
                                                                           status: int) -> None:
    store = FakeStore(letters={HELLO: [letter("a")]})
    backend = FakeBackend(make_function("hello"))
    async with backend, running_gateway(backend, events=store, keys=KEYS,
                                        settings=GatewaySettings(system_auth=True)) as gw:
        got, _, _ = await gw.json(method, path, headers=headers)
    assert got == status
    assert (store.letters[HELLO] == []) == (status == 200 and method == "POST")


# -- delivery through the gateway -----------------------------------------------------------------------

async def test_an_event_accepted_at_async_function_is_delivered_through_the_gateway(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "events.sqlite3", poll=0.05)
    await store.start()
    functions = ControlledFunctions()
    backend = FakeBackend(make_function("hello"), fn=functions, in_process=True)
    try:
        async with backend, running_gateway(backend, events=store) as gw:
            delivery = AsyncDelivery(gw.gateway, store, settings=DeliverySettings(poll=0.05, stats_interval=0.05))
            await delivery.start()
            try:
                status, body, _ = await gw.json("POST", "/async-function/hello/orders", data=b"{}")
                assert status == 202
                await eventually(lambda: delivery.engine.counters.delivered == 1)
                assert [path for _, path in functions.finished] == ["/orders"]
                await eventually(lambda: delivery.engine.queue_stats().get(HELLO) == QueueStats(0, 0, None))
                async with gw.session.get(gw.url("/metrics")) as response:
                    metrics = await response.text()
            finally:
                await delivery.close()
    finally:
        await store.close()
    assert 'kfn_async_queue_depth{function="hello",namespace="default"} 0.0' in metrics
    assert 'kfn_async_events_total{outcome="delivered"} 1.0' in metrics


def test_a_key_protected_function_of_another_namespace_is_no_destination() -> None:
    # A destination record carries what the sending function returned: a way to run another
    # tenant's key-protected function without its key, unless refused (issue 15).
    secret = make_function("secret", namespace="b", http={"auth": {"type": "key"}})
    public = make_function("public", namespace="b")
    own = make_function("own", namespace="a", http={"auth": {"type": "key"}})
    sneaky, fine, same = (make_function(name, namespace="a", **{"async": {"onSuccess": {"function": destination}}})
                          for name, destination in [("sneaky", "secret.b"), ("fine", "public.b"), ("same", "own")])
    configs = async_configs(FakeBackend(secret, public, own, sneaky, fine, same), region="us-east-1")
    assert sneaky.ref not in configs   # its events wait, as for any destination that cannot be used
    assert fine.ref in configs and same.ref in configs


def test_async_configs_reuse_the_config_of_a_function_whose_definition_did_not_change() -> None:
    hello, other = make_function("hello"), make_function("other")
    memo: dict = {}  # type: ignore[type-arg]
    first = async_configs(FakeBackend(hello, other), region="us-east-1", memo=memo)
    changed = make_function("other", timeout=9)
    second = async_configs(FakeBackend(hello, changed), region="us-east-1", memo=memo)
    assert second[hello.ref] is first[hello.ref]          # the same definition: not built again
    assert second[changed.ref] is not first[other.ref]    # a new definition: built anew
    third = async_configs(FakeBackend(hello), region="us-east-1", memo=memo)
    assert set(third) == {hello.ref} and set(memo) == {hello.ref}   # a function gone is forgotten
