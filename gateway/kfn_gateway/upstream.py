"""A lean HTTP/1.1 client for the gateway's connections to instances.

The gateway speaks to instances over plain keep-alive HTTP/1.1 on a trusted network, one request
per connection at a time, and needs to know exactly how far a request got (was anything written?
did the answer start?). A general-purpose client spends most of the gateway's time per request
on features this path never uses (measured here: about 120 µs per request for aiohttp's client,
about 20 µs for this one), so this module keeps only what is needed: a pool of keep-alive
connections per instance address, requests with bytes or streamed bodies, responses whose
bodies are streamed with back-pressure, and timeouts. Parsing is left to httptools (llhttp).

Limits and reuse rules:
- an answer's status line and headers may take at most `max_head_bytes` (64 KiB by default);
- a connection goes back to the pool only when the exchange ended cleanly and both sides keep it
  alive; it is closed after the pool's keep-alive timeout, or sooner when the instance announced
  a shorter one (`Keep-Alive: timeout=N`), so the gateway never writes into a connection the
  instance is about to close;
- a request written on a reused connection that the instance closed before sending a byte of an
  answer fails with `StaleConnection`: the instance most likely closed it while idle and never
  read the request. The proxy decides whether to send it again (see `kfn_gateway.invoking`).
"""
from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator

import httptools

# Response bytes buffered before reading from the instance pauses until they are taken.
HIGH_WATER = 256 * 1024


class ConnectFailed(Exception):
    """The connection could not be opened: nothing was sent."""


class ConnectionBroken(Exception):
    """The connection failed after (part of) the request was written."""


class StaleConnection(ConnectionBroken):
    """A reused connection closed before any byte of the answer: the request was probably never read."""


class ReadTimeout(Exception):
    """The instance sent nothing for longer than the read timeout."""


# Default cap on the status line and headers of an answer.
MAX_HEAD_BYTES = 64 * 1024
# Idle connections are closed this long before an instance's announced keep-alive timeout.
KEEPALIVE_MARGIN = 1.0


class UpstreamResponse:
    """An instance's answer: status and headers at once, the body as it arrives."""

    __slots__ = ("_connection", "_reader", "headers", "reason", "status")

    def __init__(self, status: int, reason: str, headers: list[tuple[str, str]],
                 connection: Connection, reader: ResponseReader) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self._connection = connection
        self._reader = reader

    @property
    def complete(self) -> bool:
        """Whether the whole body has arrived already."""
        return self._reader.body_done

    def buffered(self) -> bytes:
        """The body received so far (all of it when `complete`)."""
        return self._reader.take_body()

    async def read_chunk(self, timeout: float) -> bytes:
        """The next piece of the body, b"" at its end. Raises ConnectionBroken or ReadTimeout."""
        return await self._reader.read_chunk(timeout)

    def release(self) -> None:
        """Done with the response: the connection goes back to the pool if it can be reused."""
        self._connection.finish()


