"""What a handler receives: an API Gateway HTTP API (payload format 2.0) event and a Lambda context.

Pure functions of the request, so they are tested without a server. The shapes follow AWS's
documentation of the 2.0 payload, so handlers written for Lambda behind an HTTP API run unchanged.
"""
from __future__ import annotations

import base64
import time
from collections.abc import Iterable
from urllib.parse import parse_qsl

TYPE_CHECKING = False  # importing typing costs milliseconds on every cold start
if TYPE_CHECKING:
    from typing import Any

ACCOUNT_ID = "000000000000"
API_ID = "kfn"

# Bodies with these media types reach the handler as text; everything else is base64, as API Gateway
# does for binary payloads. A charset parameter also marks a body as text.
_TEXT_TYPES = frozenset({
    "application/json", "application/xml", "application/javascript", "application/ecmascript",
    "application/x-www-form-urlencoded", "application/graphql", "application/yaml", "application/x-yaml",
    "application/x-ndjson", "application/ld+json", "application/xhtml+xml", "image/svg+xml",
})


def build_event(
    *,
    method: str,
    target: str,
    headers: Iterable[tuple[str, str]],
    body: bytes,
    peer: str,
    request_id: str,
    protocol: str = "HTTP/1.1",
    now: float | None = None,
) -> dict[str, Any]:
    """The payload-2.0 event for one HTTP request.

    `target` is the request target as received (path below the function plus query), `headers`
    the raw header pairs in order (repeats allowed), `peer` the connecting address.
    """
    now = time.time() if now is None else now
    path, _, raw_query = target.partition("?")
    path = path or "/"

    merged: dict[str, str] = {}
    cookies: list[str] = []
    for name, value in headers:
        key = name.lower()
        if key == "cookie":
            cookies.extend(c.strip() for c in value.split(";") if c.strip())
            continue
        merged[key] = f"{merged[key]},{value}" if key in merged else value

    host = merged.get("host", "localhost")
    domain = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    forwarded = merged.get("x-forwarded-for", "")
    source_ip = forwarded.split(",", 1)[0].strip() or peer

    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": raw_query,
    }
    if cookies:
        event["cookies"] = cookies
    event["headers"] = merged
    if raw_query:
        params: dict[str, str] = {}
        for key, value in parse_qsl(raw_query, keep_blank_values=True):
            params[key] = f"{params[key]},{value}" if key in params else value
        event["queryStringParameters"] = params
    event["requestContext"] = {
        "accountId": ACCOUNT_ID,
        "apiId": API_ID,
        "domainName": domain,
        "domainPrefix": domain.split(".", 1)[0],
        "http": {
            "method": method,
            "path": path,
            "protocol": protocol,
            "sourceIp": source_ip,
            "userAgent": merged.get("user-agent", ""),
        },
        "requestId": request_id,
        "routeKey": "$default",
        "stage": "$default",
        "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
        "timeEpoch": int(now * 1000),
    }
    # A $default route has neither; present as None so event["pathParameters"] does not raise.
    event["pathParameters"] = None
    event["stageVariables"] = None
    # Like API Gateway: no "body" key at all for an empty body.
    if body:
        text, is_base64 = encode_body(body, merged.get("content-type", ""))
        event["body"] = text
        event["isBase64Encoded"] = is_base64
    else:
        event["isBase64Encoded"] = False
    return event


def encode_body(body: bytes, content_type: str) -> tuple[str, bool]:
    """The body as the event carries it: text when the type is textual and it is UTF-8, else base64."""
    if is_text_type(content_type):
        try:
            return body.decode("utf-8"), False
        except UnicodeDecodeError:
            pass
    return base64.b64encode(body).decode("ascii"), True


def is_text_type(content_type: str) -> bool:
    if not content_type:
        # No declared type: curl -d and many clients send text; API Gateway treats it as text too.
        return True
    media, _, params = content_type.partition(";")
    media = media.strip().lower()
    if media.startswith("text/") or media in _TEXT_TYPES or media.endswith(("+json", "+xml")):
        return True
    return "charset=" in params.lower()


class LambdaContext:
    """The `context` argument of a Lambda handler, with the attributes AWS's Python runtime provides."""

    __slots__ = ("function_name", "function_version", "invoked_function_arn", "memory_limit_in_mb",
                 "aws_request_id", "log_group_name", "log_stream_name", "identity", "client_context",
                 "tenant_id", "_deadline")

    def __init__(self, *, function_name: str, function_version: str, memory_limit_in_mb: int,
                 aws_request_id: str, deadline: float, region: str = "local",
                 log_stream_name: str = "") -> None:
        self.function_name = function_name
        self.function_version = function_version
        self.memory_limit_in_mb = str(memory_limit_in_mb)  # a string on AWS too
        self.aws_request_id = aws_request_id
        self.invoked_function_arn = f"arn:kfn:lambda:{region}:{ACCOUNT_ID}:function:{function_name}"
        self.log_group_name = f"/kfn/{function_name}"
        self.log_stream_name = log_stream_name
        self.identity = None
        self.client_context = None
        self.tenant_id = None
        self._deadline = deadline  # on the time.monotonic() clock

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))

    def __repr__(self) -> str:
        return (f"LambdaContext(function_name={self.function_name!r}, aws_request_id={self.aws_request_id!r}, "
                f"remaining_ms={self.get_remaining_time_in_millis()})")
