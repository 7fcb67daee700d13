"""The AWS Lambda Runtime API as the host serves it to environments, checked from the other side:
by a custom runtime (a `bootstrap` on the standard library, as one writes for Lambda's
provided.al2023), and by AWS's own runtime interface client, `awslambdaric`, unchanged."""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from kfn_runtime.execution import InitFailed
from tests.e2e.runtimes import PYTHON, command_host, gather_bounded, pid_alive, python_host, write_code
from tests.support.waiting import eventually

pytestmark = [pytest.mark.timeout(60)]

# A custom runtime, as Lambda's documentation describes one: poll GET next, handle, POST the
# response or error, forever. What it does with an invocation is told by the event ("action"),
# and what it saw of the Runtime API goes back in its response (or to its log).
BOOTSTRAP = '''
import http.client, json, os, sys, time

API = os.environ["AWS_LAMBDA_RUNTIME_API"]
BASE = "/2018-06-01/runtime"


def call(method, path, body=None, headers=None):
    connection = http.client.HTTPConnection(API, timeout=60)
    try:
        connection.request(method, BASE + path, body=body, headers=headers or {})
        response = connection.getresponse()
        data = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data
    finally:
        connection.close()


if os.environ.get("BOOTSTRAP_INIT") == "error":
    error = {"errorType": "Custom.InitBroken", "errorMessage": "cannot start: no config"}
    status, _, _ = call("POST", "/init/error", json.dumps(error).encode(),
                        {"Lambda-Runtime-Function-Error-Type": "Custom.InitBroken"})
    print(f"init/error answered {status}", flush=True)
    sys.exit(1)
if os.environ.get("BOOTSTRAP_INIT") == "exit":
    sys.exit(3)
if os.environ.get("BOOTSTRAP_INIT") == "hang-after-first":
    # The first environment starts; every later one hangs in its init (a network call that never returns).
    if os.path.exists("first-environment"):
        time.sleep(60)
    open("first-environment", "w").close()

while True:
    status, headers, body = call("GET", "/invocation/next")
    request_id = headers["lambda-runtime-aws-request-id"]
    event = json.loads(body)
    action = event.get("action", "echo")
    answer = {"action": action}
    if action == "echo":
        answer.update(event=event, status=status, headers=headers, received_ms=int(time.time() * 1000),
                      api=API)
    elif action == "sleep":
        time.sleep(event["seconds"])
        answer.update(api=API, pid=os.getpid())
    elif action == "error":
        error = {"errorType": "Custom.Failure", "errorMessage": "it broke", "stackTrace": ["frame 1"]}
        status, _, _ = call("POST", f"/invocation/{request_id}/error", json.dumps(error).encode(),
                            {"Lambda-Runtime-Function-Error-Type": "Custom.Failure"})
        print(f"error answered {status}", flush=True)
        continue
    elif action == "bare-error":
        status, _, _ = call("POST", f"/invocation/{request_id}/error", b"",
                            {"Lambda-Runtime-Function-Error-Type": "Custom.Bare"})
        continue
    elif action == "wrong-id":
        status, _, data = call("POST", f"/invocation/not-{request_id}/response", b'"forged"')
        answer.update(status=status, body=json.loads(data))
    elif action == "unknown-path":
        status, _, data = call("GET", "/no/such/path")
        answer.update(status=status, body=json.loads(data))
    elif action == "twice":
        first, _, _ = call("POST", f"/invocation/{request_id}/response", b'"first"')
        second, _, data = call("POST", f"/invocation/{request_id}/response", b'"second"')
        print(f"twice answered {first} {second}", flush=True)
        continue
    elif action == "exit":
        os._exit(5)
    elif action == "big-chunked":
        # An iterable body: http.client sends it chunked, its size said nowhere up front.
        status, _, data = call("POST", f"/invocation/{request_id}/response",
                               (b"y" * (1 << 20) for _ in range(event["mb"])))
        print(f"big-chunked answered {status} {data.decode()}", flush=True)
        continue
    elif action == "expect":
        # What curl does for a body over 1 MB: ask first, wait (a second) for "100 Continue".
        import socket
        host, port = API.rsplit(":", 1)
        body = b'"continued"'
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(f"POST {BASE}/invocation/{request_id}/response HTTP/1.1\\r\\nHost: runtime\\r\\n"
                      f"Content-Length: {len(body)}\\r\\nExpect: 100-continue\\r\\n\\r\\n".encode())
            s.settimeout(0.5)
            try:
                first = s.recv(1024)
            except TimeoutError:
                first = b""
            s.settimeout(5)
            s.sendall(body)
            if not first.startswith(b"HTTP/1.1 202"):
                s.recv(1024)
        print(f"expect answered {first[:25]!r}", flush=True)
        continue
    status, _, _ = call("POST", f"/invocation/{request_id}/response", json.dumps(answer).encode())
    print(f"response answered {status}", flush=True)
'''

