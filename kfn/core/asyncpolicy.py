"""Asynchronous invocations as Lambda runs them: the policy, pure (no I/O, no clock).

An asynchronous invocation (`InvocationType=Event`, `/async-function/NAME`, a schedule's tick, a
NATS message) is stored first and delivered later by `kfn.events.delivery`, at least once:

- a **function error** (the function ran and failed, timed out or died) counts as an attempt;
  after one, the event is tried again `maxRetryAttempts` times (0–2), waiting
  `RetryDelays.function_errors` before each (Lambda: 1 minute, then 2);
- a **system error** (the function did not run: throttled, no instance, the gateway's own
  failure) is not an attempt; the event goes back to the queue with a backoff from 1 s doubling
  to at most 5 minutes, for as long as the event is young enough;
- an event older than `maximumEventAgeSeconds` when its turn comes is given up
  (`EventAgeExceeded`), as is one whose attempts are spent (`RetriesExhausted`);
- the outcome is reported as Lambda's invocation record to `onSuccess` / `onFailure`
  (`destination_record`), and an event given up is kept in the dead-letter store.
"""
from __future__ import annotations

import base64
import datetime as dt
import json
import math
import uuid
from dataclasses import dataclass
from typing import Any, Final, Literal

from kfn.core.asyncspec import Destination
from kfn.core.functions import Function, FunctionRef
from kfn_runtime import awslambda

# Lambda's invocation-record conditions; DestinationFailed is kfn's own (a destination that
# could not be told before `DeliverySettings.destination_retry_for` ran out).
Condition = Literal["Success", "RetriesExhausted", "EventAgeExceeded", "DestinationFailed"]
SUCCESS: Final = "Success"
RETRIES_EXHAUSTED: Final = "RetriesExhausted"
EVENT_AGE_EXCEEDED: Final = "EventAgeExceeded"
DESTINATION_FAILED: Final = "DestinationFailed"
EXECUTED_VERSION: Final = awslambda.LATEST
# What an asynchronous invocation's payload may weigh (Lambda: 1 MB since 2025, 256 KB before).
MAX_ASYNC_PAYLOAD_BYTES: Final = 1024 * 1024
_DESTINATION_NAMESPACE: Final = uuid.UUID("1c0f5d3e-27b4-4f7e-bb3a-7a0d2d1e9c42")


class NotInvoked(Exception):
    """The function did not run (throttled, no instance, the platform failed before it): a system
    error, retried with backoff and not counted as an attempt. `retry_after` is a hint (seconds)."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InvocationFailed(Exception):
    """The function may have run and did not answer (a timeout, an instance that died): a
    function error with Lambda's `error_type` (e.g. Sandbox.Timedout), counted as an attempt."""

    def __init__(self, message: str, *, error_type: str = awslambda.ERROR_EXIT) -> None:
        super().__init__(message)
        self.error_type = error_type


@dataclass(frozen=True)
class Target:
    """A resolved destination: a function (`function` set) or an HTTP URL (`url` set)."""

    function: FunctionRef | None = None
    url: str | None = None

    @classmethod
    def of(cls, destination: Destination, namespace: str) -> Target:
        if destination.function is not None:
            return cls(function=FunctionRef.parse(destination.function, default_namespace=namespace))
        return cls(url=destination.url)

    def __str__(self) -> str:
        return str(self.function) if self.function is not None else str(self.url)


@dataclass(frozen=True)
class AsyncConfig:
    """One function's asynchronous settings, as the delivery engine uses them."""

    function: FunctionRef
    max_retry_attempts: int = 2
    maximum_event_age: float = 21600.0
    on_success: Target | None = None
    on_failure: Target | None = None
    timeout: float = 30.0          # spec.timeout: how long one attempt may run
    concurrency: int = 10          # at most this many of its events delivered at once
    function_arn: str = ""

    @classmethod
    def of(cls, function: Function, *, region: str, account: str = awslambda.DEFAULT_ACCOUNT) -> AsyncConfig:
        spec = function.spec
        settings = spec.async_
        ref = function.ref
        return cls(
            function=ref,
            max_retry_attempts=settings.maxRetryAttempts,
            maximum_event_age=float(settings.maximumEventAgeSeconds),
            on_success=Target.of(settings.onSuccess, ref.namespace) if settings.onSuccess else None,
            on_failure=Target.of(settings.onFailure, ref.namespace) if settings.onFailure else None,
            timeout=spec.timeout,
            concurrency=async_concurrency(function),
            function_arn=function_arn(ref, region=region, account=account),
        )


