"""Forwarding one request to one instance and streaming the answer back.

Bodies are streamed both ways; only small ones (up to `BUFFER_BYTES`) are read whole, which is
faster and lets a request whose connection failed be sent again. Errors are sorted by what the
instance may have seen: `NotSent` (the connection could not be opened, so the request may go to
another instance), `UpstreamFailed` (it may have been processed: never sent again),
`UpstreamTimeout`, `BodyTooLarge` and `BodyUnreadable` (the client's fault). A client that goes
away while the answer is written surfaces as ConnectionError.
"""
from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import hdrs, web
from multidict import CIMultiDict

from kfn.core.instances import Instance
from kfn_gateway.upstream import (
    ConnectFailed,
    Connection,
    ConnectionBroken,
    Pool,
    ReadTimeout,
    StaleConnection,
    UpstreamResponse,
)
from kfn_runtime import contract

# Bodies up to this size are read whole (request) or answered in one write (response).
BUFFER_BYTES = 256 * 1024
CONNECT_TIMEOUT = 10.0
# Idle keep-alive connections to instances are closed after this long; runtimes must keep idle
# connections open for longer (kfn_runtime: 75 s), or a request may be written into a connection
# they have just closed.
KEEPALIVE_TIMEOUT = 15.0

# RFC 9110 §7.6.1: meaningful for one connection only. Host is written first by the gateway (the
# client's, also in X-Forwarded-Host); Expect is answered by the gateway itself.
_HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "trailers", "transfer-encoding", "upgrade", "host", "expect",
})
_RESPONSE_DROP = _HOP_BY_HOP - {"host"}
# The gateway frames the request body itself (Content-Length or chunked), whatever the client did.
_HOP_BY_HOP_BYTES = frozenset(name.encode() for name in _HOP_BY_HOP | {"content-length"})
_NO_BODY_STATUSES = frozenset({204, 304})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# RFC 9110 §9.2.2: sending these twice has the effect of sending them once.
_IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class BodyTooLarge(Exception):
    """The request body grew past the limit while it was being read or streamed."""


class BodyUnreadable(Exception):
    """The client's body could not be read to the end (it went away, or sent malformed chunks)."""


class NotSent(Exception):
    """The instance could not be reached; nothing of the request was sent to it."""


