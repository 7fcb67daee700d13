"""The Lambda Runtime API as an instance host serves it: one connection per execution environment.

`RuntimeAPI` is the standard one, HTTP/1.1 on the environment's own listener on 127.0.0.1 (`GET
.../invocation/next`, `POST .../response`, `.../error`, `.../init/error`), which any runtime
interface client speaks. `ChannelAPI` is kfn's own channel (`kfn_runtime.frames`) on the Unix
socket the zygote hands each environment it forks, which kfn's Python client speaks there. Both
hand the host what the environment says (`polled`, `answered`, `init_failed`) and deliver the
invocation the host dispatches to it (`deliver`), the answer to its poll.
"""
from __future__ import annotations

import asyncio
from urllib.parse import unquote

from kfn_runtime import awslambda, contract, frames
from kfn_runtime.frames import FrameError, safe_field
from kfn_runtime.wire import BadRequest, Request, RequestParser, response

TYPE_CHECKING = False  # importing typing costs milliseconds on every cold start
if TYPE_CHECKING:
    from typing import Protocol

    from kfn_runtime.execution import Environment, HostConfig, Invocation

    class APIHost(Protocol):
        """What a Runtime API connection tells its host (see `kfn_runtime.host.InstanceHost`)."""

        config: HostConfig

        def polled(self, env: Environment, api: RuntimeAPI | ChannelAPI) -> None:
            """`env` asks for its next invocation on `api`."""

        def answered(self, env: Environment, request_id: str, body: bytes, *, error: bool,
                     error_type: str | None) -> int:
            """`env` posted a result; the status to answer it with (202, or 400 for a stale id)."""

        def init_failed(self, env: Environment, body: bytes, error_type: str | None) -> None:
            """`env` reported that the function failed to initialise."""

API_PREFIX = "/2018-06-01/runtime"
NEXT_PATH = f"{API_PREFIX}/invocation/next"
INIT_ERROR_PATH = f"{API_PREFIX}/init/error"
MAX_RESPONSE_BYTES = 6 * 1024 * 1024 + 100       # Lambda's synchronous response limit (as the RIE)

_JSON = [("Content-Type", "application/json")]
_ACK = contract.RUNTIME_API_ACCEPTED
_POST_PREFIX = f"POST {API_PREFIX}/invocation/".encode()
_NEXT_REQUEST = b"GET " + NEXT_PATH.encode() + b" HTTP/1.1\r\nHost: runtime\r\n\r\n"   # kfn's own client's


def _too_large_error(size: int) -> bytes:
    """Lambda's error for a result over its limit (`Function.ResponseSizeTooLarge`)."""
    return awslambda.error_payload(awslambda.ERROR_RESPONSE_SIZE_TOO_LARGE, f"Response payload size ({size} bytes) "
                                   f"exceeded maximum allowed payload size ({MAX_RESPONSE_BYTES} bytes).")


