"""kfn's Runtime API client for Python: the loop every Python execution environment runs.

It does what AWS's `awslambdaric` does, leanly: poll `GET .../invocation/next` over one
keep-alive connection, call the handler on the main thread (an `async def` handler on this
process's own event loop), post the result to `.../response` or the error to `.../error`, and
poll again. One invocation at a time, for the life of the process: module state persists across
invocations of one environment, as on Lambda, and is never shared with another.

In an environment forked by kfn's zygote, the same messages go over kfn's own channel to the host
(`ChannelClient`, `kfn_runtime.frames`) instead of HTTP; anywhere else (`AWS_LAMBDA_RUNTIME_API`)
it speaks the standard Runtime API (`RuntimeClient`).
"""
from __future__ import annotations

import json
import os
import resource
import socket
import sys
import traceback

from kfn_runtime import awslambda, frames
from kfn_runtime.context import LambdaContext
from kfn_runtime.contract import RUNTIME_API_ACCEPTED
from kfn_runtime.logs import current_request_id

TYPE_CHECKING = False  # importing typing costs milliseconds on every cold start
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, NoReturn

    from kfn_runtime.handlers import Handler

NEXT = b"GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\nHost: runtime\r\n\r\n"
_ACCEPTED_LENGTH = len(RUNTIME_API_ACCEPTED)


class RuntimeAPIError(Exception):
    """The Runtime API answered with an error or went away: the environment must end."""


class RuntimeClient:
    """Blocking HTTP/1.1 to the Runtime API over one keep-alive connection.

    The connection is a TCP connection to `address`, or `sock`, one already connected.
    """

    def __init__(self, address: str = "", *, sock: socket.socket | None = None) -> None:
        host, _, port = address.rpartition(":")
        self._address = (host or "127.0.0.1", int(port or 0))
        self._sock: socket.socket | None = sock
        self._buffer = b""

    def _connect(self) -> socket.socket:
        if self._sock is None:
            sock = socket.create_connection(self._address)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sock = sock
        return self._sock

    def _exchange(self, request: bytes) -> tuple[int, dict[str, str], bytes]:
        self._connect().sendall(request)
        return self._read()

    def _read(self) -> tuple[int, dict[str, str], bytes]:
        sock = self._sock or self._connect()
        buffer = self._buffer
        while (end := buffer.find(b"\r\n\r\n")) < 0:
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeAPIError("the Runtime API closed the connection")
            buffer += chunk
        lines = buffer[:end].split(b"\r\n")
        try:
            status = int(lines[0][9:12])
        except ValueError:
            raise RuntimeAPIError(f"not an HTTP response: {lines[0][:80]!r}") from None
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        length = int(headers.get("content-length", "0"))
        start = end + 4
        while len(buffer) - start < length:
            chunk = sock.recv(max(65536, length - (len(buffer) - start)))
            if not chunk:
                raise RuntimeAPIError("the Runtime API closed the connection mid-answer")
            buffer += chunk
        self._buffer = buffer[start + length:]
        return status, headers, buffer[start:start + length]

    def next(self) -> tuple[dict[str, str], bytes]:
        status, headers, body = self._exchange(NEXT)
        if status != 200:
            raise RuntimeAPIError(f"GET next answered {status}: {body[:200]!r}")
        return headers, body

    def post(self, path: str, body: bytes, *, error_type: str | None = None) -> None:
        status, _, answer = self._exchange(self._post(path, body, error_type))
        if status >= 300:
            raise RuntimeAPIError(f"POST {path} answered {status}: {answer[:200]!r}")

    def answer(self, request_id: str, body: bytes, error_type: str | None) -> tuple[dict[str, str], bytes]:
        """Post an invocation's result (an error when `error_type` is set) and read the next invocation."""
        kind = "error" if error_type else "response"
        return self.post_and_next(f"/2018-06-01/runtime/invocation/{request_id}/{kind}", body, error_type=error_type)

    def post_and_next(self, path: str, body: bytes, *,
                      error_type: str | None = None) -> tuple[dict[str, str], bytes]:
        """Post a result and ask for the next invocation in one write (HTTP pipelining)."""
        sock = self._sock or self._connect()
        sock.sendall(self._post(path, body, error_type) + NEXT)
        # kfn's host answers the post with exactly RUNTIME_API_ACCEPTED, together with the next
        # invocation; any other answer is parsed.
        buffer = self._buffer
        while len(buffer) < _ACCEPTED_LENGTH:
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeAPIError("the Runtime API closed the connection")
            buffer += chunk
        if buffer.startswith(RUNTIME_API_ACCEPTED):
            self._buffer = buffer[_ACCEPTED_LENGTH:]
        else:
            self._buffer = buffer
            status, _, answer = self._read()
            # 413: the result was too large; Lambda fails that invocation and the environment goes on.
            if status >= 300 and status != 413:
                raise RuntimeAPIError(f"POST {path} answered {status}: {answer[:200]!r}")
        status, headers, event = self._read()
        if status != 200:
            raise RuntimeAPIError(f"GET next answered {status}: {event[:200]!r}")
        return headers, event

    @staticmethod
    def _post(path: str, body: bytes, error_type: str | None) -> bytes:
        head = [f"POST {path} HTTP/1.1\r\nHost: runtime\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n"]
        if error_type:
            head.append(f"Lambda-Runtime-Function-Error-Type: {error_type}\r\n")
        head.append("\r\n")
        return "".join(head).encode("latin-1") + body


