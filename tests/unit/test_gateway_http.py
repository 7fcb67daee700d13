"""HTTP ↔ event through a running gateway: what reaches a function of a request, and what reaches
the client of a result, an error or a timeout; client addresses; functions at the root of their
hosts; CORS answered by the gateway."""
from __future__ import annotations

import base64
import hashlib
import io
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from kfn_gateway.settings import GatewaySettings
from tests.support.backend import (
    TRANSPORTS,
    ControlledFunctions,
    FakeBackend,
    FunctionError,
    Headers,
    echo,
    raising,
    returning,
    serving,
    timed_out,
)
from tests.support.functions import make_function
from tests.support.gateway import running_gateway

ORIGIN = "https://app.example.com"
CORS = {"allowOrigins": [ORIGIN], "allowMethods": ["GET", "PUT"], "allowHeaders": ["Content-Type"],
        "exposeHeaders": ["X-Total"], "maxAge": 600, "allowCredentials": True}


# -- the event --------------------------------------------------------------------------------------

@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_request_reaches_the_function_as_a_2_0_event(transport: str) -> None:
    backend = FakeBackend.of(transport, make_function("hello"))
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        status, event, _ = await gw.json(
            "PATCH", "/function/hello/a/b%20c?x=1&x=2&y=%2F", data="payload",
            headers={"X-Custom": "yes", "Content-Type": "text/plain", "Cookie": "a=1; b=2",
                     "User-Agent": "test/1"})
    assert status == 200
    assert event["version"] == "2.0"
    assert event["routeKey"] == "$default"
    assert event["rawPath"] == "/a/b c"
    assert event["rawQueryString"] == "x=1&x=2&y=%2F"
    assert event["queryStringParameters"] == {"x": "1,2", "y": "/"}
    assert event["cookies"] == ["a=1", "b=2"]
    assert event["headers"]["x-custom"] == "yes"
    assert event["headers"]["x-forwarded-prefix"] == "/function/hello"
    assert event["headers"]["host"] == f"127.0.0.1:{gw.port}"
    assert (event["body"], event["isBase64Encoded"]) == ("payload", False)
    http = event["requestContext"]["http"]
    assert http == {"method": "PATCH", "path": "/a/b c", "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1",
                    "userAgent": "test/1"}
    assert event["requestContext"]["stage"] == "$default"


@pytest.mark.parametrize(("path", "raw_path", "query"), [
    ("/function/hello", "/", ""),
    ("/function/hello/", "/", ""),
    ("/function/hello?q=1", "/", "q=1"),
    ("/function/hello/deep/path/?a=%20", "/deep/path/", "a=%20"),
    ("/function/hello.default/x", "/x", ""),
])
async def test_the_function_sees_the_path_below_its_mount(path: str, raw_path: str, query: str) -> None:
    backend = FakeBackend(make_function("hello"))
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        status, event, _ = await gw.json("GET", path)
    assert status == 200
    assert (event["rawPath"], event["rawQueryString"]) == (raw_path, query)


async def test_a_percent_encoded_function_name_still_passes_the_path_and_query_on() -> None:
    backend = FakeBackend(make_function("hello"))
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        status, event, _ = await gw.json("GET", "/function/hel%6Co/sub?x=1")
    assert status == 200
    assert (event["rawPath"], event["rawQueryString"]) == ("/sub", "x=1")


async def test_the_clients_host_header_reaches_the_function() -> None:
    backend = FakeBackend(make_function("hello"))
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        _, event, _ = await gw.json("GET", "/function/hello", headers={"Host": "api.example.com"})
    assert event["headers"]["host"] == "api.example.com"
    assert event["requestContext"]["domainName"] == "api.example.com"


