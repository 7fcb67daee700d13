"""AWS Lambda's Invoke API at a running gateway: what the function gets, what the caller gets, and
every error in Lambda's shape, checked with botocore's own parser and signer (what boto3 raises)."""
from __future__ import annotations

import asyncio
import base64
import datetime
import json
import uuid
from typing import Any

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from kfn.core.functions import FunctionRef
from kfn.core.instances import StartProblem, StartReason
from kfn.core.keys import StaticKeys, parse_key_file
from kfn_gateway.lambda_api import FunctionName, LambdaError, parse_function_name
from kfn_gateway.settings import GatewaySettings
from kfn_runtime import contract
from tests.support.backend import (
    TRANSPORTS,
    Die,
    FakeBackend,
    FunctionError,
    Headers,
    Rejected,
    raising,
    serving,
    timed_out,
)
from tests.support.events import FakeStore
from tests.support.functions import make_function
from tests.support.gateway import running_gateway
from tests.support.invoke_api import assert_lambda_error, invoke, path_of, signed

TEAM_KEY = "team-secret-0123456789ab"
ADMIN_KEY = "admin-secret-0123456789"
KEYS = StaticKeys(parse_key_file({"admin": {"ops": ADMIN_KEY}, "namespaces": {"team": {"app": TEAM_KEY}}}))


def what_the_function_saw(event: Any, headers: Headers) -> dict[str, Any]:
    return {"event": event, "request_id": headers.get(contract.HEADER_REQUEST_ID),
            "client_context": headers.get(contract.HEADER_CLIENT_CONTEXT),
            "trace_id": headers.get(contract.HEADER_TRACE_ID)}


def hello(**kwargs: Any) -> FakeBackend:
    return FakeBackend(make_function("hello"), make_function("hello", namespace="team"),
                       fn=serving(what_the_function_saw), **kwargs)


# -- RequestResponse --------------------------------------------------------------------------------

@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_the_payload_is_the_event_and_the_result_comes_back_raw(transport: str) -> None:
    backend = FakeBackend.of(transport, make_function("hello"), fn=serving(lambda event, _: {"got": event}))
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        answer = await invoke(gw, payload=b'{"order": [1, 2]}')
    assert answer.status == 200
    assert answer.json() == {"got": {"order": [1, 2]}}
    assert answer.headers["X-Amz-Executed-Version"] == "$LATEST"
    assert "X-Amz-Function-Error" not in answer.headers
    parsed = answer.boto()
    assert (parsed["StatusCode"], parsed["ExecutedVersion"]) == (200, "$LATEST")


async def test_the_request_id_is_a_uuid_and_the_handlers_aws_request_id() -> None:
    backend = hello()
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        answer = await invoke(gw)
    request_id = answer.headers["x-amzn-RequestId"]
    assert uuid.UUID(request_id).version == 4
    assert answer.json()["request_id"] == request_id
    assert answer.boto()["ResponseMetadata"]["RequestId"] == request_id


async def test_an_sdk_invocation_id_makes_the_same_request_id_on_every_retry() -> None:
    backend = hello()
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        sdk_id = str(uuid.uuid4())
        first = await invoke(gw, headers={"amz-sdk-invocation-id": sdk_id})
        retry = await invoke(gw, headers={"amz-sdk-invocation-id": sdk_id})
        other = await invoke(gw, headers={"amz-sdk-invocation-id": str(uuid.uuid4())})
    assert first.headers["x-amzn-RequestId"] == retry.headers["x-amzn-RequestId"]
    assert other.headers["x-amzn-RequestId"] != first.headers["x-amzn-RequestId"]
    assert uuid.UUID(first.headers["x-amzn-RequestId"]).version == 5


@pytest.mark.parametrize("payload", [b"", None])
async def test_no_payload_is_an_empty_object_event(payload: bytes | None) -> None:
    backend = hello()
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        answer = await invoke(gw, payload=payload)
    assert answer.status == 200
    assert answer.json()["event"] == {}


