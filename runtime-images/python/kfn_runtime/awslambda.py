"""AWS Lambda's vocabulary, as kfn speaks it: the one place its words are written.

kfn answers as Lambda does, so callers, SDKs and runtime interface clients written for Lambda work
unchanged. What they depend on are Lambda's words, kept here and nowhere else (as AWS's
`awslambdaric` keeps its error types in one module):

- the error types (`errorType`, and the instance's `X-Kfn-Error-Type`) the platform itself reports
  about a function: its init failed, its runtime exited or ran out of memory, it timed out, its
  result could not be read or was too large;
- the error types of the Runtime API's own refusals (a bad request, an unknown request id);
- `UNHANDLED`, the `X-Amz-Function-Error` (`functionError`) of a function that failed;
- Lambda's error object (`error_payload`), the body of every function error the platform writes;
- the region, account and version a function has when nothing says otherwise, and its ARN
  (`function_arn`).

It is standard-library only and does no I/O, because it ships inside every runtime image and the
core uses it too.
"""
from __future__ import annotations

import json

TYPE_CHECKING = False  # typing costs milliseconds on every cold start; Final is for type checkers only
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Final

# Lambda's error types for what the platform reports about a function. Its init failed: the first
# four (an exception raised by init code is reported under its own class name). Then: its runtime
# exited, or failed without saying why; the instance could not run it (stopped, or could not start
# an environment); it timed out (an invocation, or the init phase: Lambda reports both as
# Sandbox.Timedout); it went over its memory limit; its result was too large, or not an answer
# Lambda's contract allows; its event or result was not JSON.
ERROR_IMPORT_MODULE: Final = "Runtime.ImportModuleError"
ERROR_HANDLER_NOT_FOUND: Final = "Runtime.HandlerNotFound"
ERROR_USER_CODE_SYNTAX: Final = "Runtime.UserCodeSyntaxError"
ERROR_INVALID_ENTRYPOINT: Final = "Runtime.InvalidEntrypoint"
ERROR_EXIT: Final = "Runtime.ExitError"
ERROR_UNKNOWN: Final = "Runtime.Unknown"
ERROR_UNAVAILABLE: Final = "Runtime.Unavailable"
ERROR_TIMED_OUT: Final = "Sandbox.Timedout"
ERROR_OUT_OF_MEMORY: Final = "Runtime.OutOfMemory"
ERROR_RESPONSE_SIZE_TOO_LARGE: Final = "Function.ResponseSizeTooLarge"   # a result over Lambda's 6 MB
ERROR_INVALID_RESPONSE: Final = "Runtime.InvalidResponse"
ERROR_UNMARSHAL: Final = "Runtime.UnmarshalError"
ERROR_MARSHAL: Final = "Runtime.MarshalError"

# The Runtime API's refusals of a runtime's request, in the same error object.
ERROR_INVALID_REQUEST: Final = "InvalidRequest"
ERROR_INVALID_REQUEST_ID: Final = "InvalidRequestID"
ERROR_REQUEST_TOO_LARGE: Final = "RequestEntityTooLarge"
ERROR_NOT_FOUND: Final = "NotFound"

# X-Amz-Function-Error (a destination record's functionError) of an invocation whose function failed.
UNHANDLED: Final = "Unhandled"

# What a function has when nothing says otherwise.
DEFAULT_REGION: Final = "us-east-1"
DEFAULT_ACCOUNT: Final = "000000000000"
LATEST: Final = "$LATEST"       # the version kfn runs (X-Amz-Executed-Version)
_DEFAULT_NAMESPACE: Final = "default"   # kfn.core.naming.DEFAULT_NAMESPACE (the runtime cannot import it)


def error_payload(error_type: str, message: str, *, request_id: str | None = None,
                  stack_trace: Iterable[str] | None = None) -> bytes:
    """Lambda's error object as JSON bytes, its keys in the order Lambda writes them: an exception
    (with a `stack_trace`, even an empty one) as awslambdaric writes it, `{"errorMessage",
    "errorType", "requestId"?, "stackTrace"}`; an error the platform itself reports (a timeout, an
    exit, a Runtime API refusal) as Lambda's own, `{"errorType", "errorMessage", "requestId"?}`."""
    error: dict[str, object]
    if stack_trace is None:
        error = {"errorType": error_type, "errorMessage": message}
    else:
        error = {"errorMessage": message, "errorType": error_type}
    if request_id is not None:
        error["requestId"] = request_id
    if stack_trace is not None:
        error["stackTrace"] = list(stack_trace)
    return json.dumps(error).encode()


def function_name(name: str, namespace: str | None = None) -> str:
    """A function's name as Lambda's API shows it: Lambda names functions per account and region,
    kfn per namespace, so a namespace other than the default is part of the name (NAME.NAMESPACE)."""
    return name if not namespace or namespace == _DEFAULT_NAMESPACE else f"{name}.{namespace}"


def function_arn(name: str, namespace: str | None = None, *, region: str, account: str = DEFAULT_ACCOUNT,
                 qualifier: str | None = None) -> str:
    """The function's ARN, `arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]`, NAME as
    `function_name` gives it."""
    arn = f"arn:aws:lambda:{region}:{account}:function:{function_name(name, namespace)}"
    return f"{arn}:{qualifier}" if qualifier else arn
