"""`kfn invoke`, `kfn list`, `kfn logs` and `kfn async`: commands that talk to a running gateway."""
from __future__ import annotations

import http.client
import json
import sys
import time
import urllib.parse
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from kfn.cli.client import GatewayClient
from kfn.cli.options import AsyncListOptions, AsyncReplayOptions, InvokeOptions, LogsOptions, RemoteOptions
from kfn.core import naming
from kfn.core.errors import CommandError

# -- kfn invoke --------------------------------------------------------------------------------

def invoke(options: InvokeOptions) -> int:
    """Prints the function's response body; a non-2xx answer also goes to stderr with exit 1."""
    client = GatewayClient(options.remote.gateway, timeout=options.timeout, api_key=options.remote.api_key)
    headers = parse_headers(options.headers)
    body: bytes | None = None
    if options.data is not None:
        body = read_data(options.data)
        if not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = "application/json" if _is_json(body) else "application/octet-stream"
    method = (options.method or ("POST" if body is not None else "GET")).upper()
    path = options.path or ""
    if path and not path.startswith("/"):
        path = "/" + path
    url_path = naming.function_url_path(urllib.parse.quote(options.name, safe=".")) + path
    response = client.request(method, url_path, body=body, headers=headers, timeout=options.timeout)
    content = response.read()
    if response.status in (401, 403):
        _write_body(content)
        raise client.refused(response.status) or CommandError(f"HTTP {response.status}")
    if response.status == 404 and not client.function_exists(options.name):
        raise CommandError(f"no function named {options.name!r} (see `kfn list`)")
    _write_body(content)
    if not 200 <= response.status < 300:
        print(f"kfn invoke: {options.name} answered HTTP {response.status} {response.reason}", file=sys.stderr)
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

