"""HTTP ↔ Lambda event, as API Gateway HTTP APIs map them: the one place this happens.

A request to a function becomes the event of a Lambda proxy integration, payload format 2.0 by
default or 1.0 per function (`spec.http.payloadFormat`), and the function's result becomes the
HTTP response as an HTTP API would make it. Pure functions: no I/O, no server state, so every
rule is tested without a server. Sources for the rules: AWS's API Gateway developer guide
("Working with AWS Lambda proxy integrations for HTTP APIs") and AWS's own emulator
(aws/aws-lambda-dotnet, LambdaTestTool-v2) where the guide is silent:

- the request takes one of the function's routes (`spec.http.routes`, matched by
  `kfn.core.routes`): the event's routeKey (2.0), resource and requestContext.resourcePath
  (1.0: the route's path, "/users/{id}", or "$default"), requestContext.resourceId (1.0: the
  route key) and pathParameters (decoded; 2.0 leaves it out and 1.0 has null when the route has
  no variables) say which; a request no route takes is 404 {"message": "Not Found"};
- rawPath (and 1.0's path) is percent-decoded, as HTTP APIs deliver it; rawQueryString stays
  as sent; query parameters are decoded, repeated ones joined with commas (1.0 also keeps them
  all in multiValueQueryStringParameters);
- header names are lower-case, repeated headers joined with commas; 2.0 moves cookies to
  `cookies`; a body is text when its type is textual and it is UTF-8, else base64;
- a result that is an object with `statusCode` is a response (statusCode, headers,
  multiValueHeaders, cookies, body, isBase64Encoded); under 2.0 any other JSON value is the body
  of a 200 application/json response, a string as its text (`return "hello"` answers `hello`),
  anything else as JSON; 1.0 needs a statusCode (a numeric string will do);
- a function error, or a result API Gateway cannot use, is 500 {"message": "Internal Server
  Error"}; a function that times out is 504 {"message": "Endpoint request timed out"}.
"""
from __future__ import annotations

import base64
import binascii
import json
import random
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote

from kfn.core.routes import DEFAULT_MATCH, Match, RouteTable

ACCOUNT_ID = "000000000000"
API_ID = "kfn"
STAGE = "$default"
FORMAT_2 = "2.0"
FORMAT_1 = "1.0"

# Bodies of these media types reach the function as text; everything else as base64, as API
# Gateway does for binary payloads. A charset parameter also marks a body as text.
_TEXT_TYPES = frozenset({
    "application/json", "application/xml", "application/javascript", "application/ecmascript",
    "application/x-www-form-urlencoded", "application/graphql", "application/yaml", "application/x-yaml",
    "application/x-ndjson", "application/ld+json", "application/xhtml+xml", "image/svg+xml",
})
# Framing is the gateway's to write; a function must not smuggle it in. Nor the ids the gateway
# puts on every response (a function's own would come first and pass for the gateway's).
_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive", "upgrade",
                              "trailer", "te", "proxy-connection", "apigw-requestid", "x-kfn-request-id"})
# Request headers that belong to the hop, or to kfn, never to the function; and the ones API
# Gateway writes itself from what it knows.
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                         "proxy-connection", "te", "trailer", "trailers", "transfer-encoding", "upgrade", "expect"})
_WRITTEN = frozenset({"x-forwarded-for", "x-forwarded-proto", "x-forwarded-port", "x-forwarded-prefix"})
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Ids need to be unique, not secret: a PRNG seeded from the OS is fast (no system call per id).
_random = random.Random()


# Made for every request: slots and no frozen-ness keep construction cheap on the hot path.
@dataclass(slots=True)
class HttpRequest:
    """What the mapping needs of one HTTP request to a function."""

    method: str
    path: str                          # below the function's mount, as sent (percent-encoded), at least "/"
    raw_query: str                     # without "?"
    headers: Iterable[tuple[str, str]]  # as received, repeats allowed
    body: bytes
    source_ip: str                     # the client, as far as the gateway can trust it
    forwarded_for: str                 # X-Forwarded-For for the function: trusted part, then the peer
    scheme: str = "http"
    port: int = 80
    protocol: str = "HTTP/1.1"
    prefix: str = ""                   # where the function is mounted, e.g. /function/hello


@dataclass(slots=True)
class HttpResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


def request_id() -> str:
    """An id in the shape of API Gateway's requestContext.requestId (and apigw-requestid)."""
    return base64.urlsafe_b64encode(_random.randbytes(11)).decode()


