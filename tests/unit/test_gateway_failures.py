"""What the gateway does when instances fail, stall, turn invocations away, or clients go away:
answer JSON, take a failed instance out of rotation, send again only what no instance ran, leak
no slot."""
from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web

from kfn_gateway.dispatch import MAX_ATTEMPTS
from kfn_gateway.server import Gateway
from kfn_gateway.settings import GatewaySettings
from kfn_runtime import contract
from tests.support.backend import (
    TRANSPORTS,
    ControlledFunctions,
    Die,
    FakeBackend,
    Fn,
    Headers,
    RawAnswer,
    Rejected,
    echo,
    event_path,
    raising,
    ref,
    returning,
)
from tests.support.functions import make_function
from tests.support.gateway import RawInstance, answer_with, dead_instance, running_gateway
from tests.support.waiting import eventually


class Dying:
    """Functions that die on /die (recording which instance), crashing the instance with it
    when `crash`; other paths echo."""

    def __init__(self, *, crash: bool) -> None:
        self.crash = crash
        self.deaths: list[str] = []

    def __call__(self, instance_id: str) -> Fn:
        def handler(event: dict[str, Any], headers: Headers) -> Any:
            if event_path(event) == "/die":
                self.deaths.append(instance_id)
                raise Die(crash=self.crash)
            return echo(instance_id)(event, headers)

        return handler


async def test_an_instance_dying_mid_invocation_is_502_and_reported_and_never_retried() -> None:
    functions = Dying(crash=True)
    backend = FakeBackend(make_function("hello"), fn=functions)
    async with backend, running_gateway(backend) as gw:
        doomed = await backend.add_instance("hello")
        healthy = await backend.add_instance("hello")
        status, body, _ = await gw.json("POST", "/function/hello/die", data=b"once")
        assert status == 502
        assert body["function"] == "hello"
        assert doomed.id in body["error"]
        assert [instance for instance, _ in backend.failures] == [doomed]
        # Not sent again, neither to the same instance nor to another.
        assert functions.deaths == [doomed.id]
        status, _, headers = await gw.json("GET", "/function/hello/ok")
        assert status == 200
        assert headers["X-Instance"] == healthy.id
        assert gw.gateway.stats(ref("hello")).in_flight == 0


async def test_a_connection_broken_mid_invocation_is_502_but_a_reachable_instance_stays_in_rotation() -> None:
    functions = Dying(crash=False)
    backend = FakeBackend(make_function("hello"), fn=functions)
    async with backend, running_gateway(backend) as gw:
        only = await backend.add_instance("hello")
        status, body, _ = await gw.json("POST", "/function/hello/die", data=b"once")
        assert status == 502 and body["function"] == "hello"
        assert functions.deaths == [only.id]
        assert backend.failures == []
        status, _, headers = await gw.json("GET", "/function/hello/ok")
    assert status == 200 and headers["X-Instance"] == only.id


