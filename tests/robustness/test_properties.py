"""Property-based tests (hypothesis): whatever the input, the manifest reader and the HTTP ↔ event
mapping answer with a result or their own error, never an unexpected exception, and keep the
invariants clients and functions rely on."""
from __future__ import annotations

import base64
import json
import os
import string
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from kfn.core.functions import Function
from kfn.core.manifests import MAX_DEPTH, ManifestError, load_text
from kfn.manifests import load_file
from kfn_gateway import apigateway

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- the manifest reader ------------------------------------------------------------------------------

def _load(text: str) -> list[Function] | ManifestError:
    try:
        return load_text(text, file="t.yaml")
    except ManifestError as e:
        return e


# Any JSON-like value: what a YAML document can hold once parsed.
values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=30)


@SETTINGS
@given(st.text(max_size=2000))
@example("[" * 1000)
@example("{" * 1000)
@example("a: " + "9" * 5000)
@example("- " * 500 + "x")
@example("&a [*a]")
@example("!!python/object:os.system x")
@example("\x00\x01\ufeff")
def test_any_text_is_read_as_functions_or_refused_with_a_manifest_error(text: str) -> None:
    out = _load(text)
    if isinstance(out, ManifestError):
        assert out.problems
        assert all(str(p).startswith("t.yaml") for p in out.problems)
    else:
        assert out and all(isinstance(f, Function) for f in out)


@SETTINGS
@given(values)
def test_any_document_shape_is_read_or_refused_with_field_paths(document: Any) -> None:
    text = yaml.safe_dump(document) if not isinstance(document, float) or document == document else "x: .nan"
    out = _load(text)
    assert isinstance(out, (list, ManifestError))


VALID = {"apiVersion": "kfn.dev/v1alpha1", "kind": "Function", "metadata": {"name": "hello"},
         "spec": {"handler": "main.handler", "source": {"files": {"main.py": "x = 1\n"}}}}


@SETTINGS
@given(st.sampled_from(["spec", "metadata"]), st.text(min_size=1, max_size=20), values)
def test_any_extra_or_wrong_field_in_a_valid_manifest_is_named_in_the_error(section: str, field: str,
                                                                             value: Any) -> None:
    document = json.loads(json.dumps(VALID))
    document[section][field] = value
    out = _load(json.dumps(document, allow_nan=True))
    if isinstance(out, ManifestError):
        assert out.problems


@SETTINGS
@given(st.integers(min_value=1, max_value=3 * MAX_DEPTH))
def test_nesting_at_any_depth_is_read_or_refused_cleanly(depth: int) -> None:
    for text in ("[" * depth + "]" * depth, "a:\n" + "".join("  " * i + "b:\n" for i in range(depth))):
        assert isinstance(_load(text), (list, ManifestError))


@SETTINGS
@given(st.binary(max_size=4096))
def test_any_file_content_is_read_or_refused_with_a_manifest_error(tmp_path_factory: pytest.TempPathFactory,
                                                                     data: bytes) -> None:
    path = tmp_path_factory.mktemp("bytes") / "f.yaml"
    path.write_bytes(data)
    try:
        load_file(path)
    except ManifestError as e:
        assert str(path) in str(e)


def test_files_that_are_not_regular_files_are_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero"), Path("/dev/null"), tmp_path):
        with pytest.raises(ManifestError, match="cannot read"):
            load_file(path)


# -- HTTP → event ----------------------------------------------------------------------------------------

header_names = st.text(alphabet=string.ascii_letters + string.digits + "-", min_size=1, max_size=20)
header_values = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=255, exclude_characters="\x7f"),
                        max_size=40)
paths = st.lists(st.text(min_size=0, max_size=12), max_size=5).map(
    lambda parts: "/" + "/".join(quote(p, safe="") for p in parts))
queries = st.lists(st.tuples(st.text(max_size=8), st.text(max_size=8)), max_size=5).map(
    lambda pairs: "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in pairs))
content_types = st.sampled_from(["", "application/json", "text/plain; charset=utf-8", "application/octet-stream",
                                 "image/png", "application/x-www-form-urlencoded", "text/html"])


@st.composite
def requests(draw: st.DrawFn) -> apigateway.HttpRequest:
    headers = draw(st.lists(st.tuples(header_names, header_values), max_size=8))
    content_type = draw(content_types)
    if content_type:
        headers.append(("Content-Type", content_type))
    return apigateway.HttpRequest(
        method=draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])),
        path=draw(paths), raw_query=draw(queries), headers=headers, body=draw(st.binary(max_size=300)),
        source_ip="127.0.0.1", forwarded_for="127.0.0.1", prefix="/function/f")


