"""What the gateway does when instances fail, stall, or clients go away: answer JSON, take the
failed instance out of rotation, retry only what never reached an instance, leak no slot."""
from __future__ import annotations

import asyncio
import io
import socket

import aiohttp
import pytest
from aiohttp import web

from kfn.core.instances import Instance
from kfn_gateway.server import GatewaySettings

from .fakes import (
    ControlledApps,
    FakeBackend,
    app_of,
    echo,
    echo_app,
    eventually,
    make_function,
    ref,
    running_gateway,
    serving,
)


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DyingApps:
    """/die reads the request, then drops the connection without answering (a crash mid-request)."""

    def __init__(self) -> None:
        self.deaths: list[str] = []   # instance ids, one per /die request received

    def __call__(self, instance_id: str) -> web.Application:
        async def handle(request: web.Request) -> web.StreamResponse:
            await request.read()
            if request.path == "/die":
                self.deaths.append(instance_id)
                assert request.transport is not None
                request.transport.abort()
                await asyncio.sleep(3600)
            return web.json_response({"instance": instance_id})

        return app_of(handle)


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_an_instance_dying_mid_request_is_502_and_reported_and_never_retried(method: str) -> None:
    apps = DyingApps()
    backend = FakeBackend(make_function("hello"), app_factory=apps)
    async with backend, running_gateway(backend) as gw:
        doomed = await backend.add_instance("hello")
        healthy = await backend.add_instance("hello")
        status, body, _ = await gw.json(method, "/function/hello/die", data=b"once")
        assert status == 502
        assert body["function"] == "hello"
        assert doomed.id in body["error"]
        assert [instance for instance, _ in backend.failures] == [doomed]
        # Not sent again, neither to the same instance nor to another.
        assert apps.deaths == [doomed.id]
        status, seen, _ = await gw.json("GET", "/function/hello/ok")
        assert status == 200
        assert seen == {"instance": healthy.id}
        assert gw.gateway.stats(ref("hello")).in_flight == 0


async def test_an_instance_refusing_connections_is_skipped_and_the_request_retried() -> None:
    apps = ControlledApps()
    backend = FakeBackend(make_function("hello"), app_factory=apps)
    async with backend, running_gateway(backend) as gw:
        dead = Instance(function=ref("hello"), id="hello-dead", host="127.0.0.1", port=unused_port(), capacity=10)
        backend.mark_ready(dead)  # first in the list: chosen first
        alive = await backend.add_instance("hello")
        status, seen, _ = await gw.json("POST", "/function/hello/x", data=b"body")
        assert status == 200
        assert seen["instance"] == alive.id
        assert [instance.id for instance, _ in backend.failures] == ["hello-dead"]
        assert apps.arrivals == [(alive.id, "/x")]


async def test_a_streamed_body_is_retried_when_the_first_instance_refused_the_connection() -> None:
    body = b"z" * (2 * 1024 * 1024)
    backend = FakeBackend(make_function("hello"))
    async with backend, running_gateway(backend) as gw:
        backend.mark_ready(Instance(function=ref("hello"), id="hello-dead", host="127.0.0.1",
                                    port=unused_port(), capacity=10))
        await backend.add_instance("hello")
        status, seen, _ = await gw.json("PUT", "/function/hello", data=io.BytesIO(body))
    assert status == 200
    assert seen["body_length"] == len(body)


async def test_a_request_waits_for_a_new_instance_when_every_instance_refused_it() -> None:
    backend = FakeBackend(make_function("hello"), start_on_scale=False)
    async with backend, running_gateway(backend) as gw:
        backend.mark_ready(Instance(function=ref("hello"), id="hello-dead", host="127.0.0.1",
                                    port=unused_port(), capacity=10))
        task = asyncio.create_task(gw.json("GET", "/function/hello"))
        await eventually(lambda: len(backend.failures) == 1 and gw.gateway.stats(ref("hello")).queued == 1)
        await backend.add_instance("hello")
        status, _, _ = await task
    assert status == 200


