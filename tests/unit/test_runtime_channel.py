"""kfn's own channel between the host and the environments its zygote forks (`kfn_runtime.frames`):
the frames, the host's side (`runtime_api.ChannelAPI`, driven in-process) and kfn's client's side
(`ric.ChannelClient`, over a real socket pair)."""
from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import pytest

from kfn_runtime import awslambda, frames, ric
from kfn_runtime.execution import Environment, HostConfig, Invocation
from kfn_runtime.host import InstanceHost
from kfn_runtime.runtime_api import MAX_RESPONSE_BYTES, ChannelAPI


def _body(frame: bytes) -> bytes:
    assert int.from_bytes(frame[:4], "big") == len(frame) - 4
    return frame[4:]


def test_an_invocation_frame_carries_what_the_runtime_api_headers_would() -> None:
    frame = frames.invocation("req-1", 1700000000123, b"arn:aws:lambda:us-east-1:0:function:f", "Root=1-a\r\n",
                              '{"custom":{"a":"b"}}', b'{"event": "\\n"}')
    headers, event = frames.read_invocation(_body(frame))
    assert headers == {"lambda-runtime-aws-request-id": "req-1", "lambda-runtime-deadline-ms": "1700000000123",
                       "lambda-runtime-invoked-function-arn": "arn:aws:lambda:us-east-1:0:function:f",
                       "lambda-runtime-trace-id": "Root=1-a",   # line breaks dropped, as in a header
                       "lambda-runtime-client-context": '{"custom":{"a":"b"}}'}
    assert event == b'{"event": "\\n"}'


def test_an_invocation_without_trace_or_client_context_has_no_such_headers() -> None:
    headers, event = frames.read_invocation(_body(frames.invocation("r", 1, b"arn", None, None, b"")))
    assert "lambda-runtime-trace-id" not in headers and "lambda-runtime-client-context" not in headers
    assert event == b""


def test_a_result_frame_names_its_invocation_error_type_and_peak_memory() -> None:
    frame = _body(frames.result("req-1", b'{"errorType": "ValueError"}', "ValueError", 20480))
    error, request_id, error_type, peak, start = frames.read_result_head(frame) or ()
    assert (error, request_id, error_type, peak) == (True, "req-1", "ValueError", 20480)
    assert frame[start:] == b'{"errorType": "ValueError"}'
    ok = _body(frames.result("req-2", b'"fine"\n', None, 1))
    assert frames.read_result_head(ok) == (False, "req-2", None, 1, len(ok) - 7)


# -- the host's side ---------------------------------------------------------------------------


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.sent = bytearray()
        self.closed = False

    def write(self, data: Any) -> None:
        self.sent += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


class _Spawner:
    """One environment whose channel the test drives."""

    def __init__(self) -> None:
        self.api: ChannelAPI | None = None
        self.transport = _Transport()

    async def start(self, host: InstanceHost) -> None:
        return None

    async def spawn(self, host: InstanceHost, env: Environment) -> None:
        self.api = host.channel(env)
        self.api.connection_made(self.transport)
        asyncio.get_running_loop().call_soon(self.api.data_received, frames.POLL)

    def kill(self, env: Environment) -> None:
        return None

    async def close(self) -> None:
        return None


async def _host(lines: list[str]) -> tuple[InstanceHost, _Spawner]:
    spawner = _Spawner()
    host = InstanceHost(HostConfig(function_name="fn", timeout=5.0, concurrency=1, memory_mb=128, region="us-east-1"),
                        spawner, log=lambda env_id, line: lines.append(line))
    await host.start(timeout=5)
    return host, spawner


