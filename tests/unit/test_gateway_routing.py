"""The gateway routes /function/{name} to instances: instance choice, capacity, queueing, scale
from zero, and the JSON answers it makes up itself (404, 413, 429, 503)."""
from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator

import pytest

from kfn.core.instances import StartProblem, StartReason
from kfn_gateway.http_api import STATUS
from kfn_gateway.outcomes import Reason
from kfn_gateway.routing import ShuttingDown
from kfn_gateway.server import Gateway
from kfn_gateway.settings import GatewaySettings
from tests.support.backend import TRANSPORTS, ControlledFunctions, FakeBackend, ScaleCall, ref
from tests.support.functions import make_function
from tests.support.gateway import running_gateway
from tests.support.waiting import eventually


async def test_a_request_reaches_an_instance_of_the_function_it_names() -> None:
    backend = FakeBackend(make_function("hello"), make_function("other"))
    async with backend, running_gateway(backend) as gw:
        instance = await backend.add_instance("hello")
        await backend.add_instance("other")
        status, event, headers = await gw.json("GET", "/function/hello/x")
    assert status == 200
    assert headers["X-Instance"] == instance.id
    assert event["rawPath"] == "/x"


async def test_name_dot_namespace_names_a_function_in_another_namespace() -> None:
    backend = FakeBackend(make_function("hello"), make_function("hello", namespace="team"))
    async with backend, running_gateway(backend) as gw:
        mine = await backend.add_instance(ref("hello"))
        theirs = await backend.add_instance(ref("hello.team"))
        _, _, default_headers = await gw.json("GET", "/function/hello")
        status, _, team_headers = await gw.json("GET", "/function/hello.team")
    assert status == 200
    assert default_headers["X-Instance"] == mine.id
    assert team_headers["X-Instance"] == theirs.id


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_the_least_busy_instance_gets_the_next_request(transport: str) -> None:
    functions = ControlledFunctions()
    backend = FakeBackend.of(transport, make_function("hello", concurrency=5), fn=functions)
    async with backend, running_gateway(backend) as gw:
        first = await backend.add_instance("hello")
        second = await backend.add_instance("hello")
        held = [asyncio.create_task(gw.json("GET", f"/function/hello/hold/{i}")) for i in range(3)]
        await eventually(lambda: functions.held() == 3)
        # Three requests over two idle instances: 2 on one, 1 on the other.
        busier, idler = (first, second) if functions.held(first.id) == 2 else (second, first)
        assert functions.held(idler.id) == 1
        task = asyncio.create_task(gw.json("GET", "/function/hello/hold/3"))
        await eventually(lambda: functions.held() == 4)
        assert functions.held(idler.id) == 2
        assert functions.held(busier.id) == 2
        functions.release("0", "1", "2", "3")
        results = await asyncio.gather(*held, task)
    assert [r[0] for r in results] == [200] * 4


async def test_an_instance_never_gets_more_than_its_capacity_and_waiters_are_served_in_order(
        transport: str = "http") -> None:
    functions = ControlledFunctions()
    backend = FakeBackend.of(transport, make_function("hello", concurrency=1), fn=functions)
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        def held() -> int:
            stats = gw.gateway.stats(ref("hello"))
            return stats.in_flight + stats.queued

        tasks = []
        for i in range(5):
            tasks.append(asyncio.create_task(gw.json("GET", f"/function/hello/hold/{i}")))
            # Queue them one at a time so that their arrival order is known.
            await eventually(lambda: held() == len(tasks))
        assert gw.gateway.stats(ref("hello")).queued == 4
        for i in range(5):
            await eventually(functools.partial(lambda count: len(functions.arrivals) == count, i + 1))
            functions.release(str(i))
        results = await asyncio.gather(*tasks)
    assert [r[0] for r in results] == [200] * 5
    assert [path for _, path in functions.arrivals] == [f"/hold/{i}" for i in range(5)]
    assert max(functions.max_active.values()) == 1


async def test_capacity_and_queue_order_hold_for_in_process_instances() -> None:
    await test_an_instance_never_gets_more_than_its_capacity_and_waiters_are_served_in_order("in-process")


async def test_each_instance_takes_as_many_requests_as_its_own_capacity() -> None:
    functions = ControlledFunctions()
    backend = FakeBackend(make_function("hello", concurrency=1), fn=functions)
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello", capacity=2)
        held = [asyncio.create_task(gw.json("GET", f"/function/hello/hold/{i}")) for i in range(2)]
        await eventually(lambda: functions.held() == 2)
        assert gw.gateway.stats(ref("hello")).queued == 0
        functions.release("0", "1")
        assert [(await t)[0] for t in held] == [200, 200]


