"""The gateway's client connections: how long a client may take, and what a broken request costs.

aiohttp bounds only how long a connection may sit idle (its keep-alive timeout, which also
covers a connection that never sends a byte). A client that sends the first bytes of a request
head and then stalls, or one that trickles its head, would hold its connection (and a file
descriptor) as long as it likes. `GuardedRequestHandler` adds the missing bound:

- **idle**: no byte of a request for `idle_timeout` seconds (after connecting, or after the
  previous answer): the connection is closed (aiohttp's keep-alive timeout);
- **head**: from the first byte of a request head, the whole head must arrive within
  `header_timeout` seconds, however it trickles in; otherwise the client gets `408` and the
  connection is closed;
- **body**: the gateway reads a body within `body_timeout` (`kfn_gateway.server`, 408 too);
- **send**: once the gateway has more of an answer buffered for a client than the transport's
  high-water mark (the client stopped reading), the client must take it down to the low-water
  mark within `send_timeout` seconds, each time (nginx's `send_timeout`); a connection closing
  with bytes still buffered must deliver them within `send_timeout` too. Otherwise the
  connection is reset: its buffered answer is dropped (the kernel's copy too) and its request
  handler cancelled, so nothing keeps the answer in memory. What the kernel holds is dropped after
  twice the timeout (TCP_USER_TIMEOUT), the connection closed or not;
- **connections**: at most `max_connections` client connections at a time (a connection that
  is closing with bytes still buffered counts until they are sent or dropped). A connection
  over the cap is answered `503` with `Retry-After` at once, without reading its request, and
  closed (`RefusedConnection`).

A malformed request (a bad request line, an oversized header, a smuggling attempt) is answered
`400` with a JSON body and logged as one line, without a traceback: clients cannot fill the log.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import resource
import socket
import struct
import weakref
from dataclasses import dataclass
from typing import Any, cast

from aiohttp import HttpVersion11, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server

from kfn_gateway.outcomes import Refusal, Refused

logger = logging.getLogger(__name__)

DEFAULT_HEADER_TIMEOUT = 15.0
DEFAULT_BODY_TIMEOUT = 60.0
# Longer than the idle timeouts of the usual load balancers in front (AWS's 60 s), as they advise:
# the proxy, not the gateway, should be the one to close an idle connection.
DEFAULT_IDLE_TIMEOUT = 75.0
# nginx's send_timeout: how long a client may go without taking the answer it is sent.
DEFAULT_SEND_TIMEOUT = 60.0
# Open client connections at a time; more are answered 503 and closed.
DEFAULT_MAX_CONNECTIONS = 1024
# How long a refused connection stays open for its client to read the 503 (nginx's lingering
# close: closing a socket with an unread request could reset it before the client reads the
# answer), and how many refused connections may linger at once (beyond, they are reset at once).
REFUSED_LINGER = 2.0
MAX_LINGERING_REFUSALS = 64
# Refusals are logged at most this often (seconds), with their count: a flood cannot fill the log.
REFUSAL_LOG_INTERVAL = 60.0
REFUSED_RETRY_AFTER = 1
# Open files the gateway needs beyond its client connections (instances, the event store, manifests).
DESCRIPTOR_RESERVE = 256
# Responses whose connection closes once they are written (`close_after`).
_CLOSE_AFTER: weakref.WeakSet[web.StreamResponse] = weakref.WeakSet()


def close_after(response: web.StreamResponse) -> web.StreamResponse:
    """Close the connection once `response` is written, without lingering over the rest of the
    request (a body too slow, or one never to be sent after a refused Expect: 100-continue)."""
    response.force_close()
    _CLOSE_AFTER.add(response)
    return response


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout: float = DEFAULT_HEADER_TIMEOUT   # first byte of a request head → its end
    body_timeout: float = DEFAULT_BODY_TIMEOUT       # end of the head → end of the body
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT       # an open connection without a request
    send_timeout: float = DEFAULT_SEND_TIMEOUT       # a client that takes none of its answer
    max_connections: int = DEFAULT_MAX_CONNECTIONS   # open client connections at a time

    def check(self) -> ConnectionLimits:
        for name in ("header_timeout", "body_timeout", "idle_timeout", "send_timeout"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"{name} must be positive (got {value!r})")
        if not self.max_connections >= 1:
            raise ValueError(f"max_connections must be 1 or more (got {self.max_connections!r})")
        return self


def _json_answer(status: int, reason: str, message: str, *, retry_after: int | None = None) -> bytes:
    body = json.dumps({"error": message}).encode()
    retry = f"Retry-After: {retry_after}\r\n" if retry_after is not None else ""
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"{retry}Connection: close\r\n\r\n").encode() + body


class GuardedRequestHandler(RequestHandler):
    """aiohttp's connection handler with deadlines on request heads and on sending answers, and
    quiet, JSON 400s."""

    __slots__ = ("__weakref__", "_closing", "_connection", "_head_deadline", "_header_timeout", "_send_deadline",
                 "_send_timeout")

    def __init__(self, manager: Server, *, header_timeout: float = DEFAULT_HEADER_TIMEOUT,
                 send_timeout: float = DEFAULT_SEND_TIMEOUT, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout = header_timeout
        self._head_deadline: asyncio.TimerHandle | None = None
        self._send_timeout = send_timeout
        self._send_deadline: asyncio.TimerHandle | None = None
        # The transport until it is lost (aiohttp forgets it once it asks it to close, while the
        # transport may still hold bytes for the client), and whether it was asked to close.
        self._connection: asyncio.Transport | None = None
        self._closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._connection = cast(asyncio.Transport, transport)   # a stream server's
        _bound_kernel_sending(self._connection, self._send_timeout)
        super().connection_made(transport)

    # -- sending: a client must keep taking its answer ------------------------------------------------

    def pause_writing(self) -> None:
        super().pause_writing()
        self._arm_send_deadline()

    def resume_writing(self) -> None:
        super().resume_writing()
        self._cancel_send_deadline()
        if self._closing:
            self._arm_send_deadline()   # what is left must go too

    def force_close(self) -> None:
        super().force_close()
        self._closed_with_bytes_left()

    async def start(self) -> None:
        try:
            await super().start()
        finally:
            self._closed_with_bytes_left()

    def _closed_with_bytes_left(self) -> None:
        """aiohttp has closed the transport (or is about to), which then waits for the client to take
        what is buffered, for as long as it takes: bound that wait."""
        self._closing = True
        connection = self._connection
        if connection is not None and connection.get_write_buffer_size() > 0:
            self._arm_send_deadline()

    def _arm_send_deadline(self) -> None:
        if self._send_deadline is None and self._connection is not None:
            self._send_deadline = self._loop.call_later(self._send_timeout, self._send_timed_out)

    def _cancel_send_deadline(self) -> None:
        if self._send_deadline is not None:
            self._send_deadline.cancel()
            self._send_deadline = None

    def _send_timed_out(self) -> None:
        self._send_deadline = None
        connection = self._connection
        if connection is None:
            return
        logger.info("resetting a connection whose client took none of its answer for %gs (%d bytes dropped)",
                    self._send_timeout, connection.get_write_buffer_size())
        reset(connection)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not data or self._force_close or self._close or self._upgraded:
            return
        if self._messages or self._request_in_progress:
            # A head is complete (its request waits or runs): body bytes are the body's business.
            self._cancel_head_deadline()
        elif self._head_deadline is None:
            self._head_deadline = self._loop.call_later(self._header_timeout, self._head_timed_out)

    def _cancel_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        if self._messages or self._request_in_progress or self.transport is None:
            return
        logger.info("closing a connection whose request head did not arrive within %gs", self._header_timeout)
        self.transport.write(_json_answer(408, "Request Timeout",
                                          f"the request head did not arrive within {self._header_timeout:g}s"))
        self.force_close()

    async def _handle_request(self, request: BaseRequest, start_time: float | None,
                              request_handler: Any) -> tuple[web.StreamResponse, bool]:
        self._cancel_head_deadline()
        return await super()._handle_request(request, start_time, request_handler)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_head_deadline()
        self._cancel_send_deadline()
        self._connection = None
        super().connection_lost(exc)

    async def finish_response(self, request: BaseRequest, resp: web.StreamResponse,
                              start_time: float | None) -> tuple[web.StreamResponse, bool]:
        answered = await super().finish_response(request, resp, start_time)
        if resp in _CLOSE_AFTER:
            self.force_close()
        return answered

    def log_exception(self, *args: Any, **kwargs: Any) -> None:
        error = kwargs.get("exc_info")
        if isinstance(error, HttpProcessingError):
            # A client's mistake (or probe), not the gateway's: one line, no traceback.
            logger.info("malformed request: %s", _describe(error))
            return
        super().log_exception(*args, **kwargs)

    def handle_error(self, request: BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        response = super().handle_error(request, status, exc, message)
        if isinstance(exc, HttpProcessingError) and status < 500:
            response = web.json_response({"error": f"malformed request: {_describe(exc)}"}, status=status)
            response.force_close()
        return response


def _describe(error: HttpProcessingError) -> str:
    text = getattr(error, "message", "") or str(error)
    return " ".join(str(text).split())[:200] or type(error).__name__


def _bound_kernel_sending(transport: asyncio.Transport, timeout: float) -> None:
    """The kernel's copy of an answer gets a bound too (TCP_USER_TIMEOUT): data the client leaves
    unacknowledged, or a window it keeps shut, for twice `timeout` ends the connection. Twice: the
    kernel ends it without a word to the client, so the process's own deadline, which resets the
    connection (the client learns it), is to come first while the process holds the connection.

    The transport's deadline sees only what the process buffers. An answer that fits in the kernel's
    send buffer (megabytes) leaves the process at once; the connection then closes (its answer done,
    or idle) and leaves the connection cap, while the kernel keeps the socket and the bytes for as
    long as the client keeps its window shut: hours, as many as a client asks for. Where the option
    is missing (not Linux), that copy is bounded by the kernel's own limits only."""
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    sock = transport.get_extra_info("socket")
    if option is None or sock is None:
        return
    milliseconds = min(max(1, round(2 * timeout * 1000)), 2**31 - 1)   # what the option holds: 24.8 days
    with contextlib.suppress(OSError):   # not TCP (a Unix socket)
        sock.setsockopt(socket.IPPROTO_TCP, option, milliseconds)


