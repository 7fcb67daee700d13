"""HTTP/1.1 on the standard library: keep-alive connections, one thread per connection.

This module only speaks HTTP: it reads requests (Content-Length and chunked bodies), hands them to
the runtime (see `runtime.Runtime`), and writes each response in a single write. What to answer is
the runtime's business.
"""
from __future__ import annotations

import socket
import socketserver
import sys
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from kfn_runtime import contract
from kfn_runtime.responses import HttpResponse, error_response

TYPE_CHECKING = False  # importing typing costs milliseconds on every cold start
if TYPE_CHECKING:
    from typing import Protocol

    from kfn_runtime.config import Config

    class Runtime(Protocol):
        """What the server asks of the runtime (`kfn_runtime.runtime.Runtime`)."""

        @property
        def config(self) -> Config: ...
        @property
        def closing(self) -> bool: ...

        def probe(self, route: str, method: str) -> HttpResponse: ...
        def refusal(self) -> HttpResponse | None: ...
        def begin(self) -> HttpResponse | None: ...
        def invoke(self, *, method: str, target: str, headers: list[tuple[str, str]], body: bytes, peer: str,
                   request_id: str, protocol: str) -> HttpResponse: ...
        def record(self, *, request_id: str, method: str, path: str, status: int, duration: float,
                   error_type: str | None) -> None: ...
        def end(self) -> None: ...
        def log_exception(self, message: str) -> None: ...

RESERVED_PATHS = frozenset({contract.PATH_HEALTH, contract.PATH_READY, contract.PATH_METRICS})
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")
_NO_BODY_STATUSES = frozenset({204, 304})


class BodyError(Exception):
    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type


class RuntimeServer(ThreadingHTTPServer):
    """A listening socket and one daemon thread per connection."""

    daemon_threads = True
    request_queue_size = 128  # the default 5 drops connections when the gateway opens several at once

    def __init__(self, host: str, port: int, runtime: Runtime) -> None:
        self.runtime = runtime
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), RequestHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, a DNS round trip on every cold start.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = self.server_address[1]

    @property
    def port(self) -> int:
        return self.server_address[1]

    def handle_error(self, request: object, client_address: object) -> None:
        self.runtime.log_exception(f"unexpected error serving {client_address}")


class RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kfn-runtime"
    disable_nagle_algorithm = True  # responses are one write; do not wait for ACKs of the previous one
    timeout = 75.0                  # idle keep-alive connections are closed after this many seconds
    server: RuntimeServer

    def _dispatch(self) -> None:
        runtime = self.server.runtime
        target = self.path
        if target.startswith(("http://", "https://")):  # absolute-form request target
            target = "/" + target.split("/", 3)[3] if target.count("/") >= 3 else "/"
        route = target.partition("?")[0]
        if route in RESERVED_PATHS:
            if self.headers.get("Content-Length", "0").strip() != "0" or "Transfer-Encoding" in self.headers:
                self.close_connection = True  # probes ignore bodies; an unread one would corrupt the next request
            self._write(runtime.probe(route, self.command), request_id=None)
            return

        started = time.perf_counter()
        request_id = self._request_id()
        response = runtime.refusal()
        accepted = False
        if response is None:
            try:
                body = self._read_body(runtime.config.max_body_bytes)
            except BodyError as e:
                self.close_connection = True
                response = error_response(e.status, e.error_type, str(e))
            else:
                response = runtime.begin()
                if response is None:
                    accepted = True
                    try:
                        response = runtime.invoke(
                            method=self.command, target=target, headers=self.headers.items(), body=body,
                            peer=self.client_address[0], request_id=request_id, protocol=self.request_version)
                    except Exception:  # noqa: BLE001 - answered and logged below
                        # A bug in the runtime, not the handler: answer, keep serving, leave a trace.
                        runtime.log_exception(f"invocation {request_id} failed inside the runtime")
                        response = error_response(500, "Runtime.Error", "the runtime failed to run the invocation")
        if response.header(contract.HEADER_REJECTED) is not None and response.status == 503:
            self.close_connection = True
        try:
            self._write(response, request_id=request_id)
        finally:
            runtime.record(request_id=request_id, method=self.command, path=route, status=response.status,
                           duration=time.perf_counter() - started, error_type=response.error_type)
            if accepted:
                runtime.end()  # after the log line: a draining runtime exits once nothing is active

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _dispatch

    def _request_id(self) -> str:
        # The gateway may name the request already; keep its id so logs on both sides correlate.
        given = self.headers.get(contract.HEADER_REQUEST_ID)
        if given and len(given) <= 128 and all(c in _ID_CHARS for c in given):
            return given
        return str(uuid.uuid4())

    def _read_body(self, limit: int) -> bytes:
        encoding = self.headers.get("Transfer-Encoding")
        if encoding is not None:
            if encoding.strip().lower() != "chunked":
                raise BodyError(501, contract.ERROR_BAD_REQUEST, f"unsupported Transfer-Encoding {encoding!r}")
            return self._read_chunked(limit)
        lengths = self.headers.get_all("Content-Length") or []
        if not lengths:
            return b""
        if len(set(lengths)) > 1 or not lengths[0].strip().isdigit():
            raise BodyError(400, contract.ERROR_BAD_REQUEST, f"invalid Content-Length {', '.join(lengths)!r}")
        length = int(lengths[0])
        if length > limit:
            raise BodyError(413, contract.ERROR_TOO_LARGE, f"request body of {length} bytes exceeds {limit} bytes")
        body = self.rfile.read(length)
        if len(body) != length:
            raise BodyError(400, contract.ERROR_BAD_REQUEST, "request body ended early")
        return body

    def _read_chunked(self, limit: int) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(65537)
            size_text = line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise BodyError(400, contract.ERROR_BAD_REQUEST, f"invalid chunk size {size_text[:20]!r}") from None
            if size < 0:
                raise BodyError(400, contract.ERROR_BAD_REQUEST, "invalid chunk size")
            if size == 0:
                for _ in range(100):  # trailer fields, ignored
                    trailer = self.rfile.readline(65537)
                    if trailer in (b"\r\n", b"\n", b""):
                        return b"".join(chunks)
                raise BodyError(400, contract.ERROR_BAD_REQUEST, "too many trailer fields")
            total += size
            if total > limit:
                raise BodyError(413, contract.ERROR_TOO_LARGE, f"request body exceeds {limit} bytes")
            chunk = self.rfile.read(size)
            if len(chunk) != size or self.rfile.readline(3) not in (b"\r\n", b"\n"):
                raise BodyError(400, contract.ERROR_BAD_REQUEST, "malformed chunked body")
            chunks.append(chunk)

    def _write(self, response: HttpResponse, *, request_id: str | None) -> None:
        status = response.status
        phrase = self.responses.get(status, ("",))[0]
        lines = [f"HTTP/1.1 {status} {phrase}\r\n"]
        lines.extend(f"{name}: {value}\r\n" for name, value in response.headers)
        body = response.body
        if status in _NO_BODY_STATUSES or status < 200:
            body = b""
        else:
            lines.append(f"Content-Length: {len(body)}\r\n")
        if request_id is not None:
            lines.append(f"{contract.HEADER_REQUEST_ID}: {request_id}\r\n")
        if self.server.runtime.closing:
            self.close_connection = True  # draining: callers reconnect to another instance
        if self.close_connection:
            lines.append("Connection: close\r\n")
        elif self.request_version == "HTTP/1.0":
            lines.append("Connection: keep-alive\r\n")
        lines.append("\r\n")
        head = "".join(lines).encode("latin-1")
        try:
            self.wfile.write(head if self.command == "HEAD" else head + body)
        except OSError:
            self.close_connection = True  # the caller went away; nothing to tell it

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # Called by http.server for requests it cannot parse: answer in JSON like every other error,
        # with a status line even for HTTP/0.9-looking garbage, and close the connection.
        phrase = self.responses.get(code, ("Error",))[0]
        self.log_error("code %d, message %s", code, message or phrase)
        self.close_connection = True
        self._write(error_response(code, "".join(phrase.split()), message or phrase), request_id=None)

    def log_message(self, format: str, *args: object) -> None:
        pass  # every invocation gets a structured line from the runtime instead

    def log_error(self, format: str, *args: object) -> None:
        if format.startswith("Request timed out"):
            return  # an idle keep-alive connection reaching `timeout` is normal
        sys.stderr.write(f"kfn-runtime: {self.address_string()}: {format % args}\n")
