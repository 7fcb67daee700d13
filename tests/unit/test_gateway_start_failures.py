"""A function that cannot start, as its callers see it: the function's own init failure is its
error, as on Lambda (the Invoke API's 200 with X-Amz-Function-Error and Lambda's error object; API
Gateway's 500 on HTTP); the platform's failure is a 503 (Invoke: ResourceNotReadyException) with
the reason's class and a request id. Neither ever carries what the function printed or pip said:
that detail is the owner's (/system/*, the logs)."""
from __future__ import annotations

import asyncio
import json

import pytest

from kfn.core.instances import InitError, StartProblem, StartReason
from kfn_gateway.asyncinvoke import gateway_invoker
from kfn_gateway.settings import GatewaySettings
from tests.support.backend import FakeBackend, ref
from tests.support.functions import make_function
from tests.support.gateway import running_gateway
from tests.support.invoke_api import assert_lambda_error, invoke
from tests.support.waiting import eventually

SECRET = "hunter2-the-database-password"
IMPORT_ERROR = StartProblem(
    StartReason.INIT, f"instance hello-1 failed to start; last output:\n  DB_PASSWORD={SECRET}\n  Traceback ...",
    InitError("Runtime.ImportModuleError", "Unable to import module 'main': No module named 'numpy'",
              ("  File \"/var/task/main.py\", line 1, in <module>\n",)))
PIP_FAILED = StartProblem(StartReason.REQUIREMENTS,
                          f"spec.requirements: pip install failed (exit code 1):\n  index token {SECRET} refused")


def nothing_secret(status: int, body: object, headers: object) -> None:
    assert SECRET not in json.dumps(body) + repr(headers), (status, body, headers)


def backend(problem: StartProblem) -> FakeBackend:
    fake = FakeBackend(make_function("hello"), start_on_scale=False)
    fake.problems[ref("hello")] = problem
    return fake


async def test_an_init_error_is_api_gateways_500_with_lambdas_function_error_headers_and_no_output() -> None:
    fake = backend(IMPORT_ERROR)
    async with fake, running_gateway(fake) as gw:
        status, body, headers = await gw.json("GET", "/function/hello")
    assert (status, body) == (500, {"message": "Internal Server Error"})
    assert headers["X-Amz-Function-Error"] == "Unhandled"
    assert headers["X-Kfn-Error-Type"] == "Runtime.ImportModuleError"
    nothing_secret(status, body, headers)


async def test_an_init_error_is_the_invoke_apis_function_error_with_lambdas_error_object() -> None:
    fake = backend(IMPORT_ERROR)
    async with fake, running_gateway(fake) as gw:
        answer = await invoke(gw)
    assert answer.status == 200
    assert answer.headers["X-Amz-Function-Error"] == "Unhandled"
    parsed = answer.boto()   # boto3 raises nothing: the caller reads FunctionError, as on Lambda
    assert parsed["FunctionError"] == "Unhandled" and parsed["StatusCode"] == 200
    error = answer.json()
    assert error["errorType"] == "Runtime.ImportModuleError"
    assert error["errorMessage"] == "Unable to import module 'main': No module named 'numpy'"
    assert error["requestId"] == answer.headers["x-amzn-RequestId"]
    nothing_secret(answer.status, error, answer.headers)


async def test_requests_waiting_when_the_init_fails_get_the_function_error() -> None:
    fake = FakeBackend(make_function("hello"), start_on_scale=False)
    async with fake, running_gateway(fake, settings=GatewaySettings(queue_timeout=60)) as gw:
        waiting = [asyncio.ensure_future(gw.json("GET", "/function/hello")),
                   asyncio.ensure_future(invoke(gw))]
        await eventually(lambda: gw.gateway.stats(ref("hello")).queued == 2)
        fake.problems[ref("hello")] = IMPORT_ERROR
        fake._notify(ref("hello"))   # the backend's listener call after the failed start
        (status, body, headers), answer = await asyncio.gather(*waiting)
    assert (status, body["message"], headers["X-Kfn-Error-Type"]) == (500, "Internal Server Error",
                                                                       "Runtime.ImportModuleError")
    assert (answer.status, answer.json()["errorType"]) == (200, "Runtime.ImportModuleError")
    nothing_secret(status, body, headers)
    nothing_secret(answer.status, answer.json(), answer.headers)


