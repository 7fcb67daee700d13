"""The event and context a handler receives: API Gateway HTTP API payload format 2.0, Lambda's context."""
from __future__ import annotations

import base64
import time

import pytest

from kfn_runtime.events import LambdaContext, build_event, encode_body, is_text_type


def event(target: str = "/", *, method: str = "GET", headers: list[tuple[str, str]] | None = None,
          body: bytes = b"", peer: str = "10.0.0.7", now: float | None = None) -> dict:
    return build_event(method=method, target=target, headers=headers or [("Host", "example.test:8080")],
                       body=body, peer=peer, request_id="req-1", now=now)


def test_event_has_the_payload_2_0_envelope() -> None:
    e = event("/orders/7?x=1")
    assert e["version"] == "2.0"
    assert e["routeKey"] == "$default"
    assert e["rawPath"] == "/orders/7"
    assert e["rawQueryString"] == "x=1"
    assert e["pathParameters"] is None
    assert e["stageVariables"] is None
    assert e["isBase64Encoded"] is False


def test_request_context_describes_the_request() -> None:
    e = event("/orders", method="POST", headers=[("Host", "api.example.test"), ("User-Agent", "curl/8")],
              now=1_700_000_000.5)
    ctx = e["requestContext"]
    assert ctx["http"] == {"method": "POST", "path": "/orders", "protocol": "HTTP/1.1",
                           "sourceIp": "10.0.0.7", "userAgent": "curl/8"}
    assert ctx["domainName"] == "api.example.test"
    assert ctx["domainPrefix"] == "api"
    assert ctx["requestId"] == "req-1"
    assert ctx["routeKey"] == "$default"
    assert ctx["stage"] == "$default"
    assert ctx["timeEpoch"] == 1_700_000_000_500
    assert ctx["time"] == "14/Nov/2023:22:13:20 +0000"
    assert ctx["accountId"] and ctx["apiId"]


def test_domain_name_drops_the_port() -> None:
    assert event()["requestContext"]["domainName"] == "example.test"


def test_empty_path_is_slash() -> None:
    assert event("?a=1")["rawPath"] == "/"


def test_no_query_string_means_no_query_parameters() -> None:
    e = event("/x")
    assert e["rawQueryString"] == ""
    assert "queryStringParameters" not in e


def test_repeated_query_keys_are_joined_with_commas() -> None:
    e = event("/x?tag=a&tag=b&tag=c&one=1")
    assert e["queryStringParameters"] == {"tag": "a,b,c", "one": "1"}
    assert e["rawQueryString"] == "tag=a&tag=b&tag=c&one=1"


def test_empty_query_values_are_kept() -> None:
    assert event("/x?flag&empty=&v=1")["queryStringParameters"] == {"flag": "", "empty": "", "v": "1"}


def test_query_values_are_percent_decoded_but_raw_query_is_not() -> None:
    e = event("/x?name=J%C3%BCrgen%20M")
    assert e["queryStringParameters"] == {"name": "Jürgen M"}
    assert e["rawQueryString"] == "name=J%C3%BCrgen%20M"


def test_header_names_are_lower_cased() -> None:
    e = event(headers=[("Host", "h"), ("X-Custom-Thing", "v"), ("Content-Type", "text/plain")])
    assert e["headers"] == {"host": "h", "x-custom-thing": "v", "content-type": "text/plain"}


def test_repeated_headers_are_joined_with_commas() -> None:
    e = event(headers=[("Host", "h"), ("Accept", "text/html"), ("accept", "application/json")])
    assert e["headers"]["accept"] == "text/html,application/json"


def test_cookies_become_a_list_and_leave_the_headers() -> None:
    e = event(headers=[("Host", "h"), ("Cookie", "a=1; b=2"), ("Cookie", "c=3")])
    assert e["cookies"] == ["a=1", "b=2", "c=3"]
    assert "cookie" not in e["headers"]


def test_no_cookie_header_means_no_cookies_field() -> None:
    assert "cookies" not in event()


