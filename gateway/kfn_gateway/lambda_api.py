"""AWS Lambda's Invoke API at the gateway, so boto3, the AWS CLI and every AWS SDK invoke kfn's
functions unchanged (`endpoint_url` / `--endpoint-url` pointing at the gateway):

    POST /2015-03-31/functions/{FunctionName}/invocations[?Qualifier=$LATEST]

The body is the event, passed to the function as it is (JSON, or nothing for `{}`); no HTTP
mapping happens on this path. The headers Lambda reads:

    X-Amz-Invocation-Type   RequestResponse (default): 200, the function's result as the body;
                            Event: stored by `Dispatcher.accept_event`, 202; DryRun: 204
    X-Amz-Log-Type: Tail    X-Amz-Log-Result: base64 of the last 4 KB of the invocation's log
    X-Amz-Client-Context    base64 JSON, the handler's context.client_context

A function's failure is no HTTP error, as on Lambda: 200 with `X-Amz-Function-Error: Unhandled`
and Lambda's error object as the body (a timeout is `Sandbox.Timedout`). What the gateway itself
answers is Lambda's error shape, which botocore turns into the modeled exception: the code in
`x-amzn-ErrorType`, `{"Type": "User"|"Service", "message": ...}` as the body, and always
`x-amzn-RequestId`, the invocation's id (a UUID, also the handler's `context.aws_request_id`).

FunctionName is `NAME` (in the gateway's default namespace), kfn's `NAME.NAMESPACE`, an ARN
`arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]` or `ACCOUNT:function:NAME[:QUALIFIER]`
(any region and account: kfn has neither), where NAME may itself be `NAME.NAMESPACE`; these are
the names `kfn_runtime.awslambda.function_arn` gives functions. kfn runs one version of each
function, so `$LATEST` is the only qualifier.

When the gateway has keys (SECURITY.md), a request needs one for the function's namespace: an
AWS Signature V4 made with the key's id as the access key id and the key as the secret (what
boto3 and the CLI send), or a bearer/X-Api-Key key; refusals are AWS's 403s. Without keys,
signatures are not looked at, and a key-protected function (spec.http.auth key) is refused to
everyone, as on every other path (`needs_key`).

`LambdaApi` runs invocations through the gateway's dispatch core (`kfn_gateway.dispatch`), so
an invocation here shares queueing, scale-from-zero, retries onto other instances, draining and
metrics with /function/; what dispatch comes to is mapped to Lambda's answers in one table
(`NOT_RUN`, then `TimedOut` and `InstanceLost` as the function's errors).
"""
from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

import orjson
from aiohttp import web

from kfn.core.functions import Function, FunctionRef
from kfn.core.instances import Invocation, InvocationResult
from kfn.core.keys import KeySource
from kfn_gateway.auth import SIGV4, Scope, authorize, credential_headers
from kfn_gateway.connections import close_after, expect_continue, read_body
from kfn_gateway.dispatch import Dispatcher
from kfn_gateway.errors import client_gone, response_status
from kfn_gateway.outcomes import Accepted, InstanceLost, Ran, Reason, Refusal, Refused, TimedOut
from kfn_gateway.routing import Route
from kfn_runtime import awslambda

logger = logging.getLogger(__name__)

REQUEST_RESPONSE: Final = "RequestResponse"
EVENT: Final = "Event"
DRY_RUN: Final = "DryRun"
INVOCATION_TYPES: Final = (REQUEST_RESPONSE, EVENT, DRY_RUN)

HEADER_INVOCATION_TYPE: Final = "X-Amz-Invocation-Type"
HEADER_LOG_TYPE: Final = "X-Amz-Log-Type"
HEADER_LOG_RESULT: Final = "X-Amz-Log-Result"
HEADER_CLIENT_CONTEXT: Final = "X-Amz-Client-Context"
HEADER_FUNCTION_ERROR: Final = "X-Amz-Function-Error"
HEADER_EXECUTED_VERSION: Final = "X-Amz-Executed-Version"
HEADER_REQUEST_ID: Final = "x-amzn-RequestId"
HEADER_ERROR_TYPE: Final = "x-amzn-ErrorType"
HEADER_TRACE_ID: Final = "X-Amzn-Trace-Id"
# What AWS SDKs send with every attempt of one call (the same on retries).
HEADER_SDK_INVOCATION_ID: Final = "amz-sdk-invocation-id"

