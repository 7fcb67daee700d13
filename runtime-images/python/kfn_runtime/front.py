"""The instance's own HTTP server: the invoke endpoint, probes and metrics (see `contract`)."""
from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time

from kfn_runtime import awslambda, contract
from kfn_runtime.execution import LOADING, READY, HostConfig, Invocation, Rejected
from kfn_runtime.host import InstanceHost
from kfn_runtime.metrics import Metrics, MetricsUnavailable
from kfn_runtime.wire import BadRequest, Request, RequestParser, response

TYPE_CHECKING = False  # importing typing costs milliseconds on every cold start
if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

JSON = ("Content-Type", "application/json")
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")


def _error(status: int, error_type: str, message: str, *extra: tuple[str, str], close: bool = False) -> bytes:
    return response(status, awslambda.error_payload(error_type, message), [JSON, *extra], close=close)


class GenericHost:
    """What a pool instance serves until it is specialised (`FrontServer.attach`): invocations are
    rejected as loading; /_/ready says `contract.STATUS_POOL` while it waits, "loading" once its
    specialisation began."""

    def __init__(self, *, max_payload: int) -> None:
        self.config = HostConfig(function_name="", timeout=0.0, concurrency=0, memory_mb=1, region="",
                                 max_payload=max_payload)
        self.state = contract.STATUS_POOL
        self.in_flight = 0
        self.environments: list[object] = []

    async def invoke(self, invocation: Invocation) -> Invocation:
        raise Rejected(contract.REJECTED_LOADING, "the function is loading")