async def test_an_instance_slower_than_the_function_timeout_is_504_json() -> None:
    apps = ControlledApps()
    backend = FakeBackend(make_function("hello", timeout=0.2), app_factory=apps)
    settings = GatewaySettings(upstream_timeout_margin=0.1)
    async with backend, running_gateway(backend, settings=settings) as gw:
        instance = await backend.add_instance("hello")
        status, body, _ = await gw.json("GET", "/function/hello/hold/forever")
        assert status == 504
        assert body["function"] == "hello"
        # A slow instance is not a failed one.
        assert backend.failures == []
        assert gw.gateway.stats(ref("hello")).in_flight == 0
        status, seen, _ = await gw.json("GET", "/function/hello/quick")
        assert status == 200 and seen["instance"] == instance.id


async def test_the_runtimes_own_504_passes_through() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"errorType": "TimeoutError"}, status=504)

    app = serving(handler)

    backend = FakeBackend(make_function("hello"), app_factory=app)
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        status, body, _ = await gw.json("GET", "/function/hello")
    assert status == 504
    assert body == {"errorType": "TimeoutError"}


async def test_a_client_disconnecting_mid_request_releases_its_slot() -> None:
    apps = ControlledApps()
    backend = FakeBackend(make_function("hello", concurrency=1), app_factory=apps)
    async with backend, running_gateway(backend) as gw:
        instance = await backend.add_instance("hello")
        _reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(b"GET /function/hello/hold/never HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        await eventually(lambda: apps.held(instance.id) == 1)
        assert gw.gateway.stats(ref("hello")).in_flight == 1
        writer.close()
        await writer.wait_closed()
        await eventually(lambda: gw.gateway.stats(ref("hello")).in_flight == 0)
        # The instance's request was cancelled too, and the single slot serves the next request.
        await eventually(lambda: apps.held(instance.id) == 0)
        status, _, _ = await gw.json("GET", "/function/hello/quick")
        assert status == 200


async def test_a_client_disconnecting_while_queued_leaves_the_queue() -> None:
    apps = ControlledApps()
    backend = FakeBackend(make_function("hello", concurrency=1), app_factory=apps)
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        blocker = asyncio.create_task(gw.json("GET", "/function/hello/hold/a"))
        await eventually(lambda: apps.held() == 1)
        _reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(b"GET /function/hello/queued HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        await eventually(lambda: gw.gateway.stats(ref("hello")).queued == 1)
        writer.close()
        await writer.wait_closed()
        await eventually(lambda: gw.gateway.stats(ref("hello")).queued == 0)
        apps.release("a")
        assert (await blocker)[0] == 200
        status, _, _ = await gw.json("GET", "/function/hello/next")
        assert status == 200
        assert gw.gateway.stats(ref("hello")).in_flight == 0
    # The disconnected request never reached the instance.
    assert "/queued" not in [path for _, path in apps.arrivals]


async def test_an_instance_dying_mid_response_cuts_the_client_off() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": str(10 * 1024 * 1024)})
        await response.prepare(request)
        await response.write(b"a" * (1024 * 1024))
        assert request.transport is not None
        request.transport.abort()
        return response

    app = serving(handler)

    backend = FakeBackend(make_function("hello"), app_factory=app)
    async with backend, running_gateway(backend) as gw:
        instance = await backend.add_instance("hello")
        with pytest.raises(aiohttp.ClientPayloadError):
            async with gw.session.get(gw.url("/function/hello")) as response:
                assert response.status == 200
                await response.read()
        await eventually(lambda: gw.gateway.stats(ref("hello")).in_flight == 0)
        assert [i for i, _ in backend.failures] == [instance]


async def test_a_client_disconnecting_mid_upload_is_not_an_instance_failure() -> None:
    backend = FakeBackend(make_function("hello"))
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        _reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(b"POST /function/hello HTTP/1.1\r\nHost: x\r\nContent-Length: 4194304\r\n\r\n")
        writer.write(b"u" * (1024 * 1024))
        await writer.drain()
        await eventually(lambda: gw.gateway.stats(ref("hello")).in_flight == 1)
        writer.close()
        await writer.wait_closed()
        await eventually(lambda: gw.gateway.stats(ref("hello")).in_flight == 0)
        assert backend.failures == []
        assert (await gw.json("GET", "/function/hello"))[0] == 200


async def test_a_client_disconnecting_mid_download_releases_the_slot_and_blames_nobody() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        try:
            for _ in range(1000):
                await response.write(b"d" * 65536)
        except ConnectionError:
            pass  # the gateway hung up, as it should once its client did
        return response

    app = serving(handler)

    backend = FakeBackend(make_function("hello", concurrency=1), app_factory=app)
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(b"GET /function/hello HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")
        await reader.readexactly(65536)
        writer.close()
        await writer.wait_closed()
        await eventually(lambda: gw.gateway.stats(ref("hello")).in_flight == 0)
        assert backend.failures == []
    registry = gw.gateway.registry
    labels = {"function": "hello", "namespace": "default", "code": "499"}
    assert registry.get_sample_value("kfn_gateway_invocations_total", labels) == 1


async def test_without_handler_cancellation_an_abandoned_upload_still_frees_everything() -> None:
    from kfn_gateway.server import Gateway

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
            await eventually(lambda: gateway.stats(ref("hello")).in_flight == 1)
            writer.close()
            await writer.wait_closed()
            await eventually(lambda: gateway.stats(ref("hello")).in_flight == 0)
            assert backend.failures == []
        finally:
            await runner.cleanup()


class DrainingFirst:
    """The first instance answers like a draining runtime (503 + X-Kfn-Rejected); later ones echo."""

    def __init__(self) -> None:
        self.rejected = 0

    def __call__(self, instance_id: str) -> web.Application:
        if instance_id.endswith("-1"):
            async def reject(request: web.Request) -> web.Response:
                await request.read()
                self.rejected += 1
                return web.json_response({"errorType": "ServiceUnavailable"}, status=503,
                                         headers={"X-Kfn-Rejected": "draining", "Connection": "close"})
            return app_of(reject)
        return echo_app(instance_id)


async def test_a_request_a_draining_instance_turned_away_goes_to_another_instance() -> None:
    apps = DrainingFirst()
    backend = FakeBackend(make_function("hello"), app_factory=apps)
    async with backend, running_gateway(backend) as gw:
        draining = await backend.add_instance("hello")
        healthy = await backend.add_instance("hello")
        status, seen, _ = await gw.json("POST", "/function/hello", data=b"payload")
        assert status == 200
        assert seen["instance"] == healthy.id
        assert apps.rejected == 1
        assert backend.failures == [], f"{draining.id} is draining, not failed"


async def test_a_handlers_own_503_passes_through_without_a_retry() -> None:
    async def busy(request: web.Request) -> web.Response:
        return web.json_response({"busy": True}, status=503)

    factory = serving(busy)

    backend = FakeBackend(make_function("hello"), app_factory=factory)
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        await backend.add_instance("hello")
        status, body, _ = await gw.json("GET", "/function/hello")
    assert (status, body) == (503, {"busy": True})


class FullOnce:
    """Every instance first answers like a runtime over its concurrency limit, then echoes
    (another gateway replica was using its slots)."""

    def __init__(self) -> None:
        self.rejected: list[str] = []

    def __call__(self, instance_id: str) -> web.Application:
        async def first_full(request: web.Request) -> web.StreamResponse:
            if instance_id not in self.rejected:
                self.rejected.append(instance_id)
                await request.read()
                return web.json_response({"errorType": "TooManyRequestsException"}, status=429,
                                         headers={"X-Kfn-Rejected": "concurrency"})
            return await echo(request, instance_id)

        return app_of(first_full)


async def test_a_request_a_full_instance_turned_away_is_retried_and_the_instance_kept() -> None:
    apps = FullOnce()
    backend = FakeBackend(make_function("hello"), app_factory=apps)
    async with backend, running_gateway(backend) as gw:
        only = await backend.add_instance("hello")
        status, seen, _ = await gw.json("GET", "/function/hello")
        assert status == 200
        assert seen["instance"] == only.id
        assert apps.rejected == [only.id]
        assert backend.failures == []


async def test_an_instance_that_stays_full_gets_a_429_with_retry_after() -> None:
    async def full(request: web.Request) -> web.Response:
        return web.json_response({"errorType": "TooManyRequestsException"}, status=429,
                                 headers={"X-Kfn-Rejected": "concurrency"})

    factory = serving(full)

    backend = FakeBackend(make_function("hello"), app_factory=factory)
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        status, body, headers = await gw.json("GET", "/function/hello")
    assert status == 429
    assert "Retry-After" in headers
    assert body["function"] == "hello"