class ResponseReader:
    """The answer arriving on one connection: parsed by httptools (this object takes its
    callbacks), its head awaited by `Connection.send`, its body buffered with back-pressure and
    handed out by `read_chunk`. Reset for each exchange the connection carries."""

    def __init__(self, connection: Connection, loop: asyncio.AbstractEventLoop, *, max_head_bytes: int) -> None:
        self._connection = connection
        self._loop = loop
        self._max_head_bytes = max_head_bytes
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self._head_bytes = 0
        self._parse_error: str | None = None
        self.keepalive_hint: float | None = None   # the instance's Keep-Alive timeout, if it said one
        self._error: BaseException | None = None
        # The exchange in progress.
        self.head: asyncio.Future[None] | None = None
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[str, str]] = []
        self._head_only = False
        self.until_close = False
        self.body: deque[bytes] = deque()
        self._buffered = 0
        self.body_done = False
        self.reusable = False
        self._body_waiter: asyncio.Future[None] | None = None
        self._reading_paused = False

    def begin(self, *, head_only: bool) -> asyncio.Future[None]:
        """Expect an answer (to a HEAD request if `head_only`); the future is done when its head is."""
        head = self.head = self._loop.create_future()
        self._head_only = head_only
        return head

    def feed(self, data: bytes) -> bool:
        """Parse `data` of the answer; False if it is malformed or its head too large (the
        exchange has then failed with ConnectionBroken)."""
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as e:
            self.fail(ConnectionBroken(self._parse_error or f"malformed response: {e}"))
            return False
        if self._head_only and self.head is not None and self.head.done() and not self.body_done:
            # A response to HEAD has no body whatever its headers say; llhttp cannot be told,
            # so the connection ends with it.
            self.reusable = False
            self.end_body()
        return True

    # -- httptools callbacks -------------------------------------------------------------------

    def on_status(self, status: bytes) -> None:
        self.reason += status
        self._count_head(len(status))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)
        self.headers.append((name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape")))

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self._max_head_bytes:
            # Raised inside the parser's callback: feed_data stops and `feed` fails the
            # exchange with this reason (httptools keeps only the callback's name).
            self._parse_error = f"the answer's headers are larger than {self._max_head_bytes} bytes"
            raise httptools.HttpParserCallbackError(self._parse_error)

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            # An interim answer (100 Continue, 103 Early Hints): the real one follows.
            self.reason = b""
            self.headers = []
            return
        self.status = status
        self.reusable = self._parser.should_keep_alive()
        self.keepalive_hint = _keepalive_timeout(self.headers)
        if not self._head_only and status not in (204, 304):
            names = {name.lower() for name, _ in self.headers}
            self.until_close = "content-length" not in names and "transfer-encoding" not in names
        assert self.head is not None
        if not self.head.done():
            self.head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.status == 0:
            return  # the end of an interim answer
        self.end_body()

    # -- the body ------------------------------------------------------------------------------

    async def read_chunk(self, timeout: float) -> bytes:
        """The next piece of the body, b"" at its end; waits at most `timeout` seconds for it.
        Raises the exchange's failure, or ReadTimeout after closing the connection."""
        while not self.body:
            if self.body_done:
                return b""
            if self._error is not None:
                raise self._error
            self._body_waiter = self._loop.create_future()
            try:
                async with asyncio.timeout(timeout):
                    await self._body_waiter
            except TimeoutError:
                self._connection.close()
                raise ReadTimeout(f"the answer stalled for {timeout:g}s") from None
            finally:
                self._body_waiter = None
        return self.take_body()

    def take_body(self) -> bytes:
        """The body buffered so far (b"" if none); reading from the instance resumes if it paused."""
        body = self.body
        if not body:
            return b""
        data = body.popleft() if len(body) == 1 else b"".join(body)
        body.clear()
        self._buffered = 0
        if self._reading_paused and self.transport is not None and not self._connection.closed:
            self._reading_paused = False
            self.transport.resume_reading()
        return data

    def end_body(self) -> None:
        self.body_done = True
        self._wake()

    def fail(self, error: BaseException) -> None:
        """End the exchange with `error`: raised by `send` if the head is awaited, else by `read_chunk`."""
        self._error = error
        head = self.head
        if head is not None and not head.done():
            head.set_exception(error)
            head.exception()  # retrieved by `send` unless it was cancelled meanwhile
        self._wake()

    def reset(self) -> None:
        """Forget the exchange that ended cleanly: ready for the connection's next one."""
        self.head = None
        self.status = 0
        self.reason = b""
        self.headers = []
        self._head_only = False
        self.until_close = False
        self._buffered = 0
        self.body_done = False
        self.reusable = False
        self._head_bytes = 0

    def _wake(self) -> None:
        waiter = self._body_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class Connection(asyncio.Protocol):
    """One keep-alive connection to an instance, carrying one request at a time; its answers are
    read by its `reader`."""

    def __init__(self, pool: Pool, key: tuple[str, int], *, max_head_bytes: int = MAX_HEAD_BYTES) -> None:
        self._pool = pool
        self._key = key
        self.reused = False             # handed out from the pool: it carried an exchange before
        self._received = 0              # bytes of the current answer received so far
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self.reader = ResponseReader(self, self._loop, max_head_bytes=max_head_bytes)
        self.closed = False
        self._idle_handle: asyncio.TimerHandle | None = None
        self._must_close = False
        self._writing_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport
        self.reader.transport = self._transport

    def data_received(self, data: bytes) -> None:
        self._received += len(data)
        reader = self.reader
        if reader.head is None or reader.body_done:
            # Bytes nobody asked for: the connection cannot be trusted any more.
            self._must_close = True
            if reader.head is None:
                self.close()
            return
        if not reader.feed(data):
            self.close()

    def eof_received(self) -> bool:
        if self.reader.head is None:
            # The instance closed an idle connection: never hand it out again.
            self.closed = True
            self._pool.forget(self._key, self)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool.forget(self._key, self)
        if self._idle_handle is not None:
            self._idle_handle.cancel()
        reader = self.reader
        head = reader.head
        if head is not None and head.done() and not reader.body_done and reader.until_close and exc is None:
            # Neither Content-Length nor chunked: the body ends with the connection.
            reader.reusable = False
            reader.end_body()
            return
        detail = f": {exc}" if exc else ""
        if self.reused and self._received == 0 and head is not None:
            reader.fail(StaleConnection(f"the instance closed a reused connection before answering{detail}"))
        else:
            reader.fail(ConnectionBroken(f"the instance closed the connection{detail}"))
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_exception(ConnectionBroken("the instance closed the connection"))

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    # -- the exchange --------------------------------------------------------------------------

    async def send(self, head: bytes, body: bytes | AsyncIterator[bytes] | None, *, chunked: bool,
                   timeout: float) -> UpstreamResponse:
        """Write a request and wait for the answer's status and headers.

        Raises ConnectionBroken once anything may have been written, ReadTimeout if no answer
        starts within `timeout` seconds; the connection is closed on any failure.
        """
        transport = self._transport
        assert transport is not None
        reader = self.reader
        head_future = reader.begin(head_only=head.startswith(b"HEAD "))
        try:
            if body is None or isinstance(body, bytes):
                if not body:
                    transport.write(head)
                elif len(body) <= 65536:
                    transport.write(head + body)
                else:
                    transport.writelines((head, body))
            else:
                transport.write(head)
                await self._upload(transport, body, chunked=chunked, timeout=timeout)
            async with asyncio.timeout(timeout):
                await head_future
        except TimeoutError:
            self.close()
            raise ReadTimeout(f"no answer within {timeout:g}s") from None
        except BaseException:
            self.close()
            raise
        return UpstreamResponse(reader.status, reader.reason.decode("latin-1"), reader.headers, self, reader)

    async def _upload(self, transport: asyncio.Transport, body: AsyncIterator[bytes], *, chunked: bool,
                      timeout: float) -> None:
        reader = self.reader
        try:
            async for chunk in body:
                if self.closed:
                    raise ConnectionBroken("the instance closed the connection during the upload")
                if reader.head is not None and reader.head.done():
                    # Answered before the whole body was sent: the rest is not wanted, and the
                    # connection cannot carry another request.
                    self._must_close = True
                    return
                if chunked:
                    if chunk:
                        transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                elif chunk:
                    transport.write(chunk)
                if self._writing_paused:
                    try:
                        async with asyncio.timeout(timeout):
                            await self._drain()
                    except TimeoutError:
                        raise ConnectionBroken(f"the instance took no data for {timeout:g}s") from None
            if chunked and not self.closed:
                transport.write(b"0\r\n\r\n")
            if reader.head is not None and reader.head.done():
                # Answered before the upload ended: the instance may not have read all of it.
                self._must_close = True
        finally:
            aclose = getattr(body, "aclose", None)
            if aclose is not None:
                await aclose()

    def finish(self) -> None:
        """Back to the pool if the exchange ended cleanly and the instance keeps the connection."""
        if self.closed:
            return
        reader = self.reader
        if not (reader.body_done and reader.reusable and not reader.body) or self._must_close:
            self.close()
            return
        reader.reset()
        self._must_close = False
        self._received = 0
        self._pool.put(self._key, self)

    def close(self) -> None:
        if self._transport is not None and not self.closed:
            self.closed = True
            self._transport.close()
            self._pool.forget(self._key, self)

    def start_idle(self, seconds: float) -> None:
        self._idle_handle = self._loop.call_later(seconds, self._idle_expired)

    def stop_idle(self) -> None:
        if self._idle_handle is not None:
            self._idle_handle.cancel()
            self._idle_handle = None

    def _idle_expired(self) -> None:
        self._idle_handle = None
        self.close()

    async def _drain(self) -> None:
        if self.closed:
            raise ConnectionBroken("the instance closed the connection")
        self._drain_waiter = self._loop.create_future()
        try:
            await self._drain_waiter
        finally:
            self._drain_waiter = None


class Pool:
    """Idle keep-alive connections per instance address, most recently used first."""

    def __init__(self, *, connect_timeout: float, keepalive_timeout: float,
                 max_head_bytes: int = MAX_HEAD_BYTES) -> None:
        self._idle: dict[tuple[str, int], deque[Connection]] = {}
        self._connect_timeout = connect_timeout
        self._keepalive_timeout = keepalive_timeout
        self._max_head_bytes = max_head_bytes
        self._closed = False

    async def connect(self, host: str, port: int, *, fresh: bool = False) -> Connection:
        """A connection to host:port, reused if one is idle (unless `fresh`). Raises ConnectFailed."""
        key = (host, port)
        idle = self._idle.get(key)
        while idle and not fresh:
            connection = idle.pop()
            connection.stop_idle()
            if not connection.closed:
                connection.reused = True
                return connection
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, connection = await loop.create_connection(
                    lambda: Connection(self, key, max_head_bytes=self._max_head_bytes), host, port)
        except TimeoutError:
            raise ConnectFailed(f"connecting to {host}:{port} timed out after {self._connect_timeout:g}s") from None
        except OSError as e:
            raise ConnectFailed(f"cannot connect to {host}:{port}: {e.strerror or e}") from e
        return connection

    async def reachable(self, host: str, port: int) -> bool:
        """Whether host:port takes a new connection now (kept idle for the next request)."""
        try:
            connection = await self.connect(host, port, fresh=True)
        except ConnectFailed:
            return False
        self.put((host, port), connection)
        return True

    def put(self, key: tuple[str, int], connection: Connection) -> None:
        if self._closed:
            connection.close()
            return
        timeout = self._keepalive_timeout
        hint = connection.reader.keepalive_hint
        if hint is not None:
            timeout = min(timeout, hint - KEEPALIVE_MARGIN)
        if timeout <= 0:
            connection.close()  # the instance closes it too soon to be worth keeping
            return
        self._idle.setdefault(key, deque()).append(connection)
        connection.start_idle(timeout)

    def forget(self, key: tuple[str, int], connection: Connection) -> None:
        idle = self._idle.get(key)
        if idle is None:
            return
        try:
            idle.remove(connection)
        except ValueError:
            pass
        if not idle:
            del self._idle[key]

    def close_idle(self, host: str, port: int) -> None:
        for connection in list(self._idle.pop((host, port), ())):
            connection.close()

    def idle(self, host: str, port: int) -> int:
        """How many idle connections to host:port are kept."""
        return len(self._idle.get((host, port), ()))

    def close(self) -> None:
        """Close every idle connection; connections in use close when their exchange ends."""
        self._closed = True
        for idle in list(self._idle.values()):
            for connection in list(idle):
                connection.close()
        self._idle.clear()


def _keepalive_timeout(headers: list[tuple[str, str]]) -> float | None:
    """The `timeout=N` of a Keep-Alive header (RFC 2068 §19.7.1), in seconds, if there is one."""
    for name, value in headers:
        if name.lower() != "keep-alive":
            continue
        for part in value.split(","):
            key, _, number = part.strip().partition("=")
            if key.strip().lower() == "timeout":
                try:
                    return max(0.0, float(number.strip()))
                except ValueError:
                    return None
    return None
