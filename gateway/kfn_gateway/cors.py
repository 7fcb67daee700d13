"""CORS at the gateway, per function (`spec.http.cors`), as API Gateway HTTP APIs do it.

With CORS configured, a preflight (OPTIONS with Origin and Access-Control-Request-Method) is
answered by the gateway without invoking the function; a request from an allowed origin gets the
configured headers on its response, and CORS headers the function set itself are dropped. A
request from an origin that is not allowed gets its response without CORS headers (the browser
then refuses it). Without CORS configured, OPTIONS reaches the function like any method.
"""
from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence

from kfn.core.httpspec import CorsSpec

_CORS_HEADERS = frozenset({"access-control-allow-origin", "access-control-allow-credentials",
                           "access-control-expose-headers", "access-control-max-age",
                           "access-control-allow-methods", "access-control-allow-headers"})


def _allowed_origin(cors: CorsSpec, origin: str) -> str | None:
    """The value for Access-Control-Allow-Origin, or None when the origin is not allowed."""
    for allowed in cors.allowOrigins:
        if allowed == "*":
            # With credentials the wildcard is invalid in a response (Fetch standard): echo the origin.
            return origin if cors.allowCredentials else "*"
        if allowed == origin or ("*" in allowed and fnmatch.fnmatchcase(origin, allowed)):
            return origin
    return None


def is_preflight(method: str, headers: Mapping[str, str]) -> bool:
    return method == "OPTIONS" and "origin" in headers and "access-control-request-method" in headers


def preflight(cors: CorsSpec, headers: Mapping[str, str]) -> list[tuple[str, str]]:
    """The headers of the gateway's own answer (204) to a preflight; empty when not allowed."""
    origin = _allowed_origin(cors, headers["origin"])
    if origin is None:
        return []
    method = headers["access-control-request-method"].strip().upper()
    methods = [m.upper() for m in cors.allowMethods]
    if "*" not in methods and method not in methods:
        return []
    out = [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]
    out.append(("Access-Control-Allow-Methods", ", ".join(cors.allowMethods) if "*" not in methods else method))
    requested = headers.get("access-control-request-headers", "").strip()
    if cors.allowHeaders:
        allowed = [h.lower() for h in cors.allowHeaders]
        value = requested if ("*" in allowed and requested) else ", ".join(cors.allowHeaders)
        out.append(("Access-Control-Allow-Headers", value))
    if cors.allowCredentials:
        out.append(("Access-Control-Allow-Credentials", "true"))
    if cors.maxAge is not None:
        out.append(("Access-Control-Max-Age", str(cors.maxAge)))
    return out


def apply(cors: CorsSpec, request_headers: Mapping[str, str],
          response_headers: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """A function's response headers with the function's CORS headers replaced by the configured ones."""
    out = [(k, v) for k, v in response_headers if k.lower() not in _CORS_HEADERS]
    origin_header = request_headers.get("origin")
    if origin_header is None:
        return out
    origin = _allowed_origin(cors, origin_header)
    if origin is None:
        return out
    out.append(("Access-Control-Allow-Origin", origin))
    out.append(("Vary", "Origin"))
    if cors.allowCredentials:
        out.append(("Access-Control-Allow-Credentials", "true"))
    if cors.exposeHeaders:
        out.append(("Access-Control-Expose-Headers", ", ".join(cors.exposeHeaders)))
    return out