async def test_an_answer_cut_short_is_502_and_never_retried() -> None:
    cut = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n{\"partial"
    async with RawInstance(answer_with(cut, keep=False)) as raw:
        backend = FakeBackend(make_function("hello"))
        async with backend, running_gateway(backend) as gw:
            backend.mark_ready(raw.instance())
            status, body, _ = await gw.json("POST", "/function/hello", data=b"x")
            assert status == 502 and body["function"] == "hello"
            assert len(raw.requests) == 1


async def test_an_instance_refusing_connections_is_skipped_and_the_request_retried() -> None:
    functions = ControlledFunctions()
    backend = FakeBackend(make_function("hello"), fn=functions)
    async with backend, running_gateway(backend) as gw:
        backend.mark_ready(dead_instance())  # first in the list: chosen first
        alive = await backend.add_instance("hello")
        status, seen, _ = await gw.json("POST", "/function/hello/x", data=b"body")
        assert status == 200
        assert seen["instance"] == alive.id
        assert [instance.id for instance, _ in backend.failures] == ["hello-dead"]
        assert functions.arrivals == [(alive.id, "/x")]


async def test_an_in_process_instance_that_is_gone_is_reported_and_the_request_retried() -> None:
    backend = FakeBackend(make_function("hello"), in_process=True)
    async with backend, running_gateway(backend) as gw:
        gone = await backend.add_instance("hello")
        backend.fake(gone).gone = True
        alive = await backend.add_instance("hello")
        status, _, headers = await gw.json("GET", "/function/hello")
    assert status == 200 and headers["X-Instance"] == alive.id
    assert [instance for instance, _ in backend.failures] == [gone]


async def test_a_request_no_instance_could_be_reached_for_is_502_after_max_attempts() -> None:
    backend = FakeBackend(make_function("hello"), start_on_scale=False)
    async with backend, running_gateway(backend) as gw:
        for i in range(MAX_ATTEMPTS):
            backend.mark_ready(dead_instance(f"hello-dead-{i}"))
        status, body, _ = await gw.json("GET", "/function/hello")
    assert status == 502 and body["function"] == "hello"
    assert len(backend.failures) == MAX_ATTEMPTS


async def test_a_request_waits_for_a_new_instance_when_every_instance_refused_it() -> None:
    backend = FakeBackend(make_function("hello"), start_on_scale=False)
    async with backend, running_gateway(backend) as gw:
        backend.mark_ready(dead_instance())
        task = asyncio.create_task(gw.json("GET", "/function/hello"))
        await eventually(lambda: len(backend.failures) == 1 and gw.gateway.stats(ref("hello")).queued == 1)
        await backend.add_instance("hello")
        status, _, _ = await task
    assert status == 200


async def test_an_instance_slower_than_the_function_timeout_is_504_json() -> None:
    functions = ControlledFunctions()
    backend = FakeBackend(make_function("hello", timeout=0.1), fn=functions)
    settings = GatewaySettings(upstream_timeout_margin=0.05)
    async with backend, running_gateway(backend, settings=settings) as gw:
        instance = await backend.add_instance("hello")
        status, body, _ = await gw.json("GET", "/function/hello/hold/forever")
        assert status == 504
        assert body["function"] == "hello"
        # A slow instance is not a failed one; the gateway gave up on the invocation.
        assert backend.failures == []
        assert gw.gateway.stats(ref("hello")).in_flight == 0
        await eventually(lambda: functions.cancelled == [(instance.id, "/hold/forever")])
        status, seen, _ = await gw.json("GET", "/function/hello/quick")
        assert status == 200 and seen["instance"] == instance.id


async def test_a_client_disconnecting_mid_request_keeps_its_slot_until_the_instance_finishes(
        transport: str = "http") -> None:
    functions = ControlledFunctions()
    backend = FakeBackend.of(transport, make_function("hello", concurrency=1), fn=functions)
    async with backend, running_gateway(backend) as gw:
        instance = await backend.add_instance("hello")
        _reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(b"GET /function/hello/hold/slow HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        await eventually(lambda: functions.held(instance.id) == 1)
        assert gw.gateway.stats(ref("hello")).in_flight == 1
        writer.close()
        await writer.wait_closed()
        # The request is no longer the gateway's (not counted as load) ...
        await eventually(lambda: gw.gateway.stats(ref("hello")).in_flight == 0)
        # ... but the instance still runs it (as Lambda does): its only slot stays taken, so the
        # next request waits for it instead of being sent to a busy instance.
        nxt = asyncio.ensure_future(gw.json("GET", "/function/hello/quick"))
        await eventually(lambda: gw.gateway.stats(ref("hello")).queued == 1)
        assert functions.cancelled == []
        functions.release("slow")
        status, _, _ = await nxt
        assert status == 200
        assert functions.finished == [(instance.id, "/hold/slow"), (instance.id, "/quick")]


async def test_a_client_leaving_keeps_an_in_process_slot_until_the_instance_finishes() -> None:
    await test_a_client_disconnecting_mid_request_keeps_its_slot_until_the_instance_finishes("in-process")


async def test_a_request_whose_client_left_is_counted_as_499() -> None:
    functions = ControlledFunctions()
    backend = FakeBackend(make_function("hello"), fn=functions)
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        _reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(b"GET /function/hello/hold/never HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        await eventually(lambda: functions.held() == 1)
        writer.close()
        await writer.wait_closed()
        await eventually(lambda: gw.gateway.stats(ref("hello")).in_flight == 0)
    labels = {"function": "hello", "namespace": "default", "code": "499"}
    assert gw.gateway.registry.get_sample_value("kfn_gateway_invocations_total", labels) == 1


async def test_a_client_disconnecting_while_queued_leaves_the_queue() -> None:
    functions = ControlledFunctions()
    backend = FakeBackend(make_function("hello", concurrency=1), fn=functions)
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        blocker = asyncio.create_task(gw.json("GET", "/function/hello/hold/a"))
        await eventually(lambda: functions.held() == 1)
        _reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(b"GET /function/hello/queued HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        await eventually(lambda: gw.gateway.stats(ref("hello")).queued == 1)
        writer.close()
        await writer.wait_closed()
        await eventually(lambda: gw.gateway.stats(ref("hello")).queued == 0)
        functions.release("a")
        assert (await blocker)[0] == 200
        status, _, _ = await gw.json("GET", "/function/hello/next")
        assert status == 200
        assert gw.gateway.stats(ref("hello")).in_flight == 0
    # The disconnected request never reached an instance.
    assert "/queued" not in [path for _, path in functions.arrivals]


async def test_a_client_disconnecting_mid_upload_is_not_an_instance_failure() -> None:
    functions = ControlledFunctions()
    backend = FakeBackend(make_function("hello"), fn=functions)
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        _reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(b"POST /function/hello/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 4194304\r\n\r\n")
        writer.write(b"u" * (1024 * 1024))
        await writer.drain()
        await eventually(lambda: ref("hello") in gw.gateway.dispatcher._routes)   # the gateway reads the body
        # An upload is not load: no instance is busy with it (the autoscaler must not scale on it).
        assert gw.gateway.stats(ref("hello")).in_flight == 0
        writer.close()
        await writer.wait_closed()
        assert backend.failures == []
        assert (await gw.json("GET", "/function/hello"))[0] == 200
    assert [path for _, path in functions.arrivals] == ["/"]


async def test_without_handler_cancellation_an_abandoned_upload_still_frees_everything() -> None:
    backend = FakeBackend(make_function("hello"))
    async with backend:
        await backend.add_instance("hello")
        gateway = Gateway(backend)
        # An embedder's own runner, without handler_cancellation: the handler runs on and must
        # notice by itself that the body will never come.
        runner = web.AppRunner(gateway.make_app())
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /function/hello HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc")
            await writer.drain()
            await eventually(lambda: ref("hello") in gateway.dispatcher._routes)   # the gateway reads the body
            writer.close()
            await writer.wait_closed()
            # The handler noticed: the abandoned request was answered (counted) and nothing is held.
            await eventually(lambda: gateway.stats(ref("hello")).invocations == 1)
            assert gateway.stats(ref("hello")).in_flight == 0
            assert backend.failures == []
        finally:
            await runner.cleanup()


class RejectingFirst:
    """The first instance turns every invocation away for `reason`; later ones echo."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.rejected = 0

    def __call__(self, instance_id: str) -> Fn:
        if not instance_id.endswith("-1"):
            return echo(instance_id)

        def reject(event: dict[str, Any], headers: Headers) -> Any:
            self.rejected += 1
            raise Rejected(self.reason)

        return reject


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("reason", [contract.REJECTED_DRAINING, contract.REJECTED_LOADING])
async def test_a_request_a_draining_or_loading_instance_turned_away_goes_to_another_instance(
        reason: str, transport: str) -> None:
    functions = RejectingFirst(reason)
    backend = FakeBackend.of(transport, make_function("hello"), fn=functions)
    async with backend, running_gateway(backend) as gw:
        turning_away = await backend.add_instance("hello")
        healthy = await backend.add_instance("hello")
        status, event, headers = await gw.json("POST", "/function/hello", data="payload")
        assert status == 200
        assert headers["X-Instance"] == healthy.id
        assert event["body"] == "payload"
        assert functions.rejected == 1
        assert backend.failures == [], f"{turning_away.id} is {reason}, not failed"
        # Out of rotation from now on: the next requests go straight to the healthy instance.
        for _ in range(3):
            assert (await gw.json("GET", "/function/hello"))[2]["X-Instance"] == healthy.id
        assert functions.rejected == 1


class FullOnce:
    """Every instance first turns an invocation away as full (another gateway replica was using
    its slots), then echoes."""

    def __init__(self) -> None:
        self.rejected: list[str] = []

    def __call__(self, instance_id: str) -> Fn:
        def first_full(event: dict[str, Any], headers: Headers) -> Any:
            if instance_id not in self.rejected:
                self.rejected.append(instance_id)
                raise Rejected(contract.REJECTED_CONCURRENCY)
            return echo(instance_id)(event, headers)

        return first_full


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_request_a_full_instance_turned_away_is_retried_and_the_instance_kept(transport: str) -> None:
    functions = FullOnce()
    backend = FakeBackend.of(transport, make_function("hello"), fn=functions)
    async with backend, running_gateway(backend) as gw:
        only = await backend.add_instance("hello")
        status, _, headers = await gw.json("GET", "/function/hello")
        assert status == 200
        assert headers["X-Instance"] == only.id
        assert functions.rejected == [only.id]
        assert backend.failures == []


async def test_an_instance_that_stays_full_gets_a_429_with_retry_after() -> None:
    backend = FakeBackend(make_function("hello"), fn=raising(Rejected(contract.REJECTED_CONCURRENCY)))
    async with backend, running_gateway(backend) as gw:
        instance = await backend.add_instance("hello")
        status, body, headers = await gw.json("GET", "/function/hello")
    assert status == 429
    assert "Retry-After" in headers
    assert body["function"] == "hello"
    assert backend.fake(instance).invocations == MAX_ATTEMPTS
    assert backend.failures == []


async def test_instances_that_stay_draining_get_a_503_with_retry_after() -> None:
    backend = FakeBackend(make_function("hello"), fn=raising(Rejected(contract.REJECTED_DRAINING)))
    async with backend, running_gateway(backend) as gw:
        for _ in range(MAX_ATTEMPTS):
            await backend.add_instance("hello")
        status, body, headers = await gw.json("GET", "/function/hello")
    assert status == 503
    assert "Retry-After" in headers
    assert body["function"] == "hello" and "draining" in body["error"]
    assert backend.failures == []


async def test_a_functions_own_503_passes_through_without_a_retry() -> None:
    backend = FakeBackend(make_function("hello"), fn=returning({"statusCode": 503, "body": '{"busy": true}'}))
    async with backend, running_gateway(backend) as gw:
        first = await backend.add_instance("hello")
        second = await backend.add_instance("hello")
        status, body, _ = await gw.json("GET", "/function/hello")
    assert (status, body) == (503, {"busy": True})
    assert backend.fake(first).invocations + backend.fake(second).invocations == 1


@pytest.mark.parametrize("status", [500, 503])
async def test_an_instance_answering_another_status_is_502_and_not_retried(status: int) -> None:
    backend = FakeBackend(make_function("hello"), fn=returning(RawAnswer(status, b'{"errorMessage": "odd"}')))
    async with backend, running_gateway(backend) as gw:
        first = await backend.add_instance("hello")
        second = await backend.add_instance("hello")
        answer, body, _ = await gw.json("POST", "/function/hello", data=b"x")
    assert answer == 502 and body["function"] == "hello"
    assert f"HTTP {status}" in body["error"]
    assert backend.fake(first).invocations + backend.fake(second).invocations == 1
    assert backend.failures == []  # it answered: it is reachable