class RuntimeAPI(asyncio.Protocol):
    """One environment's HTTP connection to its Runtime API.

    A client that pipelines (posts a result and asks for the next invocation in one write, as
    kfn's own does over HTTP) gets the post's 202 together with that next invocation: one write
    each way per invocation instead of two.
    """

    def __init__(self, host: APIHost, env: Environment) -> None:
        self._host = host
        self._env = env
        # A result over Lambda's limit is read and thrown away, never buffered, and refused with
        # 413 on a connection that goes on: the environment lives on, as on Lambda.
        self._parser = RequestParser(max_body=MAX_RESPONSE_BYTES, skip_oversized=True)
        self._transport: asyncio.Transport | None = None
        self._ack = b""   # a 202 held back to go out with the next answer
        self._arn_header = b"Lambda-Runtime-Invoked-Function-Arn: %s\r\n" % safe_field(host.config.arn)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def deliver(self, invocation: Invocation) -> None:
        """Answer the environment's GET next with `invocation`."""
        payload = invocation.payload
        head = [b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nLambda-Runtime-Aws-Request-Id: ",
                invocation.id.encode(), b"\r\nLambda-Runtime-Deadline-Ms: %d\r\n" % (invocation.deadline * 1000),
                self._arn_header]
        if invocation.trace_id:
            head.append(b"Lambda-Runtime-Trace-Id: %s\r\n" % safe_field(invocation.trace_id))
        if invocation.client_context:
            head.append(b"Lambda-Runtime-Client-Context: %s\r\n" % safe_field(invocation.client_context))
        head.append(b"Content-Length: %d\r\n\r\n" % len(payload))
        head.append(payload)
        self.send(b"".join(head))

    def data_received(self, data: bytes) -> None:
        try:
            if not self._parser.pending:
                if data == _NEXT_REQUEST:
                    self._host.polled(self._env, self)
                    return
                if data.endswith(_NEXT_REQUEST) and data.startswith(_POST_PREFIX) and self._pipelined(data):
                    return
            self._parser.feed(data)
            requests = []
            while (request := self._parser.next()) is not None:
                requests.append(request)
            if not requests and self._parser.awaiting_continue():
                self.send(b"HTTP/1.1 100 Continue\r\n\r\n")   # curl waits a second for it otherwise
            for i, request in enumerate(requests):
                pipelined = i + 1 < len(requests) and requests[i + 1].method == "GET"
                self._handle(request, pipelined=pipelined)
        except BadRequest as e:
            self.send(response(e.status, awslambda.error_payload(awslambda.ERROR_INVALID_REQUEST, str(e)), _JSON,
                               close=True))
            self.close()

    def _pipelined(self, data: bytes) -> bool:
        """kfn's own client's result + GET next, in one segment: handled without the general parser.

        Returns False, having done nothing, for anything but exactly that (the parser takes it).
        """
        head_end = data.find(b"\r\n\r\n")
        line_end = data.find(b"\r\n")
        request_line = data[len(_POST_PREFIX):line_end]
        if not request_line.endswith(b" HTTP/1.1"):
            return False
        request_id, _, kind = request_line[:-9].decode("latin-1").rpartition("/")
        if "%" in request_id:
            request_id = unquote(request_id)   # AWS's Node.js client encodes ids (":" as %3A)
        if kind not in ("response", "error") or "/" in request_id:
            return False
        head = data[line_end:head_end + 2].lower()
        at = head.find(b"\r\ncontent-length:")
        if at < 0:
            return False
        length_end = head.find(b"\r\n", at + 2)
        length_text = head[at + 17:length_end].strip()
        body_end = len(data) - len(_NEXT_REQUEST)
        # Digits only, and few enough for int() (it refuses over 4,300): the parser refuses the rest.
        if (not length_text.isdigit() or len(length_text) > 19 or int(length_text) != body_end - head_end - 4
                or b"transfer-encoding" in head):
            return False
        error_type = None
        at = head.find(b"\r\nlambda-runtime-function-error-type:")
        if at >= 0:
            error_type = data[line_end + at + 37:line_end + head.find(b"\r\n", at + 2)].strip().decode("latin-1")
        self._answered(request_id, kind, data[head_end + 4:body_end], error_type, pipelined=True)
        self._host.polled(self._env, self)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self._env.poll is self:
            self._env.poll = None

    def send(self, data: bytes) -> None:
        if self._ack:
            data, self._ack = self._ack + data, b""
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _answered(self, request_id: str, kind: str, body: bytes, error_type: str | None, *, pipelined: bool) -> None:
        host, env = self._host, self._env
        if len(body) > MAX_RESPONSE_BYTES:
            self._too_large(request_id, len(body))
            return
        status = host.answered(env, request_id, body, error=kind == "error", error_type=error_type)
        if status == 202 and pipelined:
            self._ack += _ACK   # goes out with the answer to the GET next that follows
        elif status == 202:
            self.send(_ACK)
        else:
            self.send(response(status, awslambda.error_payload(awslambda.ERROR_INVALID_REQUEST_ID,
                                                               "Invalid request ID"), _JSON))

    def _too_large(self, request_id: str | None, size: int) -> None:
        """A result (or error) over Lambda's limit: its invocation fails with Lambda's
        Function.ResponseSizeTooLarge, and the environment is answered 413 as Lambda's Runtime API
        answers it; the environment goes on to its next invocation."""
        if request_id is not None:
            too_large = awslambda.ERROR_RESPONSE_SIZE_TOO_LARGE
            self._host.answered(self._env, request_id, _too_large_error(size), error=True, error_type=too_large)
        self.send(response(413, awslambda.error_payload(
            awslambda.ERROR_REQUEST_TOO_LARGE, f"Exceeded maximum allowed payload size ({MAX_RESPONSE_BYTES} bytes)."),
                           _JSON))

    def _handle(self, request: Request, *, pipelined: bool = False) -> None:
        path = request.path
        host, env = self._host, self._env
        if request.oversized:
            request_id = None
            if request.method == "POST" and path.startswith(f"{API_PREFIX}/invocation/"):
                request_id = unquote(path[len(API_PREFIX) + len("/invocation/"):].rpartition("/")[0])
            elif request.method == "POST" and path == INIT_ERROR_PATH:
                host.init_failed(env, b"", request.headers.get("lambda-runtime-function-error-type"))
            self._too_large(request_id, request.oversized)
            return
        if request.method == "GET" and path == NEXT_PATH:
            host.polled(env, self)
            return
        if request.method == "POST" and path.startswith(f"{API_PREFIX}/invocation/"):
            request_id, _, kind = path[len(API_PREFIX) + len("/invocation/"):].rpartition("/")
            if "%" in request_id:
                request_id = unquote(request_id)
            if kind in ("response", "error"):
                self._answered(request_id, kind, request.body,
                               request.headers.get("lambda-runtime-function-error-type"), pipelined=pipelined)
                return
        if request.method == "POST" and path == INIT_ERROR_PATH:
            host.init_failed(env, request.body, request.headers.get("lambda-runtime-function-error-type"))
            self.send(response(202, b'{"status":"OK"}', _JSON))
            return
        self.send(response(404, awslambda.error_payload(awslambda.ERROR_NOT_FOUND, f"no such Runtime API path: {path}"),
                           _JSON))