async def test_waiters_get_slots_of_an_instance_that_becomes_ready() -> None:
    functions = ControlledFunctions()
    backend = FakeBackend(make_function("hello", concurrency=1), fn=functions)
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        blocker = asyncio.create_task(gw.json("GET", "/function/hello/hold/a"))
        await eventually(lambda: functions.held() == 1)
        waiting = asyncio.create_task(gw.json("GET", "/function/hello/quick"))
        await eventually(lambda: gw.gateway.stats(ref("hello")).queued == 1)
        newcomer = await backend.add_instance("hello")
        status, seen, _ = await waiting
        assert status == 200
        assert seen["instance"] == newcomer.id
        functions.release("a")
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
        assert sorted(event["body"] for _, event, _ in results) == sorted(str(i) for i in range(20))
        assert len(backend.scale_calls) == 1


async def test_a_function_with_replicas_asked_for_is_not_scaled_again_while_starting() -> None:
    backend = FakeBackend(make_function("hello"), start_on_scale=False)
    async with backend, running_gateway(backend) as gw:
        await backend.scale(ref("hello"), 2, reason="autoscaler")
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


async def test_a_request_turned_away_by_a_full_queue_still_starts_the_function() -> None:
    backend = FakeBackend(make_function("hello"), start_on_scale=False)
    async with backend, running_gateway(backend, settings=GatewaySettings(queue_limit=0)) as gw:
        status, _, headers = await gw.json("GET", "/function/hello")
        assert status == 429 and "Retry-After" in headers
        await eventually(lambda: len(backend.scale_calls) == 1)
        assert backend.scale_calls[0].reason == "cold start"


async def test_waiting_longer_than_the_queue_timeout_answers_503_with_retry_after() -> None:
    backend = FakeBackend(make_function("hello"), start_on_scale=False)
    settings = GatewaySettings(queue_timeout=0.1)
    async with backend, running_gateway(backend, settings=settings) as gw:
        status, body, headers = await gw.json("GET", "/function/hello")
        assert status == 503
        assert headers["Retry-After"] == "1"
        assert body["function"] == "hello"
        assert "no ready instance" in body["error"]
        assert gw.gateway.stats(ref("hello")).queued == 0


async def test_a_failing_scale_call_answers_503_at_once() -> None:
    backend = FakeBackend(make_function("hello"))
    backend.scale_errors[ref("hello")] = RuntimeError("quota exceeded")
    async with backend, running_gateway(backend) as gw:
        status, body, headers = await gw.json("GET", "/function/hello")
    assert status == 503
    assert "quota exceeded" in body["error"]
    assert "Retry-After" in headers


async def test_waiting_requests_get_503_with_the_reason_as_soon_as_the_backend_knows_why_no_instance_starts() -> None:
    backend = FakeBackend(make_function("hello"), start_on_scale=False)
    async with backend, running_gateway(backend, settings=GatewaySettings(queue_timeout=60)) as gw:
        waiting = [asyncio.ensure_future(gw.json("GET", "/function/hello")) for _ in range(3)]
        await eventually(lambda: gw.gateway.stats(ref("hello")).queued == 3)
        backend.problems[ref("hello")] = StartProblem(StartReason.REQUIREMENTS, "pip: no matching distribution")
        backend._notify(ref("hello"))   # the backend's listener call after a failed start
        answers = await asyncio.gather(*waiting)
    for status, body, headers in answers:
        assert status == 503
        assert "its requirements could not be installed" in body["error"]
        assert "pip" not in body["error"]   # the detail is the owner's
        assert headers["Retry-After"] == "1"


async def test_a_request_to_a_function_that_cannot_start_fails_at_once_and_still_asks_for_an_instance() -> None:
    backend = FakeBackend(make_function("hello"), start_on_scale=False)
    backend.problems[ref("hello")] = StartProblem(StartReason.IMAGE, "pod hello-1: container function ImagePullBackOff")
    async with backend, running_gateway(backend, settings=GatewaySettings(queue_timeout=60)) as gw:
        status, body, headers = await gw.json("GET", "/function/hello")
        assert status == 503 and "its image cannot be pulled" in body["error"] and "Retry-After" in headers
        # The demand is not lost: the backend keeps being asked for an instance (and retries).
        await eventually(lambda: len(backend.scale_calls) == 1)
        backend.problems.clear()
        await backend.add_instance("hello")
        assert (await gw.json("GET", "/function/hello"))[0] == 200


class UnreachableApi(FakeBackend):
    """A backend whose first `unreachable` scale calls are lost (its API is down), as
    KubernetesBackend's are: logged, not raised."""

    unreachable = 2

    async def scale(self, name, replicas: int, *, reason: str = "") -> None:  # type: ignore[no-untyped-def]
        if self.unreachable > 0:
            self.unreachable -= 1
            self.scale_calls.append(ScaleCall(ref(name).name, replicas, reason))
            return
        await super().scale(name, replicas, reason=reason)