@pytest.mark.parametrize("payload", [b'"just a string"', b"42", b"null", b"[1, 2]"])
async def test_any_json_value_is_an_event(payload: bytes) -> None:
    backend = hello()
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        answer = await invoke(gw, payload=payload)
    assert answer.status == 200
    assert answer.json()["event"] == json.loads(payload)


@pytest.mark.parametrize("payload", [b"not json", b'{"a": ', b"\xff\xfe"])
async def test_a_payload_that_is_not_json_is_invalid_request_content_and_never_runs(payload: bytes) -> None:
    backend = hello()
    async with backend, running_gateway(backend) as gw:
        instance = await backend.add_instance("hello")
        answer = await invoke(gw, payload=payload)
    body = assert_lambda_error(answer, 400, "InvalidRequestContentException")
    assert body["message"].startswith("Could not parse request body into json")
    assert backend.fake(instance).invocations == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_log_type_tail_returns_the_log_tail_base64(transport: str) -> None:
    backend = FakeBackend.of(transport, make_function("hello"), fn=serving(what_the_function_saw))
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        tail = await invoke(gw, headers={"X-Amz-Log-Type": "Tail"})
        no_tail = await invoke(gw)
    assert base64.b64decode(tail.headers["X-Amz-Log-Result"]) == b"log line\n"   # what the fake instance printed
    assert tail.boto()["LogResult"] == tail.headers["X-Amz-Log-Result"]
    assert "X-Amz-Log-Result" not in no_tail.headers


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_the_client_context_reaches_the_function(transport: str) -> None:
    backend = FakeBackend.of(transport, make_function("hello"), fn=serving(what_the_function_saw))
    context = base64.b64encode(json.dumps({"custom": {"user": "ada"}}).encode()).decode()
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        answer = await invoke(gw, headers={"X-Amz-Client-Context": context})
    assert answer.json()["client_context"] == context


@pytest.mark.parametrize("context", ["not base64!", base64.b64encode(b"[1]").decode(),
                                     base64.b64encode(b'{"a": "' + b"x" * 3000 + b'"}').decode()])
async def test_a_client_context_lambda_would_refuse_is_invalid_request_content(context: str) -> None:
    backend = hello()
    async with backend, running_gateway(backend) as gw:
        instance = await backend.add_instance("hello")
        answer = await invoke(gw, headers={"X-Amz-Client-Context": context})
    assert_lambda_error(answer, 400, "InvalidRequestContentException")
    assert backend.fake(instance).invocations == 0


async def test_the_trace_id_reaches_the_function() -> None:
    backend = hello()
    trace = "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1"
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        answer = await invoke(gw, headers={"X-Amzn-Trace-Id": trace})
    assert answer.json()["trace_id"] == trace


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_function_error_is_200_with_x_amz_function_error_and_lambdas_error_object(transport: str) -> None:
    backend = FakeBackend.of(transport, make_function("hello"), fn=raising(FunctionError("KeyError", "'id'")))
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        answer = await invoke(gw)
    assert answer.status == 200
    assert answer.headers["X-Amz-Function-Error"] == "Unhandled"
    assert answer.headers["X-Amz-Executed-Version"] == "$LATEST"
    error = answer.json()
    assert (error["errorType"], error["errorMessage"]) == ("KeyError", "'id'")
    assert answer.boto()["FunctionError"] == "Unhandled"


async def test_a_function_timeout_is_200_unhandled_sandbox_timedout() -> None:
    backend = FakeBackend(make_function("hello"), fn=raising(timed_out()))
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        answer = await invoke(gw)
    assert (answer.status, answer.headers["X-Amz-Function-Error"]) == (200, "Unhandled")
    assert answer.json()["errorType"] == "Sandbox.Timedout"


