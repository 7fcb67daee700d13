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
- **body**: the gateway reads a body within `body_timeout` (`kfn_gateway.server`, 408 too).

A malformed request (a bad request line, an oversized header, a smuggling attempt) is answered
`400` with a JSON body and logged as one line, without a traceback: clients cannot fill the log.
"""
from __future__ import annotations

import asyncio
import json
import logging
import weakref
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server

from kfn_gateway.errors import GatewayError

logger = logging.getLogger(__name__)

DEFAULT_HEADER_TIMEOUT = 15.0
DEFAULT_BODY_TIMEOUT = 60.0
# Longer than the idle timeouts of the usual load balancers in front (AWS's 60 s), as they advise:
# the proxy, not the gateway, should be the one to close an idle connection.
DEFAULT_IDLE_TIMEOUT = 75.0
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

    def check(self) -> ConnectionLimits:
        for name in ("header_timeout", "body_timeout", "idle_timeout"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"{name} must be positive (got {value!r})")
        return self


def _json_answer(status: int, reason: str, message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n").encode() + body


class GuardedRequestHandler(RequestHandler):
    """aiohttp's connection handler with a deadline on request heads and quiet, JSON 400s."""

    __slots__ = ("_head_deadline", "_header_timeout")

    def __init__(self, manager: Server, *, header_timeout: float = DEFAULT_HEADER_TIMEOUT, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout = header_timeout
        self._head_deadline: asyncio.TimerHandle | None = None

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


class GuardedServer(Server):
    """aiohttp's Server, making `GuardedRequestHandler`s."""

    header_timeout: float = DEFAULT_HEADER_TIMEOUT

    def __call__(self) -> RequestHandler:
        return GuardedRequestHandler(self, loop=self._loop, header_timeout=self.header_timeout, **self._kwargs)


class GuardedAppRunner(web.AppRunner):
    """An AppRunner whose connections have the limits of `ConnectionLimits` (body aside: the
    gateway reads bodies itself)."""

    def __init__(self, app: web.Application, *, limits: ConnectionLimits = ConnectionLimits(), **kwargs: Any) -> None:
        limits.check()
        super().__init__(app, keepalive_timeout=limits.idle_timeout, **kwargs)
        self._header_timeout = limits.header_timeout

    async def _make_server(self) -> Server:
        server = await super()._make_server()
        server.__class__ = GuardedServer
        assert isinstance(server, GuardedServer)
        server.header_timeout = self._header_timeout
        return server


async def read_body(request: web.Request, limit: int, timeout: float) -> bytes:
    """The whole request body; GatewayError 413 past `limit`, 408 if it takes longer than
    `timeout` to arrive, 400 if the client sends it broken."""
    length = request.content_length
    if length is not None and length > limit:
        raise GatewayError(413, f"the request body is {length} bytes; the limit is {limit}")
    if not request.body_exists:
        return b""
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            while chunk := await request.content.readany():
                size += len(chunk)
                if size > limit:
                    raise GatewayError(413, f"the request body is more than {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise GatewayError(408, f"the request body did not arrive within {timeout:g}s") from None
    except (asyncio.IncompleteReadError, ConnectionResetError) as e:
        raise GatewayError(400, f"could not read the request body: {e}") from None
    except web.HTTPException as e:
        raise GatewayError(400, f"could not read the request body: {e.reason}") from None
    return b"".join(chunks)
