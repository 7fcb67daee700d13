"""HTTP ↔ event, as API Gateway HTTP APIs map them (`kfn_gateway.apigateway`): the event of payload
formats 2.0 and 1.0, the client address behind trusted proxies, and the response made of a result."""
from __future__ import annotations

import base64
import json
import re
import uuid
from typing import Any

import pytest

from kfn.core.routes import RouteTable
from kfn_gateway import apigateway
from kfn_gateway.apigateway import HttpRequest, HttpResponse, InvalidResult

NOW = 1583348638.390  # 04/Mar/2020:19:03:58 UTC
API_REQUEST_ID = "JgFdhJfxOgNmCTA="


def request(path: str = "/", query: str = "", *, method: str = "GET",
            headers: list[tuple[str, str]] | None = None, body: bytes = b"", source_ip: str = "203.0.113.7",
            forwarded_for: str = "203.0.113.7", prefix: str = "/function/hello") -> HttpRequest:
    return HttpRequest(method=method, path=path, raw_query=query,
                       headers=[("Host", "api.example.com:8080"), *(headers or [])], body=body,
                       source_ip=source_ip, forwarded_for=forwarded_for, scheme="http", port=8080,
                       protocol="HTTP/1.1", prefix=prefix)


def v2(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return apigateway.event(request(*args, **kwargs), api_request_id=API_REQUEST_ID, now=NOW)


def v1(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return apigateway.event(request(*args, **kwargs), payload_format="1.0", api_request_id=API_REQUEST_ID, now=NOW)


def respond(result: Any, payload_format: str = "2.0") -> HttpResponse:
    return apigateway.response(json.dumps(result).encode(), payload_format=payload_format,
                               api_request_id=API_REQUEST_ID)


def header_values(response: HttpResponse, name: str) -> list[str]:
    return [value for key, value in response.headers if key.lower() == name.lower()]


# -- payload format 2.0 -----------------------------------------------------------------------------

def test_a_2_0_event_has_the_http_api_envelope() -> None:
    event = v2("/orders/7", "x=1")
    assert event["version"] == "2.0"
    assert event["routeKey"] == "$default"
    assert event["rawPath"] == "/orders/7"
    assert event["rawQueryString"] == "x=1"
    assert event["isBase64Encoded"] is False
    assert "body" not in event


def test_a_2_0_raw_path_is_percent_decoded() -> None:
    event = v2("/a%20b/%C3%BC%2Fc")
    assert event["rawPath"] == "/a b/ü/c"
    assert event["requestContext"]["http"]["path"] == "/a b/ü/c"


def test_a_2_0_raw_query_string_stays_as_sent() -> None:
    assert v2("/", "y=%2F&x=a+b&x=2")["rawQueryString"] == "y=%2F&x=a+b&x=2"


def test_2_0_query_parameters_are_decoded_and_repeats_joined_with_commas() -> None:
    event = v2("/", "a=1&a=2&b=x%20y&c=&a=3")
    assert event["queryStringParameters"] == {"a": "1,2,3", "b": "x y", "c": ""}


def test_a_2_0_event_without_a_query_has_no_query_parameters() -> None:
    event = v2("/")
    assert event["rawQueryString"] == ""
    assert "queryStringParameters" not in event


def test_2_0_header_names_are_lower_case_and_repeats_joined_with_commas() -> None:
    event = v2(headers=[("X-Multi", "a"), ("x-multi", "b"), ("Content-Type", "text/plain")])
    assert event["headers"]["x-multi"] == "a,b"
    assert event["headers"]["content-type"] == "text/plain"
    assert all(name == name.lower() for name in event["headers"])


def test_2_0_cookies_move_from_the_headers_to_cookies() -> None:
    event = v2(headers=[("Cookie", "a=1; b=2"), ("Cookie", "c=3")])
    assert event["cookies"] == ["a=1", "b=2", "c=3"]
    assert "cookie" not in event["headers"]


def test_a_2_0_event_without_cookies_has_no_cookies() -> None:
    assert "cookies" not in v2()


def test_the_2_0_request_context_describes_the_request() -> None:
    context = v2("/orders", method="POST", headers=[("User-Agent", "curl/8.5")], source_ip="198.51.100.9")[
        "requestContext"]
    assert context["http"] == {"method": "POST", "path": "/orders", "protocol": "HTTP/1.1",
                               "sourceIp": "198.51.100.9", "userAgent": "curl/8.5"}
    assert context["requestId"] == API_REQUEST_ID
    assert context["routeKey"] == "$default"
    assert context["stage"] == "$default"
    assert context["domainName"] == "api.example.com"
    assert context["domainPrefix"] == "api"
    assert context["time"] == "04/Mar/2020:19:03:58 +0000"
    assert context["timeEpoch"] == 1583348638390
    assert context["accountId"] and context["apiId"]


@pytest.mark.parametrize("content_type", [
    "text/plain", "application/json", "application/vnd.api+json", "application/x-www-form-urlencoded",
    "application/octet-stream; charset=utf-8", "",
])
def test_a_textual_utf8_body_reaches_the_function_as_text(content_type: str) -> None:
    headers = [("Content-Type", content_type)] if content_type else []
    event = v2(method="POST", headers=headers, body="{\"π\": 1}".encode())
    assert event["body"] == "{\"π\": 1}"
    assert event["isBase64Encoded"] is False


@pytest.mark.parametrize(("content_type", "body"), [
    ("application/octet-stream", b"\x00\x01text"),
    ("image/png", b"\x89PNG\r\n"),
    ("text/plain", b"\xff\xfe not utf-8"),
])
def test_a_binary_body_reaches_the_function_as_base64(content_type: str, body: bytes) -> None:
    event = v2(method="POST", headers=[("Content-Type", content_type)], body=body)
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == body


def test_hop_by_hop_headers_do_not_reach_the_function() -> None:
    hop = [("Connection", "keep-alive"), ("Keep-Alive", "timeout=5"), ("Transfer-Encoding", "chunked"),
           ("TE", "trailers"), ("Upgrade", "h2c"), ("Proxy-Authorization", "Basic eA=="), ("Expect", "100-continue")]
    headers = v2(headers=[*hop, ("X-Custom", "yes")])["headers"]
    assert headers["x-custom"] == "yes"
    assert not {name.lower() for name, _ in hop} & set(headers)


def test_headers_named_by_connection_do_not_reach_the_function() -> None:
    headers = v2(headers=[("Connection", "keep-alive, X-Hop"), ("X-Hop", "drop me")])["headers"]
    assert "x-hop" not in headers


def test_a_clients_kfn_headers_do_not_reach_the_function() -> None:
    headers = v2(headers=[("X-Kfn-Request-Id", "forged"), ("X-KFN-Anything", "x"), ("X-Kfnx", "kept")])["headers"]
    assert not [name for name in headers if name.startswith("x-kfn-")]
    assert headers["x-kfnx"] == "kept"


def test_forwarding_headers_are_the_gateways_own() -> None:
    headers = v2(headers=[("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-Proto", "https"),
                          ("X-Forwarded-Port", "1"), ("X-Forwarded-Prefix", "/evil")],
                 forwarded_for="198.51.100.1, 10.0.0.1")["headers"]
    assert headers["x-forwarded-for"] == "198.51.100.1, 10.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-port"] == "8080"
    assert headers["x-forwarded-prefix"] == "/function/hello"


def test_a_function_served_at_the_root_of_a_host_gets_no_forwarded_prefix() -> None:
    assert "x-forwarded-prefix" not in v2(prefix="")["headers"]


def test_a_trace_id_is_made_for_a_request_without_one_and_kept_otherwise() -> None:
    made = v2()["headers"]["x-amzn-trace-id"]
    assert re.fullmatch(r"Root=1-[0-9a-f]{8}-[0-9a-f]{24}", made)
    assert made.startswith(f"Root=1-{int(NOW):08x}-")
    given = "Root=1-5e6044ee-0123456789abcdef01234567"
    assert v2(headers=[("X-Amzn-Trace-Id", given)])["headers"]["x-amzn-trace-id"] == given


# -- payload format 1.0 -----------------------------------------------------------------------------

def test_a_1_0_event_has_the_rest_style_envelope() -> None:
    event = v1("/orders/7", method="PUT")
    assert event["version"] == "1.0"
    assert event["httpMethod"] == "PUT"
    assert event["path"] == "/orders/7"
    # The $default route, as HTTP APIs write it in a 1.0 event.
    assert event["resource"] == "$default"
    assert event["requestContext"]["resourcePath"] == "$default"
    assert event["pathParameters"] is None
    assert event["stageVariables"] is None


def test_a_1_0_path_is_percent_decoded() -> None:
    assert v1("/a%20b")["path"] == "/a b"


def test_1_0_headers_keep_the_last_value_and_multi_value_headers_all() -> None:
    event = v1(headers=[("X-Multi", "a"), ("X-Multi", "b"), ("Cookie", "a=1")])
    assert event["headers"]["x-multi"] == "b"
    assert event["multiValueHeaders"]["x-multi"] == ["a", "b"]
    assert event["headers"]["cookie"] == "a=1"  # 1.0 has no cookies field
    assert "cookies" not in event


def test_1_0_query_parameters_keep_the_last_value_and_multi_value_parameters_all() -> None:
    event = v1("/", "a=1&a=2&b=x%20y")
    assert event["queryStringParameters"] == {"a": "2", "b": "x y"}
    assert event["multiValueQueryStringParameters"] == {"a": ["1", "2"], "b": ["x y"]}


def test_a_1_0_event_without_a_query_has_null_query_parameters() -> None:
    event = v1("/")
    assert event["queryStringParameters"] is None
    assert event["multiValueQueryStringParameters"] is None


def test_the_1_0_request_context_has_the_source_ip_in_its_identity() -> None:
    context = v1("/x", method="POST", headers=[("User-Agent", "curl/8.5")], source_ip="198.51.100.9")[
        "requestContext"]
    assert context["identity"]["sourceIp"] == "198.51.100.9"
    assert context["identity"]["userAgent"] == "curl/8.5"
    assert context["httpMethod"] == "POST"
    assert context["path"] == "/x"
    assert context["requestId"] == API_REQUEST_ID
    assert context["stage"] == "$default"
    assert context["requestTimeEpoch"] == 1583348638390


def test_a_1_0_event_without_a_body_has_a_null_body() -> None:
    event = v1()
    assert event["body"] is None
    assert event["isBase64Encoded"] is False


def test_a_1_0_binary_body_is_base64() -> None:
    event = v1(method="POST", headers=[("Content-Type", "application/octet-stream")], body=b"\x00\xff")
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == b"\x00\xff"


# -- routes (spec.http.routes) ---------------------------------------------------------------------

ROUTES = RouteTable(["GET /users/{id}", "ANY /files/{proxy+}", "POST /orders"])


def routed(path: str, payload_format: str = "2.0", *, method: str = "GET",
           routes: RouteTable = ROUTES) -> dict[str, Any]:
    return apigateway.event(request(path, method=method), payload_format=payload_format,
                            api_request_id=API_REQUEST_ID, now=NOW, routes=routes)


def test_a_2_0_event_names_the_route_it_took_and_its_path_parameters() -> None:
    event = routed("/users/42")
    assert event["routeKey"] == "GET /users/{id}"
    assert event["requestContext"]["routeKey"] == "GET /users/{id}"
    assert event["pathParameters"] == {"id": "42"}
    assert event["rawPath"] == "/users/42"


def test_a_2_0_greedy_path_parameter_holds_the_rest_of_the_path_decoded() -> None:
    event = routed("/files/a/b%20c/d", method="PUT")
    assert event["routeKey"] == "ANY /files/{proxy+}"
    assert event["pathParameters"] == {"proxy": "a/b c/d"}


def test_a_2_0_event_of_a_route_without_variables_has_no_path_parameters() -> None:
    event = routed("/orders", method="POST")
    assert event["routeKey"] == "POST /orders"
    assert "pathParameters" not in event


def test_a_2_0_event_of_the_default_route_has_no_path_parameters() -> None:
    event = routed("/anything", routes=RouteTable(["GET /users/{id}", "$default"]))
    assert event["routeKey"] == event["requestContext"]["routeKey"] == "$default"
    assert "pathParameters" not in event


def test_a_1_0_event_names_the_route_as_its_resource_with_its_path_parameters() -> None:
    event = routed("/users/a%2Fb", "1.0")
    assert event["resource"] == "/users/{id}"
    assert event["path"] == "/users/a/b"
    assert event["pathParameters"] == {"id": "a/b"}
    context = event["requestContext"]
    assert (context["resourcePath"], context["resourceId"]) == ("/users/{id}", "GET /users/{id}")
    assert context["path"] == "/users/a/b"


def test_a_1_0_event_of_a_route_without_variables_has_null_path_parameters() -> None:
    event = routed("/orders", "1.0", method="POST")
    assert (event["resource"], event["pathParameters"]) == ("/orders", None)


def test_a_1_0_event_of_the_default_route_says_default() -> None:
    event = routed("/x", "1.0", routes=RouteTable(["$default"]))
    assert (event["resource"], event["pathParameters"]) == ("$default", None)
    assert (event["requestContext"]["resourcePath"], event["requestContext"]["resourceId"]) == ("$default",) * 2


@pytest.mark.parametrize("payload_format", ["2.0", "1.0"])
def test_a_request_no_route_takes_has_no_event(payload_format: str) -> None:
    with pytest.raises(apigateway.NoRoute):
        routed("/users/42", payload_format, method="DELETE")


def test_no_route_is_404_not_found() -> None:
    out = apigateway.not_found(API_REQUEST_ID)
    assert (out.status, json.loads(out.body)) == (404, {"message": "Not Found"})
    assert header_values(out, "apigw-requestid") == [API_REQUEST_ID]


# -- the client's address ---------------------------------------------------------------------------

def test_with_no_trusted_hop_the_client_is_the_peer_and_its_forwarded_for_is_dropped() -> None:
    assert apigateway.trusted_client("192.0.2.5", ["6.6.6.6"], trusted_hops=0) == ("192.0.2.5", "192.0.2.5")


def test_with_one_trusted_hop_the_client_is_the_last_forwarded_address() -> None:
    client, forwarded = apigateway.trusted_client("10.0.0.1", ["6.6.6.6, 198.51.100.1"], trusted_hops=1)
    assert client == "198.51.100.1"
    assert forwarded == "198.51.100.1, 10.0.0.1"


def test_with_two_trusted_hops_the_client_is_the_second_to_last_forwarded_address() -> None:
    # Envoy's example: the peer and the last entry are the two trusted proxies.
    client, forwarded = apigateway.trusted_client(
        "192.0.2.5", ["203.0.113.128, 203.0.113.10", "203.0.113.1"], trusted_hops=2)
    assert client == "203.0.113.10"
    assert forwarded == "203.0.113.10, 203.0.113.1, 192.0.2.5"


def test_with_trusted_hops_but_no_forwarded_for_the_client_is_the_peer() -> None:
    assert apigateway.trusted_client("10.0.0.1", [], trusted_hops=2) == ("10.0.0.1", "10.0.0.1")


# -- the result → HTTP ------------------------------------------------------------------------------

def test_a_result_with_a_status_code_is_a_structured_response() -> None:
    out = respond({"statusCode": 201, "headers": {"Content-Type": "text/plain", "X-Result": 42}, "body": "made"})
    assert out.status == 201
    assert out.body == b"made"
    assert ("Content-Type", "text/plain") in out.headers
    assert ("X-Result", "42") in out.headers
    assert header_values(out, "apigw-requestid") == [API_REQUEST_ID]


def test_a_numeric_string_status_code_is_accepted() -> None:
    assert respond({"statusCode": "202"}).status == 202


@pytest.mark.parametrize("result", [{"message": "hi"}, 42, [1, 2], True, ["a"], {"body": "x"}])
def test_any_other_2_0_json_value_is_the_body_of_a_200_json_response(result: Any) -> None:
    out = respond(result)
    assert out.status == 200
    assert json.loads(out.body) == result
    assert header_values(out, "Content-Type") == ["application/json"]


@pytest.mark.parametrize("text", ["hello", "", "{\"a\": 1}", "caf\u00e9 \u2603", "\"quoted\""])
def test_a_2_0_string_result_is_the_body_itself_without_json_quotes(text: str) -> None:
    out = respond(text)
    assert (out.status, out.body) == (200, text.encode())
    assert header_values(out, "Content-Type") == ["application/json"]


def test_a_2_0_string_with_a_lone_surrogate_is_an_invalid_result() -> None:
    with pytest.raises(InvalidResult, match="surrogate"):
        apigateway.response(b'"\\ud800"', api_request_id=API_REQUEST_ID)


def test_a_1_0_string_result_still_needs_a_status_code() -> None:
    with pytest.raises(InvalidResult):
        respond("hello", "1.0")


def test_a_2_0_null_result_is_a_200_json_null() -> None:
    out = apigateway.response(b"null", api_request_id=API_REQUEST_ID)
    assert (out.status, out.body) == (200, b"null")


def test_a_2_0_empty_result_is_an_empty_200() -> None:
    out = apigateway.response(b"", api_request_id=API_REQUEST_ID)
    assert (out.status, out.body) == (200, b"")


def test_a_structured_2_0_response_without_a_content_type_is_json() -> None:
    assert header_values(respond({"statusCode": 200, "body": "{}"}), "Content-Type") == ["application/json"]


def test_a_1_0_response_without_a_content_type_is_text() -> None:
    out = respond({"statusCode": 200, "body": "hi"}, "1.0")
    assert header_values(out, "Content-Type") == ["text/plain; charset=utf-8"]


@pytest.mark.parametrize("result", [{"message": "hi"}, "hi", None])
def test_a_1_0_result_needs_a_status_code(result: Any) -> None:
    with pytest.raises(InvalidResult):
        respond(result, "1.0")


def test_multi_value_headers_win_over_headers_of_the_same_name() -> None:
    out = respond({"statusCode": 200, "headers": {"X-A": "single", "X-B": "b"},
                   "multiValueHeaders": {"x-a": ["one", "two"]}})
    assert header_values(out, "X-A") == ["one", "two"]
    assert header_values(out, "X-B") == ["b"]


def test_cookies_become_one_set_cookie_header_each() -> None:
    out = respond({"statusCode": 200, "cookies": ["a=1; Path=/", "b=2; HttpOnly"]})
    assert header_values(out, "Set-Cookie") == ["a=1; Path=/", "b=2; HttpOnly"]


def test_a_base64_body_is_decoded() -> None:
    data = bytes(range(256))
    out = respond({"statusCode": 200, "body": base64.b64encode(data).decode(), "isBase64Encoded": True})
    assert out.body == data


def test_a_structure_as_the_body_is_sent_as_json() -> None:
    assert json.loads(respond({"statusCode": 200, "body": {"a": [1]}}).body) == {"a": [1]}


def test_framing_headers_of_the_function_are_dropped() -> None:
    out = respond({"statusCode": 200, "body": "hi", "headers": {"Content-Length": "999", "Connection": "close"},
                   "multiValueHeaders": {"Transfer-Encoding": ["chunked"]}})
    names = {name.lower() for name, _ in out.headers}
    assert not names & {"content-length", "connection", "transfer-encoding"}


def test_the_gateways_own_response_headers_cannot_be_set_by_the_function() -> None:
    out = respond({"statusCode": 200, "headers": {"apigw-requestid": "forged", "X-Kfn-Request-Id": "forged"}})
    assert header_values(out, "apigw-requestid") == [API_REQUEST_ID]
    assert header_values(out, "X-Kfn-Request-Id") == []


@pytest.mark.parametrize("result", [
    {"statusCode": 99}, {"statusCode": 100}, {"statusCode": 600}, {"statusCode": "abc"}, {"statusCode": True},
    {"statusCode": 200.5}, {"statusCode": None},
    {"statusCode": 200, "headers": {"Bad Name": "x"}},
    {"statusCode": 200, "headers": {"X:Y": "x"}},
    {"statusCode": 200, "headers": {"": "x"}},
    {"statusCode": 200, "headers": {"X-Split": "a\r\nSet-Cookie: evil=1"}},
    {"statusCode": 200, "headers": {"X-Newline": "a\nb"}},
    {"statusCode": 200, "headers": {"X-Nul": "a\x00b"}},
    {"statusCode": 200, "headers": {"X-Euro": "€"}},
    {"statusCode": 200, "headers": {"X-List": ["a"]}},
    {"statusCode": 200, "headers": ["X-A", "a"]},
    {"statusCode": 200, "multiValueHeaders": {"X-A": ["ok", "bad\r\n"]}},
    {"statusCode": 200, "multiValueHeaders": ["X-A"]},
    {"statusCode": 200, "cookies": "a=1"},
    {"statusCode": 200, "cookies": ["a=1\r\nX: y"]},
    {"statusCode": 200, "body": "not base64!", "isBase64Encoded": True},
], ids=lambda result: json.dumps(result)[:40])
def test_a_result_api_gateway_would_reject_is_invalid(result: Any) -> None:
    with pytest.raises(InvalidResult):
        respond(result)


def test_a_result_that_is_not_json_is_invalid() -> None:
    with pytest.raises(InvalidResult):
        apigateway.response(b"{not json", api_request_id=API_REQUEST_ID)


def test_a_latin_1_header_value_is_allowed() -> None:
    assert header_values(respond({"statusCode": 200, "headers": {"X-Name": "José"}}), "X-Name") == ["José"]


def test_a_function_error_is_500_internal_server_error() -> None:
    out = apigateway.internal_error(API_REQUEST_ID)
    assert (out.status, json.loads(out.body)) == (500, {"message": "Internal Server Error"})
    assert header_values(out, "Content-Type") == ["application/json"]
    assert header_values(out, "apigw-requestid") == [API_REQUEST_ID]


def test_a_timed_out_function_is_504_endpoint_request_timed_out() -> None:
    out = apigateway.timed_out(API_REQUEST_ID)
    assert (out.status, json.loads(out.body)) == (504, {"message": "Endpoint request timed out"})
    assert header_values(out, "apigw-requestid") == [API_REQUEST_ID]


# -- ids and types ----------------------------------------------------------------------------------

def test_invocation_ids_are_random_uuid4s() -> None:
    ids = {apigateway.invocation_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(uuid.UUID(i).version == 4 and str(uuid.UUID(i)) == i for i in ids)


def test_api_request_ids_are_unique_and_header_safe() -> None:
    ids = {apigateway.request_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(re.fullmatch(r"[A-Za-z0-9_=-]+", i) for i in ids)


@pytest.mark.parametrize(("content_type", "text"), [
    ("text/html; charset=utf-8", True), ("TEXT/CSV", True), ("application/json", True),
    ("application/problem+json", True), ("application/atom+xml", True), ("image/svg+xml", True),
    ("application/octet-stream", False), ("image/png", False), ("application/pdf", False),
    ("application/pdf; charset=binary", True), ("", True),
])
def test_which_content_types_are_text(content_type: str, text: bool) -> None:
    assert apigateway.is_text_type(content_type) is text