async def test_an_instance_that_never_answers_is_the_functions_timeout_for_the_caller() -> None:
    async def stuck(event: Any, headers: Headers) -> Any:
        await asyncio.sleep(30)

    backend = FakeBackend(make_function("hello", timeout=1), fn=serving(stuck))
    async with backend, running_gateway(backend, settings=GatewaySettings(upstream_timeout_margin=0.1)) as gw:
        await backend.add_instance("hello")
        answer = await invoke(gw)
    assert (answer.status, answer.headers["X-Amz-Function-Error"]) == (200, "Unhandled")
    error = answer.json()
    assert error["errorType"] == "Sandbox.Timedout"
    assert error["errorMessage"] == (f"RequestId: {answer.headers['x-amzn-RequestId']} Error: Task timed out "
                                     "after 1.00 seconds")


async def test_an_invocation_counts_in_the_functions_metrics() -> None:
    backend = hello()
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        await invoke(gw)
        await invoke(gw, headers={"X-Amz-Invocation-Type": "DryRun"})
        stats = gw.gateway.stats(FunctionRef("default", "hello"))
    assert (stats.invocations, stats.in_flight, stats.queued) == (1, 0, 0)


# -- function names ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "namespace"), [
    ("hello", "default"),
    ("hello.team", "team"),
    ("hello:$LATEST", "default"),
    ("arn:aws:lambda:us-east-1:123456789012:function:hello", "default"),
    ("arn:aws:lambda:eu-west-1:000000000000:function:hello:$LATEST", "default"),
    ("arn:aws:lambda:us-east-1:123456789012:function:hello.team", "team"),
    ("123456789012:function:hello", "default"),
    ("123456789012:function:hello.team:$LATEST", "team"),
])
async def test_every_name_form_lambda_takes_names_the_function(name: str, namespace: str) -> None:
    backend = FakeBackend(make_function("hello"), make_function("hello", namespace="team"),
                          fn=lambda instance_id: lambda event, _: {"instance": instance_id})
    async with backend, running_gateway(backend) as gw:
        default = await backend.add_instance("hello")
        team = await backend.add_instance("hello.team")
        answer = await invoke(gw, name)
    assert answer.status == 200
    assert answer.json()["instance"] == (default.id if namespace == "default" else team.id)


def test_a_name_is_parsed_into_kfns_name_and_the_qualifier() -> None:
    assert parse_function_name("arn:aws:lambda:us-east-1:123456789012:function:hello.team:$LATEST") == \
        FunctionName("hello.team", "$LATEST")
    assert parse_function_name("hello", qualifier="$LATEST") == FunctionName("hello", "$LATEST")
    assert parse_function_name("hello:prod") == FunctionName("hello", "prod")
    assert FunctionName("hello", None).arn(region="eu-west-1") == "arn:aws:lambda:eu-west-1:000000000000:function:hello"


@pytest.mark.parametrize("text", ["bad name", "hello/x", "arn:aws:s3:::bucket", "x" * 65, "hello:pr:od", ""])
def test_a_name_outside_lambdas_pattern_is_a_validation_error(text: str) -> None:
    with pytest.raises(LambdaError) as refused:
        parse_function_name(text)
    assert (refused.value.status, refused.value.code) == (400, "ValidationException")


async def test_a_name_outside_lambdas_pattern_is_a_400_validation_exception() -> None:
    backend = hello()
    async with backend, running_gateway(backend) as gw:
        answer = await invoke(gw, "no such name!")
    assert answer.status == 400
    assert answer.boto()["Error"]["Code"] == "ValidationException"


@pytest.mark.parametrize("name", ["nope", "hello.elsewhere", "arn:aws:lambda:us-east-1:123456789012:function:nope",
                                  "Capital_Name"])
async def test_an_unknown_function_is_404_resource_not_found_naming_its_arn(name: str) -> None:
    backend = hello()
    async with backend, running_gateway(backend) as gw:
        answer = await invoke(gw, name)
    body = assert_lambda_error(answer, 404, "ResourceNotFoundException")
    assert body["Message"].startswith("Function not found: arn:aws:lambda:")


