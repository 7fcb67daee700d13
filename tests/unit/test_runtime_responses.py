"""Mapping a handler's return value to HTTP, as API Gateway's HTTP API does for payload format 2.0."""
from __future__ import annotations

import base64
import json

import pytest

from kfn_runtime import contract
from kfn_runtime.responses import error_response, map_result


def test_status_code_dict_is_a_response() -> None:
    r = map_result({"statusCode": 201, "headers": {"Content-Type": "text/plain", "X-Id": "7"}, "body": "made"})
    assert r.status == 201
    assert r.header("content-type") == "text/plain"
    assert r.header("x-id") == "7"
    assert r.body == b"made"
    assert r.error_type is None


def test_aws_hello_world_blueprint_response() -> None:
    r = map_result({"statusCode": 200, "body": json.dumps("Hello from Lambda!")})
    assert r.status == 200
    assert r.header("Content-Type") == "application/json"
    assert json.loads(r.body) == "Hello from Lambda!"


def test_status_code_dict_without_body_has_an_empty_body() -> None:
    r = map_result({"statusCode": 204})
    assert r.status == 204
    assert r.body == b""


def test_status_code_may_be_a_numeric_string() -> None:
    assert map_result({"statusCode": "404", "body": "no"}).status == 404


def test_body_is_utf8_encoded() -> None:
    assert map_result({"statusCode": 200, "body": "Zoë"}).body == "Zoë".encode()


def test_base64_body_is_decoded() -> None:
    png = b"\x89PNG\r\n\x1a\n\x00\x01"
    r = map_result({"statusCode": 200, "headers": {"content-type": "image/png"},
                    "body": base64.b64encode(png).decode(), "isBase64Encoded": True})
    assert r.body == png
    assert r.header("content-type") == "image/png"


def test_invalid_base64_body_is_a_500() -> None:
    r = map_result({"statusCode": 200, "body": "not base64!!", "isBase64Encoded": True})
    assert r.status == 500
    assert json.loads(r.body)["errorType"] == contract.ERROR_INVALID_RESPONSE


def test_cookies_become_one_set_cookie_header_each() -> None:
    r = map_result({"statusCode": 200, "cookies": ["a=1; Path=/", "b=2; HttpOnly"], "body": ""})
    assert [v for k, v in r.headers if k == "Set-Cookie"] == ["a=1; Path=/", "b=2; HttpOnly"]


def test_multi_value_headers_become_repeated_headers() -> None:
    r = map_result({"statusCode": 200, "multiValueHeaders": {"X-Tag": ["a", "b"]}})
    assert [v for k, v in r.headers if k == "X-Tag"] == ["a", "b"]


def test_numeric_header_values_are_stringified() -> None:
    assert map_result({"statusCode": 200, "headers": {"X-Count": 3}}).header("x-count") == "3"


def test_framing_headers_from_the_handler_are_dropped() -> None:
    r = map_result({"statusCode": 200, "headers": {"Content-Length": "999", "Connection": "close",
                                                   "Transfer-Encoding": "chunked"}, "body": "x"})
    assert r.header("content-length") is None
    assert r.header("connection") is None
    assert r.header("transfer-encoding") is None


def test_header_values_with_line_breaks_are_rejected() -> None:
    r = map_result({"statusCode": 200, "headers": {"X-Evil": "a\r\nSet-Cookie: pwned=1"}})
    assert r.status == 500
    assert json.loads(r.body)["errorType"] == contract.ERROR_INVALID_RESPONSE


def test_invalid_header_names_are_rejected() -> None:
    assert map_result({"statusCode": 200, "headers": {"Bad Name": "x"}}).status == 500


@pytest.mark.parametrize("status", [0, 99, 101, 600, "abc", None, True, 200.5])
def test_invalid_status_codes_are_a_500(status: object) -> None:
    r = map_result({"statusCode": status, "body": "x"})
    assert r.status == 500
    assert json.loads(r.body)["errorType"] == contract.ERROR_INVALID_RESPONSE


def test_dict_without_status_code_is_a_json_body() -> None:
    r = map_result({"message": "hi", "n": 2})
    assert r.status == 200
    assert r.header("Content-Type") == "application/json"
    assert json.loads(r.body) == {"message": "hi", "n": 2}


@pytest.mark.parametrize("value", [[1, "two", None], "Hello from Lambda!", 42, 1.5, True, None, {}])
def test_any_other_json_value_is_a_200_json_body(value: object) -> None:
    r = map_result(value)
    assert r.status == 200
    assert r.header("Content-Type") == "application/json"
    assert json.loads(r.body) == value


def test_a_returned_string_is_json_encoded() -> None:
    assert map_result("hi").body == b'"hi"'


def test_non_serialisable_value_is_a_500_marshal_error() -> None:
    r = map_result({"when": object()})
    assert r.status == 500
    body = json.loads(r.body)
    assert body["errorType"] == contract.ERROR_MARSHAL
    assert "not JSON serializable" in body["errorMessage"]
    assert r.error_type == contract.ERROR_MARSHAL


def test_non_string_body_in_a_status_code_dict_is_json_encoded() -> None:
    assert json.loads(map_result({"statusCode": 200, "body": {"a": 1}}).body) == {"a": 1}


def test_error_response_is_lambda_style_json() -> None:
    r = error_response(504, "TimeoutError", "Task timed out after 1.00 seconds")
    assert r.status == 504
    assert r.header("content-type") == "application/json"
    assert json.loads(r.body) == {"errorType": "TimeoutError", "errorMessage": "Task timed out after 1.00 seconds"}