class ChannelClient:
    """kfn's own channel to the host (`kfn_runtime.frames`), on the socket it handed over at fork.

    Offers what `RuntimeClient` offers the loop (`next`, `answer`), in frames: one write each way
    per invocation, and each result tells the host this process's peak memory (its REPORT line's).
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = b""

    def next(self) -> tuple[dict[str, str], bytes]:
        """Ask for an invocation; its headers (as the Runtime API names them) and event."""
        self._sock.sendall(frames.POLL)
        return self._read()

    def answer(self, request_id: str, body: bytes, error_type: str | None) -> tuple[dict[str, str], bytes]:
        """Post an invocation's result (an error when `error_type` is set) and read the next invocation."""
        # ru_maxrss is this process's peak resident memory in KiB (Linux): the VmHWM Lambda reports.
        self._sock.sendall(frames.result(request_id, body, error_type,
                                         resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
        return self._read()

    def _read(self) -> tuple[dict[str, str], bytes]:
        sock = self._sock
        buffer = self._buffer
        while len(buffer) < frames.LENGTH_BYTES:
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeAPIError("the Runtime API closed the connection")
            buffer += chunk
        end = frames.LENGTH_BYTES + int.from_bytes(buffer[:frames.LENGTH_BYTES], "big")
        while len(buffer) < end:
            chunk = sock.recv(max(65536, end - len(buffer)))
            if not chunk:
                raise RuntimeAPIError("the Runtime API closed the connection mid-invocation")
            buffer += chunk
        self._buffer = buffer[end:]
        try:
            return frames.read_invocation(buffer[frames.LENGTH_BYTES:end])
        except frames.FrameError as e:
            raise RuntimeAPIError(str(e)) from None


_OWN_FILES = os.path.dirname(os.path.abspath(__file__))


def error_object(error: BaseException, *, error_type: str | None = None, trace: bool = True) -> bytes:
    """Lambda's error object (JSON bytes) for an exception: type, message and stack trace, as awslambdaric
    sends it (the runtime's own frames left out: the trace starts in the function's code)."""
    frames: list[str] = []
    if trace:
        stack = traceback.extract_tb(error.__traceback__)
        while stack and os.path.dirname(os.path.abspath(stack[0].filename)) == _OWN_FILES:
            stack.pop(0)
        frames = traceback.format_list(stack)
    return awslambda.error_payload(error_type or type(error).__name__, str(error),
                                   request_id=current_request_id.get(), stack_trace=frames)


def _default(value: object) -> object:
    """JSON for what DynamoDB and other AWS SDKs hand out: Decimal (as awslambdaric encodes it)."""
    import decimal

    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def serve(handler: Handler, *, address: str | None = None, channel: socket.socket | None = None) -> NoReturn:
    """Handle invocations until the Runtime API goes away; then end the process.

    Over kfn's own `channel` to the host when given (the zygote's environments), else over HTTP
    to `address` (default: AWS_LAMBDA_RUNTIME_API). Never returns: the process exits 0 when the
    host closes the connection, 1 on a protocol error.
    """
    client: RuntimeClient | ChannelClient = (
        ChannelClient(channel) if channel is not None
        else RuntimeClient(address or os.environ.get("AWS_LAMBDA_RUNTIME_API", "")))
    function = handler.function
    loop = None
    if handler.is_async:
        import asyncio

        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
    environ = os.environ
    try:
        headers, body = client.next()
        while True:
            request_id = headers.get("lambda-runtime-aws-request-id", "")
            current_request_id.set(request_id)
            trace = headers.get("lambda-runtime-trace-id")
            if trace:
                environ["_X_AMZN_TRACE_ID"] = trace
            elif "_X_AMZN_TRACE_ID" in environ:
                del environ["_X_AMZN_TRACE_ID"]
            answer, error_type = _run(function, loop, headers, body, request_id)
            headers, body = client.answer(request_id, answer, error_type)
    except RuntimeAPIError as e:
        sys.stderr.write(f"kfn-runtime: {e}\n")
        _exit(0 if "closed" in str(e) else 1)
    except OSError as e:
        sys.stderr.write(f"kfn-runtime: the Runtime API is unreachable: {e}\n")
        _exit(1)


def _run(function: Callable[..., Any], loop: Any, headers: dict[str, str], body: bytes,
         request_id: str) -> tuple[bytes, str | None]:
    """One invocation: (what to post, the error type when it is an error)."""
    try:
        context = LambdaContext(
            request_id=request_id, deadline_ms=int(headers.get("lambda-runtime-deadline-ms", "0")),
            invoked_function_arn=headers.get("lambda-runtime-invoked-function-arn", ""),
            client_context=headers.get("lambda-runtime-client-context"),
            cognito_identity=headers.get("lambda-runtime-cognito-identity"),
            tenant_id=headers.get("lambda-runtime-aws-tenant-id"))
        content_type = headers.get("content-type", "application/json")
        event = (json.loads(body) if body else None) if content_type.startswith("application/json") else body
    except ValueError as e:
        return error_object(e, error_type=awslambda.ERROR_UNMARSHAL, trace=False), awslambda.ERROR_UNMARSHAL
    try:
        result = function(event, context)
        if loop is not None:
            result = loop.run_until_complete(result)
    except Exception as e:  # noqa: BLE001 - whatever the handler raised is its answer
        traceback.print_exc()
        return error_object(e), type(e).__name__
    try:
        return (result if isinstance(result, bytes) else json.dumps(result, default=_default).encode()), None
    except (TypeError, ValueError) as e:
        return error_object(e, error_type=awslambda.ERROR_MARSHAL, trace=False), awslambda.ERROR_MARSHAL


def _exit(code: int) -> NoReturn:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