@pytest.mark.parametrize(("name", "query"), [("hello", "?Qualifier=%24LATEST"), ("hello:$LATEST", ""),
                                             ("hello:$LATEST", "?Qualifier=%24LATEST")])
async def test_the_latest_qualifier_names_the_function(name: str, query: str) -> None:
    backend = hello()
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        answer = await invoke(gw, name, query=query)
    assert answer.status == 200


@pytest.mark.parametrize(("name", "query"), [("hello", "?Qualifier=prod"), ("hello:1", ""),
                                             ("arn:aws:lambda:us-east-1:123456789012:function:hello:live", "")])
async def test_any_other_qualifier_is_404_as_lambda_answers_a_missing_version(name: str, query: str) -> None:
    backend = hello()
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        answer = await invoke(gw, name, query=query)
    body = assert_lambda_error(answer, 404, "ResourceNotFoundException")
    assert body["Message"].endswith(":function:hello:" + (query.rpartition("=")[2] or name.rpartition(":")[2]))


async def test_a_qualifier_in_the_name_and_another_in_the_query_is_invalid_parameter_value() -> None:
    backend = hello()
    async with backend, running_gateway(backend) as gw:
        answer = await invoke(gw, "hello:$LATEST", query="?Qualifier=prod")
    assert_lambda_error(answer, 400, "InvalidParameterValueException")


# -- DryRun and Event -------------------------------------------------------------------------------

async def test_dry_run_is_204_and_runs_nothing() -> None:
    backend = hello()
    async with backend, running_gateway(backend) as gw:
        answer = await invoke(gw, headers={"X-Amz-Invocation-Type": "DryRun"})
    assert (answer.status, answer.body) == (204, b"")
    assert answer.boto()["StatusCode"] == 204
    uuid.UUID(answer.headers["x-amzn-RequestId"])
    assert backend.scale_calls == []   # not even a cold start


async def test_dry_run_of_an_unknown_function_is_404() -> None:
    backend = hello()
    async with backend, running_gateway(backend) as gw:
        answer = await invoke(gw, "nope", headers={"X-Amz-Invocation-Type": "DryRun"})
    assert_lambda_error(answer, 404, "ResourceNotFoundException")


async def test_an_event_is_stored_and_answered_202_with_its_invocation_id() -> None:
    backend = hello()
    store = FakeStore()
    async with backend, running_gateway(backend, events=store) as gw:
        answer = await invoke(gw, "hello.team", b'{"job": 7}', headers={"X-Amz-Invocation-Type": "Event"})
    assert (answer.status, answer.body) == (202, b"")
    assert answer.boto()["StatusCode"] == 202
    request_id = answer.headers["x-amzn-RequestId"]
    assert store.events == {request_id: (FunctionRef("team", "hello"), b'{"job": 7}')}
    assert backend.scale_calls == []   # delivered later, by the delivery engine


async def test_an_event_retried_by_the_sdk_is_stored_once() -> None:
    backend = hello()
    store = FakeStore()
    headers = {"X-Amz-Invocation-Type": "Event", "amz-sdk-invocation-id": str(uuid.uuid4())}
    async with backend, running_gateway(backend, events=store) as gw:
        first = await invoke(gw, headers=headers)
        retry = await invoke(gw, headers=headers)
    assert first.headers["x-amzn-RequestId"] == retry.headers["x-amzn-RequestId"]
    assert len(store.events) == 1


async def test_an_event_without_a_payload_is_an_empty_object() -> None:
    backend = hello()
    store = FakeStore()
    async with backend, running_gateway(backend, events=store) as gw:
        answer = await invoke(gw, payload=None, headers={"X-Amz-Invocation-Type": "Event"})
    assert store.events[answer.headers["x-amzn-RequestId"]][1] == b"{}"


