"""The gateway's client to instances (`kfn_gateway.invoking.InstanceClient`): the invoke request
it writes, how it sorts out answers (results, function errors, rejections) and failures (not sent,
may have run, timed out), over HTTP and in-process."""
from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from kfn.core.instances import Instance, Invocation, InvocationResult
from kfn_gateway.invoking import InstanceClient, InstanceFailed, InstanceTimeout, NotSent
from kfn_runtime import contract
from tests.support.backend import TRANSPORTS, Die, FakeInstance, Fn, FunctionError, Headers, Rejected, ref
from tests.support.gateway import RawInstance, answer_with, http_answer


@contextlib.asynccontextmanager
async def client() -> AsyncIterator[InstanceClient]:
    instance_client = InstanceClient()
    await instance_client.start()
    try:
        yield instance_client
    finally:
        await instance_client.close()


@contextlib.asynccontextmanager
async def instance_running(fn: Fn, transport: str) -> AsyncIterator[Instance]:
    fake = FakeInstance(ref("hello"), "hello-1", fn, capacity=10, in_process=transport == "in-process")
    try:
        yield await fake.start()
    finally:
        await fake.stop()


async def invoke(instance: Instance, invocation: Invocation | None = None, *, timeout: float = 5.0) -> InvocationResult:
    async with client() as instance_client:
        return await instance_client.invoke(instance, invocation or Invocation(b"{}", "req-1"), timeout=timeout)


def head_lines(head: bytes) -> list[str]:
    return head.decode().split("\r\n")


async def test_an_invocation_is_posted_to_the_invoke_path_with_its_headers() -> None:
    invocation = Invocation(payload=b'{"a": 1}', request_id="req-1", client_context="e30=",
                            trace_id="Root=1-00000000-000000000000000000000001", want_log=True)
    async with RawInstance(answer_with(http_answer(b'"ok"'))) as raw:
        result = await invoke(raw.instance(), invocation)
    assert result == InvocationResult(payload=b'"ok"')
    lines = head_lines(raw.requests[0])
    assert lines[0] == f"POST {contract.PATH_INVOKE} HTTP/1.1"
    assert "X-Kfn-Request-Id: req-1" in lines
    assert "X-Amz-Client-Context: e30=" in lines
    assert "X-Amzn-Trace-Id: Root=1-00000000-000000000000000000000001" in lines
    assert "X-Amz-Log-Type: Tail" in lines
    assert "Content-Type: application/json" in lines
    assert raw.bodies == [b'{"a": 1}']


async def test_optional_invocation_headers_are_left_out_when_not_wanted() -> None:
    async with RawInstance(answer_with(http_answer(b"null"))) as raw:
        await invoke(raw.instance(), Invocation(b"{}", "req-1"))
    names = {line.split(":")[0].lower() for line in head_lines(raw.requests[0])[1:] if line}
    assert names.isdisjoint({"x-amz-client-context", "x-amzn-trace-id", "x-amz-log-type"})


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_the_functions_result_comes_back_as_the_payload(transport: str) -> None:
    seen: list[tuple[dict[str, Any], str]] = []

    def fn(event: dict[str, Any], headers: Headers) -> Any:
        seen.append((event, headers[contract.HEADER_REQUEST_ID]))
        return {"answer": 42}

    async with instance_running(fn, transport) as instance:
        result = await invoke(instance, Invocation(b'{"q": "?"}', "req-7"))
    assert json.loads(result.payload) == {"answer": 42}
    assert (result.function_error, result.error_type, result.rejected) == (None, None, None)
    assert seen == [({"q": "?"}, "req-7")]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_function_error_comes_back_with_its_type_and_error_object(transport: str) -> None:
    def fn(event: dict[str, Any], headers: Headers) -> Any:
        raise FunctionError("KeyError", "'name'")

    async with instance_running(fn, transport) as instance:
        result = await invoke(instance)
    assert result.function_error == "Unhandled"
    assert result.error_type == "KeyError"
    assert json.loads(result.payload)["errorMessage"] == "'name'"


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("reason", [contract.REJECTED_CONCURRENCY, contract.REJECTED_DRAINING,
                                    contract.REJECTED_LOADING])
