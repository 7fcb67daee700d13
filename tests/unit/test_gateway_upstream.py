"""The gateway's HTTP/1.1 client to instances, against instances that answer with raw bytes:
keep-alive reuse, every way a response body can end, interim answers, and broken answers."""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Self

from aiohttp import web

from kfn.core.instances import Instance
from kfn_gateway.upstream import Pool

from .fakes import FakeBackend, eventually, make_function, ref, running_gateway, serving

Answer = Callable[[bytes, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]


class RawInstance:
    """A TCP server that reads each request head (and a Content-Length body) and lets `answer`
    write whatever bytes it likes; `answer` returns whether to keep the connection open."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.connections = 0
        self.requests: list[bytes] = []
        self.closed = 0
        self._server: asyncio.Server | None = None
        self._handlers: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self.port = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._handlers[task] = writer
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                self.requests.append(head)
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        await reader.readexactly(int(line.split(b":")[1]))
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

    def instance(self, id: str = "hello-raw") -> Instance:
        return Instance(function=ref("hello"), id=id, host="127.0.0.1", port=self.port, capacity=10)


def answer_with(data: bytes, *, keep: bool = True) -> Answer:
    async def answer(head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(data)
        await writer.drain()
        return keep

    return answer


@contextlib.asynccontextmanager
async def gateway_for(raw: RawInstance) -> AsyncIterator:
    backend = FakeBackend(make_function("hello"))
    async with backend, running_gateway(backend) as gw:
        backend.mark_ready(raw.instance())
        gw.backend = backend
        yield gw


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def test_sequential_requests_reuse_one_keep_alive_connection() -> None:
    async with RawInstance(answer_with(OK)) as raw, gateway_for(raw) as gw:
        for _ in range(5):
            status, body, _ = await gw.json("GET", "/function/hello")
            assert (status, body) == (200, "ok")
    assert raw.connections == 1
    assert len(raw.requests) == 5


async def test_a_chunked_answer_passes_through_and_the_connection_is_reused() -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"
    async with RawInstance(answer_with(chunked)) as raw, gateway_for(raw) as gw:
        for _ in range(2):
            status, body, _ = await gw.json("GET", "/function/hello")
            assert (status, body) == (200, "abcdefg")
    assert raw.connections == 1


async def test_an_answer_ended_by_closing_the_connection_passes_through_whole() -> None:
    until_close = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"x" * 300_000
    async with RawInstance(answer_with(until_close, keep=False)) as raw, gateway_for(raw) as gw:
        for _ in range(2):
            status, body, _ = await gw.json("GET", "/function/hello")
            assert status == 200 and body == "x" * 300_000
        assert gw.backend.failures == []
    assert raw.connections == 2


async def test_answers_without_a_body_keep_the_connection() -> None:
    answers = iter([b"HTTP/1.1 204 No Content\r\n\r\n", b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n\r\n", OK])

    async def answer(head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(next(answers))
        return True

    async with RawInstance(answer) as raw, gateway_for(raw) as gw:
        assert (await gw.json("GET", "/function/hello"))[0] == 204
        status, _, headers = await gw.json("GET", "/function/hello")
        assert status == 304 and headers["ETag"] == '"v1"'
        assert (await gw.json("GET", "/function/hello"))[:2] == (200, "ok")
    assert raw.connections == 1


async def test_an_interim_answer_is_skipped_for_the_final_one() -> None:
    early = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n" + OK
    async with RawInstance(answer_with(early)) as raw, gateway_for(raw) as gw:
        assert (await gw.json("GET", "/function/hello"))[:2] == (200, "ok")
        assert (await gw.json("GET", "/function/hello"))[:2] == (200, "ok")


async def test_head_answers_end_after_the_headers() -> None:
    head_answer = b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"
    async with RawInstance(answer_with(head_answer)) as raw, gateway_for(raw) as gw:
        for _ in range(2):
            async with gw.session.head(gw.url("/function/hello")) as response:
                assert response.status == 200
                assert response.headers["Content-Length"] == "1234"


async def test_a_malformed_answer_is_502_and_reported() -> None:
    async with RawInstance(answer_with(b"NONSENSE\r\n\r\n", keep=False)) as raw, gateway_for(raw) as gw:
        status, body, _ = await gw.json("GET", "/function/hello")
        assert status == 502 and body["function"] == "hello"
        assert [i.id for i, _ in gw.backend.failures] == ["hello-raw"]


async def test_an_idle_connection_closed_by_the_instance_is_not_used_again() -> None:
    async with RawInstance(answer_with(OK, keep=False)) as raw, gateway_for(raw) as gw:
        # The instance closes after answering, without saying so in the headers.
        assert (await gw.json("GET", "/function/hello"))[:2] == (200, "ok")
        pool = gw.gateway._proxy._pool
        await eventually(lambda: raw.closed == 1 and pool.idle("127.0.0.1", raw.port) == 0)
        assert (await gw.json("GET", "/function/hello"))[:2] == (200, "ok")
        assert gw.backend.failures == []
    assert raw.connections == 2


async def test_an_early_answer_to_an_upload_reaches_the_client() -> None:
    async def refuse(request: web.Request) -> web.Response:
        return web.json_response({"error": "too big for me"}, status=413)

    app = serving(refuse)

    backend = FakeBackend(make_function("hello"), app_factory=app)
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")

        async def chunks():
            for _ in range(64):
                yield b"q" * 65536

        status, body, _ = await gw.json("POST", "/function/hello", data=chunks())
        assert status == 413 and body == {"error": "too big for me"}
        assert backend.failures == []
        assert (await gw.json("GET", "/function/hello"))[0] == 413


async def test_the_pool_closes_connections_idle_past_the_keepalive_timeout() -> None:
    async with RawInstance(answer_with(OK)) as raw:
        pool = Pool(connect_timeout=1.0, keepalive_timeout=0.05)
        connection = await pool.connect("127.0.0.1", raw.port)
        response = await connection.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", None, chunked=False, timeout=5)
        while await response.read_chunk(5):
            pass
        response.release()
        assert pool.idle("127.0.0.1", raw.port) == 1
        await eventually(lambda: raw.closed == 1)
        assert pool.idle("127.0.0.1", raw.port) == 0
        pool.close()


async def test_idle_connections_to_an_instance_leaving_rotation_are_closed() -> None:
    async with RawInstance(answer_with(OK)) as raw, gateway_for(raw) as gw:
        assert (await gw.json("GET", "/function/hello"))[:2] == (200, "ok")
        assert raw.closed == 0
        gw.backend.report_failure(raw.instance(), error="draining")
        await eventually(lambda: raw.closed == 1)


def closing_on_second_request() -> tuple[Answer, list[int]]:
    """Answers the first request of each connection; closes on the second without answering, as
    an instance does that closes an idle connection just as the gateway writes into it."""
    served: list[int] = []

    async def answer(head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        task = asyncio.current_task()
        count = sum(1 for t in served if t == id(task))
        served.append(id(task))
        if count >= 1:
            return False
        writer.write(OK)
        await writer.drain()
        return True

    return answer, served


async def test_a_get_on_a_reused_connection_closed_before_answering_goes_again_on_a_new_one() -> None:
    answer, _ = closing_on_second_request()
    async with RawInstance(answer) as raw, gateway_for(raw) as gw:
        assert (await gw.json("GET", "/function/hello"))[:2] == (200, "ok")
        assert (await gw.json("GET", "/function/hello"))[:2] == (200, "ok")
        assert gw.backend.failures == []
    assert raw.connections == 2


async def test_a_post_on_such_a_connection_fails_without_taking_a_live_instance_out_of_rotation() -> None:
    answer, _ = closing_on_second_request()
    async with RawInstance(answer) as raw, gateway_for(raw) as gw:
        assert (await gw.json("POST", "/function/hello", data=b"once"))[:2] == (200, "ok")
        status, body, _ = await gw.json("POST", "/function/hello", data=b"maybe twice")
        assert status == 502 and "closed the connection before answering" in body["error"]
        assert gw.backend.failures == []
        assert (await gw.json("POST", "/function/hello", data=b"again"))[:2] == (200, "ok")
    assert [head.split(b" ")[0] for head in raw.requests].count(b"POST") == 3


async def test_an_answer_whose_headers_exceed_the_limit_is_502() -> None:
    huge = b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-Filler-%d: %s\r\n" % (i, b"v" * 1000) for i in range(100)) + \
        b"Content-Length: 2\r\n\r\nok"
    async with RawInstance(answer_with(huge)) as raw, gateway_for(raw) as gw:
        status, body, _ = await gw.json("GET", "/function/hello")
        assert status == 502 and "larger than" in body["error"]


async def test_an_instances_shorter_keep_alive_timeout_is_honoured() -> None:
    announced = b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=1.3\r\nContent-Length: 2\r\n\r\nok"
    async with RawInstance(answer_with(announced)) as raw, gateway_for(raw) as gw:
        assert (await gw.json("GET", "/function/hello"))[:2] == (200, "ok")
        # The gateway's own keep-alive timeout is 15 s; the instance said 1.3 s, so the gateway
        # lets the connection go a margin before that.
        await eventually(lambda: raw.closed == 1, timeout=3.0)
        assert gw.backend.failures == []