def invocation_id() -> str:
    """A random (version 4) UUID, as Lambda's request ids are."""
    n = (_random.getrandbits(128) & ~(0xF000 << 64) & ~(0xC << 60)) | (0x4000 << 64) | (0x8 << 60)
    h = f"{n:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def trace_id(now: float) -> str:
    """An X-Ray trace header for a request that came without one."""
    return f"Root=1-{int(now):08x}-{_random.getrandbits(96):024x}"


_clock: tuple[int, str] = (0, "")


def _request_time(now: float) -> str:
    """The CLF-style time of requestContext, formatted once per second."""
    global _clock
    second = int(now)
    if _clock[0] != second:
        _clock = (second, time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(second)))
    return _clock[1]


def is_text_type(content_type: str) -> bool:
    if not content_type:
        # No declared type: curl -d and many clients send text; API Gateway treats it as text too.
        return True
    media, _, params = content_type.partition(";")
    media = media.strip().lower()
    if media.startswith("text/") or media in _TEXT_TYPES or media.endswith(("+json", "+xml")):
        return True
    return "charset=" in params.lower()


def encode_body(body: bytes, content_type: str) -> tuple[str, bool]:
    """The body as the event carries it: (text, False) when textual UTF-8, else (base64, True)."""
    if is_text_type(content_type):
        try:
            return body.decode("utf-8"), False
        except UnicodeDecodeError:
            pass
    return base64.b64encode(body).decode("ascii"), True


def _headers(request: HttpRequest, *, api_request_id: str, now: float) -> tuple[dict[str, str], list[str],
                                                                                 dict[str, list[str]]]:
    """(headers comma-joined, cookies, headers as lists) with the ones API Gateway adds."""
    joined: dict[str, str] = {}
    lists: dict[str, list[str]] = {}
    cookies: list[str] = []
    headers = request.headers if isinstance(request.headers, (list, tuple)) else list(request.headers)
    hop_by_hop = _HOP_BY_HOP
    for name, value in headers:
        if name.lower() == "connection":
            # Options named in Connection belong to the hop too (RFC 9110 7.6.1).
            hop_by_hop = hop_by_hop | {option.strip().lower() for option in value.split(",")}
    for name, value in headers:
        key = name.lower()
        if key in hop_by_hop or key in _WRITTEN or key.startswith("x-kfn-"):
            continue  # not the function's, or written below from what the gateway knows
        if key == "cookie":
            cookies.extend(c.strip() for c in value.split(";") if c.strip())
        if key in joined:
            joined[key] = f"{joined[key]},{value}"
            lists[key].append(value)
        else:
            joined[key] = value
            lists[key] = [value]
    added = {
        "x-forwarded-for": request.forwarded_for,
        "x-forwarded-proto": request.scheme,
        "x-forwarded-port": str(request.port),
    }
    if request.prefix:
        added["x-forwarded-prefix"] = request.prefix
    if "x-amzn-trace-id" not in joined:
        added["x-amzn-trace-id"] = trace_id(now)
    for key, value in added.items():
        joined[key] = value
        lists[key] = [value]
    return joined, cookies, lists


def _query(raw_query: str) -> tuple[dict[str, str], dict[str, list[str]]]:
    single: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    if "%" in raw_query or "+" in raw_query:
        pairs = parse_qsl(raw_query, keep_blank_values=True)
    else:   # nothing to decode: what parse_qsl returns, without its per-pair decoding
        pairs = [(key, value) for key, _, value in (part.partition("=") for part in raw_query.split("&") if part)]
    for key, value in pairs:
        multi.setdefault(key, []).append(value)
        single[key] = f"{single[key]},{value}" if key in single else value
    return single, multi


class NoRoute(LookupError):
    """No route of the function takes the request and it has no $default route: API Gateway
    answers 404 Not Found (`not_found`) and the function is not invoked."""


def event(request: HttpRequest, *, payload_format: str = FORMAT_2, api_request_id: str,
          now: float | None = None, routes: RouteTable | None = None) -> dict[str, Any]:
    """The event of one request, in the function's payload format, for the route of `routes`
    it takes (none given: the $default route). Raises NoRoute when it takes none."""
    now = time.time() if now is None else now
    route = DEFAULT_MATCH if routes is None else routes.match(request.method, request.path, decode=unquote)
    if route is None:
        raise NoRoute(f"no route matches {request.method} {request.path}")
    if payload_format == FORMAT_1:
        return _event_v1(request, route, api_request_id=api_request_id, now=now)
    return _event_v2(request, route, api_request_id=api_request_id, now=now)


def _domain(headers: dict[str, str]) -> str:
    host = headers.get("host", "localhost")
    return host.rsplit(":", 1)[0] if not host.endswith("]") and host.count(":") == 1 else host