COMMAND = [PYTHON, "-S", "bootstrap.py"]


@pytest.fixture
def code(tmp_path: Path) -> Path:
    return write_code(tmp_path / "code", {"bootstrap.py": BOOTSTRAP})


async def answer(h: Any, event: dict[str, Any], **options: Any) -> tuple[Any, dict[str, Any]]:
    invocation = await h.invoke(event, **options)
    assert invocation.function_error is None, invocation.result
    return invocation, json.loads(invocation.result)


# --- a custom runtime ---------------------------------------------------------------------------

async def test_next_returns_the_event_with_lambdas_headers(code: Path) -> None:
    async with command_host(code, COMMAND, function_name="orders", region="eu-west-1", timeout=4) as h:
        sent_ms = int(time.time() * 1000)
        invocation, result = await answer(h, {"action": "echo", "n": 1}, trace_id="Root=1-5e1b4151-5ac6c58f")
    headers = result["headers"]
    assert result["status"] == 200
    assert result["event"] == {"action": "echo", "n": 1}
    assert headers["lambda-runtime-aws-request-id"] == invocation.id
    assert headers["lambda-runtime-invoked-function-arn"] == "arn:aws:lambda:eu-west-1:000000000000:function:orders"
    assert headers["lambda-runtime-trace-id"] == "Root=1-5e1b4151-5ac6c58f"
    assert headers["content-type"] == "application/json"
    deadline = int(headers["lambda-runtime-deadline-ms"])   # epoch milliseconds, in the future
    assert result["received_ms"] < deadline <= sent_ms + 4000 + 50


async def test_next_carries_the_client_context(code: Path) -> None:
    client_context = json.dumps({"custom": {"tenant": "acme"}})
    async with command_host(code, COMMAND) as h:
        _, result = await answer(h, {"action": "echo"}, client_context=client_context)
    assert json.loads(result["headers"]["lambda-runtime-client-context"]) == {"custom": {"tenant": "acme"}}
    assert "lambda-runtime-trace-id" not in result["headers"]


async def test_response_is_accepted_with_202(code: Path) -> None:
    async with command_host(code, COMMAND) as h:
        await answer(h, {"action": "echo"})
        await eventually(lambda: h.log.has("response answered 202"), what="the runtime's log line")


async def test_posted_error_reaches_the_caller_with_its_type(code: Path) -> None:
    async with command_host(code, COMMAND) as h:
        invocation = await h.invoke({"action": "error"})
        await eventually(lambda: h.log.has("error answered 202"), what="the runtime's log line")
    assert (invocation.function_error, invocation.error_type) == ("Unhandled", "Custom.Failure")
    assert json.loads(invocation.result) == {"errorType": "Custom.Failure", "errorMessage": "it broke",
                                             "stackTrace": ["frame 1"]}


async def test_error_without_a_body_still_reaches_the_caller_as_an_error(code: Path) -> None:
    async with command_host(code, COMMAND) as h:
        invocation = await h.invoke({"action": "bare-error"})
    assert (invocation.function_error, invocation.error_type) == ("Unhandled", "Custom.Bare")
    assert json.loads(invocation.result)["errorType"] == "Custom.Bare"


async def test_post_for_a_wrong_request_id_is_a_400(code: Path) -> None:
    async with command_host(code, COMMAND) as h:
        _, result = await answer(h, {"action": "wrong-id"})
    assert result["status"] == 400
    assert result["body"]["errorType"] == "InvalidRequestID"


