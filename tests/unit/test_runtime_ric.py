"""kfn's Runtime API client for Python (`kfn_runtime.ric`), in-process: one invocation's outcome
(`_run`) and the client's HTTP over a socket pair. The real loop in real environments is in
tests/e2e/test_runtime_host.py."""
from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from kfn_runtime import context as context_module
from kfn_runtime import contract, ric
from kfn_runtime.logs import current_request_id
from kfn_runtime.wire import response

HEADERS = {"lambda-runtime-aws-request-id": "req-1", "lambda-runtime-deadline-ms": str(int(time.time() * 1000) + 5000),
           "lambda-runtime-invoked-function-arn": "arn:aws:lambda:us-east-1:000000000000:function:f",
           "content-type": "application/json"}


@pytest.fixture(autouse=True)
def request_id(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(context_module, "_names", ())
    token = current_request_id.set("req-1")
    yield
    current_request_id.reset(token)


def run(function: Callable[..., Any], body: bytes = b"{}", *, loop: Any = None,
        headers: dict[str, str] | None = None) -> tuple[Any, str | None]:
    answer, error_type = ric._run(function, loop, {**HEADERS, **(headers or {})}, body, "req-1")
    return json.loads(answer), error_type


def test_result_is_posted_as_json() -> None:
    assert run(lambda event, context: {"got": event, "id": context.aws_request_id}, b'{"a": 1}') == (
        {"got": {"a": 1}, "id": "req-1"}, None)


def test_bytes_result_is_posted_as_it_is() -> None:
    answer, error_type = ric._run(lambda event, context: b"\x00raw", None, HEADERS, b"{}", "req-1")
    assert (answer, error_type) == (b"\x00raw", None)


def test_empty_body_is_a_none_event() -> None:
    assert run(lambda event, context: event is None, b"") == (True, None)


def test_non_json_content_type_passes_the_body_as_bytes() -> None:
    octets = {"content-type": "application/octet-stream"}
    assert run(lambda event, context: repr(event), b"\x01raw", headers=octets) == ("b'\\x01raw'", None)


def test_handler_exception_is_lambdas_error_object() -> None:
    def handler(event: Any, context: Any) -> None:
        raise KeyError("missing")

    error, error_type = run(handler)
    assert error_type == "KeyError"
    assert (error["errorType"], error["errorMessage"], error["requestId"]) == ("KeyError", "'missing'", "req-1")
    assert isinstance(error["stackTrace"], list) and all(isinstance(line, str) for line in error["stackTrace"])
    assert any("raise KeyError" in line for line in error["stackTrace"])


def test_unserialisable_result_is_a_marshal_error() -> None:
    error, error_type = run(lambda event, context: {"when": object()})
    assert (error_type, error["errorType"]) == ("Runtime.MarshalError", "Runtime.MarshalError")
    assert "not JSON serializable" in error["errorMessage"]


def test_malformed_event_is_an_unmarshal_error() -> None:
    error, error_type = run(lambda event, context: "never called", b"{not json")
    assert (error_type, error["errorType"]) == ("Runtime.UnmarshalError", "Runtime.UnmarshalError")


def test_client_context_that_is_not_an_object_is_an_unmarshal_error() -> None:
    error, error_type = run(lambda event, context: "never called",
                            headers={"lambda-runtime-client-context": "[1, 2]"})
    assert error_type == "Runtime.UnmarshalError"


def test_async_handler_runs_on_the_given_loop() -> None:
    async def handler(event: Any, context: Any) -> dict[str, Any]:
        await asyncio.sleep(0)
        return {"async": event["n"]}

    loop = asyncio.new_event_loop()
    try:
        assert run(handler, b'{"n": 3}', loop=loop) == ({"async": 3}, None)
    finally:
        loop.close()


def test_error_object_has_the_fields_awslambdaric_sends() -> None:
    try:
        raise ValueError("bad")
    except ValueError as e:
        error = json.loads(ric.error_object(e))
    assert set(error) == {"errorMessage", "errorType", "requestId", "stackTrace"}


# --- the client's HTTP ------------------------------------------------------------------------

class FakeRuntimeAPI:
    """The host's side of a socket pair: records what the client wrote, answers what it is told."""

    def __init__(self) -> None:
        self.ours, theirs = socket.socketpair()
        self.ours.settimeout(5)
        self.client = ric.RuntimeClient(sock=theirs)
        theirs.settimeout(5)

    def answer(self, data: bytes) -> None:
        self.ours.sendall(data)

    def received(self, size: int = 65536) -> bytes:
        return self.ours.recv(size)

    def close(self) -> None:
        self.ours.close()


@pytest.fixture
def api() -> Iterator[FakeRuntimeAPI]:
    fake = FakeRuntimeAPI()
    yield fake
    fake.close()
    fake.client._sock.close()  # type: ignore[union-attr]


def invocation(request_id: str, body: bytes) -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nLambda-Runtime-Aws-Request-Id: "
            + request_id.encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)