async def test_a_scale_from_zero_the_backend_lost_is_asked_again_while_requests_wait() -> None:
    backend = UnreachableApi(make_function("hello"))
    async with backend, running_gateway(backend, settings=GatewaySettings(queue_timeout=60)) as gw:
        status, _, _ = await gw.json("GET", "/function/hello")
    assert status == 200
    assert [call.replicas for call in backend.scale_calls] == [1, 1, 1]


async def test_an_instance_asked_for_and_lost_while_requests_wait_is_asked_for_again() -> None:
    # A warm pool's pod claimed for the function and deleted before it served, its fallback
    # failing too: the backend desires nothing again, and the waiting request must not just time out.
    backend = FakeBackend(make_function("hello"), start_on_scale=False)
    async with backend, running_gateway(backend, settings=GatewaySettings(queue_timeout=60)) as gw:
        task = asyncio.create_task(gw.json("GET", "/function/hello"))
        await eventually(lambda: len(backend.scale_calls) == 1, what="the cold start")
        backend.replicas[ref("hello")] = 0
        backend.lose_desired(ref("hello"))
        await eventually(lambda: len(backend.scale_calls) == 2, what="the cold start asked again")
        await backend.add_instance("hello")
        assert (await task)[0] == 200
    assert [(c.replicas, c.reason) for c in backend.scale_calls] == [(1, "cold start"), (1, "cold start")]


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
    functions = ControlledFunctions()
    backend = FakeBackend(make_function("hello"), fn=functions)
    async with backend, running_gateway(backend, settings=GatewaySettings(max_body_bytes=1000)) as gw:
        await backend.add_instance("hello")
        status, body, _ = await gw.json("POST", "/function/hello", data=b"x" * 1001)
        assert status == 413
        assert body["function"] == "hello"
        assert (await gw.json("POST", "/function/hello", data=b"x" * 1000))[0] == 200
    assert len(functions.arrivals) == 1


@pytest.mark.parametrize("size", [5000, 3 * 1024 * 1024], ids=["buffered", "streamed"])
async def test_a_chunked_body_over_the_limit_is_413(size: int) -> None:
    limit = 1000 if size < 10000 else 1024 * 1024

    async def chunks() -> AsyncIterator[bytes]:
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


async def test_a_draining_gateway_fails_healthz() -> None:
    backend = FakeBackend()
    async with backend, running_gateway(backend) as gw:
        gw.gateway.drain()
        status, body, _ = await gw.json("GET", "/healthz")
    assert (status, body) == (503, {"status": "draining"})


async def raw_exchange(port: int, request: bytes) -> bytes:
    """Everything the gateway writes back to `request` on a new connection, up to its close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


async def test_a_draining_gateway_closes_each_connection_after_its_answer() -> None:
    backend = FakeBackend(make_function("hello"))
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        gw.gateway.drain()
        # read() returns at the close; a kept-alive connection would time out instead.
        answer = await raw_exchange(gw.port, b"GET /function/hello HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ")


async def test_a_draining_gateway_announces_connection_close() -> None:
    backend = FakeBackend(make_function("hello"))
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        gw.gateway.drain()
        answer = await raw_exchange(gw.port, b"GET /function/hello HTTP/1.1\r\nHost: x\r\n\r\n")
    head = answer.split(b"\r\n\r\n", 1)[0].lower()
    assert b"\r\nconnection: close" in head


async def test_closing_the_gateway_turns_waiting_requests_away_with_503() -> None:
    backend = FakeBackend(make_function("hello"), start_on_scale=False)
    async with backend:
        gateway = Gateway(backend)
        await gateway.start()
        route = gateway.dispatcher.route(ref("hello"))
        waiting = asyncio.create_task(route.acquire(timeout=30))
        await eventually(lambda: route.queued == 1)
        await gateway.close()
        with pytest.raises(ShuttingDown):
            await waiting
    assert STATUS[Reason.SHUTTING_DOWN] == 503


async def test_system_logs_answers_the_last_lines_of_a_function() -> None:
    backend = FakeBackend(make_function("hello"))
    backend.log_lines[ref("hello")] = ["one", "two", "three"]
    async with backend, running_gateway(backend) as gw:
        status, text, _ = await gw.json("GET", "/system/logs/hello?tail=2")
        bad_status, bad, _ = await gw.json("GET", "/system/logs/hello?tail=-1")
        missing_status, _, _ = await gw.json("GET", "/system/logs/nope")
    assert (status, text) == (200, "two\nthree\n")
    assert bad_status == 400 and "tail" in bad["error"]
    assert missing_status == 404