def list_functions(options: RemoteOptions) -> int:
    client = GatewayClient(options.gateway, api_key=options.api_key)
    output = options.output
    status, functions = client.get_json(naming.SYSTEM_FUNCTIONS_PATH)
    if status != 200 or not isinstance(functions, list):
        raise CommandError(f"the gateway at {client.url} answered {naming.SYSTEM_FUNCTIONS_PATH} with HTTP {status}")
    problems = _local_errors(client)
    function_errors = {
        (str(e.get("namespace", naming.DEFAULT_NAMESPACE)), str(e.get("function"))): str(e.get("error", ""))
        for e in problems.get("functions", [])}
    for fn in functions:
        key = (str(fn.get("namespace", naming.DEFAULT_NAMESPACE)), str(fn.get("name")))
        if key in function_errors and not fn.get("error"):
            fn["error"] = function_errors[key]
    if output == "json":
        print(json.dumps(functions, indent=2))
        return 0
    rows = [("NAMESPACE", "NAME", "RUNTIME", "READY/DESIRED", "INVOCATIONS", "LAST USED", "ERROR")]
    now = time.time()
    for fn in sorted(functions, key=lambda f: (str(f.get("namespace", "")), str(f.get("name", "")))):
        rows.append((
            str(fn.get("namespace", "")),
            str(fn.get("name", "")),
            _runtime(fn),
            f"{fn.get('availableReplicas', 0)}/{fn.get('replicas', 0)}",
            str(fn.get("invocationCount", 0)),
            _ago(fn.get("lastUsed"), now),
            _first_line(fn.get("error")),
        ))
    table: list[tuple[str, ...]] = list(rows)
    if not any(row[6] for row in rows[1:]):
        table = [row[:6] for row in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
    if len(table) == 1:
        print("(no functions)", file=sys.stderr)
    for problem in problems.get("manifests", []):
        print(f"error: {problem.get('error')}", file=sys.stderr)
    for warning in problems.get("warnings", []):
        print(f"warning: {warning.get('function')}: {warning.get('warning')}", file=sys.stderr)
    return 0


def _runtime(fn: dict[str, Any]) -> str:
    """The declared runtime, and what really runs when kfn local had to substitute another Python
    ("python3.13->3.11"; one word, as every cell of the table is)."""
    declared, used = str(fn.get("runtime", "")), fn.get("runtimeUsed")
    return f"{declared}->{str(used).removeprefix('python')}" if used and used != declared else declared


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

def logs(options: LogsOptions) -> int:
    """Prints a function's recent instance output; with follow, keeps printing until interrupted.
    With `build`, the output of its latest build instead (with follow, until the build ends).

    With nothing to print and no instance running (or wanted), says so on stderr: CommandError
    (exit 1) without follow; with it, a notice, and the command waits for the next instance. A
    function with no build, or a build with no output left, is a CommandError too."""
    client = GatewayClient(options.remote.gateway, api_key=options.remote.api_key)
    name, follow, tail, build = options.name, options.follow, options.tail, options.build
    query = urllib.parse.urlencode({"tail": tail, **({"follow": "1"} if follow else {}),
                                    **({"build": "1"} if build else {})})
    path = f"{naming.SYSTEM_LOGS_PATH}/{urllib.parse.quote(name, safe='.')}?{query}"
    # Following has no end: no read timeout then (the connection closes when kfn local stops).
    response = client.request("GET", path, timeout=None if follow else client.timeout)
    if (error := client.refused(response.status)) is not None:
        raise error
    if response.status == 404:
        if build and client.function_exists(name):
            raise CommandError(f"{name!r} has no build: it has no requirements, or they have not been built yet")
        raise CommandError(f"no function named {name!r} (see `kfn list`)")
    if response.status != 200:
        detail = response.read().decode(errors="replace").strip()
        raise CommandError(f"the gateway answered HTTP {response.status}: {detail}")
    if follow and not build and not _has_instances(client, name):
        print(f"kfn logs: no instance of {name!r} is running (functions scale to zero when idle); "
              "waiting for the next one: invoke it", file=sys.stderr)
    out = sys.stdout.buffer
    printed = 0
    try:
        while chunk := response.body.read1(65536) if hasattr(response.body, "read1") else response.body.read(65536):
            out.write(chunk)
            out.flush()
            printed += len(chunk)
    except KeyboardInterrupt:
        return 0
    except (ConnectionError, http.client.HTTPException, OSError) as e:
        if follow:
            raise CommandError(f"lost the connection to the kfn gateway at {client.url}: {e}") from None
        raise
    if not printed and build and tail:
        raise CommandError(f"the latest build of {name!r} has no output left to show")
    if not printed and not follow and not _has_instances(client, name):
        raise CommandError(f"no instance of {name!r} is running (functions scale to zero when idle) and there is "
                           f"no output to show: invoke it, or follow its next instance with `kfn logs {name} -f`")
    return 0


def _has_instances(client: GatewayClient, name: str) -> bool:
    """Whether `name` has an instance running or wanted (True when the gateway cannot tell)."""
    status, body = client.get_json(f"{naming.SYSTEM_FUNCTIONS_PATH}/{urllib.parse.quote(name, safe='.')}")
    if status != 200 or not isinstance(body, dict):
        return True
    return bool(body.get("availableReplicas") or body.get("replicas"))


# -- kfn async ---------------------------------------------------------------------------------------

def _async_path(name: str, *rest: str) -> str:
    return "/".join([naming.SYSTEM_ASYNC_PATH, urllib.parse.quote(name, safe="."), *rest])


def _async_answer(client: GatewayClient, name: str, response_status: int, body: Any) -> Any:
    """The JSON body of a /system/async answer, or the CommandError a user can act on."""
    if response_status == 200:
        return body
    detail = body.get("error") if isinstance(body, dict) else None
    if response_status == 404 and detail and "no function" in detail:
        raise CommandError(f"no function named {name!r} (see `kfn list`)")
    if response_status == 404:
        raise CommandError(f"the gateway at {client.url} has no {naming.SYSTEM_ASYNC_PATH} (is it an older kfn?)")
    raise CommandError(f"the gateway answered HTTP {response_status}: {detail or body}")


def async_list(options: AsyncListOptions) -> int:
    """Prints a function's async queue and its dead letters (a table, or JSON)."""
    client = GatewayClient(options.remote.gateway, api_key=options.remote.api_key)
    status, body = client.get_json(_async_path(options.name) + f"?limit={options.limit}")
    view = _async_answer(client, options.name, status, body)
    if options.remote.output == "json":
        print(json.dumps(view, indent=2))
        return 0
    queue = view.get("queue") or {}
    depth, in_flight = int(queue.get("depth", 0)), int(queue.get("inFlight", 0))
    oldest = float(queue.get("oldestAgeSeconds") or 0)
    line = f"{view.get('name')}.{view.get('namespace')}: {depth} event{'s' if depth != 1 else ''} queued"
    if depth:
        line += f" ({in_flight} in flight, the oldest {_seconds(oldest)} old)"
    print(line)
    letters = view.get("deadLetters") or []
    if not letters:
        print("no dead letters")
        return 0
    now = time.time()
    rows = [("ID", "CONDITION", "ATTEMPTS", "FAILED", "ERROR")]
    for letter in letters:
        rows.append((str(letter.get("id", "")), str(letter.get("condition", "")), str(letter.get("attempts", 0)),
                     _ago(letter.get("failedAt"), now), _first_line(letter.get("error"))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print(f"{len(letters)} dead letter{'s' if len(letters) != 1 else ''} (kfn async replay {options.name} [ID...]):")
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def async_replay(options: AsyncReplayOptions) -> int:
    """Stores dead letters again (all of the function's, or those named); exit 1 if a named one was not replayed."""
    client = GatewayClient(options.remote.gateway, api_key=options.remote.api_key)
    payload = json.dumps({"ids": list(options.ids)}).encode() if options.ids else None
    response = client.request("POST", _async_path(options.name, naming.SYSTEM_ASYNC_REPLAY), body=payload,
                              headers={"Content-Type": "application/json", "Accept": "application/json"})
    if (error := client.refused(response.status)) is not None:
        raise error
    raw = response.read()
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        raise CommandError(f"the gateway at {client.url} answered with something that is not JSON "
                           f"(HTTP {response.status}): is it a kfn gateway?") from None
    replayed = [str(i) for i in (_async_answer(client, options.name, response.status, body) or {}).get("replayed", [])]
    missing = [i for i in options.ids if i not in replayed]
    if options.remote.output == "json":
        print(json.dumps({"replayed": replayed, "notFound": missing}, indent=2))
    elif replayed:
        print(f"replayed {len(replayed)} event{'s' if len(replayed) != 1 else ''} of {options.name}: "
              f"{', '.join(replayed)}")
    elif not options.ids:
        print(f"{options.name} has no dead letters to replay")
    if missing:
        print(f"kfn async replay: not a dead letter of {options.name}: {', '.join(missing)} "
              f"(see `kfn async list {options.name}`)", file=sys.stderr)
        return 1
    return 0


def _seconds(value: float) -> str:
    seconds = int(value)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"
