"""`kfn invoke`, `kfn list` and `kfn logs`: small HTTP clients of a running gateway.

They use urllib rather than aiohttp: a command that makes one request should start in a blink,
and importing the stdlib's HTTP client costs a fraction of importing an async framework.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, BinaryIO

from kfn import naming
from kfn.cli import DEFAULT_GATEWAY, CommandError

GATEWAY_ENV = "KFN_GATEWAY"


def main(args: argparse.Namespace) -> int:
    client = GatewayClient(gateway_url(args.gateway), timeout=getattr(args, "timeout", 60.0))
    if args.command == "invoke":
        return invoke(client, args)
    if args.command == "list":
        return list_functions(client, output=args.output)
    if args.command == "logs":
        return logs(client, args.name, follow=args.follow, tail=args.tail)
    raise CommandError(f"unknown command {args.command!r}", exit_code=2)


def gateway_url(flag: str | None) -> str:
    url = (flag or os.environ.get(GATEWAY_ENV) or DEFAULT_GATEWAY).rstrip("/")
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise CommandError(f"the gateway URL must look like http://HOST:PORT (got {url!r})", exit_code=2)
    return url


@dataclass
class Response:
    status: int
    reason: str
    headers: http.client.HTTPMessage
    body: BinaryIO

    def read(self) -> bytes:
        return self.body.read()


class GatewayClient:
    """Requests to one gateway, with the errors a user can act on turned into CommandError."""

    def __init__(self, url: str, *, timeout: float = 60.0) -> None:
        self.url = url
        self.timeout = timeout
        # No proxies: the gateway is usually on 127.0.0.1, and an HTTP_PROXY meant for the internet
        # would swallow the request.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def request(self, method: str, path: str, *, body: bytes | None = None,
                headers: dict[str, str] | None = None, timeout: float | None = None) -> Response:
        request = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        try:
            response = self._opener.open(request, timeout=timeout if timeout is not None else self.timeout)
        except urllib.error.HTTPError as e:
            return Response(e.code, e.reason, e.headers, e)
        except urllib.error.URLError as e:
            reason = e.reason
            if isinstance(reason, TimeoutError):
                raise CommandError(f"the kfn gateway at {self.url} did not answer in time") from None
            raise CommandError(
                f"cannot reach the kfn gateway at {self.url}: is `kfn local` running? ({reason})") from None
        except TimeoutError:
            raise CommandError(f"the kfn gateway at {self.url} did not answer in time") from None
        except (ConnectionError, http.client.HTTPException) as e:
            raise CommandError(f"lost the connection to the kfn gateway at {self.url}: {e}") from None
        return Response(response.status, response.reason, response.headers, response)

    def get_json(self, path: str) -> tuple[int, Any]:
        response = self.request("GET", path, headers={"Accept": "application/json"})
        raw = response.read()
        try:
            return response.status, json.loads(raw) if raw else None
        except ValueError:
            raise CommandError(f"the gateway at {self.url} answered {path} with something that is not JSON "
                               f"(HTTP {response.status}): is it a kfn gateway?") from None

    def function_exists(self, name: str) -> bool:
        status, _ = self.get_json(f"{naming.SYSTEM_FUNCTIONS_PATH}/{urllib.parse.quote(name)}")
        return status != 404


# -- kfn invoke --------------------------------------------------------------------------------

def invoke(client: GatewayClient, args: argparse.Namespace) -> int:
    """Prints the function's response body; a non-2xx answer also goes to stderr with exit 1."""
    headers = parse_headers(args.header)
    body: bytes | None = None
    if args.data is not None:
        body = read_data(args.data)
        if not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = "application/json" if _is_json(body) else "application/octet-stream"
    method = (args.method or ("POST" if body is not None else "GET")).upper()
    path = args.path or ""
    if path and not path.startswith("/"):
        path = "/" + path
    url_path = naming.function_url_path(urllib.parse.quote(args.name, safe="")) + path
    response = client.request(method, url_path, body=body, headers=headers, timeout=args.timeout)
    content = response.read()
    if response.status == 404 and not client.function_exists(args.name):
        raise CommandError(f"no function named {args.name!r} (see `kfn list`)")
    _write_body(content)
    if not 200 <= response.status < 300:
        print(f"kfn invoke: {args.name} answered HTTP {response.status} {response.reason}", file=sys.stderr)
        return 1
    return 0