# Lambda's limit on a client context (base64 text).
MAX_CLIENT_CONTEXT_BYTES: Final = 3583
# Lambda's limit on a FunctionName (a full ARN), and on a bare name.
MAX_FUNCTION_NAME_LENGTH: Final = 256
MAX_BARE_NAME_LENGTH: Final = 64
# Invocation ids made from an SDK's invocation id: the same call (its retries) gets the same id.
_INVOCATION_IDS: Final = uuid.UUID("6f1d8e3a-2c4b-4e57-9a0d-5b7c3f9e1a24")

# Lambda's FunctionName pattern, with its parts captured: (account, name, qualifier).
_FUNCTION_NAME = re.compile(
    r"(?:arn:(?:aws[a-zA-Z-]*)?:lambda:)?(?:[a-z]{2}(?:(?:-gov)|(?:-iso[a-z]?))?-[a-z]+-\d:)?"
    r"(?:(\d{12}):)?(?:function:)?([a-zA-Z0-9_.-]+)(?::(\$LATEST(?:\.PUBLISHED)?|[a-zA-Z0-9_-]+))?")
_REGION_IN_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/\d{8}/([^/,\s]+)/")


class LambdaError(Exception):
    """An answer in Lambda's error shape: `code` (botocore raises the modeled exception of that
    name), the HTTP status Lambda's model gives it, and the body's fields."""

    def __init__(self, status: int, code: str, message: str, *, retry_after: int | None = None,
                 reason: str | None = None, capital_message: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.reason = reason
        # Lambda's model spells the field "Message" for some errors and "message" for others.
        self.capital_message = capital_message

    def response(self, request_id: str, *, close: bool = False, now: bool = False) -> web.Response:
        body: dict[str, str] = {"Type": "User" if self.status < 500 else "Service",
                                "Message" if self.capital_message else "message": self.message}
        if self.reason is not None:
            body["Reason"] = self.reason
        headers = {HEADER_REQUEST_ID: request_id, HEADER_ERROR_TYPE: self.code}
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        response = web.Response(status=self.status, headers=headers, content_type="application/json",
                                text=json.dumps(body))
        if now:
            close_after(response)   # the rest of the request is not worth reading
        elif close:
            response.force_close()  # the body was not read: the connection cannot carry another request
        return response


def not_found(arn: str) -> LambdaError:
    return LambdaError(404, "ResourceNotFoundException", f"Function not found: {arn}", capital_message=True)


def invalid_parameter(message: str) -> LambdaError:
    return LambdaError(400, "InvalidParameterValueException", message)


def service_error(message: str, *, retry_after: int | None = None) -> LambdaError:
    return LambdaError(500, "ServiceException", message, retry_after=retry_after, capital_message=True)


def too_large(size: int | None, limit: int, invocation_type: str) -> LambdaError:
    what = f"{size} byte payload is too large" if size is not None else "the payload is too large"
    return LambdaError(413, "RequestTooLargeException",
                       f"{what} for the {invocation_type} invocation type (limit {limit} bytes)")


# -- the function a FunctionName names --------------------------------------------------------------

@dataclass(frozen=True)
class FunctionName:
    """What a FunctionName (and ?Qualifier=) say: kfn's name of the function, and the qualifier."""

    name: str                  # NAME or NAME.NAMESPACE, as the gateway names functions
    qualifier: str | None

    def arn(self, *, region: str) -> str:
        """The function's ARN, as messages show it (with the qualifier asked for, if any)."""
        return awslambda.function_arn(self.name, region=region, qualifier=self.qualifier)


def parse_function_name(text: str, *, qualifier: str | None = None) -> FunctionName:
    """The function `text` (a decoded FunctionName) names, with `qualifier` from ?Qualifier=.

    Raises LambdaError: 400 ValidationException for a name Lambda's pattern refuses, 400
    InvalidParameterValueException when the name's qualifier and ?Qualifier= disagree.
    """
    match = _FUNCTION_NAME.fullmatch(text) if len(text) <= MAX_FUNCTION_NAME_LENGTH else None
    if match is None or (not text.startswith("arn:") and len(match.group(2)) > MAX_BARE_NAME_LENGTH
                         and match.group(1) is None):
        raise LambdaError(400, "ValidationException",
                          f"1 validation error detected: Value '{text[:300]}' at 'functionName' failed to satisfy "
                          "constraint: Member must satisfy Lambda's function name pattern (NAME, NAME.NAMESPACE, "
                          "an ARN or ACCOUNT:function:NAME, with an optional :QUALIFIER) and length")
    _, name, derived = match.groups()
    if qualifier is not None and derived is not None and qualifier != derived:
        raise invalid_parameter("The derived qualifier from the function name does not match the specified "
                                "qualifier.")
    return FunctionName(name, derived if derived is not None else qualifier)


def invocation_id(sdk_invocation_id: str | None, function: FunctionRef) -> str:
    """The invocation's request id: a UUID, made from the SDK's `amz-sdk-invocation-id` when the
    client sent one (an SDK's retries of one call then carry the same id, so an event store keeps
    one event), random otherwise."""
    if sdk_invocation_id:
        return str(uuid.uuid5(_INVOCATION_IDS, f"{function}/{sdk_invocation_id[:256]}"))
    return str(uuid.uuid4())


def check_client_context(value: str) -> str:
    """`value` if it is what Lambda takes as a client context (base64 of a JSON object, at most
    3,583 bytes); LambdaError 400 otherwise."""
    if len(value) > MAX_CLIENT_CONTEXT_BYTES:
        raise LambdaError(400, "InvalidRequestContentException",
                          f"Client context must be at most {MAX_CLIENT_CONTEXT_BYTES} bytes (got {len(value)}).")
    try:
        decoded = json.loads(base64.b64decode(value, validate=True))
    except (binascii.Error, ValueError):
        decoded = None
    if not isinstance(decoded, dict):
        raise LambdaError(400, "InvalidRequestContentException",
                          "Client context must be a valid Base64-encoded JSON object.")
    return value


def check_payload(body: bytes) -> bytes:
    """The event to pass on: `body` if it is JSON, `{}` for an empty body (what Lambda's functions
    get when the caller sends no payload); LambdaError 400 InvalidRequestContentException otherwise."""
    if not body.strip():
        return b"{}"
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise LambdaError(400, "InvalidRequestContentException",
                          f"Could not parse request body into json: {e}") from None
    return body


def region_of(headers: Mapping[str, str], default: str) -> str:
    """The region the client signed for (what its ARNs say), else `default` (the gateway's)."""
    found = _REGION_IN_CREDENTIAL.search(headers.get("Authorization", ""))
    return found.group(2) if found else default


# -- the route --------------------------------------------------------------------------------------

class LambdaApi:
    """The Invoke API's request handlers over one dispatch core."""

    def __init__(self, dispatcher: Dispatcher, keys: KeySource) -> None:
        self._dispatcher = dispatcher
        self._settings = dispatcher.settings
        self._keys = keys

    def _limit(self, invocation_type: str) -> int:
        settings = self._settings
        if invocation_type == EVENT:
            return min(settings.max_async_payload_bytes, settings.max_body_bytes)
        return settings.max_body_bytes

    async def expect_continue(self, request: web.Request) -> web.StreamResponse | None:
        """`Expect: 100-continue`: a payload over the limit of its invocation type is refused in
        Lambda's shape before it is sent; otherwise the client is told to go on."""
        invocation_type = request.headers.get(HEADER_INVOCATION_TYPE, REQUEST_RESPONSE)
        limit = self._limit(invocation_type)
        length = request.content_length
        if request.method == "POST" and length is not None and length > limit:
            return too_large(length, limit, invocation_type).response(str(uuid.uuid4()), now=True)
        return await expect_continue(request, self._settings.max_body_bytes)

    async def invoke(self, request: web.Request) -> web.StreamResponse:
        """One Invoke call; runs as long as the invocation (RequestResponse) or until the event is
        stored (Event). Never raises for a failure of an instance, the function or the store:
        those are Lambda's answers. Only the client going away ends it early."""
        if request.method != "POST":
            error = LambdaError(405, "UnknownOperationException",
                                f"{request.method} is not an operation of {request.path}: the Invoke API takes POST")
            response = error.response(str(uuid.uuid4()))
            response.headers["Allow"] = "POST"
            return response
        try:
            return await self._invoke(request)
        except LambdaError as e:
            # Refused before the function was known or its route made (nothing counted).
            return e.response(str(uuid.uuid4()), close=e.status in (400, 408, 413), now=e.status in (400, 408))

    async def _invoke(self, request: web.Request) -> web.StreamResponse:
        dispatcher = self._dispatcher
        headers = request.headers
        invocation_type = headers.get(HEADER_INVOCATION_TYPE, REQUEST_RESPONSE)
        if invocation_type not in INVOCATION_TYPES:
            raise invalid_parameter(f"InvocationType must be one of {', '.join(INVOCATION_TYPES)} "
                                    f"(got {invocation_type[:100]!r})")
        log_type = headers.get(HEADER_LOG_TYPE, "None")
        if log_type not in ("None", "Tail"):
            raise invalid_parameter(f"LogType must be None or Tail (got {log_type[:100]!r})")
        target = parse_function_name(request.match_info["name"], qualifier=request.query.get("Qualifier"))
        region = region_of(headers, self._settings.region)
        ref = dispatcher.ref(target.name)
        if ref is None:
            # A name Lambda takes (capitals, underscores) that no kfn function can have.
            raise not_found(target.arn(region=region))
        keys = self._keys.keys()
        if needs_key(len(keys), dispatcher.backend.function(ref)) and not (len(keys) and credential_headers(headers)):
            # Refused before its body is read: an unsigned caller may not make the gateway read 6 MB,
            # and without keys no credential can open a key-protected function.
            raise _refusal(401, headers, keys_known=False)
        limit = self._limit(invocation_type)
        payload = await _read_payload(request, limit, self._settings.body_timeout, invocation_type)
        # Looked up again: the function may have changed (become key-protected) while its body came.
        function = dispatcher.backend.function(ref)
        if needs_key(len(keys), function):
            outcome = authorize(request, Scope.of_namespace(ref.namespace), self._keys, body=payload)
            if isinstance(outcome, web.Response):
                key_id = _key_id(headers)
                raise _refusal(outcome.status, headers, keys_known=bool(key_id and keys.secrets_of(key_id)),
                               arn=target.arn(region=region), key_id=key_id)
        if function is None or target.qualifier not in (None, awslambda.LATEST):
            raise not_found(target.arn(region=region))
        request_id = invocation_id(headers.get(HEADER_SDK_INVOCATION_ID), ref)
        if invocation_type == DRY_RUN:
            return web.Response(status=204, headers={HEADER_REQUEST_ID: request_id})
        try:
            event = check_payload(payload)
        except LambdaError as e:
            return e.response(request_id)
        if invocation_type == EVENT:
            return await self._accept(function, event, request_id)
        client_context = headers.get(HEADER_CLIENT_CONTEXT)
        try:
            if client_context:
                check_client_context(client_context)
        except LambdaError as e:
            return e.response(request_id)
        invocation = Invocation(payload=event, request_id=request_id, client_context=client_context or None,
                                trace_id=headers.get(HEADER_TRACE_ID), want_log=log_type == "Tail")
        return await self._run(function, invocation)

    async def _accept(self, function: Function, event: bytes, request_id: str) -> web.Response:
        """InvocationType=Event: 202 once the event store holds the event."""
        try:
            outcome = await self._dispatcher.accept_event(function, event, invocation_id=request_id)
        except Exception:
            logger.exception("accepting an event for function %s failed", function.ref)
            return service_error(f"the gateway failed to store the event for function {function.ref}").response(
                request_id)
        if isinstance(outcome, Accepted):
            return web.Response(status=202, headers={HEADER_REQUEST_ID: outcome.invocation_id})
        logger.info("event for function %s not accepted: %s", function.ref, outcome.message)
        if outcome.reason is Reason.TOO_LARGE:
            error = too_large(len(event), self._settings.max_async_payload_bytes, EVENT)
        else:
            error = NOT_RUN[outcome.reason](outcome.message, outcome.retry_after)
        return error.response(request_id)

    async def _run(self, function: Function, invocation: Invocation) -> web.StreamResponse:
        """InvocationType=RequestResponse through the gateway's dispatch, held and counted in the
        function's metrics as /function/ requests are."""
        route = self._dispatcher.route(function.ref)
        return await self._dispatcher.held(
            route, self._answer(function, route, invocation), status=response_status, lost=client_gone,
            failed=lambda: service_error(f"the gateway failed to invoke function {function.ref}").response(
                invocation.request_id))

    async def _answer(self, function: Function, route: Route, invocation: Invocation) -> web.Response:
        request_id = invocation.request_id
        outcome = await self._dispatcher.dispatch(function, route, invocation)
        if isinstance(outcome, Ran):
            result = outcome.result
        elif isinstance(outcome, TimedOut):
            # The instance did not answer within the function's timeout and the margin:
            # for the caller, the function timed out.
            result = _timed_out(request_id, function.spec.timeout)
        elif isinstance(outcome, InstanceLost):
            # The instance failed after it was given the invocation: the function may have run, so
            # this is its failure, as Lambda answers a runtime that exited — not a 5xx an SDK would
            # retry on its own.
            result = _exited(request_id, outcome.message)
        else:
            return NOT_RUN[outcome.reason](outcome.message, outcome.retry_after).response(request_id)
        if result.function_error:
            logger.info("function %s failed (%s): %s", function.ref, result.error_type, result.payload[:500])
        return _result(result, request_id, want_log=invocation.want_log)


def _result(result: InvocationResult, request_id: str, *, want_log: bool) -> web.Response:
    headers = {HEADER_REQUEST_ID: request_id, HEADER_EXECUTED_VERSION: awslambda.LATEST,
               "Content-Type": "application/json"}
    if result.function_error:
        headers[HEADER_FUNCTION_ERROR] = result.function_error
    if want_log:
        headers[HEADER_LOG_RESULT] = result.log_result or ""
    return web.Response(status=200, body=result.payload, headers=headers)


def _timed_out(request_id: str, timeout: float) -> InvocationResult:
    message = f"RequestId: {request_id} Error: Task timed out after {timeout:.2f} seconds"
    return InvocationResult(payload=awslambda.error_payload(awslambda.ERROR_TIMED_OUT, message),
                            function_error=awslambda.UNHANDLED, error_type=awslambda.ERROR_TIMED_OUT)


def _exited(request_id: str, reason: str) -> InvocationResult:
    message = f"RequestId: {request_id} Error: Runtime exited without providing a reason ({reason})"
    return InvocationResult(payload=awslambda.error_payload(awslambda.ERROR_EXIT, message),
                            function_error=awslambda.UNHANDLED, error_type=awslambda.ERROR_EXIT)


def _too_many(message: str, retry_after: int | None) -> LambdaError:
    # A full queue or instances that stayed full: the function's concurrency is spent.
    return LambdaError(429, "TooManyRequestsException", f"Rate Exceeded. ({message})",
                       retry_after=retry_after, reason="ReservedFunctionConcurrentInvocationLimitExceeded")


def _not_ready(message: str, retry_after: int | None) -> LambdaError:
    # No instance within the queue timeout, one that cannot start, or a gateway shutting down:
    # the function is not ready to run (the closest of Lambda's modeled errors).
    return LambdaError(502, "ResourceNotReadyException", message, retry_after=retry_after)


def _gone(message: str, retry_after: int | None) -> LambdaError:
    return LambdaError(404, "ResourceNotFoundException", message, capital_message=True)


def _service(message: str, retry_after: int | None) -> LambdaError:
    # No instance could be reached (nothing ran), or the event store failed.
    return service_error(message, retry_after=retry_after)


def _payload_too_large(message: str, retry_after: int | None) -> LambdaError:
    return LambdaError(413, "RequestTooLargeException", message)


# Why nothing ran → Lambda's error for it.
NOT_RUN: Mapping[Reason, Callable[[str, int | None], LambdaError]] = {
    Reason.QUEUE_FULL: _too_many, Reason.THROTTLED: _too_many,
    Reason.NO_SLOT: _not_ready, Reason.CANNOT_START: _not_ready, Reason.SCALE_FAILED: _not_ready,
    Reason.SHUTTING_DOWN: _not_ready, Reason.TURNED_AWAY: _not_ready,
    Reason.FUNCTION_GONE: _gone,
    Reason.UNREACHABLE: _service, Reason.NO_STORE: _service, Reason.STORE_FAILED: _service,
    Reason.TOO_LARGE: _payload_too_large,
}


def needs_key(keys: int, function: Function | None) -> bool:
    """Whether an Invoke call of `function` must present a key, given how many keys the gateway
    has: always when it has some (as on AWS, every call is signed), and for a key-protected
    function (spec.http.auth key) even when it has none — then nobody may call it, through this
    path as through /function/."""
    return keys > 0 or (function is not None and function.spec.http.auth.type == "key")


def _key_id(headers: Mapping[str, str]) -> str | None:
    found = _REGION_IN_CREDENTIAL.search(headers.get("Authorization", ""))
    return found.group(1) if found else None


def _refusal(status: int, headers: Mapping[str, str], *, keys_known: bool, arn: str = "",
             key_id: str | None = None) -> LambdaError:
    """A request without a usable key (401) or whose key does not reach the function (403), as
    AWS answers them: always 403, the code saying which."""
    if status == 403:
        who = key_id or "the key presented"
        return LambdaError(403, "AccessDeniedException",
                           f"User: {who} is not authorized to perform: lambda:InvokeFunction on resource: {arn}")
    if not credential_headers(headers):
        return LambdaError(403, "MissingAuthenticationTokenException", "Missing Authentication Token")
    if headers.get("Authorization", "").startswith(SIGV4) and keys_known:
        return LambdaError(403, "InvalidSignatureException",
                           "The request signature we calculated does not match the signature you provided "
                           "(or it is more than 15 minutes old). Check your secret key (the kfn key) and the "
                           "signing method.")
    return LambdaError(403, "UnrecognizedClientException", "The security token included in the request is invalid.")


async def _read_payload(request: web.Request, limit: int, timeout: float, invocation_type: str) -> bytes:
    """The whole request body, read as the gateway reads /function/ bodies (`read_body`), its
    refusals in Lambda's shape: 413 past `limit`, 408 if it takes longer than `timeout`, 400 broken."""
    try:
        return await read_body(request, limit, timeout)
    except Refused as e:
        if e.refusal is Refusal.TOO_LARGE:
            length = request.content_length
            raise too_large(length if length is not None and length > limit else None, limit,
                            invocation_type) from None
        if e.refusal is Refusal.TOO_SLOW:
            raise LambdaError(408, "RequestTimeoutException", str(e)) from None
        raise LambdaError(400, "InvalidRequestContentException", str(e)) from None