def test_source_ip_is_the_first_x_forwarded_for_entry() -> None:
    e = event(headers=[("Host", "h"), ("X-Forwarded-For", "203.0.113.9, 10.1.1.1")])
    assert e["requestContext"]["http"]["sourceIp"] == "203.0.113.9"


def test_source_ip_is_the_peer_without_x_forwarded_for() -> None:
    assert event(peer="192.0.2.4")["requestContext"]["http"]["sourceIp"] == "192.0.2.4"


def test_empty_body_has_no_body_field() -> None:
    e = event(method="POST")
    assert "body" not in e
    assert e["isBase64Encoded"] is False


def test_json_body_is_passed_as_text() -> None:
    e = event(method="POST", headers=[("Host", "h"), ("Content-Type", "application/json")],
              body='{"name": "Zoë"}'.encode())
    assert e["body"] == '{"name": "Zoë"}'
    assert e["isBase64Encoded"] is False


def test_binary_body_is_base64_encoded() -> None:
    payload = bytes(range(256))
    e = event(method="POST", headers=[("Host", "h"), ("Content-Type", "application/octet-stream")], body=payload)
    assert e["isBase64Encoded"] is True
    assert base64.b64decode(e["body"]) == payload


def test_text_typed_body_that_is_not_utf8_is_base64_encoded() -> None:
    e = event(method="POST", headers=[("Host", "h"), ("Content-Type", "text/plain")], body=b"\xff\xfe\x00")
    assert e["isBase64Encoded"] is True
    assert base64.b64decode(e["body"]) == b"\xff\xfe\x00"


def test_image_body_is_base64_even_when_it_decodes_as_utf8() -> None:
    body, is_base64 = encode_body(b"GIF89a", "image/gif")
    assert is_base64 is True
    assert base64.b64decode(body) == b"GIF89a"


@pytest.mark.parametrize("content_type", [
    "text/plain", "text/html; charset=utf-8", "application/json", "application/problem+json",
    "application/x-www-form-urlencoded", "application/xml", "application/vnd.api+json",
    "application/octet-stream; charset=utf-8", "",
])
def test_textual_content_types(content_type: str) -> None:
    assert is_text_type(content_type)


@pytest.mark.parametrize("content_type", ["application/octet-stream", "image/png", "application/zip",
                                          "multipart/form-data; boundary=x", "application/pdf"])
def test_binary_content_types(content_type: str) -> None:
    assert not is_text_type(content_type)


def context(deadline: float) -> LambdaContext:
    return LambdaContext(function_name="orders", function_version="3", memory_limit_in_mb=512,
                         aws_request_id="req-9", deadline=deadline, log_stream_name="2026/01/01/[3]abc")


def test_context_has_lambdas_attributes() -> None:
    c = context(time.monotonic() + 30)
    assert c.function_name == "orders"
    assert c.function_version == "3"
    assert c.memory_limit_in_mb == "512"
    assert c.aws_request_id == "req-9"
    assert c.invoked_function_arn == "arn:kfn:lambda:local:000000000000:function:orders"
    assert c.log_group_name == "/kfn/orders"
    assert c.log_stream_name == "2026/01/01/[3]abc"
    assert c.identity is None
    assert c.client_context is None


def test_context_arn_names_the_region_it_is_given() -> None:
    c = LambdaContext(function_name="f", function_version="1", memory_limit_in_mb=1, aws_request_id="r",
                      deadline=0.0, region="team-a")
    assert c.invoked_function_arn == "arn:kfn:lambda:team-a:000000000000:function:f"


def test_remaining_time_counts_down_to_the_deadline() -> None:
    c = context(time.monotonic() + 30)
    first = c.get_remaining_time_in_millis()
    assert 29_000 < first <= 30_000
    for _ in range(100):  # bounded: a millisecond passes within a few short sleeps
        time.sleep(0.002)
        if c.get_remaining_time_in_millis() < first:
            break
    assert c.get_remaining_time_in_millis() < first


def test_remaining_time_is_never_negative() -> None:
    assert context(time.monotonic() - 5).get_remaining_time_in_millis() == 0