async def test_a_function_with_payload_format_1_0_gets_a_1_0_event() -> None:
    def fn(event: dict[str, Any], headers: Headers) -> Any:
        return {"statusCode": 200, "body": json.dumps(event)}

    backend = FakeBackend(make_function("hello", http={"payloadFormat": "1.0"}), fn=serving(fn))
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        async with gw.session.get(gw.url("/function/hello/x?a=1&a=2"), headers={"X-Multi": "1"}) as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
            event = json.loads(await response.text())
    assert event["version"] == "1.0"
    assert (event["httpMethod"], event["path"]) == ("GET", "/x")
    assert event["queryStringParameters"] == {"a": "2"}
    assert event["multiValueQueryStringParameters"] == {"a": ["1", "2"]}
    assert event["multiValueHeaders"]["x-multi"] == ["1"]
    assert event["requestContext"]["identity"]["sourceIp"] == "127.0.0.1"
    assert event["body"] is None


# -- the client's address ---------------------------------------------------------------------------

@pytest.mark.parametrize(("hops", "forwarded_for", "source_ip", "passed_on"), [
    (0, "6.6.6.6", "127.0.0.1", "127.0.0.1"),
    (1, "6.6.6.6, 198.51.100.1", "198.51.100.1", "198.51.100.1, 127.0.0.1"),
    (2, "6.6.6.6, 198.51.100.1, 10.0.0.2", "198.51.100.1", "198.51.100.1, 10.0.0.2, 127.0.0.1"),
], ids=["no-trusted-hop-spoofed", "one-hop", "two-hops"])
async def test_the_source_ip_is_the_address_the_outermost_trusted_proxy_saw(
        hops: int, forwarded_for: str, source_ip: str, passed_on: str) -> None:
    backend = FakeBackend(make_function("hello"))
    async with backend, running_gateway(backend, settings=GatewaySettings(trusted_hops=hops)) as gw:
        await backend.add_instance("hello")
        _, event, _ = await gw.json("GET", "/function/hello", headers={"X-Forwarded-For": forwarded_for})
    assert event["requestContext"]["http"]["sourceIp"] == source_ip
    assert event["headers"]["x-forwarded-for"] == passed_on


# -- request ids ------------------------------------------------------------------------------------

@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_clients_kfn_headers_never_reach_the_function_nor_become_the_request_id(transport: str) -> None:
    backend = FakeBackend.of(transport, make_function("hello"))
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        _, event, headers = await gw.json("GET", "/function/hello",
                                          headers={"X-Kfn-Request-Id": "forged", "X-Kfn-Rejected": "draining"})
    assert not [name for name in event["headers"] if name.startswith("x-kfn-")]
    assert headers.getall("X-Kfn-Request-Id") == [headers["X-Invocation-Id"]]
    assert headers["X-Kfn-Request-Id"] != "forged"


async def test_every_response_carries_the_api_request_id_and_the_invocation_id() -> None:
    backend = FakeBackend(make_function("hello"))
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        _, first, first_headers = await gw.json("GET", "/function/hello")
        _, second, second_headers = await gw.json("GET", "/function/hello")
    assert first_headers["apigw-requestid"] == first["requestContext"]["requestId"]
    assert uuid.UUID(first_headers["X-Kfn-Request-Id"]).version == 4
    assert first_headers["apigw-requestid"] != second_headers["apigw-requestid"]
    assert first_headers["X-Kfn-Request-Id"] != second_headers["X-Kfn-Request-Id"]


# -- the response -----------------------------------------------------------------------------------

async def test_a_structured_response_comes_back_with_its_status_headers_cookies_and_body() -> None:
    result = {"statusCode": 201, "headers": {"X-Result": "42", "Content-Type": "text/plain"},
              "cookies": ["a=1; Path=/", "b=2; Path=/"], "body": "created"}
    backend = FakeBackend(make_function("hello"), fn=returning(result))
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        async with gw.session.post(gw.url("/function/hello")) as response:
            assert response.status == 201
            assert response.headers["X-Result"] == "42"
            assert response.headers["Content-Type"] == "text/plain"
            assert response.headers.getall("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/"]
            assert await response.text() == "created"


async def test_a_bare_2_0_value_is_the_body_of_a_200_json_response() -> None:
    backend = FakeBackend(make_function("hello"), fn=returning({"hello": "world"}))
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        status, body, headers = await gw.json("GET", "/function/hello")
    assert (status, body) == (200, {"hello": "world"})
    assert headers["Content-Type"] == "application/json"