async def test_the_host_delivers_an_invocation_and_reports_the_peak_memory_the_environment_sends() -> None:
    lines: list[str] = []
    host, spawner = await _host(lines)
    try:
        invocation = Invocation(b'{"x": 1}', request_id="first", timeout=5.0, trace_id="Root=1-abc")
        done = asyncio.create_task(host.invoke(invocation))
        await asyncio.sleep(0)
        headers, event = frames.read_invocation(_body(bytes(spawner.transport.sent)))
        assert headers["lambda-runtime-aws-request-id"] == "first"
        assert headers["lambda-runtime-trace-id"] == "Root=1-abc"
        assert headers["lambda-runtime-invoked-function-arn"] == host.config.arn
        assert event == b'{"x": 1}'
        result = frames.result("first", b'"ok"', None, 3 * 1024 + 1)
        assert spawner.api is not None
        for i in range(0, len(result), 3):   # in pieces, as a stream may cut it
            spawner.api.data_received(result[i:i + 3])
        async with asyncio.timeout(5):
            await done
    finally:
        await host.close()
    assert invocation.result == b'"ok"' and invocation.function_error is None
    assert any(line.startswith("REPORT RequestId: first") and "Max Memory Used: 4 MB" in line for line in lines)


async def test_a_result_over_lambdas_limit_fails_its_invocation_and_the_environment_goes_on() -> None:
    host, spawner = await _host([])
    try:
        first = Invocation(b"{}", request_id="first", timeout=5.0)
        done = asyncio.create_task(host.invoke(first))
        await asyncio.sleep(0)
        assert spawner.api is not None
        big = frames.result("first", b"x" * (MAX_RESPONSE_BYTES + 5000), None, 1)
        for i in range(0, len(big), 65536):
            spawner.api.data_received(big[i:i + 65536])
        async with asyncio.timeout(5):
            await done
        assert first.error_type == awslambda.ERROR_RESPONSE_SIZE_TOO_LARGE
        assert json.loads(first.result)["errorType"] == awslambda.ERROR_RESPONSE_SIZE_TOO_LARGE
        spawner.transport.sent.clear()
        second = Invocation(b"{}", request_id="second", timeout=5.0)
        done = asyncio.create_task(host.invoke(second))
        await asyncio.sleep(0)
        spawner.api.data_received(frames.result("second", b'"ok"', None, 1))
        async with asyncio.timeout(5):
            await done
        assert second.result == b'"ok"'
    finally:
        await host.close()


async def test_a_result_for_another_invocation_or_a_garbled_frame_closes_the_channel() -> None:
    host, spawner = await _host([])
    try:
        done = asyncio.create_task(host.invoke(Invocation(b"{}", request_id="first", timeout=5.0)))
        await asyncio.sleep(0)
        assert spawner.api is not None
        spawner.api.data_received(frames.result("stale", b'"ok"', None, 1))
        assert spawner.transport.closed
        spawner.transport.closed = False
        spawner.api.data_received(b"\x00\x00\x00\x03zzz")
        assert spawner.transport.closed
        done.cancel()
    finally:
        await host.close()


# -- kfn's client's side -----------------------------------------------------------------------


@pytest.fixture
def pair() -> Any:
    ours, theirs = socket.socketpair()
    ours.settimeout(5)
    theirs.settimeout(5)
    yield ours, ric.ChannelClient(theirs)
    ours.close()
    theirs.close()


def test_the_client_polls_then_reads_its_invocation(pair: Any) -> None:
    host_side, client = pair
    host_side.sendall(frames.invocation("req-1", 42, b"arn:x", None, None, b'{"a": 1}'))
    headers, event = client.next()
    assert host_side.recv(100) == frames.POLL
    assert headers["lambda-runtime-aws-request-id"] == "req-1" and event == b'{"a": 1}'


def test_the_client_posts_a_result_with_its_peak_memory_and_reads_the_next_invocation(pair: Any) -> None:
    host_side, client = pair
    host_side.sendall(frames.invocation("req-2", 42, b"arn:x", None, None, b"{}"))
    headers, _ = client.answer("req-1", b'{"errorMessage": "no"}', "ValueError")
    sent = host_side.recv(1000)
    error, request_id, error_type, peak, start = frames.read_result_head(_body(sent)) or ()
    assert (error, request_id, error_type) == (True, "req-1", "ValueError")
    assert isinstance(peak, int) and peak > 0
    assert _body(sent)[start:] == b'{"errorMessage": "no"}'
    assert headers["lambda-runtime-aws-request-id"] == "req-2"


def test_a_closed_channel_ends_the_environment(pair: Any) -> None:
    host_side, client = pair
    host_side.shutdown(socket.SHUT_WR)   # the host closed its end
    with pytest.raises(ric.RuntimeAPIError, match="closed"):
        client.next()