def test_next_asks_for_work_and_reads_the_invocation(api: FakeRuntimeAPI) -> None:
    api.answer(invocation("abc", b'{"n": 1}'))
    headers, body = api.client.next()
    assert api.received() == ric.NEXT
    assert (headers["lambda-runtime-aws-request-id"], body) == ("abc", b'{"n": 1}')


def test_invocation_split_across_reads_is_reassembled(api: FakeRuntimeAPI) -> None:
    data = invocation("abc", b'{"padding": "' + b"x" * 200_000 + b'"}')
    def trickle() -> None:
        for i in range(0, len(data), 1000):
            api.answer(data[i:i + 1000])

    thread = threading.Thread(target=trickle)
    thread.start()
    try:
        _, body = api.client.next()
    finally:
        thread.join(10)
    assert len(body) == 200_000 + 15


def test_post_and_next_pipelines_the_result_and_the_next_poll(api: FakeRuntimeAPI) -> None:
    api.answer(contract.RUNTIME_API_ACCEPTED + invocation("second", b"{}"))
    headers, _ = api.client.post_and_next("/2018-06-01/runtime/invocation/first/response", b'"ok"')
    sent = api.received()
    assert sent.startswith(b"POST /2018-06-01/runtime/invocation/first/response HTTP/1.1\r\n")
    assert sent.endswith(b'\r\n\r\n"ok"' + ric.NEXT)
    assert headers["lambda-runtime-aws-request-id"] == "second"


def test_post_and_next_reads_any_other_accepted_answer(api: FakeRuntimeAPI) -> None:
    api.answer(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n" + invocation("second", b"{}"))
    headers, _ = api.client.post_and_next("/2018-06-01/runtime/invocation/first/response", b'"ok"')
    assert headers["lambda-runtime-aws-request-id"] == "second"


def test_error_post_carries_lambdas_error_type_header(api: FakeRuntimeAPI) -> None:
    api.answer(contract.RUNTIME_API_ACCEPTED + invocation("second", b"{}"))
    api.client.post_and_next("/2018-06-01/runtime/invocation/first/error", b"{}", error_type="ValueError")
    assert b"\r\nLambda-Runtime-Function-Error-Type: ValueError\r\n" in api.received()


def test_refused_post_ends_the_environment(api: FakeRuntimeAPI) -> None:
    api.answer(response(400, b'{"errorType": "InvalidRequestID", "errorMessage": "Invalid request ID"}',
                        [("Content-Type", "application/json")]))
    with pytest.raises(ric.RuntimeAPIError, match="answered 400"):
        api.client.post_and_next("/2018-06-01/runtime/invocation/stale/response", b'"ok"')


def test_closed_runtime_api_ends_the_environment(api: FakeRuntimeAPI) -> None:
    errors: list[BaseException] = []

    def poll() -> None:
        try:
            api.client.next()
        except BaseException as e:  # noqa: BLE001 - handed to the test's thread
            errors.append(e)

    thread = threading.Thread(target=poll)
    thread.start()
    assert api.received() == ric.NEXT   # the client waits for work...
    api.close()                          # ...and the host goes away
    thread.join(10)
    assert len(errors) == 1 and isinstance(errors[0], ric.RuntimeAPIError)
    assert "closed" in str(errors[0])