def _event_v2(request: HttpRequest, route: Match, *, api_request_id: str, now: float) -> dict[str, Any]:
    headers, cookies, _ = _headers(request, api_request_id=api_request_id, now=now)
    headers.pop("cookie", None)
    path = unquote(request.path) or "/"
    domain = _domain(headers)
    out: dict[str, Any] = {
        "version": FORMAT_2,
        "routeKey": route.route_key,
        "rawPath": path,
        "rawQueryString": request.raw_query,
    }
    if cookies:
        out["cookies"] = cookies
    out["headers"] = headers
    if request.raw_query:
        out["queryStringParameters"] = _query(request.raw_query)[0]
    if route.parameters:
        out["pathParameters"] = route.parameters
    out["requestContext"] = {
        "accountId": ACCOUNT_ID,
        "apiId": API_ID,
        "domainName": domain,
        "domainPrefix": domain.split(".", 1)[0],
        "http": {
            "method": request.method,
            "path": path,
            "protocol": request.protocol,
            "sourceIp": request.source_ip,
            "userAgent": headers.get("user-agent", ""),
        },
        "requestId": api_request_id,
        "routeKey": route.route_key,
        "stage": STAGE,
        "time": _request_time(now),
        "timeEpoch": int(now * 1000),
    }
    if request.body:
        text, is_base64 = encode_body(request.body, headers.get("content-type", ""))
        out["body"] = text
        out["isBase64Encoded"] = is_base64
    else:
        out["isBase64Encoded"] = False
    return out


def _event_v1(request: HttpRequest, route: Match, *, api_request_id: str, now: float) -> dict[str, Any]:
    headers, _, lists = _headers(request, api_request_id=api_request_id, now=now)
    last = {key: values[-1] for key, values in lists.items()}
    path = unquote(request.path) or "/"
    single, multi = _query(request.raw_query)
    domain = _domain(headers)
    body: str | None = None
    is_base64 = False
    if request.body:
        body, is_base64 = encode_body(request.body, headers.get("content-type", ""))
    return {
        "version": FORMAT_1,
        "resource": route.resource,
        "path": path,
        "httpMethod": request.method,
        "headers": last,
        "multiValueHeaders": lists,
        "queryStringParameters": {k: v[-1] for k, v in multi.items()} if multi else None,
        "multiValueQueryStringParameters": multi or None,
        "requestContext": {
            "accountId": ACCOUNT_ID,
            "apiId": API_ID,
            "domainName": domain,
            "domainPrefix": domain.split(".", 1)[0],
            "extendedRequestId": api_request_id,
            "httpMethod": request.method,
            "identity": {
                "accessKey": None, "accountId": None, "caller": None, "cognitoAuthenticationProvider": None,
                "cognitoAuthenticationType": None, "cognitoIdentityId": None, "cognitoIdentityPoolId": None,
                "principalOrgId": None, "sourceIp": request.source_ip, "user": None,
                "userAgent": headers.get("user-agent", ""), "userArn": None,
            },
            "path": path,
            "protocol": request.protocol,
            "requestId": api_request_id,
            "requestTime": _request_time(now),
            "requestTimeEpoch": int(now * 1000),
            "resourceId": route.route_key,
            "resourcePath": route.resource,
            "stage": STAGE,
        },
        "pathParameters": route.parameters,
        "stageVariables": None,
        "body": body,
        "isBase64Encoded": is_base64,
    }


# -- the result → HTTP ------------------------------------------------------------------------------

class InvalidResult(ValueError):
    """A result API Gateway would answer with 500; the message says why (for the logs)."""


def _message(status: int, message: str, api_request_id: str) -> HttpResponse:
    body = json.dumps({"message": message}).encode()
    return HttpResponse(status, [("Content-Type", "application/json"), ("apigw-requestid", api_request_id)], body)


def internal_error(api_request_id: str) -> HttpResponse:
    """What API Gateway answers for a function error or an unusable result."""
    return _message(500, "Internal Server Error", api_request_id)


def not_found(api_request_id: str) -> HttpResponse:
    """What API Gateway answers for a request that no route takes (NoRoute)."""
    return _message(404, "Not Found", api_request_id)


def timed_out(api_request_id: str) -> HttpResponse:
    return _message(504, "Endpoint request timed out", api_request_id)


def response(result: bytes, *, payload_format: str = FORMAT_2, api_request_id: str) -> HttpResponse:
    """The HTTP response for a function's result. Raises InvalidResult for one API Gateway rejects."""
    try:
        value = json.loads(result) if result else None
    except ValueError:
        raise InvalidResult("the result is not JSON") from None
    if payload_format == FORMAT_1 or (isinstance(value, dict) and "statusCode" in value):
        if not isinstance(value, dict):
            raise InvalidResult("a payload-1.0 result must be an object with a statusCode")
        out = _structured(value, payload_format)
    elif isinstance(value, str):
        # 2.0 without statusCode: the value is the body of a JSON 200; a string is the body itself.
        out = HttpResponse(200, [("Content-Type", "application/json")], _utf8(value))
    else:
        out = HttpResponse(200, [("Content-Type", "application/json")], result)
    out.headers.append(("apigw-requestid", api_request_id))
    return out


