"""Just enough HTTP/1.1 for the instance's two servers, on asyncio protocols, standard library only.

Both the Runtime API (environments polling for work) and the invoke endpoint (the gateway's hop)
carry small, well-formed requests from trusted peers on one keep-alive connection each, one at
a time. `RequestParser` turns bytes into `Request`s (Content-Length or chunked bodies, bounded
head and body sizes); `response` frames an answer in a single write.
"""
from __future__ import annotations

TYPE_CHECKING = False  # importing typing costs milliseconds on every cold start
if TYPE_CHECKING:
    from collections.abc import Iterable

MAX_HEAD_BYTES = 64 * 1024
REASONS = {200: "OK", 202: "Accepted", 204: "No Content", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
           404: "Not Found", 405: "Method Not Allowed", 409: "Conflict", 411: "Length Required",
           413: "Payload Too Large", 429: "Too Many Requests", 500: "Internal Server Error", 501: "Not Implemented",
           502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}


class BadRequest(Exception):
    """The peer sent something that is not a request this server can read; answer `status` and close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Request:
    __slots__ = ("body", "headers", "keep_alive", "method", "oversized", "target")

    def __init__(self, method: str, target: str, headers: dict[str, str], body: bytes, keep_alive: bool,
                 oversized: int = 0) -> None:
        self.method = method
        self.target = target
        self.headers = headers      # lower-cased names; repeated headers joined with ", "
        self.body = body
        self.keep_alive = keep_alive
        # The size of a body over the parser's limit that was read and thrown away (`body` is empty
        # then): only from a parser that skips oversized bodies.
        self.oversized = oversized

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]


class RequestParser:
    """Accumulates bytes; `next()` returns one complete Request, or None until more arrive.

    A body over `max_body` raises BadRequest(413): the server answers and closes, and a client
    still sending gets a broken pipe. With `skip_oversized`, such a body is read and thrown away
    as it comes instead (never buffered), and its request returned once it has ended, with
    `oversized` set and no body: the server answers it and the connection goes on. Malformed
    input still raises BadRequest.
    """

    __slots__ = ("_buffer", "_chunked", "_chunks", "_max_body", "_skip", "_skip_oversized", "_skipped")

    def __init__(self, *, max_body: int, skip_oversized: bool = False) -> None:
        self._buffer = bytearray()
        self._max_body = max_body
        self._skip_oversized = skip_oversized
        self._skipped: Request | None = None   # the request whose oversized body is being thrown away
        self._skip = 0           # bytes of it still to throw away before...
        self._chunked = False    # ...the next chunk-size line, if it is chunked
        self._chunks: _Chunks | None = None   # the buffered request's chunked body, decoded so far

    @property
    def pending(self) -> bool:
        """Whether bytes of an unfinished request are buffered (or an oversized body is being skipped)."""
        return bool(self._buffer) or self._skipped is not None

    def awaiting_continue(self) -> bool:
        """Whether the buffered request's head is complete and says `Expect: 100-continue`, and none of
        its body has come: its client waits for a `100 Continue` (curl does, for bodies over 1 MB).

        The head has passed `next()` by then, so its body is within the limit.
        """
        end = self._buffer.find(b"\r\n\r\n")
        if self._chunks is not None and self._chunks.body:
            return False   # chunks came (and left the buffer, which holds the head alone again)
        return 0 <= end == len(self._buffer) - 4 and b"\r\nexpect: 100-continue" in self._buffer[:end].lower()

    def feed(self, data: bytes) -> None:
        self._buffer += data
        if self._skip_oversized:
            # `next` decides: a body over the limit is skipped, not refused (a chunked one is seen to
            # be over it only at its next chunk's size line, which may come in a later piece).
            if self._skipped is not None:
                self._discard()
        elif len(self._buffer) > self._most:
            raise BadRequest(413, "request too large")

    @property
    def _most(self) -> int:
        """The most bytes an unfinished request may hold buffered."""
        return MAX_HEAD_BYTES + self._max_body + 65536

    def next(self) -> Request | None:
        skipped = self._skipped
        if skipped is not None:
            if self._skip or self._chunked:
                return None   # its body is still coming
            self._skipped = None
            return skipped
        buffer = self._buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > MAX_HEAD_BYTES:
                raise BadRequest(400, "request head too large")
            return None
        if end > MAX_HEAD_BYTES:   # the same limit whether the head came in one piece or in many
            raise BadRequest(400, "request head too large")
        head = bytes(buffer[:end]).decode("latin-1")
        lines = head.split("\r\n")
        # A CR or LF that does not end a line (or a NUL) would end one for another parser downstream:
        # a header value carrying it could forge headers where the value is passed on.
        if head.count("\n") != len(lines) - 1 or head.count("\r") != len(lines) - 1 or "\x00" in head:
            raise BadRequest(400, "bare CR, LF or NUL in the request head")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise BadRequest(400, f"malformed request line {lines[0][:80]!r}")
        method, target, version = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon or not name or name != name.strip():
                raise BadRequest(400, f"malformed header line {line[:80]!r}")
            key = name.lower()
            value = value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        start = end + 4
        connection = headers.get("connection", "").lower()
        keep_alive = "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
        if "transfer-encoding" in headers:
            if headers["transfer-encoding"].lower() != "chunked" or "content-length" in headers:
                raise BadRequest(400, "unsupported Transfer-Encoding")
            if self._chunks is None:
                self._chunks = _Chunks(start)
            try:
                decoded = _dechunk(buffer, self._chunks, self._max_body)
            except _OverLimit as e:
                self._chunks = None
                if not self._skip_oversized:
                    raise BadRequest(413, f"request body exceeds {self._max_body} bytes") from None
                # The chunks so far go; the current one's data (and its CRLF) are skipped as they come.
                return self._skipping(Request(method, target, headers, b"", keep_alive, oversized=e.total),
                                      e.data_start, e.size + 2, chunked=True)
            if decoded is None:
                if len(buffer) > self._most:   # its chunks' framing alone, for a skipping parser
                    raise BadRequest(413, "request too large")
                return None
            body, consumed = decoded
            self._chunks = None
        else:
            length_text = headers.get("content-length", "0")
            # Not '²', which int() refuses; nor more digits than any length (int() refuses 4,301).
            if not (length_text.isascii() and length_text.isdigit()) or len(length_text) > 19:
                raise BadRequest(400, f"invalid Content-Length {length_text[:20]!r}")
            length = int(length_text)
            if length > self._max_body:
                if not self._skip_oversized:
                    raise BadRequest(413, f"request body of {length} bytes exceeds {self._max_body} bytes")
                return self._skipping(Request(method, target, headers, b"", keep_alive, oversized=length),
                                      start, length, chunked=False)
            if len(buffer) - start < length:
                return None
            body = bytes(buffer[start:start + length])
            consumed = start + length
        del buffer[:consumed]
        return Request(method, target, headers, body, keep_alive)

    def _skipping(self, request: Request, consumed: int, skip: int, *, chunked: bool) -> Request | None:
        """Start throwing away `request`'s body (`skip` bytes after the first `consumed`, then more
        chunks if `chunked`); the request, if its body has all come already."""
        del self._buffer[:consumed]
        self._skipped, self._skip, self._chunked = request, skip, chunked
        self._discard()
        return self.next()

    def _discard(self) -> None:
        """Throw away as much of the skipped body as has come (chunk by chunk, if chunked)."""
        buffer = self._buffer
        request = self._skipped
        assert request is not None
        while True:
            taken = min(self._skip, len(buffer))
            del buffer[:taken]
            self._skip -= taken
            if self._skip or not self._chunked:
                return
            line_end = buffer.find(b"\r\n")
            if line_end < 0:
                if len(buffer) > MAX_HEAD_BYTES:
                    raise BadRequest(400, "malformed chunk size")
                return
            size_text = bytes(buffer[:line_end]).split(b";", 1)[0].strip()
            if not size_text or not _HEX_DIGITS.issuperset(size_text):
                raise BadRequest(400, "malformed chunk size")
            size = int(size_text, 16)
            if size == 0:
                trailer_end = buffer.find(b"\r\n\r\n", line_end)
                if trailer_end < 0:
                    if len(buffer) > MAX_HEAD_BYTES:
                        raise BadRequest(400, "chunked trailer too large")
                    return
                del buffer[:trailer_end + 4]
                self._chunked = False
                return
            del buffer[:line_end + 2]
            request.oversized += size
            self._skip = size + 2


class _OverLimit(Exception):
    """A chunked body passed the limit in the chunk whose data starts at `data_start`."""

    def __init__(self, data_start: int, size: int, total: int) -> None:
        super().__init__()
        self.data_start = data_start
        self.size = size
        self.total = total


_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")


class _Chunks:
    """A chunked body still arriving: what its complete chunks hold, and where the next one starts
    in the buffer. Kept between calls, so each byte is parsed once however many pieces the body
    comes in (parsing it all again at each piece took minutes for a body of 1-byte chunks), and
    the chunks decoded are dropped from the buffer (their framing is not held: only the body is)."""

    __slots__ = ("body", "pos", "start")

    def __init__(self, start: int) -> None:
        self.body = bytearray()
        self.start = start   # where the body starts in the buffer, after the head
        self.pos = start     # the next chunk's size line


def _dechunk(buffer: bytearray, chunks: _Chunks, limit: int) -> tuple[bytes, int] | None:
    """(body, bytes consumed) of a complete chunked body, or None if incomplete (`chunks` then
    says how far it got). Raises BadRequest for a malformed one, _OverLimit past `limit`."""
    body = chunks.body
    while True:
        pos = chunks.pos
        line_end = buffer.find(b"\r\n", pos)
        if line_end < 0:
            if len(buffer) - pos > MAX_HEAD_BYTES:
                raise BadRequest(400, "malformed chunk size")
            _incomplete(buffer, chunks)
            return None
        size_text = bytes(buffer[pos:line_end]).split(b";", 1)[0].strip()
        # Hex digits only: int() would also take a sign, "0x" and underscores.
        if not size_text or not _HEX_DIGITS.issuperset(size_text):
            raise BadRequest(400, "malformed chunk size")
        size = int(size_text, 16)
        pos = line_end + 2
        if size == 0:
            trailer_end = buffer.find(b"\r\n\r\n", pos - 2)
            if trailer_end < 0:
                if len(buffer) - pos > MAX_HEAD_BYTES:
                    raise BadRequest(400, "chunked trailer too large")
                _incomplete(buffer, chunks)
                return None
            return bytes(body), trailer_end + 4
        if len(body) + size > limit:
            raise _OverLimit(pos, size, len(body) + size)
        if len(buffer) < pos + size + 2:
            _incomplete(buffer, chunks)
            return None
        if buffer[pos + size:pos + size + 2] != b"\r\n":
            raise BadRequest(400, "chunk longer than its size")
        body += buffer[pos:pos + size]
        chunks.pos = pos + size + 2


def _incomplete(buffer: bytearray, chunks: _Chunks) -> None:
    """The body has not all come: drop the chunks decoded so far from the buffer."""
    del buffer[chunks.start:chunks.pos]
    chunks.pos = chunks.start


def response(status: int, body: bytes = b"", headers: Iterable[tuple[str, str]] = (), *,
             close: bool = False) -> bytes:
    """A whole response, ready for one write."""
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}\r\n"]
    lines.extend(f"{name}: {value}\r\n" for name, value in headers)
    lines.append(f"Content-Length: {len(body)}\r\n")
    if close:
        lines.append("Connection: close\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("latin-1") + body