def async_concurrency(function: Function) -> int:
    """How many of a function's events may be delivered at once: what its instances can take at
    the most (maxReplicas × concurrency), so queued work never asks for more than scaling allows."""
    return function.spec.scale.maxReplicas * function.spec.concurrency


def function_arn(ref: FunctionRef, *, region: str, account: str = awslambda.DEFAULT_ACCOUNT) -> str:
    """The ARN a function's destination records carry, qualified with the version that ran
    (`awslambda.function_arn`: a namespace other than the default is part of the name)."""
    return awslambda.function_arn(ref.name, ref.namespace, region=region, account=account,
                                  qualifier=EXECUTED_VERSION)


@dataclass(frozen=True)
class RetryDelays:
    """How long an event waits before it is tried again. Lambda's values are the defaults; tests
    make them short."""

    function_errors: tuple[float, ...] = (60.0, 120.0)   # before the 2nd attempt, before the 3rd
    system_initial: float = 1.0                          # throttles and platform errors: 1 s …
    system_max: float = 300.0                            # … doubling to at most 5 minutes
    destination_initial: float = 1.0                     # a destination that could not be told
    destination_max: float = 300.0

    def after_function_error(self, attempts: int) -> float:
        """The wait after the `attempts`-th attempt failed (1 → before the 2nd attempt)."""
        if not self.function_errors:
            return 0.0
        return self.function_errors[min(attempts, len(self.function_errors)) - 1]

    def after_system_error(self, failures: int, *, retry_after: float | None = None) -> float:
        """The wait after `failures` system errors in a row (1 → the first)."""
        delay = _backoff(self.system_initial, self.system_max, failures)
        return max(delay, min(retry_after, self.system_max)) if retry_after else delay

    def after_destination_error(self, failures: int) -> float:
        return _backoff(self.destination_initial, self.destination_max, failures)


def _backoff(initial: float, maximum: float, failures: int) -> float:
    exponent = max(0, failures - 1)
    if exponent > 60:
        return maximum
    return min(maximum, initial * math.pow(2, exponent))


def should_retry(config: AsyncConfig, *, attempts: int) -> bool:
    """After a function error on attempt number `attempts`: is there another attempt?"""
    return attempts <= config.max_retry_attempts


def too_old(config: AsyncConfig, *, accepted_at: float, now: float) -> bool:
    return now - accepted_at > config.maximum_event_age


def destination_invocation_id(invocation_id: str, condition: str) -> str:
    """The id of the invocation that tells a destination function of an outcome: derived, so a
    retried hand-over is stored once."""
    return str(uuid.uuid5(_DESTINATION_NAMESPACE, f"{invocation_id}/{condition}"))


def destination_record(*, invocation_id: str, function_arn: str, condition: str, approximate_invoke_count: int,
                       request_payload: bytes, response_payload: bytes | None, function_error: str | None,
                       timestamp: float, status_code: int = 200) -> dict[str, Any]:
    """Lambda's invocation record, as destinations receive it."""
    response_context: dict[str, Any] = {"statusCode": status_code, "executedVersion": EXECUTED_VERSION}
    if function_error is not None:
        response_context["functionError"] = function_error
    record: dict[str, Any] = {
        "version": "1.0",
        "timestamp": iso_millis(timestamp),
        "requestContext": {
            "requestId": invocation_id,
            "functionArn": function_arn,
            "condition": condition,
            "approximateInvokeCount": approximate_invoke_count,
        },
        "requestPayload": json_value(request_payload),
        "responseContext": response_context,
    }
    if response_payload is not None:
        record["responsePayload"] = json_value(response_payload)
    return record


def json_value(payload: bytes) -> Any:
    """A payload as a JSON value when it is JSON, as a string when it is text, else base64."""
    try:
        return json.loads(payload)
    except ValueError:
        pass
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(payload).decode("ascii")


def iso_millis(timestamp: float) -> str:
    instant = dt.datetime.fromtimestamp(timestamp, tz=dt.UTC)
    return instant.strftime("%Y-%m-%dT%H:%M:%S.") + f"{instant.microsecond // 1000:03d}Z"