async def test_an_event_that_is_not_json_is_invalid_request_content_and_not_stored() -> None:
    backend = hello()
    store = FakeStore()
    async with backend, running_gateway(backend, events=store) as gw:
        answer = await invoke(gw, payload=b"<xml/>", headers={"X-Amz-Invocation-Type": "Event"})
    assert_lambda_error(answer, 400, "InvalidRequestContentException")
    assert store.events == {}


@pytest.mark.parametrize("store", [None, FakeStore(failing=True)], ids=["no store", "store down"])
async def test_an_event_the_gateway_cannot_store_is_a_service_exception(store: FakeStore | None) -> None:
    backend = hello()
    async with backend, running_gateway(backend, events=store) as gw:
        answer = await invoke(gw, headers={"X-Amz-Invocation-Type": "Event"})
    body = assert_lambda_error(answer, 500, "ServiceException")
    assert ("event store" if store is None else "did not confirm") in body["Message"]


async def test_an_event_over_the_async_limit_is_request_too_large() -> None:
    backend = hello()
    store = FakeStore()
    settings = GatewaySettings(max_async_payload_bytes=100)
    async with backend, running_gateway(backend, events=store, settings=settings) as gw:
        answer = await invoke(gw, payload=json.dumps("x" * 200).encode(), headers={"X-Amz-Invocation-Type": "Event"})
        sync = await invoke(gw, payload=json.dumps("x" * 200).encode(), headers={"X-Amz-Invocation-Type": "DryRun"})
    body = assert_lambda_error(answer, 413, "RequestTooLargeException")
    assert "Event invocation type (limit 100 bytes)" in body["message"]
    assert store.events == {}
    assert sync.status == 204   # the synchronous limit is another


# -- what the gateway refuses -----------------------------------------------------------------------

async def test_a_payload_over_the_synchronous_limit_is_request_too_large() -> None:
    backend = hello()
    async with backend, running_gateway(backend, settings=GatewaySettings(max_body_bytes=1024)) as gw:
        instance = await backend.add_instance("hello")
        answer = await invoke(gw, payload=json.dumps("x" * 2000).encode())
    body = assert_lambda_error(answer, 413, "RequestTooLargeException")
    assert "limit 1024 bytes" in body["message"]
    assert backend.fake(instance).invocations == 0


async def test_a_payload_over_the_limit_is_refused_before_100_continue() -> None:
    backend = hello()
    async with backend, running_gateway(backend, settings=GatewaySettings(max_body_bytes=1024)) as gw:
        async with gw.session.post(gw.url(path_of("hello")), data=b"x" * 2000, expect100=True) as response:
            status, error_type = response.status, response.headers.get("x-amzn-ErrorType")
    assert (status, error_type) == (413, "RequestTooLargeException")


async def test_a_function_whose_instances_stay_full_is_too_many_requests_with_retry_after() -> None:
    backend = FakeBackend(make_function("hello"), fn=raising(Rejected()))
    async with backend, running_gateway(backend, settings=GatewaySettings(retry_after=2)) as gw:
        await backend.add_instance("hello")
        answer = await invoke(gw)
    body = assert_lambda_error(answer, 429, "TooManyRequestsException")
    assert answer.headers["Retry-After"] == "2"
    assert body["Reason"] == "ReservedFunctionConcurrentInvocationLimitExceeded"
    assert answer.boto()["Error"]["Code"] == "TooManyRequestsException"


async def test_a_full_queue_is_too_many_requests() -> None:
    gate = asyncio.Event()

    async def held(event: Any, headers: Headers) -> Any:
        await gate.wait()
        return "done"

    backend = FakeBackend(make_function("hello", concurrency=1), fn=serving(held))
    async with backend, running_gateway(backend, settings=GatewaySettings(queue_limit=0)) as gw:
        await backend.add_instance("hello")
        first = asyncio.create_task(invoke(gw))
        await asyncio.sleep(0.05)
        turned_away = await invoke(gw)
        gate.set()
        assert (await first).status == 200
    assert_lambda_error(turned_away, 429, "TooManyRequestsException")


