"""CORS at the gateway (`kfn_gateway.cors`), with API Gateway HTTP APIs' settings: preflights
answered by the gateway, configured headers replacing the function's own."""
from __future__ import annotations

from typing import Any

import pytest

from kfn.core.httpspec import CorsSpec
from kfn_gateway import cors

ORIGIN = "https://app.example.com"


def spec(**settings: Any) -> CorsSpec:
    settings.setdefault("allowOrigins", [ORIGIN])
    return CorsSpec.model_validate(settings)


def preflight_headers(origin: str = ORIGIN, method: str = "PUT", requested: str | None = None) -> dict[str, str]:
    headers = {"origin": origin, "access-control-request-method": method}
    if requested is not None:
        headers["access-control-request-headers"] = requested
    return headers


@pytest.mark.parametrize(("method", "headers", "expected"), [
    ("OPTIONS", {"origin": ORIGIN, "access-control-request-method": "PUT"}, True),
    ("OPTIONS", {"origin": ORIGIN}, False),
    ("OPTIONS", {"access-control-request-method": "PUT"}, False),
    ("GET", {"origin": ORIGIN, "access-control-request-method": "PUT"}, False),
])
def test_a_preflight_is_an_options_request_with_origin_and_request_method(
        method: str, headers: dict[str, str], expected: bool) -> None:
    assert cors.is_preflight(method, headers) is expected


def test_an_allowed_preflight_gets_the_configured_headers() -> None:
    out = dict(cors.preflight(spec(allowMethods=["GET", "PUT"], allowHeaders=["Content-Type", "X-Token"],
                                   maxAge=300), preflight_headers(requested="content-type")))
    assert out == {
        "Access-Control-Allow-Origin": ORIGIN,
        "Vary": "Origin",
        "Access-Control-Allow-Methods": "GET, PUT",
        "Access-Control-Allow-Headers": "Content-Type, X-Token",
        "Access-Control-Max-Age": "300",
    }


def test_a_preflight_from_an_origin_not_allowed_gets_no_cors_headers() -> None:
    assert cors.preflight(spec(allowMethods=["*"]), preflight_headers(origin="https://evil.example")) == []


def test_a_preflight_for_a_method_not_allowed_gets_no_cors_headers() -> None:
    assert cors.preflight(spec(allowMethods=["GET"]), preflight_headers(method="DELETE")) == []


def test_any_method_allowed_answers_with_the_requested_one() -> None:
    out = dict(cors.preflight(spec(allowMethods=["*"]), preflight_headers(method="patch")))
    assert out["Access-Control-Allow-Methods"] == "PATCH"


def test_any_header_allowed_answers_with_the_requested_ones() -> None:
    out = dict(cors.preflight(spec(allowMethods=["*"], allowHeaders=["*"]),
                              preflight_headers(requested="x-a, x-b")))
    assert out["Access-Control-Allow-Headers"] == "x-a, x-b"


def test_a_preflight_without_max_age_or_allowed_headers_says_neither() -> None:
    out = dict(cors.preflight(spec(allowMethods=["PUT"]), preflight_headers()))
    assert "Access-Control-Max-Age" not in out
    assert "Access-Control-Allow-Headers" not in out


def test_any_origin_allowed_answers_star() -> None:
    assert dict(cors.preflight(spec(allowOrigins=["*"], allowMethods=["*"]), preflight_headers()))[
        "Access-Control-Allow-Origin"] == "*"


def test_with_credentials_the_origin_is_echoed_instead_of_star() -> None:
    out = dict(cors.preflight(spec(allowOrigins=["*"], allowMethods=["*"], allowCredentials=True),
                              preflight_headers()))
    assert out["Access-Control-Allow-Origin"] == ORIGIN
    assert out["Access-Control-Allow-Credentials"] == "true"


@pytest.mark.parametrize(("origin", "allowed"), [
    ("https://app.example.com", True), ("https://a.b.example.com", True),
    ("https://example.com", False), ("http://app.example.com", False), ("https://app.example.org", False),
])
def test_an_origin_pattern_allows_the_origins_it_matches(origin: str, allowed: bool) -> None:
    out = cors.preflight(spec(allowOrigins=["https://*.example.com"], allowMethods=["*"]),
                         preflight_headers(origin=origin))
    assert bool(out) is allowed


FUNCTION_HEADERS = [("Content-Type", "application/json"), ("Access-Control-Allow-Origin", "*"),
                    ("access-control-allow-methods", "DELETE"), ("Access-Control-Max-Age", "9")]


def test_the_functions_own_cors_headers_are_replaced_by_the_configured_ones() -> None:
    out = cors.apply(spec(exposeHeaders=["X-Total"]), {"origin": ORIGIN}, FUNCTION_HEADERS)
    assert out == [("Content-Type", "application/json"), ("Access-Control-Allow-Origin", ORIGIN),
                   ("Vary", "Origin"), ("Access-Control-Expose-Headers", "X-Total")]


def test_a_response_to_an_origin_not_allowed_has_no_cors_headers() -> None:
    out = cors.apply(spec(), {"origin": "https://evil.example"}, FUNCTION_HEADERS)
    assert out == [("Content-Type", "application/json")]


def test_a_response_to_a_request_without_origin_has_no_cors_headers() -> None:
    assert cors.apply(spec(), {}, FUNCTION_HEADERS) == [("Content-Type", "application/json")]


def test_a_response_with_credentials_echoes_the_origin_and_allows_credentials() -> None:
    out = dict(cors.apply(spec(allowOrigins=["*"], allowCredentials=True), {"origin": ORIGIN}, []))
    assert out["Access-Control-Allow-Origin"] == ORIGIN
    assert out["Access-Control-Allow-Credentials"] == "true"


def test_cors_needs_at_least_one_allowed_origin() -> None:
    with pytest.raises(ValueError):
        CorsSpec.model_validate({"allowMethods": ["*"]})
