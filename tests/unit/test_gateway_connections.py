"""The gateway's client connections: deadlines for heads, bodies and idle connections, quiet JSON
400s for malformed requests, Expect: 100-continue, and absolute-form request targets."""
from __future__ import annotations

import asyncio
import json
import logging
import resource
import socket
import struct
from collections.abc import Coroutine
from typing import Any

import pytest
from aiohttp import web

from kfn_gateway.connections import ConnectionLimits, GuardedAppRunner, GuardedServer, RefusedConnection
from kfn_gateway.http_api import origin_form as _origin_form
from kfn_gateway.settings import GatewaySettings
from tests.support.backend import ControlledFunctions, FakeBackend, returning
from tests.support.functions import make_function
from tests.support.gateway import RunningGateway, running_gateway
from tests.support.waiting import eventually

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


# -- sending answers: a client that stops reading, and the connection cap ----------------------------

BIG_ANSWER = {"statusCode": 200, "body": "x" * (12 << 20)}   # more than loopback's kernel buffers hold
TCP_CLOSE = 7


def tcp_state(sock: socket.socket) -> int:
    """The kernel's TCP state of `sock` (tcpi_state: 1 ESTABLISHED, 7 CLOSE after a reset)."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]


def open_connections(gw: RunningGateway) -> int:
    server = gw.runner.server
    assert server is not None
    return len(server.connections)


async def test_a_client_that_stops_reading_its_answer_is_reset_after_the_send_timeout() -> None:
    backend = FakeBackend(make_function("big"), in_process=True, fn=returning(BIG_ANSWER))
    async with backend, running_gateway(backend, settings=GatewaySettings(send_timeout=0.3)) as gw:
        await backend.add_instance("big")
        with socket.socket() as client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            client.setblocking(False)
            await asyncio.get_running_loop().sock_connect(client, ("127.0.0.1", gw.port))
            client.sendall(b"GET /function/big HTTP/1.1\r\nHost: x\r\n\r\n")
            await eventually(lambda: open_connections(gw) == 1)
            # It reads nothing: the gateway resets the connection, dropping the answer it buffered.
            await eventually(lambda: tcp_state(client) == TCP_CLOSE and open_connections(gw) == 0, timeout=20)
        status_, _, _ = await gw.json("GET", "/function/big")
        assert status_ == 200


def kernel_holds(local_port: int, remote_port: int) -> bool:
    """Whether the kernel still has a TCP socket 127.0.0.1:local_port ↔ :remote_port, the gateway's
    descriptor closed or not (an orphan still sending what it was given)."""
    wanted = (f"0100007F:{local_port:04X}", f"0100007F:{remote_port:04X}")
    with open("/proc/net/tcp") as table:
        return any(tuple(line.split()[1:3]) == wanted for line in table.readlines()[1:])


async def test_an_answer_left_in_the_kernel_for_a_client_that_never_reads_is_dropped_after_the_send_timeout() -> None:
    # 1 MB fits in loopback's send buffer: the gateway hands it all to the kernel and closes the
    # connection (Connection: close), and the connection leaves the cap. The kernel would keep the
    # megabyte, and its socket, for as long as the client keeps its window shut: hours.
    answer = {"statusCode": 200, "body": "x" * (1 << 20)}
    backend = FakeBackend(make_function("big"), in_process=True, fn=returning(answer))
    async with backend, running_gateway(backend, settings=GatewaySettings(send_timeout=0.5)) as gw:
        await backend.add_instance("big")
        with socket.socket() as client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            client.setblocking(False)
            await asyncio.get_running_loop().sock_connect(client, ("127.0.0.1", gw.port))
            client.sendall(b"GET /function/big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            port = client.getsockname()[1]
            await eventually(lambda: open_connections(gw) == 0, timeout=10)
            await eventually(lambda: not kernel_holds(gw.port, port), timeout=20, interval=0.1)


async def test_a_client_reading_a_byte_at_a_time_too_slowly_to_empty_the_buffer_is_reset() -> None:
    # A slow-read attack: the client never stops reading, but takes a byte where the gateway's
    # buffer needs tens of kilobytes taken within the send timeout; it would hold its answer for hours.
    backend = FakeBackend(make_function("big"), in_process=True, fn=returning(BIG_ANSWER))
    async with backend, running_gateway(backend, settings=GatewaySettings(send_timeout=0.5)) as gw:
        await backend.add_instance("big")
        with socket.socket() as client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            client.setblocking(False)
            await asyncio.get_running_loop().sock_connect(client, ("127.0.0.1", gw.port))
            client.sendall(b"GET /function/big HTTP/1.1\r\nHost: x\r\n\r\n")
            taken = 0

            def reset_while_reading() -> bool:
                nonlocal taken
                try:
                    taken += len(client.recv(1))
                except BlockingIOError:
                    pass
                except ConnectionResetError:
                    return True
                return tcp_state(client) == TCP_CLOSE

            await eventually(reset_while_reading, timeout=30, interval=0.02)
            await eventually(lambda: open_connections(gw) == 0)
    assert 0 < taken < len(BIG_ANSWER["body"])


async def test_a_client_reading_its_answer_slowly_but_steadily_gets_all_of_it() -> None:
    # 48 reads of 64 KiB, a twentieth of a second apart: longer in all than the send timeout,
    # never silent for a tenth of it.
    answer = {"statusCode": 200, "body": "y" * (3 << 20)}
    backend = FakeBackend(make_function("big"), in_process=True, fn=returning(answer))
    async with backend, running_gateway(backend, settings=GatewaySettings(send_timeout=1.0)) as gw:
        await backend.add_instance("big")
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port, limit=1 << 16)
        try:
            writer.write(b"GET /function/big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            received = b""
            async with asyncio.timeout(60):
                while chunk := await reader.read(1 << 16):
                    received += chunk
                    await asyncio.sleep(0.05)
        finally:
            writer.close()
    assert status(received) == 200
    assert len(received.split(b"\r\n\r\n", 1)[1]) == 3 << 20


async def test_a_connection_over_the_cap_is_answered_503_and_closed_and_served_once_one_goes() -> None:
    backend = FakeBackend(make_function("hello"))
    async with backend, running_gateway(backend, settings=GatewaySettings(max_connections=3)) as gw:
        await backend.add_instance("hello")
        held = [await asyncio.open_connection("127.0.0.1", gw.port) for _ in range(3)]
        try:
            await eventually(lambda: open_connections(gw) == 3)
            answer = await exchange(gw.port, b"GET /function/hello HTTP/1.1\r\nHost: x\r\n\r\n")
            assert status(answer) == 503
            assert b"\r\nRetry-After: 1\r\n" in answer
            assert "limit" in body(answer)["error"]
            assert open_connections(gw) == 3
            held.pop()[1].close()
            await eventually(lambda: open_connections(gw) == 2)
            answer = await exchange(gw.port, b"GET /function/hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert status(answer) == 200
        finally:
            for _, writer in held:
                writer.close()


async def test_a_send_timeout_longer_than_the_kernel_takes_still_serves() -> None:
    # 30 days: more milliseconds than TCP_USER_TIMEOUT holds (a 32-bit int).
    backend = FakeBackend(make_function("hello"))
    async with backend, running_gateway(backend, settings=GatewaySettings(send_timeout=30 * 86400.0)) as gw:
        await backend.add_instance("hello")
        answer = await exchange(gw.port, b"GET /function/hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status(answer) == 200


def reset_by_client(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def test_connections_ended_in_every_way_give_their_place_under_the_cap_back() -> None:
    cap = 6
    held = ControlledFunctions()
    backend = FakeBackend(make_function("hello"), fn=held, in_process=True)
    settings = GatewaySettings(max_connections=cap, header_timeout=0.2, body_timeout=0.2, idle_timeout=0.3,
                               send_timeout=0.3)
    async with backend, running_gateway(backend, settings=settings) as gw:
        await backend.add_instance("hello")
        server = gw.runner.server
        assert isinstance(server, GuardedServer)

        def connect() -> Coroutine[Any, Any, tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
            return asyncio.open_connection("127.0.0.1", gw.port)

        head = b"GET /function/hello HTTP/1.1\r\nHost: x\r\n\r\n"
        left: list[asyncio.StreamWriter] = []   # for the gateway's timeouts to end
        for round_ in range(2):
            _, writer = await connect()                      # closed at once, and reset at once
            writer.close()
            _, writer = await connect()
            reset_by_client(writer)
            for end in (asyncio.StreamWriter.close, reset_by_client, left.append):   # half a head
                _, writer = await connect()
                writer.write(head[:20])
                await writer.drain()
                end(writer)
            _, writer = await connect()                      # half a body
            writer.write(b"POST /function/hello HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab")
            left.append(writer)
            left.append((await connect())[1])                # idle
            reader, writer = await connect()                 # closed by the gateway after its answer
            writer.write(head.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
            assert status(await reader.read(-1)) == 200
            writer.close()
            _, writer = await connect()                      # pipelined, never read
            writer.write(head * 20)
            await writer.drain()
            writer.close()
            _, writer = await connect()                      # gone while its function runs
            writer.write(head.replace(b"/hello", f"/hello/hold/{round_}".encode()))
            await writer.drain()
            await eventually(lambda: held.held() == 1)
            reset_by_client(writer)
            over = [await connect() for _ in range(cap + 20)]   # over the cap: refused, lingering or reset
            await asyncio.gather(*(reader.read(-1) for reader, _ in over), return_exceptions=True)
            for _, writer in over:
                writer.close()
            await eventually(lambda: server.open_connections == 0 and RefusedConnection.lingering == 0, timeout=10)
            assert held.held() == 1   # the function runs on (its instance slot is held): not its connection
            held.release(str(round_))
            await eventually(lambda: held.held() == 0)
            for writer in left:
                writer.close()
        served = [await connect() for _ in range(cap)]
        try:
            for _, writer in served:
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert [status(await reader.readuntil(b"\r\n\r\n")) for reader, _ in served] == [200] * cap
        finally:
            for _, writer in served:
                writer.close()


@pytest.mark.parametrize("limits", [{"send_timeout": 0}, {"max_connections": 0}])
def test_a_send_timeout_or_connection_cap_that_is_not_positive_is_refused(limits: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(limits))):
        ConnectionLimits(**limits).check()


def test_a_connection_cap_above_the_open_file_limit_raises_the_limit_to_make_room_for_it() -> None:
    # Reaching the cap must not first run the process out of descriptors (1024, the usual soft
    # limit, is the default cap): the manifests, the event store, instances need theirs too.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip(f"the hard limit on open files is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    try:
        GuardedAppRunner(web.Application(), limits=ConnectionLimits(max_connections=1024))
        raised = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert raised == resource.RLIM_INFINITY or raised > 1024 + 100