async def test_an_init_timeout_is_lambdas_sandbox_timedout() -> None:
    fake = backend(StartProblem(StartReason.INIT, "instance hello-1 failed to start: the init timeout",
                                InitError("Sandbox.Timedout", "Init phase timed out after 10.00 seconds")))
    async with fake, running_gateway(fake) as gw:
        status, body, headers = await gw.json("GET", "/function/hello")
        answer = await invoke(gw)
    assert (status, body) == (504, {"message": "Endpoint request timed out"})
    assert headers["X-Kfn-Error-Type"] == "Sandbox.Timedout"
    assert (answer.status, answer.json()["errorType"]) == (200, "Sandbox.Timedout")


async def test_a_platform_failure_is_503_with_the_reason_class_and_a_request_id_only() -> None:
    fake = backend(PIP_FAILED)
    async with fake, running_gateway(fake) as gw:
        status, body, headers = await gw.json("GET", "/function/hello")
    assert status == 503 and headers["Retry-After"].isdigit()
    assert body == {"error": "function 'hello.default' cannot start an instance: its requirements could not be "
                             "installed", "function": "hello", "requestId": headers["X-Kfn-Request-Id"]}
    nothing_secret(status, body, headers)


async def test_a_platform_failure_is_the_invoke_apis_resource_not_ready_without_the_detail() -> None:
    fake = backend(PIP_FAILED)
    async with fake, running_gateway(fake) as gw:
        answer = await invoke(gw)
    body = assert_lambda_error(answer, 502, "ResourceNotReadyException")
    assert "its requirements could not be installed" in body["message"]
    nothing_secret(answer.status, body, answer.headers)


async def test_the_owner_sees_the_whole_problem_in_system_functions() -> None:
    fake = backend(PIP_FAILED)
    async with fake, running_gateway(fake) as gw:
        status, body, _ = await gw.json("GET", "/system/functions/hello")
    assert status == 200 and SECRET in body["error"] and "its requirements could not be installed" in body["error"]


@pytest.mark.parametrize(("problem", "function_error"), [(IMPORT_ERROR, True), (PIP_FAILED, False)])
async def test_an_async_event_of_a_function_that_cannot_start(problem: StartProblem, function_error: bool) -> None:
    # An init error is an attempt that failed (Lambda retries it twice, then gives up); a platform
    # failure ran nothing (the event waits for the function to start).
    from kfn.core.asyncpolicy import NotInvoked

    fake = backend(problem)
    async with fake, running_gateway(fake) as gw:
        deliver = gateway_invoker(gw.gateway.dispatcher)
        if function_error:
            result = await deliver(ref("hello"), b"{}", "event-1")
            assert (result.function_error, result.error_type) == ("Unhandled", "Runtime.ImportModuleError")
            assert json.loads(result.payload)["requestId"] == "event-1"
        else:
            with pytest.raises(NotInvoked):
                await deliver(ref("hello"), b"{}", "event-1")


def test_an_init_error_payload_is_lambdas_error_object_for_each_invocation() -> None:
    error = IMPORT_ERROR.init_error
    assert error is not None
    assert json.loads(error.payload("r-1")) == {
        "errorMessage": "Unable to import module 'main': No module named 'numpy'",
        "errorType": "Runtime.ImportModuleError", "requestId": "r-1",
        "stackTrace": ["  File \"/var/task/main.py\", line 1, in <module>\n"]}
    assert SECRET not in error.payload("r-1").decode()


@pytest.mark.parametrize("payload", [b"", b"not json", b"[1]", b'{"errorType": 7}'])
def test_an_init_error_from_a_payload_that_says_little_takes_the_defaults(payload: bytes) -> None:
    error = InitError.of_payload(payload, default_type="Runtime.Unknown", default_message="init failed")
    assert error.error_type == "Runtime.Unknown"

