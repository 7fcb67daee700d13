"""Lambda's vocabulary (kfn_runtime.awslambda): the words and shapes callers written for Lambda rely on."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from kfn_runtime import awslambda

# AWS's documented form of a function's ARN (Lambda API reference, FunctionArn):
# arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]
LAMBDA_ARN = re.compile(r"^arn:aws:lambda:[a-z]{2}(-gov)?-[a-z]+-\d{1}:\d{12}:function:[a-zA-Z0-9-_.]+"
                        r"(:(\$LATEST|[a-zA-Z0-9-_]+))?$")


def test_the_error_object_is_type_then_message_as_lambda_writes_its_own() -> None:
    assert awslambda.error_payload(awslambda.ERROR_TIMED_OUT, "Task timed out") == (
        b'{"errorType": "Sandbox.Timedout", "errorMessage": "Task timed out"}')


def test_error_payload_is_lambdas_error_object() -> None:
    assert json.loads(awslambda.error_payload("Sandbox.Timedout", "Task timed out")) == {
        "errorMessage": "Task timed out", "errorType": "Sandbox.Timedout"}


def test_an_exceptions_object_carries_its_request_id_and_stack_trace_in_awslambdarics_order() -> None:
    payload = awslambda.error_payload(awslambda.ERROR_IMPORT_MODULE, "Unable to import module 'main'",
                                      request_id="req-1", stack_trace=("  File \"main.py\", line 1\n",))
    assert list(json.loads(payload).items()) == [
        ("errorMessage", "Unable to import module 'main'"), ("errorType", "Runtime.ImportModuleError"),
        ("requestId", "req-1"), ("stackTrace", ["  File \"main.py\", line 1\n"])]


def test_an_empty_stack_trace_is_written_and_a_missing_one_is_not() -> None:
    assert json.loads(awslambda.error_payload("E", "m", stack_trace=[]))["stackTrace"] == []
    assert "stackTrace" not in json.loads(awslambda.error_payload("E", "m"))
    assert "requestId" not in json.loads(awslambda.error_payload("E", "m"))


def test_what_the_error_object_cannot_say_in_ascii_is_escaped() -> None:
    payload = awslambda.error_payload("E", "é\n\"quoted\"")
    assert payload.isascii()
    assert json.loads(payload)["errorMessage"] == "é\n\"quoted\""


def test_lambdas_error_types_are_spelled_as_lambda_spells_them() -> None:
    assert (awslambda.ERROR_TIMED_OUT, awslambda.ERROR_EXIT, awslambda.ERROR_UNKNOWN, awslambda.ERROR_UNAVAILABLE,
            awslambda.ERROR_OUT_OF_MEMORY, awslambda.ERROR_INVALID_RESPONSE) == (
        "Sandbox.Timedout", "Runtime.ExitError", "Runtime.Unknown", "Runtime.Unavailable", "Runtime.OutOfMemory",
        "Runtime.InvalidResponse")
    assert (awslambda.ERROR_IMPORT_MODULE, awslambda.ERROR_HANDLER_NOT_FOUND, awslambda.ERROR_USER_CODE_SYNTAX,
            awslambda.ERROR_INVALID_ENTRYPOINT) == (
        "Runtime.ImportModuleError", "Runtime.HandlerNotFound", "Runtime.UserCodeSyntaxError",
        "Runtime.InvalidEntrypoint")
    assert (awslambda.ERROR_RESPONSE_SIZE_TOO_LARGE, awslambda.ERROR_UNMARSHAL, awslambda.ERROR_MARSHAL) == (
        "Function.ResponseSizeTooLarge", "Runtime.UnmarshalError", "Runtime.MarshalError")
    assert awslambda.UNHANDLED == "Unhandled"


def test_a_functions_arn_is_lambdas_form() -> None:
    arn = awslambda.function_arn("hello", region="eu-west-1", account="123456789012")
    assert arn == "arn:aws:lambda:eu-west-1:123456789012:function:hello"
    assert LAMBDA_ARN.match(arn)


def test_the_default_account_and_region_make_a_valid_arn() -> None:
    arn = awslambda.function_arn("hello", region=awslambda.DEFAULT_REGION)
    assert arn == "arn:aws:lambda:us-east-1:000000000000:function:hello"
    assert LAMBDA_ARN.match(arn)


def test_a_namespace_other_than_the_default_is_part_of_the_name() -> None:
    assert awslambda.function_arn("f", "team-a", region="us-east-1").endswith(":function:f.team-a")
    assert awslambda.function_arn("f", "default", region="us-east-1").endswith(":function:f")
    assert awslambda.function_arn("f", "", region="us-east-1").endswith(":function:f")
    assert awslambda.function_name("f", "team-a") == "f.team-a"


def test_a_qualifier_follows_the_name() -> None:
    arn = awslambda.function_arn("f", "team-a", region="us-east-1", qualifier=awslambda.LATEST)
    assert arn == "arn:aws:lambda:us-east-1:000000000000:function:f.team-a:$LATEST"
    assert LAMBDA_ARN.match(arn)


def test_importing_it_costs_no_typing_module() -> None:
    # It is imported on every cold start of every instance.
    code = "import sys, kfn_runtime.awslambda; print('typing' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(Path(awslambda.__file__).parents[1])}
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, check=True, env=env,
                         timeout=30)
    assert out.stdout.strip() == "False"