class Rejected(Exception):
    """The instance turned the request away before running the handler, so it may go elsewhere.

    `reason` is the runtime's: "draining" (its pod is terminating; endpoint updates lag behind
    SIGTERM) or "loading" mean the instance should not be chosen again, though it has not failed;
    "concurrency" means it is full, which happens when several gateway replicas share it.
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason

    @property
    def unavailable(self) -> bool:
        return self.reason != contract.REJECTED_CONCURRENCY


# A runtime says so in this header; any other 429/503 is the handler's own answer and passes through.
_RETRYABLE_REJECTIONS = frozenset({
    contract.REJECTED_DRAINING, contract.REJECTED_LOADING, contract.REJECTED_CONCURRENCY})
_REJECTED_HEADER = contract.HEADER_REJECTED.lower()


class UpstreamFailed(Exception):
    """The instance failed after the request may have reached it (it may have been processed).

    `response` is set when the answer's status and headers already went to the client: the
    client connection has then been cut, so a truncated answer is never mistaken for a whole one,
    and that response is all there is to return.
    """

    def __init__(self, message: str, *, response: web.StreamResponse | None = None,
                 instance_failed: bool = True) -> None:
        super().__init__(message)
        self.response = response
        # False when the instance itself is known to be fine (it took a new connection at once):
        # the gateway then answers 502 without taking it out of rotation.
        self.instance_failed = instance_failed


class UpstreamTimeout(UpstreamFailed):
    """The instance did not answer within the upstream read timeout."""


class RequestBody:
    """A request body that is either in memory (resendable) or streamed from the client once."""

    __slots__ = ("_limit", "_prefix", "_request", "client_error", "data", "started", "too_large")

    def __init__(self, request: web.Request, *, limit: int, data: bytes | None = None,
                 prefix: bytes = b"") -> None:
        self.data = data
        self._request = request
        self._limit = limit
        self._prefix = prefix
        self.started = False
        self.too_large = False
        self.client_error: BaseException | None = None

    @classmethod
    async def read(cls, request: web.Request, *, limit: int) -> RequestBody | None:
        """The body of `request`: read whole if small, else ready to stream; None without a body.

        Waits as long as the client takes to send a small body. Raises BodyTooLarge past `limit`.
        """
        if not request.body_exists:
            return None
        length = request.content_length
        if length is not None:
            if length > limit:
                raise BodyTooLarge(f"the request body is {length} bytes; the limit is {limit}")
            if length <= BUFFER_BYTES:
                return cls(request, limit=limit, data=await request.content.readexactly(length))
            return cls(request, limit=limit)
        # Chunked: buffer what fits, stream the rest if there is more.
        chunks: list[bytes] = []
        size = 0
        content = request.content
        while size <= BUFFER_BYTES:
            chunk = await content.readany()
            if not chunk:
                return cls(request, limit=limit, data=b"".join(chunks))
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(f"the request body is more than {limit} bytes")
        return cls(request, limit=limit, prefix=b"".join(chunks))

    @property
    def resendable(self) -> bool:
        return self.data is not None or not self.started

    def payload(self) -> bytes | AsyncIterator[bytes]:
        if self.data is not None:
            return self.data
        return self._stream()

    async def _stream(self) -> AsyncIterator[bytes]:
        self.started = True
        size = len(self._prefix)
        if self._prefix:
            yield self._prefix
        content = self._request.content
        while True:
            try:
                chunk = await content.readany()
            except Exception as e:
                self.client_error = e
                raise
            if not chunk:
                return
            size += len(chunk)
            if size > self._limit:
                self.too_large = True
                raise BodyTooLarge(f"the request body is more than {self._limit} bytes")
            yield chunk


def upstream_path(raw_path: str, prefix_length: int) -> str:
    """The path and query the runtime sees: what follows /function/{name}, at least "/"."""
    end = len(raw_path)
    for separator in ("/", "?"):
        found = raw_path.find(separator, prefix_length)
        if 0 <= found < end:
            end = found
    rest = raw_path[end:]
    if not rest or rest[0] == "?":
        return "/" + rest
    return rest


class Proxy:
    """Forwards requests over one pool of keep-alive connections to instances (see `upstream`)."""

    def __init__(self) -> None:
        self._pool: Pool | None = None

    async def start(self) -> None:
        if self._pool is None:
            self._pool = Pool(connect_timeout=CONNECT_TIMEOUT, keepalive_timeout=KEEPALIVE_TIMEOUT)

    async def close(self) -> None:
        """Close idle connections to instances; returns at once."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def close_idle(self, instance: Instance) -> None:
        """Close the idle connections to an instance that left rotation."""
        if self._pool is not None:
            self._pool.close_idle(instance.host, instance.port)

    async def forward(self, request: web.Request, instance: Instance, path: str, body: RequestBody | None,
                      *, timeout: float) -> web.StreamResponse:
        """Send `request` to `instance` at `path` and answer the client with the instance's response.

        Runs until the whole response has been sent to the client. Raises NotSent, Rejected,
        UpstreamFailed, UpstreamTimeout, BodyTooLarge or BodyUnreadable (see the module
        docstring), or ConnectionError when the client went away; a client that goes away may
        also cancel it, which closes the connection to the instance.
        """
        pool = self._pool
        if pool is None:
            raise RuntimeError("the gateway's proxy is not started")
        head, chunked = _request_head(request, instance, path, body)
        try:
            try:
                upstream = await self._send(instance, head, body, chunked=chunked, timeout=timeout)
            except StaleConnection as e:
                # The reused connection closed under the request, most likely while it was idle
                # at the instance. A request that may be sent twice goes once more, on a fresh
                # connection; any other may have run, so it fails, but the instance is reported
                # only if it does not take a new connection either.
                if request.method not in _IDEMPOTENT_METHODS or (body is not None and not body.resendable):
                    alive = await pool.reachable(instance.host, instance.port)
                    raise UpstreamFailed(f"instance {instance.id} closed the connection before answering: {e}",
                                         instance_failed=not alive) from e
                upstream = await self._send(instance, head, body, chunked=chunked, timeout=timeout, fresh=True)
        except ReadTimeout as e:
            raise UpstreamTimeout(f"instance {instance.id} did not answer within {timeout:g}s") from e
        except BodyTooLarge:
            raise
        except Exception as e:
            # Failures of the request body stream are the client's, not the instance's.
            if body is not None and body.client_error is not None:
                raise BodyUnreadable(f"could not read the request body: {body.client_error!r}") from None
            if isinstance(e, (ConnectionBroken, OSError)):
                raise UpstreamFailed(f"instance {instance.id} failed: {e}") from e
            raise
        try:
            if upstream.status in (429, 503) and (body is None or body.resendable):
                reason = next((v for k, v in upstream.headers if k.lower() == _REJECTED_HEADER), None)
                if reason in _RETRYABLE_REJECTIONS:
                    raise Rejected(f"instance {instance.id} turned the request away ({reason})", reason=reason)
            return await self._respond(request, upstream, instance, timeout)
        finally:
            upstream.release()

    async def _send(self, instance: Instance, head: bytes, body: RequestBody | None, *, chunked: bool,
                    timeout: float, fresh: bool = False) -> UpstreamResponse:
        assert self._pool is not None
        try:
            connection: Connection = await self._pool.connect(instance.host, instance.port, fresh=fresh)
        except ConnectFailed as e:
            raise NotSent(f"could not connect to instance {instance.id}: {e}") from e
        return await connection.send(head, None if body is None else body.payload(), chunked=chunked,
                                     timeout=timeout)

    async def _respond(self, request: web.Request, upstream: UpstreamResponse, instance: Instance,
                       timeout: float) -> web.StreamResponse:
        headers: CIMultiDict[str] = CIMultiDict()
        length: int | None = None
        for name, value in upstream.headers:
            lowered = name.lower()
            if lowered in _RESPONSE_DROP:
                continue
            if lowered == "content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = None
                continue
            headers.add(name, value)
        status = upstream.status
        if request.method == hdrs.METH_HEAD or status in _NO_BODY_STATUSES:
            if length is not None:
                headers[hdrs.CONTENT_LENGTH] = str(length)
            response = web.StreamResponse(status=status, reason=upstream.reason, headers=headers)
            await response.prepare(request)
            await response.write_eof()
            return response

        if upstream.complete or (length is not None and length <= BUFFER_BYTES):
            # Small: gather it and answer in one write.
            parts = [upstream.buffered()]
            while not upstream.complete:
                chunk = await _read(request, upstream, instance, timeout, None)
                if not chunk:
                    break
                parts.append(chunk)
            data = parts[0] if len(parts) == 1 else b"".join(parts)
            return web.Response(status=status, reason=upstream.reason, headers=headers, body=data or None)

        response = web.StreamResponse(status=status, reason=upstream.reason, headers=headers)
        if length is not None:
            response.content_length = length
        await response.prepare(request)
        chunk = upstream.buffered()
        while True:
            if chunk:
                # A ConnectionError here is the client going away: it propagates as such.
                await response.write(chunk)
            chunk = await _read(request, upstream, instance, timeout, response)
            if not chunk:
                break
        await response.write_eof()
        return response


