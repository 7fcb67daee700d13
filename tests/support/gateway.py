"""A gateway served in-process for tests, and raw TCP instances that answer whatever bytes a test likes.

    backend = FakeBackend(make_function("hello"))
    async with backend, running_gateway(backend) as gw:
        status, body, headers = await gw.json("GET", "/function/hello")
"""
from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Self

import aiohttp
import yarl
from aiohttp import web
from multidict import CIMultiDictProxy

from kfn.core.instances import Instance
from kfn_gateway.server import Gateway, serve
from tests.support.backend import FakeBackend, ref
from tests.support.ports import free_port

# -- the gateway ------------------------------------------------------------------------------------

class RunningGateway:
    """A gateway served on 127.0.0.1 with a client session to call it."""

    def __init__(self, gateway: Gateway, runner: web.AppRunner, session: aiohttp.ClientSession) -> None:
        self.gateway = gateway
        self.runner = runner
        self.session = session
        host, port = runner.addresses[0][:2]
        self.base = f"http://{host}:{port}"
        self.port = port

    def url(self, path: str) -> yarl.URL:
        # encoded=True: the path goes out byte for byte, as a test wrote it.
        return yarl.URL(self.base + path, encoded=True)

    async def json(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any, CIMultiDictProxy[str]]:
        """(status, the body as JSON, or as text if it is not JSON, headers)."""
        async with self.session.request(method, self.url(path), **kwargs) as response:
            text = await response.text()
            try:
                data = json.loads(text)
            except ValueError:
                data = text
            return response.status, data, response.headers


@contextlib.asynccontextmanager
async def running_gateway(backend: FakeBackend, **gateway_kwargs: Any) -> AsyncIterator[RunningGateway]:
    gateway = Gateway(backend, **gateway_kwargs)
    runner = await serve(gateway, host="127.0.0.1", port=0)
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            yield RunningGateway(gateway, runner, session)
    finally:
        await runner.cleanup()


# -- a raw instance ---------------------------------------------------------------------------------

Answer = Callable[[bytes, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]


class RawInstance:
    """A TCP server on 127.0.0.1 that reads each request head (and a Content-Length body) and lets
    `answer(head, reader, writer)` write whatever bytes it likes; `answer` returns whether to
    keep the connection open. Counts connections, requests and closed connections."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.connections = 0
        self.requests: list[bytes] = []
        self.bodies: list[bytes] = []
        self.closed = 0
        self._server: asyncio.Server | None = None
        self._handlers: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}
        self.port = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._handlers[task] = writer
        try:
            for _ in range(1000):
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                self.requests.append(head)
                body = b""
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        body = await reader.readexactly(int(line.split(b":")[1]))
                self.bodies.append(body)
                if not await self.answer(head, reader, writer):
                    return
        finally:
            writer.close()
            self.closed += 1
            self._handlers.pop(task, None)

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        # Connections still open end here, so no handler is left to be cancelled at loop close.
        for writer in list(self._handlers.values()):
            writer.close()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    def instance(self, id: str = "hello-raw", function: str = "hello") -> Instance:
        return Instance(function=ref(function), id=id, host="127.0.0.1", port=self.port, capacity=10)


def answer_with(data: bytes, *, keep: bool = True) -> Answer:
    """An `Answer` writing `data` to every request."""

    async def answer(head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(data)
        await writer.drain()
        return keep

    return answer


def http_answer(body: bytes, *, status: str = "200 OK", headers: str = "") -> bytes:
    """A whole HTTP/1.1 answer with a Content-Length."""
    return (f"HTTP/1.1 {status}\r\n{headers}Content-Length: {len(body)}\r\n\r\n").encode() + body


def dead_instance(id: str = "hello-dead") -> Instance:
    """An instance listed as ready at an address nobody listens on."""
    return Instance(function=ref("hello"), id=id, host="127.0.0.1", port=free_port(), capacity=10)
