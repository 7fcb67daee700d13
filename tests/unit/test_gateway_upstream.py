"""The gateway's HTTP/1.1 client (`kfn_gateway.upstream.Pool`) against instances that answer with
raw bytes: keep-alive reuse, every way an answer's body can end, interim answers, broken answers,
stale and idle connections."""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from kfn_gateway.upstream import KEEPALIVE_MARGIN, ConnectionBroken, Pool, StaleConnection
from tests.support.backend import FakeBackend
from tests.support.functions import make_function
from tests.support.gateway import RawInstance, answer_with, http_answer, running_gateway
from tests.support.waiting import eventually

OK = http_answer(b"ok")
GET = b"GET / HTTP/1.1\r\nHost: instance\r\n\r\n"
HEAD = b"HEAD / HTTP/1.1\r\nHost: instance\r\n\r\n"


@contextlib.asynccontextmanager
async def pool_of(*, keepalive_timeout: float = 5.0, max_head_bytes: int = 64 * 1024) -> AsyncIterator[Pool]:
    pool = Pool(connect_timeout=1.0, keepalive_timeout=keepalive_timeout, max_head_bytes=max_head_bytes)
    try:
        yield pool
    finally:
        pool.close()


async def exchange(pool: Pool, raw: RawInstance, head: bytes = GET,
                   body: bytes | AsyncIterator[bytes] | None = None, *,
                   chunked: bool = False) -> tuple[int, list[tuple[str, str]], bytes]:
    """One request on a pooled connection: (status, headers, the whole body)."""
    connection = await pool.connect("127.0.0.1", raw.port)
    answer = await connection.send(head, body, chunked=chunked, timeout=5)
    try:
        parts = [answer.buffered()]
        for _ in range(10_000):
            chunk = await answer.read_chunk(5)
            if not chunk:
                break
            parts.append(chunk)
    finally:
        answer.release()
    return answer.status, answer.headers, b"".join(parts)


async def test_sequential_requests_reuse_one_keep_alive_connection() -> None:
    async with RawInstance(answer_with(OK)) as raw, pool_of() as pool:
        for _ in range(5):
            assert (await exchange(pool, raw))[::2] == (200, b"ok")
        assert pool.idle("127.0.0.1", raw.port) == 1
    assert raw.connections == 1
    assert len(raw.requests) == 5


async def test_a_chunked_answer_is_read_whole_and_the_connection_reused() -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"
    async with RawInstance(answer_with(chunked)) as raw, pool_of() as pool:
        for _ in range(2):
            assert (await exchange(pool, raw))[::2] == (200, b"abcdefg")
    assert raw.connections == 1


async def test_an_answer_ended_by_closing_the_connection_is_read_whole() -> None:
    until_close = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"x" * 300_000
    async with RawInstance(answer_with(until_close, keep=False)) as raw, pool_of() as pool:
        for _ in range(2):
            assert (await exchange(pool, raw))[::2] == (200, b"x" * 300_000)
    assert raw.connections == 2


