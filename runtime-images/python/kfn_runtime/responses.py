"""What the caller gets: a handler's return value mapped to HTTP the way API Gateway's HTTP API does.

Payload format 2.0 rules: a dict with "statusCode" is a response (statusCode, headers, cookies,
body, isBase64Encoded); any other JSON-serialisable value — a dict without statusCode, a list, a
string, a number, None — is the body of a 200 application/json response, serialised as JSON.
Pure functions: no I/O, no server state.
"""
from __future__ import annotations

import base64
import binascii
import json

from kfn_runtime import contract

TYPE_CHECKING = False  # importing typing costs milliseconds on every cold start
if TYPE_CHECKING:
    from typing import Any

JSON = "application/json"

# The runtime frames the message itself; a handler must not smuggle framing headers in.
_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive", "upgrade",
                              "trailer", "te", "proxy-connection"})


class HttpResponse:
    __slots__ = ("status", "headers", "body", "error_type")

    def __init__(self, status: int, headers: list[tuple[str, str]] | None = None, body: bytes = b"",
                 error_type: str | None = None) -> None:
        self.status = status
        self.headers = headers if headers is not None else []
        self.body = body
        self.error_type = error_type  # set when the runtime (not the handler) produced an error response

    def __repr__(self) -> str:
        return f"HttpResponse({self.status}, {self.headers!r}, {self.body[:80]!r})"

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)


class InvalidResponse(ValueError):
    """The handler returned a value API Gateway would answer with a 500."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type


def error_response(status: int, error_type: str, message: str) -> HttpResponse:
    """The runtime's own errors: a Lambda-style JSON body, never a traceback."""
    body = json.dumps({"errorType": error_type, "errorMessage": message}).encode()
    return HttpResponse(status, [("Content-Type", JSON)], body, error_type=error_type)


def map_result(value: object) -> HttpResponse:
    """The HTTP response for a handler's return value; a 500 error response when it cannot be mapped."""
    try:
        if isinstance(value, dict) and "statusCode" in value:
            return _structured(value)
        return HttpResponse(200, [("Content-Type", JSON)], _dump(value).encode())
    except InvalidResponse as e:
        return error_response(500, e.error_type, str(e))


def _dump(value: object) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError) as e:
        raise InvalidResponse(contract.ERROR_MARSHAL, f"Unable to marshal response: {e}") from None


def _structured(value: dict[str, Any]) -> HttpResponse:
    status = _status(value.get("statusCode"))
    headers: list[tuple[str, str]] = []
    given = value.get("headers") or {}
    if not isinstance(given, dict):
        raise InvalidResponse(contract.ERROR_INVALID_RESPONSE, "headers must be an object of name: value")
    for name, item in given.items():
        headers.append((_header_name(name), _header_value(item)))
    # Format 1.0's field: not in 2.0, but handlers written for REST APIs use it, and it is unambiguous.
    multi = value.get("multiValueHeaders") or {}
    if not isinstance(multi, dict):
        raise InvalidResponse(contract.ERROR_INVALID_RESPONSE, "multiValueHeaders must be an object of name: [values]")
    for name, items in multi.items():
        items = items if isinstance(items, list) else [items]
        headers.extend((_header_name(name), _header_value(item)) for item in items)
    cookies = value.get("cookies") or []
    if not isinstance(cookies, list):
        raise InvalidResponse(contract.ERROR_INVALID_RESPONSE, "cookies must be a list of strings")
    headers.extend(("Set-Cookie", _header_value(c)) for c in cookies)
    headers = [(k, v) for k, v in headers if k.lower() not in _FRAMING_HEADERS]
    if not any(k.lower() == "content-type" for k, _ in headers):
        headers.append(("Content-Type", JSON))

    body = value.get("body")
    if body is None:
        data = b""
    elif isinstance(body, str):
        data = body.encode("utf-8")
    else:
        # API Gateway wants a string; a handler that returns a structure clearly means JSON.
        data = _dump(body).encode()
    if value.get("isBase64Encoded") and data:
        try:
            data = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidResponse(contract.ERROR_INVALID_RESPONSE,
                                  "isBase64Encoded is true but body is not valid base64") from None
    return HttpResponse(status, headers, data)


def _status(raw: object) -> int:
    if isinstance(raw, bool):
        raw = None
    status = 0
    if isinstance(raw, (int, float, str)):
        try:
            status = int(raw)
        except (TypeError, ValueError):
            status = 0
    if isinstance(raw, float) and not raw.is_integer():
        status = 0
    # 1xx are interim responses of the HTTP connection itself, never a final answer.
    if not 200 <= status <= 599:
        raise InvalidResponse(contract.ERROR_INVALID_RESPONSE,
                              f"statusCode must be an HTTP status between 200 and 599 (got {raw!r})")
    return status


def _header_name(name: object) -> str:
    if not isinstance(name, str) or not name or not _is_token(name):
        raise InvalidResponse(contract.ERROR_INVALID_RESPONSE, f"invalid header name {name!r}")
    return name


def _header_value(value: object) -> str:
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (str, int, float)):
        text = str(value)
    else:
        raise InvalidResponse(contract.ERROR_INVALID_RESPONSE,
                              f"header values must be strings or numbers (got {type(value).__name__})")
    if "\r" in text or "\n" in text or "\0" in text:
        raise InvalidResponse(contract.ERROR_INVALID_RESPONSE, "header values must not contain line breaks")
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        raise InvalidResponse(contract.ERROR_INVALID_RESPONSE,
                              f"header values must be ISO-8859-1 text (got {text!r})") from None
    return text


_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _is_token(name: str) -> bool:
    return all(c in _TOKEN_CHARS for c in name)
