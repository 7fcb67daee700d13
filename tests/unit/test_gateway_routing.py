"""The gateway routes /function/{name} to instances: pass-through, instance choice, queueing,
scale from zero, and the JSON answers it makes up itself (404, 413, 429, 503)."""
from __future__ import annotations

import asyncio
import hashlib
import io

import pytest
from aiohttp import web

from kfn_gateway.routing import Unavailable
from kfn_gateway.server import GatewaySettings

from .fakes import ControlledApps, FakeBackend, eventually, make_function, ref, running_gateway, serving


def header_values(headers: list[list[str]], name: str) -> list[str]:
    return [v for k, v in headers if k.lower() == name.lower()]


async def test_method_path_query_headers_and_body_reach_the_instance() -> None:
    backend = FakeBackend(make_function("hello"))
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        status, seen, _ = await gw.json(
            "PATCH", "/function/hello/a/b%20c?x=1&y=%2F", data=b"payload",
            headers={"X-Custom": "yes", "Content-Type": "text/plain", "Connection": "keep-alive, X-Hop",
                     "X-Hop": "drop me", "X-Forwarded-For": "10.1.2.3"})
    assert status == 200
    assert seen["method"] == "PATCH"
    assert seen["path"] == "/a/b%20c?x=1&y=%2F"
    assert seen["body"] == "payload"
    headers = seen["headers"]
    assert header_values(headers, "X-Custom") == ["yes"]
    assert header_values(headers, "Content-Type") == ["text/plain"]
    assert header_values(headers, "X-Hop") == []
    assert header_values(headers, "X-Forwarded-For") == ["10.1.2.3, 127.0.0.1"]
    assert header_values(headers, "X-Forwarded-Proto") == ["http"]
    assert header_values(headers, "X-Forwarded-Host") == [f"127.0.0.1:{gw.port}"]


async def test_the_clients_host_header_reaches_the_instance() -> None:
    backend = FakeBackend(make_function("hello"))
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        status, seen, _ = await gw.json("GET", "/function/hello", headers={"Host": "api.example.com"})
    assert status == 200
    assert header_values(seen["headers"], "Host") == ["api.example.com"]


@pytest.mark.parametrize(("path", "expected"), [
    ("/function/hello", "/"),
    ("/function/hello/", "/"),
    ("/function/hello?q=1", "/?q=1"),
    ("/function/hello/deep/path/", "/deep/path/"),
])
async def test_the_runtime_sees_the_path_below_the_function(path: str, expected: str) -> None:
    backend = FakeBackend(make_function("hello"))
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        status, seen, _ = await gw.json("GET", path)
    assert status == 200
    assert seen["path"] == expected


async def test_status_headers_and_several_set_cookies_come_back() -> None:
    async def handler(request: web.Request) -> web.Response:
        response = web.Response(status=201, reason="Made", text="created", headers={"X-Result": "42"})
        response.headers.add("Set-Cookie", "a=1; Path=/")
        response.headers.add("Set-Cookie", "b=2; Path=/")
        return response

    app = serving(handler)

    backend = FakeBackend(make_function("hello"), app_factory=app)
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        async with gw.session.post(gw.url("/function/hello")) as response:
            assert response.status == 201
            assert response.reason == "Made"
            assert response.headers["X-Result"] == "42"
            assert response.headers.getall("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/"]
            assert await response.text() == "created"


def streaming_echo(_: str) -> web.Application:
    """Streams the request body back in chunks, with its digest in a header."""

    async def echo(request: web.Request) -> web.StreamResponse:
        data = await request.read()
        response = web.StreamResponse(headers={"X-Digest": hashlib.sha256(data).hexdigest()})
        await response.prepare(request)
        for i in range(0, len(data), 100_000):
            await response.write(data[i:i + 100_000])
        await response.write_eof()
        return response

    application = web.Application(client_max_size=64 * 1024 * 1024)
    application.router.add_route("*", "/{tail:.*}", echo)
    return application


