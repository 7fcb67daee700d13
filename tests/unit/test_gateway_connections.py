"""The gateway's client connections: deadlines for heads, bodies and idle connections, quiet JSON
400s for malformed requests, Expect: 100-continue, and absolute-form request targets."""
from __future__ import annotations

import asyncio
import json
import logging

import pytest

from kfn_gateway.server import _origin_form
from kfn_gateway.settings import GatewaySettings

from .fakes import FakeBackend, make_function, running_gateway

FAST = GatewaySettings(header_timeout=0.2, body_timeout=0.2, idle_timeout=0.3)


async def exchange(port: int, data: bytes, *, wait: float = 5.0) -> bytes:
    """Send `data`, then read until the gateway closes the connection (at most `wait` seconds)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(wait):
            return await reader.read(-1)
    finally:
        writer.close()


def status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def body(answer: bytes) -> dict:
    return json.loads(answer.split(b"\r\n\r\n", 1)[1])


async def test_a_request_head_that_never_ends_is_408_and_the_connection_closed() -> None:
    backend = FakeBackend(make_function("hello"))
    async with backend, running_gateway(backend, settings=FAST) as gw:
        answer = await exchange(gw.port, b"GET /function/hello HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    assert status(answer) == 408
    assert "head" in body(answer)["error"]


async def test_a_body_that_stops_arriving_is_408_and_never_reaches_an_instance() -> None:
    backend = FakeBackend(make_function("hello"), start_on_scale=False)
    async with backend, running_gateway(backend, settings=FAST) as gw:
        answer = await exchange(gw.port, b"POST /function/hello HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        assert status(answer) == 408
        assert gw.gateway.stats(backend.functions()[0].ref).in_flight == 0
    assert backend.scale_calls == []


async def test_an_idle_connection_is_closed_without_an_answer() -> None:
    backend = FakeBackend(make_function("hello"))
    async with backend, running_gateway(backend, settings=FAST) as gw:
        assert await exchange(gw.port, b"") == b""


@pytest.mark.parametrize("request_bytes", [
    b"GARBAGE\r\n\r\n",
    b"GET /function/hello HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n",
    b"POST /function/hello HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    b"POST /function/hello HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
])
async def test_a_malformed_request_is_a_json_400_logged_in_one_line(request_bytes: bytes,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    backend = FakeBackend(make_function("hello"))
    with caplog.at_level(logging.INFO):
        async with backend, running_gateway(backend) as gw:
            answer = await exchange(gw.port, request_bytes)
    assert status(answer) == 400
    assert body(answer)["error"].startswith("malformed request")
    logged = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert [r.getMessage().split(":")[0] for r in logged] in ([], ["malformed request"])
    assert not any(r.exc_info for r in logged)


async def test_expect_100_continue_over_the_limit_is_413_with_no_100_continue_first() -> None:
    backend = FakeBackend(make_function("hello"))
    async with backend, running_gateway(backend, settings=GatewaySettings(max_body_bytes=1000)) as gw:
        answer = await exchange(gw.port, b"POST /function/hello HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                                         b"Content-Length: 1001\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413 ")


async def test_expect_100_continue_within_the_limit_is_told_to_go_on_and_answered() -> None:
    backend = FakeBackend(make_function("hello"))
    async with backend, running_gateway(backend, settings=GatewaySettings(max_body_bytes=1000)) as gw:
        await backend.add_instance("hello")
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        try:
            writer.write(b"POST /function/hello HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                         b"Content-Length: 4\r\nConnection: close\r\n\r\n")
            await writer.drain()
            assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
            writer.write(b"ping")
            answer = await reader.read(-1)
        finally:
            writer.close()
    assert status(answer) == 200
    assert body(answer)["body"] == "ping"


@pytest.mark.parametrize(("target", "origin_form"), [
    ("/function/hello/a?x=1", "/function/hello/a?x=1"),
    ("http://example.com/function/hello/a?x=1", "/function/hello/a?x=1"),
    ("https://example.com:8443/function/hello", "/function/hello"),
    ("http://example.com", "/"),
    ("http://example.com?q=1", "/?q=1"),
    ("*", "/"),
])
def test_an_absolute_form_target_is_read_as_its_path_and_query(target: str, origin_form: str) -> None:
    assert _origin_form(target) == origin_form


async def test_an_absolute_form_request_reaches_the_function_with_its_own_path() -> None:
    backend = FakeBackend(make_function("hello"))
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        answer = await exchange(gw.port, b"GET http://example.com/function/hello/a/b?x=1 HTTP/1.1\r\n"
                                         b"Host: example.com\r\nConnection: close\r\n\r\n")
    assert status(answer) == 200
    event = body(answer)
    assert (event["rawPath"], event["rawQueryString"]) == ("/a/b", "x=1")