async def test_an_invocation_turned_away_comes_back_rejected_with_the_reason(reason: str, transport: str) -> None:
    def fn(event: dict[str, Any], headers: Headers) -> Any:
        raise Rejected(reason)

    async with instance_running(fn, transport) as instance:
        result = await invoke(instance)
    assert result.rejected == reason
    assert reason in result.rejection
    assert result.payload == b""


async def test_an_unknown_rejection_reason_is_not_a_rejection() -> None:
    answer = http_answer(b'{"errorMessage": "full"}', status="429 Too Many Requests",
                         headers="X-Kfn-Rejected: other\r\n")
    async with RawInstance(answer_with(answer)) as raw:
        with pytest.raises(InstanceFailed) as raised:
            await invoke(raw.instance())
    assert "HTTP 429" in str(raised.value)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_the_log_tail_comes_back_when_asked_for(transport: str) -> None:
    async with instance_running(lambda event, headers: None, transport) as instance:
        result = await invoke(instance, Invocation(b"{}", "req-1", want_log=True))
    assert result.log_result is not None
    assert base64.b64decode(result.log_result) == b"log line\n"


async def test_an_address_nobody_listens_on_is_not_sent() -> None:
    async with RawInstance(answer_with(b"")) as raw:
        instance = raw.instance()
    with pytest.raises(NotSent):
        await invoke(instance)


async def test_a_gone_in_process_instance_is_not_sent() -> None:
    fake = FakeInstance(ref("hello"), "hello-1", lambda event, headers: None, capacity=1, in_process=True)
    instance = await fake.start()
    await fake.stop()
    with pytest.raises(NotSent):
        await invoke(instance)


async def test_no_answer_within_the_timeout_is_an_instance_timeout() -> None:
    async def never(head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        return True  # read the request, answer nothing

    async with RawInstance(never) as raw:
        with pytest.raises(InstanceTimeout):
            await invoke(raw.instance(), timeout=0.05)


@pytest.mark.parametrize("crash", [True, False], ids=["crashed", "reachable"])
async def test_a_connection_broken_after_sending_may_have_run_and_blames_only_an_unreachable_instance(
        crash: bool) -> None:
    def fn(event: dict[str, Any], headers: Headers) -> Any:
        raise Die(crash=crash)

    async with instance_running(fn, "http") as instance:
        with pytest.raises(InstanceFailed) as raised:
            await invoke(instance)
    assert not isinstance(raised.value, InstanceTimeout)
    assert raised.value.instance_failed is crash


def closing_reused_connections(*, fresh_too: bool = False) -> RawInstance:
    """An instance that answers the first request of a connection and closes any later one
    without answering, as an instance closing an idle connection just as the gateway writes
    into it; with `fresh_too`, it answers only the very first request of all."""
    answered: list[asyncio.StreamWriter] = []  # one per connection (held: ids are not reused)

    async def answer(head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        if writer in answered or (fresh_too and answered):
            return False
        answered.append(writer)
        writer.write(http_answer(b'"ok"'))
        await writer.drain()
        return True

    return RawInstance(answer)


async def test_a_stale_reused_connection_is_sent_again_once_on_a_new_one() -> None:
    async with closing_reused_connections() as raw, client() as instance_client:
        for _ in range(2):
            result = await instance_client.invoke(raw.instance(), Invocation(b"{}", "req"), timeout=5)
            assert result.payload == b'"ok"'
    assert raw.connections == 2
    assert len(raw.requests) == 3  # the second invocation went twice: on the stale, then a new connection


async def test_an_instance_closing_a_new_connection_without_answering_failed_the_invocation() -> None:
    async with closing_reused_connections(fresh_too=True) as raw, client() as instance_client:
        await instance_client.invoke(raw.instance(), Invocation(b"{}", "req"), timeout=5)
        with pytest.raises(InstanceFailed) as raised:
            await instance_client.invoke(raw.instance(), Invocation(b"{}", "req"), timeout=5)
    assert raised.value.instance_failed is False  # it still takes connections


async def test_an_invocation_on_a_client_not_started_is_an_error() -> None:
    async with RawInstance(answer_with(http_answer(b"null"))) as raw:
        with pytest.raises(RuntimeError):
            await InstanceClient().invoke(raw.instance(), Invocation(b"{}", "req"), timeout=1)