def _structured(value: dict[str, Any], payload_format: str) -> HttpResponse:
    status = _status(value.get("statusCode"))
    headers: list[tuple[str, str]] = []
    given = value.get("headers") or {}
    if not isinstance(given, dict):
        raise InvalidResult("headers must be an object of name: value")
    multi = value.get("multiValueHeaders") or {}
    if not isinstance(multi, dict):
        raise InvalidResult("multiValueHeaders must be an object of name: [values]")
    multi_names = {k.lower() for k in multi} if multi else ()
    has_type = False
    for name, item in given.items():
        key = name.lower() if isinstance(name, str) else name
        if key in multi_names or key in _FRAMING_HEADERS:
            continue  # multiValueHeaders wins for a name in both; framing is the gateway's
        has_type = has_type or key == "content-type"
        headers.append((_header_name(name), _header_value(item)))
    for name, items in multi.items():
        key = name.lower() if isinstance(name, str) else name
        if key in _FRAMING_HEADERS:
            continue
        has_type = has_type or key == "content-type"
        items = items if isinstance(items, list) else [items]
        headers.extend((_header_name(name), _header_value(item)) for item in items)
    cookies = value.get("cookies") or []
    if not isinstance(cookies, list):
        raise InvalidResult("cookies must be a list of strings")
    headers.extend(("Set-Cookie", _header_value(c)) for c in cookies)
    if not has_type:
        headers.append(("Content-Type", "text/plain; charset=utf-8" if payload_format == FORMAT_1
                        else "application/json"))
    body = value.get("body")
    if body is None:
        data = b""
    elif isinstance(body, str):
        data = _utf8(body)
    else:
        # API Gateway wants a string; a function that returns a structure clearly means JSON.
        data = json.dumps(body).encode()
    if value.get("isBase64Encoded") and data:
        try:
            data = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidResult("isBase64Encoded is true but body is not valid base64") from None
    return HttpResponse(status, headers, data)


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # JSON's \ud800 escapes decode to lone surrogates, which no UTF-8 body can carry.
        raise InvalidResult("the body is not valid Unicode (it has a lone surrogate)") from None


def _status(raw: object) -> int:
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise InvalidResult(f"statusCode must be an HTTP status (got {raw!r})")
    try:
        status = int(raw)
    except ValueError:
        raise InvalidResult(f"statusCode must be an HTTP status (got {raw!r})") from None
    if isinstance(raw, float) and not raw.is_integer():
        raise InvalidResult(f"statusCode must be an integer (got {raw!r})")
    # 1xx are interim responses of the connection itself, never a final answer.
    if not 200 <= status <= 599:
        raise InvalidResult(f"statusCode must be between 200 and 599 (got {raw!r})")
    return status


def _header_name(name: object) -> str:
    if not isinstance(name, str) or not _TOKEN.fullmatch(name):
        raise InvalidResult(f"invalid header name {name!r}")
    return name


def _header_value(value: object) -> str:
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (str, int, float)):
        text = str(value)
    else:
        raise InvalidResult(f"header values must be strings or numbers (got {type(value).__name__})")
    if not text.isascii():
        try:
            text.encode("latin-1")
        except UnicodeEncodeError:
            raise InvalidResult(f"header values must be ISO-8859-1 text (got {text!r})") from None
    if "\r" in text or "\n" in text or "\0" in text:
        raise InvalidResult("header values must not contain line breaks")
    return text


def trusted_client(peer: str, forwarded_for: Iterable[str], *, trusted_hops: int) -> tuple[str, str]:
    """(the client's address, the X-Forwarded-For to pass on), trusting `trusted_hops` proxies.

    With no trusted hop (the default), the client is the TCP peer and whatever X-Forwarded-For
    it sent is dropped: it could say anything. With N, the client is the N-th address from the
    right of X-Forwarded-For (the one the outermost trusted proxy saw), as Envoy's
    `xff_num_trusted_hops` counts; what stands left of it is not passed on.
    """
    chain = [part.strip() for value in forwarded_for for part in value.split(",") if part.strip()]
    if trusted_hops <= 0 or len(chain) < trusted_hops:
        # Fewer addresses than trusted proxies: the header did not come through them all; as
        # Envoy does, fall back to the peer.
        return peer, peer
    kept = chain[-trusted_hops:]
    return kept[0], ", ".join([*kept, peer])
