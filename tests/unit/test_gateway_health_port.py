"""The gateway's liveness listener (`serve_health`, `kfn gateway --health-port`): GET /healthz on a
port of its own, which the connection cap of the main port does not count."""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from kfn_gateway.server import serve_health
from kfn_gateway.settings import GatewaySettings
from tests.support.backend import FakeBackend
from tests.support.functions import make_function
from tests.support.gateway import RunningGateway, running_gateway
from tests.support.waiting import eventually


@contextlib.asynccontextmanager
async def health_listener(gw: RunningGateway) -> AsyncIterator[int]:
    """The gateway's liveness listener on a free port of 127.0.0.1; yields the port."""
    runner = await serve_health(gw.gateway, host="127.0.0.1", port=0)
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def get(port: int, path: str) -> tuple[int, bytes]:
    """(status, body) of `GET path` on its own connection; 0 when the connection is closed or reset
    without an answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        async with asyncio.timeout(5):
            answer = await reader.read(-1)
    except ConnectionError:
        return 0, b""
    finally:
        writer.close()
    if not answer:
        return 0, b""
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def open_connections(runner: web.AppRunner) -> int:
    assert runner.server is not None
    return len(runner.server.connections)


async def test_with_every_connection_the_cap_allows_held_the_liveness_probe_is_still_answered_200() -> None:
    backend = FakeBackend(make_function("hello"))
    async with backend, running_gateway(backend, settings=GatewaySettings(max_connections=2)) as gw, \
            health_listener(gw) as health_port:
        held = [await asyncio.open_connection("127.0.0.1", gw.port) for _ in range(2)]
        try:
            await eventually(lambda: open_connections(gw.runner) == 2)
            assert (await get(gw.port, "/healthz"))[0] == 503   # over the cap: refused
            status, body = await get(health_port, "/healthz")
            assert (status, body) == (200, b'{"status": "ok"}')
            assert open_connections(gw.runner) == 2
        finally:
            for _, writer in held:
                writer.close()


async def test_the_liveness_port_answers_draining_as_the_main_port_does() -> None:
    backend = FakeBackend(make_function("hello"))
    async with backend, running_gateway(backend) as gw, health_listener(gw) as health_port:
        gw.gateway.drain()
        main = await get(gw.port, "/healthz")
        assert main[0] == 503
        assert await get(health_port, "/healthz") == main


async def test_the_liveness_port_serves_nothing_but_healthz() -> None:
    backend = FakeBackend(make_function("hello"))
    async with backend, running_gateway(backend) as gw, health_listener(gw) as health_port:
        await backend.add_instance("hello")
        assert (await get(gw.port, "/function/hello"))[0] == 200
        for path in ("/function/hello", "/metrics", "/system/functions"):
            assert (await get(health_port, path))[0] == 404, path