# The largest frame kept whole: a result within Lambda's limit and its head. A longer one is a
# result over the limit: its head names its invocation, and its body is thrown away as it comes.
_MAX_FRAME = MAX_RESPONSE_BYTES + frames.MAX_HEAD_BYTES


class ChannelAPI(asyncio.Protocol):
    """One forked environment's connection to its Runtime API over kfn's channel (`kfn_runtime.frames`).

    A frame that is not one of the channel's closes the connection: kfn's client then ends, and
    the host forgets its environment. So does a result for an invocation the environment does not
    hold (a stale request id), which kfn's client never posts.
    """

    def __init__(self, host: APIHost, env: Environment) -> None:
        self._host = host
        self._env = env
        self._arn = safe_field(host.config.arn)
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()   # the start of a frame not all received yet
        self._skip = 0               # bytes of a result over the limit still to throw away

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self._env.poll is self:
            self._env.poll = None

    def deliver(self, invocation: Invocation) -> None:
        """Hand the environment `invocation`, the answer to its poll."""
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(frames.invocation(invocation.id, int(invocation.deadline * 1000), self._arn,
                                              invocation.trace_id, invocation.client_context, invocation.payload))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        try:
            if not self._buffer and not self._skip and int.from_bytes(data[:4], "big") == len(data) - 4:
                self._frame(data[4:])   # the usual case: one whole frame in one piece
                return
            self._receive(data)
        except FrameError:
            self.close()

    def _receive(self, data: bytes) -> None:
        """Frames that come in pieces, or several at once; a result over the limit is skipped."""
        if self._skip:
            taken = min(self._skip, len(data))
            self._skip -= taken
            data = data[taken:]
            if not self._skip:
                self._host.polled(self._env, self)
        buffer = self._buffer
        buffer += data
        while len(buffer) >= 4:
            size = int.from_bytes(buffer[:4], "big")
            if size > _MAX_FRAME:
                head = frames.read_result_head(buffer[4:4 + frames.MAX_HEAD_BYTES + 1])
                if head is None:
                    return
                _, request_id, _, _, start = head
                self._too_large(request_id, size - start)
                consumed = min(len(buffer), 4 + size)
                self._skip = 4 + size - consumed
                del buffer[:consumed]
                if self._skip:
                    return
                self._host.polled(self._env, self)
                continue
            if len(buffer) < 4 + size:
                return
            frame = bytes(buffer[4:4 + size])
            del buffer[:4 + size]
            self._frame(frame)

    def _frame(self, frame: bytes) -> None:
        """One whole frame from the environment: a poll, or a result (which polls too)."""
        host, env = self._host, self._env
        if frame == frames.NEXT:
            host.polled(env, self)
            return
        head = frames.read_result_head(frame)
        if head is None:
            raise FrameError("a result frame without its whole head")
        error, request_id, error_type, peak_kib, start = head
        body = frame[start:]
        if len(body) > MAX_RESPONSE_BYTES:
            self._too_large(request_id, len(body))
        else:
            env.peak_kib = peak_kib
            if host.answered(env, request_id, body, error=error, error_type=error_type) != 202:
                raise FrameError(f"a result for an invocation the environment does not hold ({request_id})")
        host.polled(env, self)

    def _too_large(self, request_id: str, size: int) -> None:
        """A result over Lambda's limit: its invocation fails with Function.ResponseSizeTooLarge,
        and the environment goes on to its next invocation, as on Lambda."""
        self._host.answered(self._env, request_id, _too_large_error(size), error=True,
                            error_type=awslambda.ERROR_RESPONSE_SIZE_TOO_LARGE)