def parse_headers(lines: Sequence[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon or not name.strip() or any(c.isspace() for c in name.strip()):
            raise CommandError(f"a header must look like 'Name: value' (got {line!r})", exit_code=2)
        headers[name.strip()] = value.strip()
    return headers


def read_data(data: str) -> bytes:
    """The request body: the text itself, or a file's bytes for @FILE (@- is stdin)."""
    if not data.startswith("@"):
        return data.encode()
    path = data[1:]
    if path == "-":
        return sys.stdin.buffer.read()
    if not path:
        raise CommandError("--data @FILE needs a file name after '@'", exit_code=2)
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise CommandError(f"cannot read the --data file {path!r}: {e.strerror or e}", exit_code=2) from None


def _is_json(body: bytes) -> bool:
    try:
        json.loads(body)
    except ValueError:
        return False
    return True


def _write_body(content: bytes) -> None:
    out = sys.stdout.buffer
    out.write(content)
    if content and not content.endswith(b"\n") and sys.stdout.isatty():
        out.write(b"\n")
    out.flush()


# -- kfn list ---------------------------------------------------------------------------------------

def list_functions(client: GatewayClient, *, output: str = "text") -> int:
    status, functions = client.get_json(naming.SYSTEM_FUNCTIONS_PATH)
    if status != 200 or not isinstance(functions, list):
        raise CommandError(f"the gateway at {client.url} answered {naming.SYSTEM_FUNCTIONS_PATH} with HTTP {status}")
    problems = _local_errors(client)
    function_errors = {str(e.get("function")): str(e.get("error", "")) for e in problems.get("functions", [])}
    for fn in functions:
        if fn.get("name") in function_errors and not fn.get("error"):
            fn["error"] = function_errors[fn["name"]]
    if output == "json":
        print(json.dumps(functions, indent=2))
        return 0
    rows = [("NAME", "RUNTIME", "READY/DESIRED", "INVOCATIONS", "LAST USED", "ERROR")]
    now = time.time()
    for fn in sorted(functions, key=lambda f: str(f.get("name", ""))):
        rows.append((
            str(fn.get("name", "")),
            str(fn.get("runtime", "")),
            f"{fn.get('availableReplicas', 0)}/{fn.get('replicas', 0)}",
            str(fn.get("invocationCount", 0)),
            _ago(fn.get("lastUsed"), now),
            _first_line(fn.get("error")),
        ))
    if not any(row[5] for row in rows[1:]):
        rows = [row[:5] for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    if len(rows) == 1:
        print("(no functions)", file=sys.stderr)
    for problem in problems.get("manifests", []):
        print(f"error: {problem.get('error')}", file=sys.stderr)
    return 0


def _local_errors(client: GatewayClient) -> dict[str, list[dict[str, Any]]]:
    """Manifest and instance problems, which only `kfn local` reports (/system/errors)."""
    status, body = client.get_json(naming.SYSTEM_ERRORS_PATH)
    if status != 200 or not isinstance(body, dict):
        return {}
    return body


def _ago(value: object, now: float) -> str:
    """'12s ago' from an epoch number or an ISO 8601 time; '-' for never."""
    if value in (None, "", 0):
        return "-"
    if isinstance(value, (int, float)):
        then = float(value)
    else:
        try:
            parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            return str(value)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        then = parsed.timestamp()
    seconds = max(0, int(now - then))
    if seconds < 60:
        return f"{seconds}s ago"
    if seconds < 3600:
        return f"{seconds // 60}m ago"
    if seconds < 86400:
        return f"{seconds // 3600}h ago"
    return f"{seconds // 86400}d ago"


def _first_line(value: object) -> str:
    if not value:
        return ""
    line = str(value).splitlines()[0]
    return line if len(line) <= 80 else line[:77] + "..."


# -- kfn logs ---------------------------------------------------------------------------------------

def logs(client: GatewayClient, name: str, *, follow: bool = False, tail: int = 100) -> int:
    """Prints a function's recent instance output; with follow, keeps printing until interrupted."""
    if tail < 0:
        raise CommandError(f"--tail must be 0 or more (got {tail})", exit_code=2)
    query = urllib.parse.urlencode({"tail": tail, **({"follow": "1"} if follow else {})})
    path = f"{naming.SYSTEM_LOGS_PATH}/{urllib.parse.quote(name, safe='')}?{query}"
    # Following has no end: no read timeout then (the connection closes when kfn local stops).
    response = client.request("GET", path, timeout=None if follow else client.timeout)
    if response.status == 404:
        raise CommandError(f"no function named {name!r} (see `kfn list`)")
    if response.status != 200:
        detail = response.read().decode(errors="replace").strip()
        raise CommandError(f"the gateway answered HTTP {response.status}: {detail}")
    out = sys.stdout.buffer
    try:
        while chunk := response.body.read1(65536) if hasattr(response.body, "read1") else response.body.read(65536):
            out.write(chunk)
            out.flush()
    except KeyboardInterrupt:
        return 0
    except (ConnectionError, http.client.HTTPException, OSError) as e:
        if follow:
            raise CommandError(f"lost the connection to the kfn gateway at {client.url}: {e}") from None
        raise
    return 0