async def _read(request: web.Request, upstream: UpstreamResponse, instance: Instance, timeout: float,
                response: web.StreamResponse | None) -> bytes:
    try:
        return await upstream.read_chunk(timeout)
    except ReadTimeout as e:
        if response is not None:
            _cut(request)
        raise UpstreamTimeout(f"instance {instance.id} stalled mid-response for {timeout:g}s",
                              response=response) from e
    except (ConnectionBroken, OSError) as e:
        if response is not None:
            _cut(request)
        raise UpstreamFailed(f"instance {instance.id} failed mid-response: {e}", response=response) from e


def _request_head(request: web.Request, instance: Instance, path: str,
                  body: RequestBody | None) -> tuple[bytes, bool]:
    """The request line and headers for the instance, and whether the body goes chunked."""
    method = request.method
    # The client's Host goes through, as Knative and OpenFaaS do: the handler's event shows the
    # host it was called on (headers.host, requestContext.domainName), not an instance address.
    host = request.headers.get("Host")
    host_bytes = host.encode("utf-8", "surrogateescape") if host else b"%s:%d" % (
        instance.host.encode("idna"), instance.port)
    parts = [b"%s %s HTTP/1.1\r\nHost: %s\r\n" % (
        method.encode("ascii"), path.encode("utf-8", "surrogateescape"), host_bytes)]
    dropped = _HOP_BY_HOP_BYTES
    raw = request.raw_headers
    forwarded_for = b""
    has_proto = has_host = False
    for name, value in raw:
        if name.lower() == b"connection":
            # Headers the client named in Connection are for the gateway alone (RFC 9110 §7.6.1).
            dropped = dropped | {token.strip().lower() for token in value.split(b",")}
    for name, value in raw:
        lowered = name.lower()
        if lowered in dropped:
            continue
        if lowered == b"x-forwarded-for":
            forwarded_for = value if not forwarded_for else forwarded_for + b", " + value
            continue
        if lowered == b"x-forwarded-proto":
            has_proto = True
        elif lowered == b"x-forwarded-host":
            has_host = True
        parts.append(b"%s: %s\r\n" % (name, value))
    peer = (request.remote or "").encode("ascii", "replace")
    parts.append(b"X-Forwarded-For: %s\r\n" % (forwarded_for + b", " + peer if forwarded_for else peer))
    if not has_proto:
        parts.append(b"X-Forwarded-Proto: %s\r\n" % request.scheme.encode("ascii"))
    if not has_host and request.host:
        parts.append(b"X-Forwarded-Host: %s\r\n" % request.host.encode("utf-8", "surrogateescape"))
    chunked = False
    if body is None:
        if method in _BODY_METHODS:
            parts.append(b"Content-Length: 0\r\n")
    elif body.data is not None:
        parts.append(b"Content-Length: %d\r\n" % len(body.data))
    elif request.content_length is not None:
        parts.append(b"Content-Length: %d\r\n" % request.content_length)
    else:
        parts.append(b"Transfer-Encoding: chunked\r\n")
        chunked = True
    parts.append(b"\r\n")
    return b"".join(parts), chunked


def _cut(request: web.Request) -> None:
    # The status line went out already: close the connection so the client sees a broken answer.
    transport = request.transport
    if transport is not None:
        transport.close()