async def test_a_function_that_cannot_start_is_resource_not_ready_saying_why() -> None:
    backend = hello(start_on_scale=False)
    backend.problems[FunctionRef("default", "hello")] = StartProblem(StartReason.REQUIREMENTS, "numpy==9.9: not found")
    async with backend, running_gateway(backend) as gw:
        answer = await invoke(gw)
    body = assert_lambda_error(answer, 502, "ResourceNotReadyException")
    assert "its requirements could not be installed" in body["message"] and "numpy" not in body["message"]


async def test_no_instance_within_the_queue_timeout_is_resource_not_ready() -> None:
    backend = hello(start_on_scale=False)
    async with backend, running_gateway(backend, settings=GatewaySettings(queue_timeout=0.1)) as gw:
        answer = await invoke(gw)
    assert_lambda_error(answer, 502, "ResourceNotReadyException")


async def test_an_instance_dying_mid_invocation_is_the_functions_runtime_exit_error() -> None:
    # 200 with X-Amz-Function-Error, as Lambda answers a runtime that exited: the function may have
    # run, so no 5xx that an SDK would retry on its own.
    backend = FakeBackend(make_function("hello"), fn=raising(Die()))
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        answer = await invoke(gw)
    assert answer.status == 200
    assert answer.headers["X-Amz-Function-Error"] == "Unhandled"
    assert json.loads(answer.body)["errorType"] == "Runtime.ExitError"


@pytest.mark.parametrize(("header", "value"), [("X-Amz-Invocation-Type", "Sometimes"),
                                               ("X-Amz-Invocation-Type", "event"),
                                               ("X-Amz-Log-Type", "Everything")])
async def test_an_unknown_invocation_or_log_type_is_invalid_parameter_value(header: str, value: str) -> None:
    backend = hello()
    async with backend, running_gateway(backend) as gw:
        answer = await invoke(gw, headers={header: value})
    assert_lambda_error(answer, 400, "InvalidParameterValueException")


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_another_method_is_405_in_json(method: str) -> None:
    backend = hello()
    async with backend, running_gateway(backend) as gw:
        answer = await invoke(gw, method=method)
    assert answer.status == 405
    assert answer.headers["Allow"] == "POST"
    assert answer.json()["message"]


# -- authentication ---------------------------------------------------------------------------------

async def test_without_keys_any_signature_or_none_is_accepted() -> None:
    backend = hello()
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        unsigned = await invoke(gw)
        payload = b'{"x": 1}'
        anyone = await invoke(gw, payload=payload,
                              headers=signed(gw, "hello", payload, key_id="whoever", secret="whatever"))
    assert (unsigned.status, anyone.status) == (200, 200)


@pytest.mark.parametrize("name", ["hello.team", "arn:aws:lambda:eu-west-1:000000000000:function:hello.team:$LATEST"])
@pytest.mark.parametrize(("key_id", "secret"), [("app", TEAM_KEY), ("ops", ADMIN_KEY)], ids=["namespace", "admin"])
async def test_with_keys_a_sigv4_signature_made_with_a_key_of_the_namespace_is_accepted(
        name: str, key_id: str, secret: str) -> None:
    backend = hello()
    payload = b'{"x": 1}'
    async with backend, running_gateway(backend, keys=KEYS) as gw:
        await backend.add_instance("hello.team")
        headers = signed(gw, name, payload, key_id=key_id, secret=secret,
                         headers={"X-Amz-Invocation-Type": "RequestResponse", "X-Amz-Log-Type": "Tail"})
        answer = await invoke(gw, name, payload, headers=headers)
    assert answer.status == 200
    assert answer.json()["event"] == {"x": 1}