async def test_second_response_for_one_invocation_is_refused_and_changes_nothing(code: Path) -> None:
    async with command_host(code, COMMAND) as h:
        invocation = await h.invoke({"action": "twice"})
        await eventually(lambda: h.log.has("twice answered"), what="the runtime's log line")
    assert json.loads(invocation.result) == "first"
    assert h.log.has("twice answered 202 400")


async def test_post_expecting_100_continue_is_told_to_go_on(code: Path) -> None:
    async with command_host(code, COMMAND) as h:
        invocation = await h.invoke({"action": "expect"})
        await eventually(lambda: h.log.has("expect answered"), what="the runtime's log line")
    assert json.loads(invocation.result) == "continued"
    assert h.log.has("expect answered b'HTTP/1.1 100 Continue")


async def test_unknown_path_is_a_404(code: Path) -> None:
    async with command_host(code, COMMAND) as h:
        _, result = await answer(h, {"action": "unknown-path"})
    assert result["status"] == 404


async def test_init_error_before_next_fails_init_with_that_error(code: Path) -> None:
    async with command_host(code, COMMAND, user_env={"BOOTSTRAP_INIT": "error"}, start=False) as h:
        with pytest.raises(InitFailed) as info:
            await h.host.start(timeout=20)
        await eventually(lambda: h.log.has("init/error answered 202"), what="the runtime's log line")
    assert json.loads(info.value.payload) == {"errorType": "Custom.InitBroken",
                                              "errorMessage": "cannot start: no config"}
    assert "cannot start: no config" in str(info.value)


async def test_runtime_exiting_before_next_fails_init(code: Path) -> None:
    async with command_host(code, COMMAND, user_env={"BOOTSTRAP_INIT": "exit"}, start=False) as h:
        with pytest.raises(InitFailed, match="exited"):
            await h.host.start(timeout=20)


async def test_runtime_exiting_mid_invocation_is_an_exit_error(code: Path) -> None:
    async with command_host(code, COMMAND) as h:
        invocation = await h.invoke({"action": "exit"})
        assert invocation.error_type == "Runtime.ExitError"
        await answer(h, {"action": "echo"})   # a new environment takes the next one


SHELL_BOOTSTRAP = '''#!/bin/sh
# The bootstrap of AWS's custom runtime tutorial, as it is: sh and curl.
set -eu
while true; do
  HEADERS="$(mktemp)"
  EVENT_DATA=$(curl -sS -LD "$HEADERS" "http://${AWS_LAMBDA_RUNTIME_API}/2018-06-01/runtime/invocation/next")
  REQUEST_ID=$(grep -Fi Lambda-Runtime-Aws-Request-Id "$HEADERS" | tr -d '[:space:]' | cut -d: -f2)
  RESPONSE="{\\"echo\\": $EVENT_DATA, \\"handler\\": \\"$_HANDLER\\"}"
  curl -sS "http://${AWS_LAMBDA_RUNTIME_API}/2018-06-01/runtime/invocation/$REQUEST_ID/response" -d "$RESPONSE"
  rm -f "$HEADERS"
done
'''