async def test_a_bare_2_0_string_is_the_body_itself_without_json_quotes() -> None:
    backend = FakeBackend(make_function("hello"), fn=returning("hello"))
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        async with gw.session.get(gw.url("/function/hello")) as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == "application/json"
            assert await response.read() == b"hello"


async def test_a_204_from_a_function_has_no_body() -> None:
    backend = FakeBackend(make_function("hello"), fn=returning({"statusCode": 204, "body": "ignored"}))
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        async with gw.session.delete(gw.url("/function/hello")) as response:
            assert response.status == 204
            assert await response.read() == b""


async def test_head_keeps_the_functions_content_length() -> None:
    backend = FakeBackend(make_function("hello"))
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        async with gw.session.head(gw.url("/function/hello")) as response:
            assert response.status == 200
            assert int(response.headers["Content-Length"]) > 0
            assert await response.read() == b""


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_function_error_is_500_internal_server_error(transport: str) -> None:
    backend = FakeBackend.of(transport, make_function("hello"), fn=raising(FunctionError("KeyError", "'id'")))
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        status, body, headers = await gw.json("GET", "/function/hello")
    assert (status, body) == (500, {"message": "Internal Server Error"})
    assert headers["X-Amz-Function-Error"] == "Unhandled"
    assert headers["X-Kfn-Error-Type"] == "KeyError"
    assert headers["apigw-requestid"]
    assert uuid.UUID(headers["X-Kfn-Request-Id"])
    assert backend.failures == []


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_function_timing_out_is_504_endpoint_request_timed_out(transport: str) -> None:
    backend = FakeBackend.of(transport, make_function("hello"), fn=raising(timed_out()))
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        status, body, headers = await gw.json("GET", "/function/hello")
    assert (status, body) == (504, {"message": "Endpoint request timed out"})
    assert headers["X-Kfn-Error-Type"] == "Sandbox.Timedout"
    assert headers["apigw-requestid"] and headers["X-Kfn-Request-Id"]


@pytest.mark.parametrize("result", [{"statusCode": 700}, {"statusCode": 200, "headers": {"X-Bad": "a\r\nb"}}],
                         ids=["status", "crlf"])
async def test_a_result_api_gateway_would_reject_is_500_invalid_response(result: dict[str, Any]) -> None:
    backend = FakeBackend(make_function("hello"), fn=returning(result))
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        status, body, headers = await gw.json("GET", "/function/hello")
    assert (status, body) == (500, {"message": "Internal Server Error"})
    assert headers["X-Kfn-Error-Type"] == "Runtime.InvalidResponse"
    assert "X-Amz-Function-Error" not in headers
    assert "X-Bad" not in headers


# -- large bodies -----------------------------------------------------------------------------------

def digest_echo(event: dict[str, Any], headers: Headers) -> dict[str, Any]:
    """Answers with the request body, as binary, and its digest in X-Digest."""
    body = base64.b64decode(event["body"]) if event["isBase64Encoded"] else event["body"].encode()
    return {"statusCode": 200, "headers": {"Content-Type": "application/octet-stream",
                                           "X-Digest": hashlib.sha256(body).hexdigest()},
            "body": base64.b64encode(body).decode(), "isBase64Encoded": True}


