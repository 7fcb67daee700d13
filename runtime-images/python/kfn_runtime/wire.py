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
REASONS = {200: "OK", 202: "Accepted", 204: "No Content", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 411: "Length Required", 413: "Payload Too Large", 429: "Too Many Requests",
           500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable",
           504: "Gateway Timeout"}


class BadRequest(Exception):
    """The peer sent something that is not a request this server can read; answer `status` and close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Request:
    __slots__ = ("body", "headers", "keep_alive", "method", "target")

    def __init__(self, method: str, target: str, headers: dict[str, str], body: bytes, keep_alive: bool) -> None:
        self.method = method
        self.target = target
        self.headers = headers      # lower-cased names; repeated headers joined with ", "
        self.body = body
        self.keep_alive = keep_alive

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]


class RequestParser:
    """Accumulates bytes; `next()` returns one complete Request, or None until more arrive."""

    __slots__ = ("_buffer", "_max_body")

    def __init__(self, *, max_body: int) -> None:
        self._buffer = bytearray()
        self._max_body = max_body

    @property
    def pending(self) -> bool:
        """Whether bytes of an unfinished request are buffered."""
        return bool(self._buffer)

    def awaiting_continue(self) -> bool:
        """Whether the buffered request's head is complete and says `Expect: 100-continue`, and none of
        its body has come: its client waits for a `100 Continue` (curl does, for bodies over 1 MB).

        The head has passed `next()` by then, so its body is within the limit.
        """
        end = self._buffer.find(b"\r\n\r\n")
        return 0 <= end == len(self._buffer) - 4 and b"\r\nexpect: 100-continue" in self._buffer[:end].lower()

    def feed(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) > MAX_HEAD_BYTES + self._max_body + 65536:
            raise BadRequest(413, "request too large")

    def next(self) -> Request | None:
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
        if "transfer-encoding" in headers:
            if headers["transfer-encoding"].lower() != "chunked" or "content-length" in headers:
                raise BadRequest(400, "unsupported Transfer-Encoding")
            decoded = _dechunk(buffer, start, self._max_body)
            if decoded is None:
                return None
            body, consumed = decoded
        else:
            length_text = headers.get("content-length", "0")
            if not (length_text.isascii() and length_text.isdigit()):   # not '²', which int() refuses
                raise BadRequest(400, f"invalid Content-Length {length_text[:20]!r}")
            length = int(length_text)
            if length > self._max_body:
                raise BadRequest(413, f"request body of {length} bytes exceeds {self._max_body} bytes")
            if len(buffer) - start < length:
                return None
            body = bytes(buffer[start:start + length])
            consumed = start + length
        del buffer[:consumed]
        connection = headers.get("connection", "").lower()
        keep_alive = "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
        return Request(method, target, headers, body, keep_alive)


_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")


def _dechunk(buffer: bytearray, start: int, limit: int) -> tuple[bytes, int] | None:
    """(body, bytes consumed) of a complete chunked body at `start`, or None if incomplete."""
    chunks: list[bytes] = []
    pos, size_total = start, 0
    while True:
        line_end = buffer.find(b"\r\n", pos)
        if line_end < 0:
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
                return None
            return b"".join(chunks), trailer_end + 4
        size_total += size
        if size_total > limit:
            raise BadRequest(413, f"request body exceeds {limit} bytes")
        if len(buffer) < pos + size + 2:
            return None
        if buffer[pos + size:pos + size + 2] != b"\r\n":
            raise BadRequest(400, "chunk longer than its size")
        chunks.append(bytes(buffer[pos:pos + size]))
        pos += size + 2


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