async def test_five_megabyte_bodies_stream_both_ways() -> None:
    body = bytes(range(256)) * (5 * 1024 * 1024 // 256)
    backend = FakeBackend(make_function("hello"), app_factory=streaming_echo)
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        async with gw.session.post(gw.url("/function/hello"), data=io.BytesIO(body)) as response:
            assert response.status == 200
            assert response.headers["X-Digest"] == hashlib.sha256(body).hexdigest()
            assert await response.read() == body


async def test_a_chunked_five_megabyte_body_streams_to_the_instance() -> None:
    body = b"x" * (5 * 1024 * 1024)

    async def chunks():  # no Content-Length: the client sends it chunked
        for i in range(0, len(body), 256 * 1024):
            yield body[i:i + 256 * 1024]

    backend = FakeBackend(make_function("hello"), app_factory=streaming_echo)
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        async with gw.session.post(gw.url("/function/hello"), data=chunks()) as response:
            assert response.status == 200
            assert response.headers["X-Digest"] == hashlib.sha256(body).hexdigest()
            assert len(await response.read()) == len(body)


async def test_head_keeps_the_instances_content_length() -> None:
    backend = FakeBackend(make_function("hello"))
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        async with gw.session.head(gw.url("/function/hello")) as response:
            assert response.status == 200
            assert int(response.headers["Content-Length"]) > 0
            assert await response.read() == b""


async def test_the_least_busy_instance_gets_the_next_request() -> None:
    apps = ControlledApps()
    backend = FakeBackend(make_function("hello", concurrency=5), app_factory=apps)
    async with backend, running_gateway(backend) as gw:
        first = await backend.add_instance("hello")
        second = await backend.add_instance("hello")
        held = [asyncio.create_task(gw.json("GET", f"/function/hello/hold/{i}")) for i in range(3)]
        await eventually(lambda: apps.held() == 3)
        # Three requests over two idle instances: 2 on one, 1 on the other.
        busier, idler = (first, second) if apps.held(first.id) == 2 else (second, first)
        assert apps.held(idler.id) == 1
        task = asyncio.create_task(gw.json("GET", "/function/hello/hold/3"))
        await eventually(lambda: apps.held() == 4)
        assert apps.held(idler.id) == 2
        assert apps.held(busier.id) == 2
        for i in range(4):
            apps.release(str(i))
        results = await asyncio.gather(*held, task)
    assert [r[0] for r in results] == [200] * 4


async def test_an_instance_never_gets_more_than_its_capacity_and_waiters_are_served_in_order() -> None:
    apps = ControlledApps()
    backend = FakeBackend(make_function("hello", concurrency=1), app_factory=apps)
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        tasks = []
        for i in range(5):
            tasks.append(asyncio.create_task(gw.json("GET", f"/function/hello/hold/{i}")))
            # Queue them one at a time so that their arrival order is known.
            await eventually(lambda i=i: gw.gateway.stats(ref("hello")).in_flight
                             + gw.gateway.stats(ref("hello")).queued == i + 1)
        assert gw.gateway.stats(ref("hello")).queued == 4
        for i in range(5):
            await eventually(lambda i=i: len(apps.arrivals) == i + 1)
            apps.release(str(i))
        results = await asyncio.gather(*tasks)
    assert [r[0] for r in results] == [200] * 5
    assert [path for _, path in apps.arrivals] == [f"/hold/{i}" for i in range(5)]
    assert max(apps.max_active.values()) == 1


async def test_waiters_get_slots_of_an_instance_that_becomes_ready() -> None:
    apps = ControlledApps()
    backend = FakeBackend(make_function("hello", concurrency=1), app_factory=apps)
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        blocker = asyncio.create_task(gw.json("GET", "/function/hello/hold/a"))
        await eventually(lambda: apps.held() == 1)
        waiting = asyncio.create_task(gw.json("GET", "/function/hello/quick"))
        await eventually(lambda: gw.gateway.stats(ref("hello")).queued == 1)
        newcomer = await backend.add_instance("hello")
        status, seen, _ = await waiting
        assert status == 200
        assert seen["instance"] == newcomer.id
        apps.release("a")
        assert (await blocker)[0] == 200


async def test_twenty_concurrent_first_requests_cause_one_scale_up_and_all_succeed() -> None:
    backend = FakeBackend(make_function("hello"))
    backend.scale_gate = asyncio.Event()
    async with backend, running_gateway(backend) as gw:
        tasks = [asyncio.create_task(gw.json("POST", "/function/hello", data=str(i))) for i in range(20)]
        # The scale call runs in a task of its own: wait for it as well as for the queue.
        await eventually(lambda: gw.gateway.stats(ref("hello")).queued == 20 and bool(backend.scale_calls))
        assert [(c.name, c.replicas, c.reason) for c in backend.scale_calls] == [("hello", 1, "cold start")]
        backend.scale_gate.set()
        results = await asyncio.gather(*tasks)
        assert [status for status, _, _ in results] == [200] * 20
        assert sorted(seen["body"] for _, seen, _ in results) == sorted(str(i) for i in range(20))
        assert len(backend.scale_calls) == 1


async def test_a_function_with_replicas_asked_for_is_not_scaled_again_while_starting() -> None:
    backend = FakeBackend(make_function("hello"), start_on_scale=False)
    async with backend, running_gateway(backend) as gw:
        await backend.scale("hello", 2, reason="autoscaler")
        task = asyncio.create_task(gw.json("GET", "/function/hello"))
        await eventually(lambda: gw.gateway.stats(ref("hello")).queued == 1)
        await backend.add_instance("hello")
        assert (await task)[0] == 200
    assert [c.reason for c in backend.scale_calls] == ["autoscaler"]


async def test_a_full_queue_answers_429_with_retry_after_and_json() -> None:
    backend = FakeBackend(make_function("hello"), start_on_scale=False)
    settings = GatewaySettings(queue_limit=2, retry_after=7)
    async with backend, running_gateway(backend, settings=settings) as gw:
        waiting = [asyncio.create_task(gw.json("GET", "/function/hello")) for _ in range(2)]
        await eventually(lambda: gw.gateway.stats(ref("hello")).queued == 2)
        status, body, headers = await gw.json("GET", "/function/hello")
        assert status == 429
        assert headers["Retry-After"] == "7"
        assert body["function"] == "hello"
        assert "queued" in body["error"]
        await backend.add_instance("hello")
        assert [(await t)[0] for t in waiting] == [200, 200]


async def test_waiting_longer_than_the_queue_timeout_answers_503_with_retry_after() -> None:
    backend = FakeBackend(make_function("hello"), start_on_scale=False)
    settings = GatewaySettings(queue_timeout=0.2)
    async with backend, running_gateway(backend, settings=settings) as gw:
        status, body, headers = await gw.json("GET", "/function/hello")
        assert status == 503
        assert headers["Retry-After"] == "1"
        assert body["function"] == "hello"
        assert "no ready instance" in body["error"]
        assert gw.gateway.stats(ref("hello")).queued == 0


async def test_a_failing_scale_call_answers_503_at_once() -> None:
    backend = FakeBackend(make_function("hello"))
    backend.scale_error = RuntimeError("quota exceeded")
    async with backend, running_gateway(backend) as gw:
        status, body, headers = await gw.json("GET", "/function/hello")
    assert status == 503
    assert "quota exceeded" in body["error"]
    assert "Retry-After" in headers


async def test_an_unknown_function_is_404_json() -> None:
    backend = FakeBackend(make_function("hello"))
    async with backend, running_gateway(backend) as gw:
        status, body, _ = await gw.json("GET", "/function/nope/x")
    assert status == 404
    assert body == {"error": "no function named 'nope'", "function": "nope"}
    assert backend.scale_calls == []


async def test_a_function_deleted_while_requests_wait_answers_them_404() -> None:
    backend = FakeBackend(make_function("hello"), start_on_scale=False)
    async with backend, running_gateway(backend) as gw:
        task = asyncio.create_task(gw.json("GET", "/function/hello"))
        await eventually(lambda: gw.gateway.stats(ref("hello")).queued == 1)
        backend.remove_function("hello")
        status, body, _ = await task
    assert status == 404
    assert body["function"] == "hello"


async def test_a_body_over_the_limit_by_content_length_is_413_without_reaching_an_instance() -> None:
    apps = ControlledApps()
    backend = FakeBackend(make_function("hello"), app_factory=apps)
    async with backend, running_gateway(backend, settings=GatewaySettings(max_body_bytes=1000)) as gw:
        await backend.add_instance("hello")
        status, body, _ = await gw.json("POST", "/function/hello", data=b"x" * 1001)
        assert status == 413
        assert body["function"] == "hello"
        assert (await gw.json("POST", "/function/hello", data=b"x" * 1000))[0] == 200
    assert len(apps.arrivals) == 1


@pytest.mark.parametrize("size", [5000, 3 * 1024 * 1024], ids=["buffered", "streamed"])
async def test_a_chunked_body_over_the_limit_is_413(size: int) -> None:
    limit = 1000 if size < 10000 else 1024 * 1024

    async def chunks():
        for _ in range(0, size, 500):
            yield b"y" * 500

    backend = FakeBackend(make_function("hello"))
    async with backend, running_gateway(backend, settings=GatewaySettings(max_body_bytes=limit)) as gw:
        await backend.add_instance("hello")
        status, body, _ = await gw.json("POST", "/function/hello", data=chunks())
        assert status == 413
        assert body["function"] == "hello"
        # The gateway holds nothing afterwards and serves the next request.
        await eventually(lambda: gw.gateway.stats(ref("hello")).in_flight == 0)
        assert (await gw.json("GET", "/function/hello"))[0] == 200


async def test_unknown_paths_and_methods_answer_json() -> None:
    backend = FakeBackend(make_function("hello"))
    async with backend, running_gateway(backend) as gw:
        status, body, _ = await gw.json("GET", "/nowhere")
        assert status == 404 and "error" in body
        status, body, _ = await gw.json("DELETE", "/system/functions")
        assert status == 405 and "error" in body


async def test_healthz_answers_200_json() -> None:
    backend = FakeBackend()
    async with backend, running_gateway(backend) as gw:
        status, body, _ = await gw.json("GET", "/healthz")
    assert status == 200
    assert body == {"status": "ok"}


async def test_a_request_turned_away_by_a_full_queue_still_starts_the_function() -> None:
    backend = FakeBackend(make_function("hello"), start_on_scale=False)
    async with backend, running_gateway(backend, settings=GatewaySettings(queue_limit=0)) as gw:
        status, _, headers = await gw.json("GET", "/function/hello")
        assert status == 429 and "Retry-After" in headers
        await eventually(lambda: len(backend.scale_calls) == 1)
        assert backend.scale_calls[0].reason == "cold start"


async def test_closing_the_gateway_turns_waiting_requests_away_with_503() -> None:
    from kfn_gateway.server import Gateway

    backend = FakeBackend(make_function("hello"), start_on_scale=False)
    async with backend:
        gateway = Gateway(backend)
        await gateway.start()
        route = gateway._route(ref("hello"))
        waiting = asyncio.create_task(route.acquire(timeout=30))
        await eventually(lambda: route.queued == 1)
        await gateway.close()
        with pytest.raises(Unavailable) as raised:
            await waiting
    assert raised.value.status == 503


async def test_each_instance_takes_as_many_requests_as_its_own_capacity() -> None:
    apps = ControlledApps()
    backend = FakeBackend(make_function("hello", concurrency=1), app_factory=apps)
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello", capacity=2)
        held = [asyncio.create_task(gw.json("GET", f"/function/hello/hold/{i}")) for i in range(2)]
        await eventually(lambda: apps.held() == 2)
        assert gw.gateway.stats(ref("hello")).queued == 0
        for i in range(2):
            apps.release(str(i))
        assert [(await t)[0] for t in held] == [200, 200]
