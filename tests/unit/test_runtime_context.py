"""The `context` argument handlers get (`kfn_runtime.context.LambdaContext`), attribute for
attribute as AWS's Python runtime (awslambdaric) builds it."""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from kfn_runtime import context as context_module
from kfn_runtime.context import LambdaContext

ARN = "arn:aws:lambda:eu-west-1:000000000000:function:orders"
NAMES = {
    "AWS_LAMBDA_FUNCTION_NAME": "orders",
    "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256",
    "AWS_LAMBDA_LOG_GROUP_NAME": "/aws/lambda/orders",
    "AWS_LAMBDA_LOG_STREAM_NAME": "2026/01/02/[$LATEST]0123456789abcdef0123456789abcdef",
}
CLIENT_CONTEXT = {
    "client": {"installation_id": "inst-1", "app_title": "Shop", "app_version_name": "1.2",
               "app_version_code": "12", "app_package_name": "com.example.shop"},
    "custom": {"tenant": "acme"},
    "env": {"platform": "Android"},
}
IDENTITY = {"cognitoIdentityId": "eu-west-1:abc", "cognitoIdentityPoolId": "eu-west-1:pool"}


@pytest.fixture(autouse=True)
def lambda_names(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Lambda's reserved variables set, and the context's once-per-environment copy of them cleared."""
    for name, value in NAMES.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(context_module, "_names", ())
    yield


def make(**overrides: Any) -> LambdaContext:
    values: dict[str, Any] = {"request_id": "req-1", "deadline_ms": int(time.time() * 1000) + 3000,
                              "invoked_function_arn": ARN}
    values.update(overrides)
    return LambdaContext(**values)


def test_names_come_from_lambdas_reserved_variables() -> None:
    c = make()
    assert (c.function_name, c.function_version, c.log_group_name, c.log_stream_name) == (
        "orders", "$LATEST", "/aws/lambda/orders", NAMES["AWS_LAMBDA_LOG_STREAM_NAME"])


def test_memory_limit_is_a_string_as_on_aws() -> None:
    assert make().memory_limit_in_mb == "256"


def test_request_id_arn_and_tenant_come_from_the_invocation() -> None:
    c = make(request_id="8f5e-1", tenant_id="tenant-a")
    assert (c.aws_request_id, c.invoked_function_arn, c.tenant_id) == ("8f5e-1", ARN, "tenant-a")


def test_names_are_read_once_per_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    make()
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "changed-later")
    assert make().function_name == "orders"


def test_missing_names_are_none() -> None:
    with pytest.MonkeyPatch.context() as patch:
        for name in NAMES:
            patch.delenv(name)
        c = make()
    assert (c.function_name, c.memory_limit_in_mb, c.log_stream_name) == (None, None, None)


def test_remaining_time_counts_down_to_the_deadline() -> None:
    c = make(deadline_ms=int(time.time() * 1000) + 2000)
    remaining = c.get_remaining_time_in_millis()
    assert isinstance(remaining, int)
    assert 1500 < remaining <= 2000


def test_remaining_time_after_the_deadline_is_zero() -> None:
    assert make(deadline_ms=int(time.time() * 1000) - 5000).get_remaining_time_in_millis() == 0


def test_client_context_is_parsed_into_attributes() -> None:
    c = make(client_context=json.dumps(CLIENT_CONTEXT))
    assert c.client_context is not None
    assert (c.client_context.custom, c.client_context.env) == ({"tenant": "acme"}, {"platform": "Android"})
    client = c.client_context.client
    assert client is not None
    assert (client.installation_id, client.app_title, client.app_version_name, client.app_version_code,
            client.app_package_name) == ("inst-1", "Shop", "1.2", "12", "com.example.shop")


def test_client_context_without_a_client_has_none() -> None:
    c = make(client_context=json.dumps({"custom": {"a": 1}}))
    assert c.client_context is not None
    assert (c.client_context.client, c.client_context.custom, c.client_context.env) == (None, {"a": 1}, None)


def test_no_client_context_is_none() -> None:
    assert make().client_context is None


@pytest.mark.parametrize("text", ["[1, 2]", "42", '"text"', "null"], ids=["list", "number", "string", "null"])
def test_client_context_that_is_not_an_object_is_an_unmarshal_error(text: str) -> None:
    # A ValueError, which the runtime reports as Runtime.UnmarshalError (not a crash of the environment).
    with pytest.raises(ValueError, match="client context is not a JSON object"):
        make(client_context=text)


def test_malformed_client_context_json_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        make(client_context="{not json")


def test_identity_is_parsed_into_attributes() -> None:
    identity = make(cognito_identity=json.dumps(IDENTITY)).identity
    assert (identity.cognito_identity_id, identity.cognito_identity_pool_id) == ("eu-west-1:abc", "eu-west-1:pool")


def test_identity_without_cognito_has_none_attributes() -> None:
    identity = make().identity
    assert identity is not None
    assert (identity.cognito_identity_id, identity.cognito_identity_pool_id) == (None, None)


def test_repr_names_the_function_and_request() -> None:
    text = repr(make(request_id="req-9"))
    assert "orders" in text and "req-9" in text


# --- the same attributes as AWS's own runtime interface client ---------------------------------

ATTRIBUTES = ("aws_request_id", "function_name", "function_version", "memory_limit_in_mb", "log_group_name",
              "log_stream_name", "invoked_function_arn", "tenant_id")


@pytest.mark.parametrize(("client_context", "identity"), [
    (CLIENT_CONTEXT, IDENTITY), ({"custom": {"a": 1}}, None), (None, None),
], ids=["everything", "custom-only", "nothing"])
def test_attributes_match_awslambdarics_context(client_context: dict[str, Any] | None,
                                                identity: dict[str, Any] | None) -> None:
    aws = pytest.importorskip("awslambdaric.lambda_context")
    deadline = int(time.time() * 1000) + 60_000
    theirs = aws.LambdaContext("req-1", json.loads(json.dumps(client_context)) if client_context else None,
                               identity, deadline, ARN, "tenant-a")
    ours = make(request_id="req-1", deadline_ms=deadline, tenant_id="tenant-a",
                client_context=json.dumps(client_context) if client_context else None,
                cognito_identity=json.dumps(identity) if identity else None)
    for name in ATTRIBUTES:
        assert getattr(ours, name) == getattr(theirs, name), name
    assert abs(ours.get_remaining_time_in_millis() - theirs.get_remaining_time_in_millis()) < 50
    assert (ours.identity.cognito_identity_id, ours.identity.cognito_identity_pool_id) == (
        theirs.identity.cognito_identity_id, theirs.identity.cognito_identity_pool_id)
    if client_context is None:
        assert ours.client_context is None and theirs.client_context is None
        return
    assert ours.client_context is not None
    assert (ours.client_context.custom, ours.client_context.env) == (theirs.client_context.custom,
                                                                     theirs.client_context.env)
    if theirs.client_context.client is None:
        assert ours.client_context.client is None
    else:
        for name in ("installation_id", "app_title", "app_version_name", "app_version_code", "app_package_name"):
            assert getattr(ours.client_context.client, name) == getattr(theirs.client_context.client, name)