def reset(transport: asyncio.Transport) -> None:
    """Abort `transport` with a TCP reset: what it buffers is dropped, and so is what the kernel
    still holds for the client (a plain close would leave the socket sending it for minutes, as
    nginx's `reset_timedout_connection` avoids). connection_lost follows, which cancels the
    request's handler and so drops the answer."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class RefusedConnection(asyncio.Protocol):
    """A connection over the cap: `503` with `Retry-After` at once, its request never read.

    The answer is followed by the end of the gateway's side of the stream; the connection is
    closed when the client closes its side, or after REFUSED_LINGER seconds. When more than
    MAX_LINGERING_REFUSALS refused connections are still open, a new one is reset at once."""

    lingering = 0   # refused connections still open, across the process

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._transport: asyncio.Transport | None = None
        self._linger: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        stream = cast(asyncio.Transport, transport)   # a stream server's (uvloop's is no subclass)
        stream.write(_json_answer(503, "Service Unavailable",
                                  f"the gateway has {self._cap} open connections, its limit; try again later",
                                  retry_after=REFUSED_RETRY_AFTER))
        if RefusedConnection.lingering >= MAX_LINGERING_REFUSALS or not stream.can_write_eof():
            reset(stream)
            return
        RefusedConnection.lingering += 1
        self._transport = stream
        stream.write_eof()
        self._linger = asyncio.get_running_loop().call_later(REFUSED_LINGER, reset, stream)

    def data_received(self, data: bytes) -> None:
        """The request is not wanted: dropped as it comes."""

    def eof_received(self) -> bool:
        return False   # the client is done: close

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        if self._transport is not None:
            self._transport = None
            RefusedConnection.lingering -= 1


class GuardedServer(Server):
    """aiohttp's Server, making `GuardedRequestHandler`s for at most `max_connections` open
    connections, and `RefusedConnection`s beyond."""

    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    send_timeout: float = DEFAULT_SEND_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS

    def guard(self, limits: ConnectionLimits) -> None:
        self.header_timeout = limits.header_timeout
        self.send_timeout = limits.send_timeout
        self.max_connections = limits.max_connections
        # Handlers made for accepted connections whose connection_made has not run yet (a burst of
        # connections is accepted at once): they count towards the cap too.
        self._accepting: weakref.WeakSet[GuardedRequestHandler] = weakref.WeakSet()
        self._refused = 0
        self._refusals_logged_at: float | None = None

    @property
    def open_connections(self) -> int:
        return len(self._connections) + len(self._accepting)

    def __call__(self) -> RequestHandler:
        if self.open_connections >= self.max_connections:
            self._log_refusal()
            return RefusedConnection(self.max_connections)  # type: ignore[return-value]  # a protocol all the same
        handler = GuardedRequestHandler(self, loop=self._loop, header_timeout=self.header_timeout,
                                        send_timeout=self.send_timeout, **self._kwargs)
        self._accepting.add(handler)
        return handler

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        self._accepting.discard(handler)   # type: ignore[arg-type]

    def _log_refusal(self) -> None:
        self._refused += 1
        now = self._loop.time()
        if self._refusals_logged_at is None or now - self._refusals_logged_at >= REFUSAL_LOG_INTERVAL:
            logger.warning("%d connection(s) refused (503): the gateway has %d open connections, its limit "
                           "(--max-connections)", self._refused, self.max_connections)
            self._refused = 0
            self._refusals_logged_at = now


def _make_room_for(connections: int) -> None:
    """Raise the process's soft limit on open files (up to its hard limit) so that `connections`
    client connections leave DESCRIPTOR_RESERVE for the rest: reaching the cap must not first run
    the process out of descriptors (1024, the usual soft limit, is the default cap). Go's runtime
    raises it too. Where it cannot be raised enough, says so once."""
    wanted = connections + DESCRIPTOR_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if raised > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError) as e:
            logger.debug("could not raise the limit on open files to %d: %s", raised, e)
    if soft < wanted:
        logger.warning("the limit on open files is %d (ulimit -n): %d client connections (--max-connections) "
                       "would leave too few for the rest; raise it to %d or lower the cap", soft, connections,
                       wanted)


class GuardedAppRunner(web.AppRunner):
    """An AppRunner whose connections have the limits of `ConnectionLimits` (body aside: the
    gateway reads bodies itself)."""

    def __init__(self, app: web.Application, *, limits: ConnectionLimits = ConnectionLimits(), **kwargs: Any) -> None:
        limits.check()
        super().__init__(app, keepalive_timeout=limits.idle_timeout, **kwargs)
        self._limits = limits
        _make_room_for(limits.max_connections)

    async def _make_server(self) -> Server:
        server = await super()._make_server()
        server.__class__ = GuardedServer
        assert isinstance(server, GuardedServer)
        server.guard(self._limits)
        return server


async def read_body(request: web.Request, limit: int, timeout: float) -> bytes:
    """The whole request body, as long as it takes to arrive (at most `timeout`). Raises Refused:
    TOO_LARGE past `limit`, TOO_SLOW if it takes longer than `timeout`, BROKEN if the client sends
    it broken."""
    length = request.content_length
    if length is not None and length > limit:
        raise Refused(Refusal.TOO_LARGE, f"the request body is {length} bytes; the limit is {limit}")
    if not request.body_exists:
        return b""
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            while chunk := await request.content.readany():
                size += len(chunk)
                if size > limit:
                    raise Refused(Refusal.TOO_LARGE, f"the request body is more than {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise Refused(Refusal.TOO_SLOW, f"the request body did not arrive within {timeout:g}s") from None
    except (asyncio.IncompleteReadError, ConnectionResetError) as e:
        raise Refused(Refusal.BROKEN, f"could not read the request body: {e}") from None
    except web.HTTPException as e:
        raise Refused(Refusal.BROKEN, f"could not read the request body: {e.reason}") from None
    return b"".join(chunks)


async def expect_continue(request: web.Request, limit: int) -> web.StreamResponse | None:
    """`Expect: 100-continue`: a body over `limit` is refused (413) before it is sent, as is an
    expectation the gateway cannot meet (417); otherwise the client is told to go on (None)."""
    expect = request.headers.get("Expect", "")
    if expect.lower() != "100-continue":
        return _refuse(417, f"cannot meet the expectation {expect[:100]!r}")
    length = request.content_length
    if length is not None and length > limit:
        return _refuse(413, f"the request body is {length} bytes; the limit is {limit}")
    if request.version == HttpVersion11:
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0   # the answer proper has not started
    return None


def _refuse(status: int, message: str) -> web.Response:
    response = web.json_response({"error": message}, status=status)
    response.force_close()
    close_after(response)   # the rest of the request is not worth reading
    return response