async def test_with_keys_a_bearer_key_is_accepted_too() -> None:
    backend = hello()
    async with backend, running_gateway(backend, keys=KEYS) as gw:
        await backend.add_instance("hello.team")
        answer = await invoke(gw, "hello.team", headers={"Authorization": f"Bearer {TEAM_KEY}"})
    assert answer.status == 200


async def test_with_keys_an_unsigned_call_is_missing_authentication_token_and_runs_nothing() -> None:
    backend = hello()
    async with backend, running_gateway(backend, keys=KEYS) as gw:
        instance = await backend.add_instance("hello.team")
        answer = await invoke(gw, "hello.team")
    assert_lambda_error(answer, 403, "MissingAuthenticationTokenException")
    assert backend.fake(instance).invocations == 0


@pytest.mark.parametrize(("key_id", "secret", "code"), [
    ("app", "wrong-secret-0123456789", "InvalidSignatureException"),
    ("nobody", TEAM_KEY, "UnrecognizedClientException"),
])
async def test_with_keys_a_signature_that_does_not_check_out_is_403(key_id: str, secret: str, code: str) -> None:
    backend = hello()
    payload = b'{"x": 1}'
    async with backend, running_gateway(backend, keys=KEYS) as gw:
        instance = await backend.add_instance("hello.team")
        answer = await invoke(gw, "hello.team", payload,
                              headers=signed(gw, "hello.team", payload, key_id=key_id, secret=secret))
    assert_lambda_error(answer, 403, code)
    assert backend.fake(instance).invocations == 0


async def test_with_keys_a_signature_over_another_payload_is_403() -> None:
    backend = hello()
    async with backend, running_gateway(backend, keys=KEYS) as gw:
        await backend.add_instance("hello.team")
        headers = signed(gw, "hello.team", b'{"x": 1}', key_id="app", secret=TEAM_KEY)
        answer = await invoke(gw, "hello.team", b'{"x": 2}', headers=headers)
    assert_lambda_error(answer, 403, "InvalidSignatureException")


async def test_with_keys_a_key_of_another_namespace_is_access_denied() -> None:
    backend = hello()
    payload = b"{}"
    async with backend, running_gateway(backend, keys=KEYS) as gw:
        instance = await backend.add_instance("hello")
        answer = await invoke(gw, "hello", payload, headers=signed(gw, "hello", payload, key_id="app", secret=TEAM_KEY))
    body = assert_lambda_error(answer, 403, "AccessDeniedException")
    assert "lambda:InvokeFunction" in body["message"] and ":function:hello" in body["message"]
    assert backend.fake(instance).invocations == 0


async def test_with_keys_an_unknown_function_is_404_only_to_a_caller_with_a_key() -> None:
    backend = hello()
    payload = b"{}"
    async with backend, running_gateway(backend, keys=KEYS) as gw:
        anonymous = await invoke(gw, "nope.team", payload)
        known = await invoke(gw, "nope.team", payload,
                             headers=signed(gw, "nope.team", payload, key_id="app", secret=TEAM_KEY))
    assert_lambda_error(anonymous, 403, "MissingAuthenticationTokenException")
    assert_lambda_error(known, 404, "ResourceNotFoundException")


async def test_with_keys_an_old_signature_is_refused() -> None:
    backend = hello()
    payload = b"{}"
    async with backend, running_gateway(backend, keys=KEYS) as gw:
        request = AWSRequest(method="POST", url=gw.base + path_of("hello.team"), data=payload)
        auth = SigV4Auth(Credentials("app", TEAM_KEY), "lambda", "us-east-1")
        an_hour_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)
        from unittest import mock
        with mock.patch("botocore.auth.get_current_datetime", return_value=an_hour_ago.replace(tzinfo=None)):
            auth.add_auth(request)
        answer = await invoke(gw, "hello.team", payload, headers=dict(request.headers.items()))
    assert_lambda_error(answer, 403, "InvalidSignatureException")