async def test_lambdas_tutorial_shell_bootstrap_runs_unchanged(tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        pytest.skip("needs curl")
    code = write_code(tmp_path / "shell", {"bootstrap": SHELL_BOOTSTRAP})
    (code / "bootstrap").chmod(0o755)
    async with command_host(code, ["./bootstrap"], handler="function.handler",
                            user_env={"PATH": os.environ["PATH"]}) as h:
        first = await answer(h, {"n": 1})
        second = await answer(h, {"n": 2})
    assert [result for _, result in (first, second)] == [{"echo": {"n": 1}, "handler": "function.handler"},
                                                         {"echo": {"n": 2}, "handler": "function.handler"}]


async def test_environment_stuck_in_init_is_stopped_after_the_init_timeout(code: Path) -> None:
    async with command_host(code, COMMAND, user_env={"BOOTSTRAP_INIT": "hang-after-first"}, concurrency=2,
                            init_timeout=0.5) as h:
        first = asyncio.ensure_future(answer(h, {"action": "sleep", "seconds": 0.3}))
        await eventually(lambda: any(env.state == "busy" for env in h.host.environments), what="one busy")
        await answer(h, {"action": "echo"})   # starts a second environment; the first takes it once free
        await first
        [stuck] = [env for env in h.host.environments if env.state == "starting"]
        assert stuck.pid is not None
        await eventually(lambda: not pid_alive(stuck.pid or 0), timeout=3, what="the stuck environment stopped")
        assert len(h.host.environments) == 1


async def test_each_environment_has_a_runtime_api_of_its_own(code: Path) -> None:
    async with command_host(code, COMMAND, concurrency=2) as h:
        results = await gather_bounded(*(answer(h, {"action": "sleep", "seconds": 0.3}) for _ in range(2)))
    apis = {result["api"] for _, result in results}
    assert len(apis) == 2 and all(api.startswith("127.0.0.1:") for api in apis)
    assert len({result["pid"] for _, result in results}) == 2


async def test_timeout_kills_a_custom_runtimes_environment_too(code: Path) -> None:
    async with command_host(code, COMMAND, timeout=0.5) as h:
        invocation = await h.invoke({"action": "sleep", "seconds": 30})
        assert invocation.error_type == "Sandbox.Timedout"
        _, result = await answer(h, {"action": "echo"})
    assert result["status"] == 200


async def test_a_chunked_result_over_lambdas_limit_is_response_size_too_large_and_the_runtime_goes_on(
        code: Path) -> None:
    async with command_host(code, COMMAND) as h:
        _, before = await answer(h, {"action": "sleep", "seconds": 0})
        invocation = await h.invoke({"action": "big-chunked", "mb": 20})
        _, after = await answer(h, {"action": "sleep", "seconds": 0})
        await eventually(lambda: h.log.has("big-chunked answered 413"), what="the runtime's 413")
    assert (invocation.function_error, invocation.error_type) == ("Unhandled", "Function.ResponseSizeTooLarge")
    assert "(20971520 bytes)" in json.loads(invocation.result)["errorMessage"]
    assert after["pid"] == before["pid"]


# --- AWS's runtime interface client, awslambdaric ------------------------------------------------

AWS_HANDLER = '''
import json, os, threading, time

def lambda_handler(event, context):
    if "fail" in event:
        raise ValueError("bad input: " + str(event["fail"]))
    time.sleep(event.get("sleep", 0))
    return {
        "statusCode": 200,
        "body": json.dumps({"event": event, "function": context.function_name,
                            "memory": context.memory_limit_in_mb, "requestId": context.aws_request_id,
                            "arn": context.invoked_function_arn,
                            "remaining": context.get_remaining_time_in_millis(),
                            "mainThread": threading.current_thread() is threading.main_thread(),
                            "pid": os.getpid()}),
    }

def unserialisable(event, context):
    return {"when": object()}

CALLS = []

def big(event, context):
    CALLS.append(1)
    return "x" * event["size"] if "size" in event else {"calls": len(CALLS), "pid": os.getpid()}
'''


@pytest.fixture
def aws_code(tmp_path: Path) -> Path:
    pytest.importorskip("awslambdaric")
    return write_code(tmp_path / "aws", {"lambda_function.py": AWS_HANDLER})


def awslambdaric(handler: str = "lambda_function.lambda_handler") -> list[str]:
    return [PYTHON, "-m", "awslambdaric", handler]


async def test_awslambdaric_runs_a_handler_unchanged(aws_code: Path) -> None:
    async with command_host(aws_code, awslambdaric(), handler="lambda_function.lambda_handler",
                            function_name="orders", memory_mb=256, timeout=3) as h:
        invocation, result = await answer(h, {"path": "/orders", "n": [1, 2]})
        _, again = await answer(h, {"n": 3})
    body = json.loads(result["body"])
    assert result["statusCode"] == 200
    assert body["event"] == {"path": "/orders", "n": [1, 2]}
    assert (body["function"], body["memory"], body["requestId"]) == ("orders", "256", invocation.id)
    assert body["arn"] == "arn:aws:lambda:us-east-1:000000000000:function:orders"
    assert 0 < body["remaining"] <= 3000
    assert body["mainThread"] is True
    assert json.loads(again["body"])["pid"] == body["pid"]   # one environment, polling again


async def test_awslambdaric_reports_an_exception_as_lambdas_error_object(aws_code: Path) -> None:
    async with command_host(aws_code, awslambdaric(), handler="lambda_function.lambda_handler") as h:
        invocation = await h.invoke({"fail": 42})
        _, after = await answer(h, {})
    assert (invocation.function_error, invocation.error_type) == ("Unhandled", "ValueError")
    error = json.loads(invocation.result)
    assert (error["errorType"], error["errorMessage"], error["requestId"]) == (
        "ValueError", "bad input: 42", invocation.id)
    assert any("lambda_function.py" in frame and "raise ValueError" in frame for frame in error["stackTrace"])
    assert after["statusCode"] == 200


async def test_awslambdaric_marshal_error_has_lambdas_type(aws_code: Path) -> None:
    async with command_host(aws_code, awslambdaric("lambda_function.unserialisable"),
                            handler="lambda_function.unserialisable") as h:
        invocation = await h.invoke({})
    assert invocation.error_type == "Runtime.MarshalError"


async def test_awslambdaric_result_too_large_for_lambda_is_response_size_too_large(aws_code: Path) -> None:
    # The Runtime API reads the 20 MB and answers 413 with Lambda's body; awslambdaric then raises
    # and exits, as it does on Lambda, and the next invocation gets a new environment.
    async with command_host(aws_code, awslambdaric("lambda_function.big"), handler="lambda_function.big") as h:
        await answer(h, {})
        invocation = await h.invoke({"size": 20 * 1024 * 1024})
        _, after = await answer(h, {})
        await eventually(lambda: h.log.has("Http response code: 413"), what="awslambdaric's 413 line")
    assert (invocation.function_error, invocation.error_type) == ("Unhandled", "Function.ResponseSizeTooLarge")
    assert after["calls"] == 1
    assert h.log.has('"errorType": "RequestEntityTooLarge", "errorMessage": "Exceeded maximum allowed payload size '
                     '(6291556 bytes)."')


async def test_awslambdaric_init_error_reaches_the_host(aws_code: Path) -> None:
    async with command_host(aws_code, awslambdaric("absent_module.handler"), handler="absent_module.handler",
                            start=False) as h:
        with pytest.raises(InitFailed) as info:
            await h.host.start(timeout=20)
    error = json.loads(info.value.payload)
    assert error["errorType"] == "Runtime.ImportModuleError"
    assert "Unable to import module 'absent_module'" in error["errorMessage"]


async def test_awslambdaric_environments_run_side_by_side(aws_code: Path) -> None:
    async with command_host(aws_code, awslambdaric(), handler="lambda_function.lambda_handler",
                            concurrency=2) as h:
        results = await gather_bounded(*(answer(h, {"n": n, "sleep": 0.5}) for n in range(2)))
    bodies = [json.loads(result["body"]) for _, result in results]
    assert [body["event"]["n"] for body in bodies] == [0, 1]
    assert bodies[0]["pid"] != bodies[1]["pid"]


@pytest.mark.parametrize("event", [{"n": 1}, {"fail": "x"}], ids=["result", "exception"])
async def test_kfns_runtime_answers_as_awslambdaric_does(aws_code: Path, event: dict[str, Any]) -> None:
    """The same handler under both runtimes: the same result, or the same error type and message."""
    handler = "lambda_function.lambda_handler"
    async with command_host(aws_code, awslambdaric(handler), handler=handler) as aws:
        theirs = await aws.invoke(event)
    async with python_host(aws_code, handler) as kfn:
        ours = await kfn.invoke(event)
    assert (ours.function_error, ours.error_type) == (theirs.function_error, theirs.error_type)
    mine, reference = json.loads(ours.result), json.loads(theirs.result)
    if ours.function_error:
        assert set(mine) == set(reference)
        assert (mine["errorType"], mine["errorMessage"]) == (reference["errorType"], reference["errorMessage"])
    else:
        varying = ("requestId", "remaining", "pid")
        assert {k: v for k, v in json.loads(mine["body"]).items() if k not in varying} == {
            k: v for k, v in json.loads(reference["body"]).items() if k not in varying}