@SETTINGS
@given(requests(), st.sampled_from(["2.0", "1.0"]))
def test_every_request_maps_to_a_json_event_that_carries_its_path_query_and_body(request: apigateway.HttpRequest,
                                                                                  payload_format: str) -> None:
    event = apigateway.event(request, payload_format=payload_format, api_request_id="id")
    event = json.loads(json.dumps(event))   # JSON all the way down
    body = event.get("body")
    if request.body:
        decoded = base64.b64decode(body) if event["isBase64Encoded"] else body.encode("utf-8")
        assert decoded == request.body
    else:
        assert not body
    if payload_format == "2.0":
        assert event["rawPath"] == unquote(request.path)
        assert event["rawQueryString"] == request.raw_query
        headers = event["headers"]
    else:
        assert event["path"] == unquote(request.path)
        headers = event["headers"]
    assert all(name == name.lower() for name in headers)
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert not any(name.startswith("x-kfn-") for name in headers)


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(["X-Kfn-Request-Id", "x-kfn-rejected", "X-Forwarded-For",
                                           "X-Forwarded-Prefix", "Connection", "Transfer-Encoding"]),
                          header_values), min_size=1, max_size=6))
def test_clients_cannot_set_the_headers_the_gateway_writes(forged: list[tuple[str, str]]) -> None:
    request = apigateway.HttpRequest(method="GET", path="/", raw_query="", headers=forged, body=b"",
                                     source_ip="10.0.0.1", forwarded_for="10.0.0.1", prefix="/function/f")
    headers = apigateway.event(request, api_request_id="id")["headers"]
    assert headers["x-forwarded-for"] == "10.0.0.1"
    assert headers["x-forwarded-prefix"] == "/function/f"
    assert not {"x-kfn-request-id", "x-kfn-rejected", "connection", "transfer-encoding"} & set(headers)


@SETTINGS
@given(st.lists(st.text(max_size=30), max_size=5), st.integers(min_value=0, max_value=5))
def test_only_trusted_hops_of_x_forwarded_for_are_believed(chain: list[str], hops: int) -> None:
    client, forwarded = apigateway.trusted_client("192.0.2.1", [", ".join(chain)], trusted_hops=hops)
    entries = [part.strip() for part in ", ".join(chain).split(",") if part.strip()]
    if hops == 0 or len(entries) < hops:
        assert (client, forwarded) == ("192.0.2.1", "192.0.2.1")
    else:
        assert client == entries[-hops]
        assert forwarded.endswith("192.0.2.1")


# -- result → HTTP ------------------------------------------------------------------------------------------

results = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["statusCode", "headers", "multiValueHeaders", "body", "isBase64Encoded", "cookies", "x"])
        | st.text(max_size=8), inner, max_size=5),
    max_leaves=20)


@SETTINGS
@given(results, st.sampled_from(["2.0", "1.0"]))
@example({"statusCode": 200, "headers": {"Content-Length": "1", "X-Kfn-Request-Id": "forged"}, "body": "ok"}, "2.0")
@example({"statusCode": 200, "headers": {"X-Evil": "a\r\nSet-Cookie: x=1"}}, "2.0")
@example({"statusCode": 100}, "2.0")
@example({"statusCode": True}, "1.0")
def test_any_result_becomes_a_response_or_an_invalid_result(result: Any, payload_format: str) -> None:
    try:
        out = apigateway.response(json.dumps(result).encode(), payload_format=payload_format, api_request_id="id")
    except apigateway.InvalidResult:
        return
    assert 200 <= out.status <= 599
    names = [name.lower() for name, _ in out.headers]
    assert names.count("apigw-requestid") == 1
    assert not {"content-length", "transfer-encoding", "connection", "x-kfn-request-id"} & set(names)
    for _, value in out.headers:
        assert "\r" not in value and "\n" not in value


@SETTINGS
@given(st.binary(max_size=200))
def test_any_bytes_from_a_function_become_a_response_or_an_invalid_result(raw: bytes) -> None:
    try:
        out = apigateway.response(raw, api_request_id="id")
    except apigateway.InvalidResult:
        return
    assert 200 <= out.status <= 599
