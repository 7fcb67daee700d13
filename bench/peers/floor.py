"""The floor of kfn's execution model, as a peer of ../shared/peers-bench: what any platform that
keeps Lambda's model (each invocation in an execution environment of its own, a process apart from
the server, one invocation at a time) costs at the least in Python with aiohttp.

It is plain aiohttp (the harness's reference, `plain_aiohttp.py --mode inline`, the same event) with
exactly one thing added: the handler runs in one of N worker processes, forked once at start, each
reached over a Unix socketpair with length-prefixed JSON frames, one write each way per invocation
(kfn's own channel between its host and its environments is the same shape). No routing, no
metrics, no logs, no limits, no API Gateway mapping beyond the reference's: nothing kfn could not
do without. Whatever a kfn figure is above this one is kfn's own overhead; whatever this one is
below plain aiohttp is the price of the isolation itself.

    python bench/peers/floor.py PORT HANDLERS_DIR [WORKERS]    (the harness's --add-peer runs it)
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import sys
from typing import Any

from aiohttp import web

HEADER = struct.Struct("!I")


def _worker(sock: socket.socket, handlers: dict[str, Any]) -> None:  # pragma: no cover - a child process
    reader = sock.makefile("rb")
    while True:
        head = reader.read(HEADER.size)
        if len(head) < HEADER.size:
            os._exit(0)
        name, event = json.loads(reader.read(HEADER.unpack(head)[0]))
        out = json.dumps(handlers[name](event, None)).encode()
        sock.sendall(HEADER.pack(len(out)) + out)


class Environment(asyncio.Protocol):
    """One worker process's end of the socketpair: one invocation at a time."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.waiter: asyncio.Future[Any] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) >= HEADER.size:
            size = HEADER.unpack_from(self.buffer)[0]
            if len(self.buffer) >= HEADER.size + size and self.waiter is not None:
                frame = bytes(self.buffer[HEADER.size:HEADER.size + size])
                del self.buffer[:HEADER.size + size]
                self.waiter.set_result(json.loads(frame))

    def invoke(self, name: str, event: dict[str, Any]) -> asyncio.Future[Any]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        body = json.dumps([name, event]).encode()
        self.transport.write(HEADER.pack(len(body)) + body)
        return self.waiter


async def serve(port: int, handlers: dict[str, Any], workers: int) -> None:
    loop = asyncio.get_running_loop()
    idle: asyncio.Queue[Environment] = asyncio.Queue()
    for _ in range(workers):
        parent, child = socket.socketpair()
        if os.fork() == 0:  # pragma: no cover - the child
            parent.close()
            _worker(child, handlers)
        child.close()
        _, env = await loop.create_unix_connection(Environment, sock=parent)
        idle.put_nowait(env)

    def route(name: str) -> Any:
        async def view(request: web.Request) -> web.Response:
            body = await request.text() if request.can_read_body else None
            event = {"httpMethod": request.method, "path": request.path,
                     "queryStringParameters": dict(request.query) or None, "headers": dict(request.headers),
                     "body": body or None, "isBase64Encoded": False}
            env = await idle.get()
            try:
                res = await env.invoke(name, event)
            finally:
                idle.put_nowait(env)
            return web.Response(status=res["statusCode"], text=res["body"], headers=res.get("headers") or {})
        return view

    app = web.Application()
    app.router.add_route("*", "/hello", route("hello"))
    app.router.add_route("*", "/sleep", route("sleep"))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


def main() -> None:
    if len(sys.argv) not in (3, 4):
        sys.exit("usage: floor.py PORT HANDLERS_DIR [WORKERS]")
    sys.path.insert(0, sys.argv[2])
    import handler  # the harness's handlers

    workers = int(sys.argv[3]) if len(sys.argv) == 4 else 64
    asyncio.run(serve(int(sys.argv[1]), {"hello": handler.handler, "sleep": handler.sleep_handler}, workers))


if __name__ == "__main__":
    main()