class FrontServer:
    """Serves one InstanceHost on host:port; `draining` answers new invocations 503.

    A pool instance's starts with a `GenericHost` and `specialize` set: `POST contract.PATH_SPECIALIZE`
    is answered by it (404 without it), and `attach` then puts the function's host in its place."""

    def __init__(self, host: InstanceHost | GenericHost, *, metrics: Metrics | None = None) -> None:
        self.host: InstanceHost | GenericHost = host
        self.metrics = metrics or _metrics(host)
        self.specialize: Callable[[Request], Awaitable[bytes]] | None = None
        self._server: asyncio.Server | None = None
        self.connections: set[_Connection] = set()

    def attach(self, host: InstanceHost) -> None:
        """Serve `host` from now on (a pool instance's function), with metrics of its own."""
        self.host = host
        self.metrics = _metrics(host)

    async def listen(self, address: str, port: int) -> int:
        """Start listening; returns the port (useful with port 0)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), address, port, reuse_address=True)
        return int(self._server.sockets[0].getsockname()[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.close()

    async def invoke(self, request: Request) -> bytes:
        headers = request.headers
        request_id = headers.get(contract.HEADER_REQUEST_ID.lower(), "")
        if not (0 < len(request_id) <= 128 and all(c in _ID_CHARS for c in request_id)):
            request_id = ""
        client_context = headers.get(contract.HEADER_CLIENT_CONTEXT.lower())
        if client_context:
            try:
                context = json.loads(base64.b64decode(client_context, validate=True))
            except (binascii.Error, ValueError):
                context = None
            if not isinstance(context, dict):
                return _error(400, "InvalidRequestContentException",
                              "Client context must be a valid Base64-encoded JSON object.")
            # Re-encoded compactly, in ASCII: it travels on in a Runtime API header, which whitespace
            # in the caller's JSON (a CR LF is legal there) must not end early.
            client_context = json.dumps(context, separators=(",", ":"))
        invocation = Invocation(request.body, request_id=request_id or None, timeout=self.host.config.timeout,
                                client_context=client_context or None,
                                trace_id=headers.get(contract.HEADER_TRACE_ID.lower()),
                                want_log=headers.get(contract.HEADER_LOG_TYPE.lower(), "").lower() == "tail")
        started = time.perf_counter()
        try:
            await self.host.invoke(invocation)
        except Rejected as e:
            status = 429 if e.reason == contract.REJECTED_CONCURRENCY else 503
            self.metrics.observe(str(status), time.perf_counter() - started)
            kind = "TooManyRequestsException" if status == 429 else "ServiceUnavailableException"
            return _error(status, kind, str(e), (contract.HEADER_REJECTED, e.reason),
                          close=e.reason != contract.REJECTED_CONCURRENCY)
        out = [JSON, (contract.HEADER_REQUEST_ID, invocation.id),
               (contract.HEADER_EXECUTED_VERSION, self.host.config.version)]
        if invocation.function_error:
            out.append((contract.HEADER_FUNCTION_ERROR, invocation.function_error))
            if invocation.error_type:
                out.append((contract.HEADER_ERROR_TYPE, invocation.error_type))
        if invocation.want_log:
            out.append((contract.HEADER_LOG_RESULT, base64.b64encode(invocation.log_tail()).decode()))
        outcome = "timeout" if invocation.error_type == awslambda.ERROR_TIMED_OUT else (
            "error" if invocation.function_error else "ok")
        self.metrics.observe(outcome, time.perf_counter() - started)
        return response(200, invocation.result, out)

    def probe(self, request: Request) -> bytes:
        path = request.path
        if request.method not in ("GET", "HEAD"):
            return _error(405, "MethodNotAllowed", f"{path} answers GET and HEAD only", ("Allow", "GET, HEAD"))
        if path == contract.PATH_HEALTH:
            return response(200, b'{"status": "ok"}', [JSON])
        if path == contract.PATH_READY:
            # A pool instance stays ready to the kubelet while it is specialised: nothing routes to it
            # until the platform, answered, makes it the function's; a readiness the kubelet flipped
            # off meanwhile would keep it out of rotation up to a probe period after that.
            ready = self.host.state in (READY, contract.STATUS_POOL) or (
                self.specialize is not None and self.host.state == LOADING)
            return response(200 if ready else 503, json.dumps({"status": self.host.state}).encode(), [JSON])
        try:
            body, content_type = self.metrics.render()
        except MetricsUnavailable as e:
            return _error(501, "NotImplemented", str(e))
        return response(200, body, [("Content-Type", content_type)])


class _Connection(asyncio.Protocol):
    """One client connection (the gateway's keep-alive, or a probe); requests answered in order."""

    def __init__(self, server: FrontServer) -> None:
        self._server = server
        self._parser = RequestParser(max_body=server.host.config.max_payload)
        self._transport: asyncio.Transport | None = None
        self._queue: asyncio.Queue[Request | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._answering = False   # a request is being answered: a 100 Continue now would come before its answer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._server.connections.add(self)
        self._task = asyncio.get_running_loop().create_task(self._serve())

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed(data)
            while (request := self._parser.next()) is not None:
                self._queue.put_nowait(request)
            self._continue()
        except BadRequest as e:
            self._write(_error(e.status, "BadRequest", str(e), close=True))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self._queue.put_nowait(None)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _continue(self) -> None:
        """Tell a client waiting to send its body (`Expect: 100-continue`) to go on, once every
        earlier request on the connection has its answer."""
        if not self._answering and self._queue.empty() and self._parser.awaiting_continue():
            self._write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    async def _serve(self) -> None:
        server = self._server
        while (request := await self._queue.get()) is not None:
            self._answering = True
            path = request.path
            if path == contract.PATH_INVOKE:
                if request.method != "POST":
                    answer = _error(405, "MethodNotAllowed", "invoke with POST", ("Allow", "POST"))
                else:
                    answer = await server.invoke(request)
            elif path in (contract.PATH_HEALTH, contract.PATH_READY, contract.PATH_METRICS):
                answer = server.probe(request)
            elif path == contract.PATH_SPECIALIZE and server.specialize is not None:
                if request.method != "POST":
                    answer = _error(405, "MethodNotAllowed", "specialize with POST", ("Allow", "POST"))
                else:
                    answer = await server.specialize(request)
            else:
                answer = _error(404, "NotFound", f"no such path: {path}")
            closing = not request.keep_alive or (server.host.state != READY and path == contract.PATH_INVOKE)
            if closing or request.method == "HEAD":
                answer = _adjusted(answer, close=closing, head=request.method == "HEAD")
            self._write(answer)
            if closing:
                self.close()
                return
            self._answering = False
            self._continue()


def _metrics(host: InstanceHost | GenericHost) -> Metrics:
    return Metrics(concurrency=host.config.concurrency, in_flight=lambda: host.in_flight,
                   environments=lambda: len(host.environments))


def _adjusted(answer: bytes, *, close: bool, head: bool) -> bytes:
    """`answer` saying `Connection: close` (a client must know not to reuse the connection), and
    without its body for a HEAD request (which would be read as the start of the next answer)."""
    end = answer.index(b"\r\n\r\n")
    head_part, body = answer[:end], answer[end:]
    if close and b"\r\nConnection: close" not in head_part:
        head_part += b"\r\nConnection: close"
    return head_part + (b"\r\n\r\n" if head else body)