async def test_a_large_answer_is_read_whole_with_back_pressure() -> None:
    big = bytes(range(256)) * (3 * 1024 * 1024 // 256)
    async with RawInstance(answer_with(http_answer(big))) as raw, pool_of() as pool:
        assert (await exchange(pool, raw))[::2] == (200, big)
        assert (await exchange(pool, raw))[::2] == (200, big)
    assert raw.connections == 1


async def test_answers_without_a_body_keep_the_connection() -> None:
    answers = iter([b"HTTP/1.1 204 No Content\r\n\r\n", b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n\r\n", OK])

    async def answer(head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(next(answers))
        return True

    async with RawInstance(answer) as raw, pool_of() as pool:
        assert (await exchange(pool, raw))[::2] == (204, b"")
        status, headers, _ = await exchange(pool, raw)
        assert status == 304 and ("ETag", '"v1"') in headers
        assert (await exchange(pool, raw))[::2] == (200, b"ok")
    assert raw.connections == 1


async def test_an_interim_answer_is_skipped_for_the_final_one() -> None:
    early = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n" + OK
    async with RawInstance(answer_with(early)) as raw, pool_of() as pool:
        status, headers, body = await exchange(pool, raw)
        assert (status, body) == (200, b"ok")
        assert all(name != "Link" for name, _ in headers)
        assert (await exchange(pool, raw))[::2] == (200, b"ok")


async def test_a_head_answer_ends_after_its_headers() -> None:
    head_answer = b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"
    async with RawInstance(answer_with(head_answer)) as raw, pool_of() as pool:
        for _ in range(2):
            status, headers, body = await exchange(pool, raw, HEAD)
            assert (status, body) == (200, b"")
            assert ("Content-Length", "1234") in headers


async def test_a_malformed_answer_is_a_broken_connection() -> None:
    async with RawInstance(answer_with(b"NONSENSE\r\n\r\n", keep=False)) as raw, pool_of() as pool:
        with pytest.raises(ConnectionBroken):
            await exchange(pool, raw)
        assert pool.idle("127.0.0.1", raw.port) == 0


async def test_an_answer_whose_headers_exceed_the_limit_is_a_broken_connection() -> None:
    huge = b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-Filler-%d: %s\r\n" % (i, b"v" * 1000) for i in range(10)) + \
        b"Content-Length: 2\r\n\r\nok"
    async with RawInstance(answer_with(huge)) as raw, pool_of(max_head_bytes=4096) as pool:
        with pytest.raises(ConnectionBroken, match="larger than 4096"):
            await exchange(pool, raw)


async def test_an_answer_cut_short_is_a_broken_connection() -> None:
    cut = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this"
    async with RawInstance(answer_with(cut, keep=False)) as raw, pool_of() as pool:
        with pytest.raises(ConnectionBroken):
            await exchange(pool, raw)


async def test_an_idle_connection_closed_by_the_instance_is_not_used_again() -> None:
    async with RawInstance(answer_with(OK, keep=False)) as raw, pool_of() as pool:
        # The instance closes after answering, without saying so in the headers.
        assert (await exchange(pool, raw))[::2] == (200, b"ok")
        await eventually(lambda: raw.closed == 1 and pool.idle("127.0.0.1", raw.port) == 0)
        assert (await exchange(pool, raw))[::2] == (200, b"ok")
    assert raw.connections == 2


async def test_a_reused_connection_closed_before_answering_is_stale() -> None:
    answered: list[int] = []

    async def first_only(head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        if answered:
            return False  # closes the reused connection without a byte of answer
        answered.append(1)
        writer.write(OK)
        return True

    async with RawInstance(first_only) as raw, pool_of() as pool:
        await exchange(pool, raw)
        with pytest.raises(StaleConnection):
            await exchange(pool, raw)


async def test_a_new_connection_closed_before_answering_is_broken_but_not_stale() -> None:
    async with RawInstance(answer_with(b"", keep=False)) as raw, pool_of() as pool:
        with pytest.raises(ConnectionBroken) as raised:
            await exchange(pool, raw)
    assert not isinstance(raised.value, StaleConnection)


async def test_the_pool_closes_connections_idle_past_the_keepalive_timeout() -> None:
    async with RawInstance(answer_with(OK)) as raw, pool_of(keepalive_timeout=0.05) as pool:
        await exchange(pool, raw)
        assert pool.idle("127.0.0.1", raw.port) == 1
        await eventually(lambda: raw.closed == 1)
        assert pool.idle("127.0.0.1", raw.port) == 0


async def test_an_instances_shorter_keep_alive_timeout_is_honoured() -> None:
    announced = http_answer(b"ok", headers=f"Keep-Alive: timeout={KEEPALIVE_MARGIN + 0.1}\r\n")
    async with RawInstance(answer_with(announced)) as raw, pool_of(keepalive_timeout=15) as pool:
        await exchange(pool, raw)
        assert pool.idle("127.0.0.1", raw.port) == 1
        # Let go a margin before the instance's own timeout: after about 0.1 s, not 15.
        await eventually(lambda: raw.closed == 1, timeout=2.0)


async def test_a_connection_the_instance_keeps_only_briefly_is_not_kept() -> None:
    announced = http_answer(b"ok", headers=f"Keep-Alive: timeout={KEEPALIVE_MARGIN / 2}\r\n")
    async with RawInstance(answer_with(announced)) as raw, pool_of() as pool:
        await exchange(pool, raw)
        assert pool.idle("127.0.0.1", raw.port) == 0


async def test_an_early_answer_to_an_upload_comes_back_and_the_connection_is_not_reused() -> None:
    async def refuse_then_drain(head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(http_answer(b"too big", status="413 Payload Too Large"))
        await writer.drain()
        for _ in range(10_000):  # take (and drop) the rest of the upload
            if not await reader.read(65536):
                break
        return False

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(64):
            yield b"q" * 65536
            await asyncio.sleep(0)

    head = b"POST / HTTP/1.1\r\nHost: instance\r\nTransfer-Encoding: chunked\r\n\r\n"
    async with RawInstance(refuse_then_drain) as raw, pool_of() as pool:
        status, _, body = await exchange(pool, raw, head, chunks(), chunked=True)
        assert (status, body) == (413, b"too big")
        assert pool.idle("127.0.0.1", raw.port) == 0


async def test_a_streamed_chunked_upload_reaches_the_instance_whole() -> None:
    received: list[bytes] = []

    async def read_chunked(head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        data = bytearray()
        for _ in range(10_000 if head.startswith(b"POST") else 0):
            size = int((await reader.readline()).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            data += chunk[:-2]
        received.append(bytes(data))
        writer.write(OK)
        return True

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(8):
            yield bytes([i]) * 100_000

    head = b"POST / HTTP/1.1\r\nHost: instance\r\nTransfer-Encoding: chunked\r\n\r\n"
    async with RawInstance(read_chunked) as raw, pool_of() as pool:
        assert (await exchange(pool, raw, head, chunks(), chunked=True))[::2] == (200, b"ok")
        assert (await exchange(pool, raw))[::2] == (200, b"ok")
    assert received == [b"".join(bytes([i]) * 100_000 for i in range(8)), b""]
    assert raw.connections == 1


async def test_reachable_tells_whether_an_address_takes_connections() -> None:
    async with RawInstance(answer_with(OK)) as raw, pool_of() as pool:
        assert await pool.reachable("127.0.0.1", raw.port)
        assert pool.idle("127.0.0.1", raw.port) == 1  # kept for the next request
        port = raw.port
    async with pool_of() as pool:
        assert not await pool.reachable("127.0.0.1", port)


async def test_close_idle_closes_the_idle_connections_to_one_address() -> None:
    async with RawInstance(answer_with(OK)) as raw, pool_of() as pool:
        await exchange(pool, raw)
        pool.close_idle("127.0.0.1", raw.port)
        assert pool.idle("127.0.0.1", raw.port) == 0
        await eventually(lambda: raw.closed == 1)


# -- through the gateway ----------------------------------------------------------------------------

RESULT = http_answer(b'"ok"', headers="Content-Type: application/json\r\n")


async def test_sequential_invocations_through_the_gateway_reuse_one_connection() -> None:
    async with RawInstance(answer_with(RESULT)) as raw:
        backend = FakeBackend(make_function("hello"))
        async with backend, running_gateway(backend) as gw:
            backend.mark_ready(raw.instance())
            for _ in range(5):
                assert (await gw.json("GET", "/function/hello"))[:2] == (200, "ok")
    assert raw.connections == 1
    assert len(raw.requests) == 5


async def test_idle_connections_to_an_instance_leaving_rotation_are_closed() -> None:
    async with RawInstance(answer_with(RESULT)) as raw:
        backend = FakeBackend(make_function("hello"))
        async with backend, running_gateway(backend) as gw:
            backend.mark_ready(raw.instance())
            assert (await gw.json("GET", "/function/hello"))[:2] == (200, "ok")
            assert raw.closed == 0
            backend.report_failure(raw.instance(), error="draining")
            await eventually(lambda: raw.closed == 1)
