"""Lambda's asynchronous-invocation policy: settings from the spec, retry delays, invocation records."""
from __future__ import annotations

from kfn.core import asyncpolicy
from kfn.core.asyncpolicy import AsyncConfig, RetryDelays, Target
from kfn.core.functions import FunctionRef, parse_function
from tests.support.functions import function_manifest


def test_config_comes_from_the_spec() -> None:
    function = parse_function(function_manifest(timeout="5s", concurrency=4, scale={"maxReplicas": 3}, **{"async": {
        "maxRetryAttempts": 1, "maximumEventAgeSeconds": 600,
        "onSuccess": {"url": "http://hooks.example.com/ok"}, "onFailure": {"function": "audit.ops"}}}))
    config = AsyncConfig.of(function, region="eu-west-1")
    assert config == AsyncConfig(
        function=FunctionRef("default", "hello"), max_retry_attempts=1, maximum_event_age=600.0,
        on_success=Target(url="http://hooks.example.com/ok"), on_failure=Target(function=FunctionRef("ops", "audit")),
        timeout=5.0, concurrency=12,
        function_arn="arn:aws:lambda:eu-west-1:000000000000:function:hello:$LATEST")


def test_a_destination_function_without_namespace_is_in_the_functions_namespace() -> None:
    document = function_manifest(**{"async": {"onFailure": {"function": "audit"}}})
    document["metadata"]["namespace"] = "team-a"
    config = AsyncConfig.of(parse_function(document), region="us-east-1")
    assert config.on_failure == Target(function=FunctionRef("team-a", "audit"))


def test_function_arn_names_a_namespace_other_than_default() -> None:
    arn = asyncpolicy.function_arn(FunctionRef("team-a", "f"), region="us-east-1")
    assert arn.endswith(":function:f.team-a:$LATEST")


def test_function_errors_wait_one_then_two_minutes() -> None:
    delays = RetryDelays()
    assert [delays.after_function_error(n) for n in (1, 2)] == [60.0, 120.0]


def test_system_errors_back_off_from_one_second_to_five_minutes() -> None:
    delays = RetryDelays()
    assert [delays.after_system_error(n) for n in (1, 2, 3, 9, 10, 100)] == [1, 2, 4, 256, 300, 300]


def test_a_retry_after_hint_lengthens_the_backoff() -> None:
    assert RetryDelays().after_system_error(1, retry_after=7) == 7


def test_retries_follow_max_retry_attempts() -> None:
    config = AsyncConfig(FunctionRef("default", "f"), max_retry_attempts=2)
    assert [asyncpolicy.should_retry(config, attempts=n) for n in (1, 2, 3)] == [True, True, False]


def test_an_event_is_too_old_after_its_maximum_age() -> None:
    config = AsyncConfig(FunctionRef("default", "f"), maximum_event_age=60)
    assert not asyncpolicy.too_old(config, accepted_at=1000, now=1060)
    assert asyncpolicy.too_old(config, accepted_at=1000, now=1060.5)


def test_failure_record_has_lambdas_shape() -> None:
    record = asyncpolicy.destination_record(
        invocation_id="req-1", function_arn="arn:aws:lambda:us-east-1:000000000000:function:f:$LATEST",
        condition="RetriesExhausted", approximate_invoke_count=3, request_payload=b'{"order": 7}',
        response_payload=b'{"errorMessage": "boom", "errorType": "ValueError"}', function_error="Unhandled",
        timestamp=1573755365.568)
    assert record == {
        "version": "1.0",
        "timestamp": "2019-11-14T18:16:05.568Z",
        "requestContext": {"requestId": "req-1",
                           "functionArn": "arn:aws:lambda:us-east-1:000000000000:function:f:$LATEST",
                           "condition": "RetriesExhausted", "approximateInvokeCount": 3},
        "requestPayload": {"order": 7},
        "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
        "responsePayload": {"errorMessage": "boom", "errorType": "ValueError"},
    }


def test_success_record_has_no_function_error() -> None:
    record = asyncpolicy.destination_record(
        invocation_id="r", function_arn="arn", condition="Success", approximate_invoke_count=1,
        request_payload=b"not json", response_payload=b"null", function_error=None, timestamp=0)
    assert record["responseContext"] == {"statusCode": 200, "executedVersion": "$LATEST"}
    assert (record["requestPayload"], record["responsePayload"]) == ("not json", None)


def test_destination_invocation_ids_are_derived_from_the_event() -> None:
    derive = asyncpolicy.destination_invocation_id
    assert derive("a", "Success") == derive("a", "Success")
    assert derive("a", "Success") != derive("b", "Success")