async def test_five_megabyte_bodies_travel_both_ways(transport: str = "http") -> None:
    body = bytes(range(256)) * (5 * 1024 * 1024 // 256)
    backend = FakeBackend.of(transport, make_function("hello"), fn=serving(digest_echo))
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        async with gw.session.post(gw.url("/function/hello"), data=io.BytesIO(body),
                                   headers={"Content-Type": "application/octet-stream"}) as response:
            assert response.status == 200
            assert response.headers["X-Digest"] == hashlib.sha256(body).hexdigest()
            assert await response.read() == body


async def test_five_megabyte_bodies_travel_both_ways_in_process() -> None:
    await test_five_megabyte_bodies_travel_both_ways("in-process")


async def test_a_chunked_five_megabyte_upload_reaches_the_function_whole() -> None:
    body = b"x" * (5 * 1024 * 1024)

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the client sends it chunked
        for i in range(0, len(body), 256 * 1024):
            yield body[i:i + 256 * 1024]

    backend = FakeBackend(make_function("hello"), fn=serving(digest_echo))
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        async with gw.session.post(gw.url("/function/hello"), data=chunks(),
                                   headers={"Content-Type": "text/plain"}) as response:
            assert response.status == 200
            assert response.headers["X-Digest"] == hashlib.sha256(body).hexdigest()
            assert len(await response.read()) == len(body)


# -- routes (spec.http.routes) ---------------------------------------------------------------------

ROUTED = {"routes": ["GET /users/{id}", "ANY /files/{proxy+}"]}


def recording(seen: list[dict[str, Any]]) -> Any:
    def fn(event: dict[str, Any], _headers: Headers) -> Any:
        seen.append(event)
        return {"statusCode": 200, "body": "seen"}
    return serving(fn)


@pytest.mark.parametrize("payload_format", ["2.0", "1.0"])
async def test_a_routed_request_reaches_the_function_with_its_route_and_path_parameters(
        payload_format: str) -> None:
    seen: list[dict[str, Any]] = []
    backend = FakeBackend(make_function("hello", http={**ROUTED, "payloadFormat": payload_format}),
                          fn=recording(seen))
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        async with gw.session.get(gw.url("/function/hello/users/a%20b")) as response:
            assert response.status == 200
        async with gw.session.put(gw.url("/function/hello/files/x/y.txt")) as response:
            assert response.status == 200
    user, files = seen
    assert user["pathParameters"] == {"id": "a b"}
    assert files["pathParameters"] == {"proxy": "x/y.txt"}
    if payload_format == "2.0":
        assert (user["routeKey"], files["routeKey"]) == ("GET /users/{id}", "ANY /files/{proxy+}")
    else:
        assert (user["resource"], files["resource"]) == ("/users/{id}", "/files/{proxy+}")


async def test_a_request_no_route_takes_is_404_not_found_without_invoking_the_function() -> None:
    seen: list[dict[str, Any]] = []
    backend = FakeBackend(make_function("hello", http=ROUTED), fn=recording(seen))
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        for method, path in [("POST", "/users/1"), ("GET", "/users/1/posts"), ("GET", "/"), ("GET", "/files")]:
            status, body, headers = await gw.json(method, "/function/hello" + path)
            assert (status, body) == (404, {"message": "Not Found"}), (method, path)
            assert headers["apigw-requestid"]
    assert seen == []


class RecordingStore:
    """An event store that only records what it was asked to store."""

    def __init__(self) -> None:
        self.accepted: list[Any] = []

    async def accept(self, *args: Any, **kwargs: Any) -> Any:
        self.accepted.append((args, kwargs))
        raise AssertionError("no event may be stored")


async def test_an_async_request_no_route_takes_is_404_and_stores_nothing() -> None:
    store = RecordingStore()
    backend = FakeBackend(make_function("hello", http=ROUTED))
    async with backend, running_gateway(backend, events=store) as gw:
        status, body, _ = await gw.json("POST", "/async-function/hello/nowhere", data=b"{}")
    assert (status, body) == (404, {"message": "Not Found"})
    assert store.accepted == []


# -- hosts ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("host", ["api.example.com", "API.Example.com:8080", "tenant.example.org"])
async def test_a_function_with_hosts_answers_at_the_root_of_its_hosts(host: str) -> None:
    backend = FakeBackend(make_function("hello"),
                          make_function("api", http={"hosts": ["api.example.com", "*.example.org"]}))
    async with backend, running_gateway(backend) as gw:
        api = await backend.add_instance("api")
        await backend.add_instance("hello")
        status, event, headers = await gw.json("GET", "/users?x=1", headers={"Host": host})
    assert status == 200
    assert headers["X-Instance"] == api.id
    assert (event["rawPath"], event["rawQueryString"]) == ("/users", "x=1")
    assert "x-forwarded-prefix" not in event["headers"]


@pytest.mark.parametrize("host", ["example.org", "a.b.example.org", "other.example.com"])
async def test_a_host_no_function_serves_is_404(host: str) -> None:
    backend = FakeBackend(make_function("api", http={"hosts": ["api.example.com", "*.example.org"]}))
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("api")
        status, body, _ = await gw.json("GET", "/users", headers={"Host": host})
    assert status == 404 and "error" in body


@pytest.mark.parametrize("path", ["/healthz", "/metrics", "/system/functions", "/function/hello"])
async def test_a_function_at_the_root_of_its_host_gets_every_path(path: str) -> None:
    backend = FakeBackend(make_function("hello"), make_function("api", http={"hosts": ["api.example.com"]}))
    async with backend, running_gateway(backend) as gw:
        api = await backend.add_instance("api")
        await backend.add_instance("hello")
        async with gw.session.get(gw.url(path), headers={"Host": "api.example.com"}) as response:
            assert response.headers.get("X-Instance") == api.id


# -- CORS -------------------------------------------------------------------------------------------

async def test_a_cors_preflight_is_answered_204_without_invoking_the_function() -> None:
    functions = ControlledFunctions()
    backend = FakeBackend(make_function("hello", http={"cors": CORS}), fn=functions)
    async with backend, running_gateway(backend) as gw:
        status, body, headers = await gw.json(
            "OPTIONS", "/function/hello/x",
            headers={"Origin": ORIGIN, "Access-Control-Request-Method": "PUT",
                     "Access-Control-Request-Headers": "content-type"})
    assert (status, body) == (204, "")
    assert headers["Access-Control-Allow-Origin"] == ORIGIN
    assert headers["Access-Control-Allow-Methods"] == "GET, PUT"
    assert headers["Access-Control-Allow-Headers"] == "Content-Type"
    assert headers["Access-Control-Allow-Credentials"] == "true"
    assert headers["Access-Control-Max-Age"] == "600"
    assert functions.arrivals == []
    assert backend.scale_calls == []  # not even a cold start


@pytest.mark.parametrize(("origin", "method"), [("https://evil.example", "PUT"), (ORIGIN, "DELETE")],
                         ids=["origin", "method"])
async def test_a_preflight_not_allowed_gets_no_cors_headers(origin: str, method: str) -> None:
    functions = ControlledFunctions()
    backend = FakeBackend(make_function("hello", http={"cors": CORS}), fn=functions)
    async with backend, running_gateway(backend) as gw:
        status, _, headers = await gw.json(
            "OPTIONS", "/function/hello", headers={"Origin": origin, "Access-Control-Request-Method": method})
    assert status == 204
    assert not [name for name in headers if name.lower().startswith("access-control-")]
    assert functions.arrivals == []


def own_cors(event: dict[str, Any], headers: Headers) -> dict[str, Any]:
    return {"statusCode": 200, "body": "{}",
            "headers": {"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Methods": "DELETE"}}


async def test_configured_cors_headers_replace_the_functions_own() -> None:
    backend = FakeBackend(make_function("hello", http={"cors": CORS}), fn=serving(own_cors))
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        status, _, headers = await gw.json("GET", "/function/hello", headers={"Origin": ORIGIN})
    assert status == 200
    assert headers.getall("Access-Control-Allow-Origin") == [ORIGIN]  # with credentials: the origin, never *
    assert headers["Access-Control-Allow-Credentials"] == "true"
    assert headers["Access-Control-Expose-Headers"] == "X-Total"
    assert "Access-Control-Allow-Methods" not in headers


async def test_a_response_to_an_origin_not_allowed_has_no_cors_headers() -> None:
    backend = FakeBackend(make_function("hello", http={"cors": CORS}), fn=serving(own_cors))
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        status, _, headers = await gw.json("GET", "/function/hello", headers={"Origin": "https://evil.example"})
    assert status == 200
    assert not [name for name in headers if name.lower().startswith("access-control-")]


async def test_without_cors_configured_options_reaches_the_function() -> None:
    backend = FakeBackend(make_function("hello"), fn=echo)
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        status, event, _ = await gw.json(
            "OPTIONS", "/function/hello", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "PUT"})
    assert status == 200
    assert event["requestContext"]["http"]["method"] == "OPTIONS"
