"""What running or storing one invocation came to: a closed set of outcomes, by type.

The dispatch core (`kfn_gateway.dispatch`) returns one of these and raises for nothing it can
name; each front-end maps them to its protocol in one table (the HTTP API to statuses, the Invoke
API to Lambda's errors, the delivery engine to an attempt or none):

    Ran(result)              an instance ran it: the function's result, or its error (an init
                             error included, as Lambda answers an environment that could not init)
    NotRun(reason, ...)      certainly nothing ran: worth trying again later (`reason.retry`)
    TimedOut(message)        the instance did not answer within the function's timeout and the
                             margin: it may have run
    InstanceLost(message)    the instance failed after it was given the invocation: it may have run
    Accepted(invocation_id)  an asynchronous invocation is durably stored

`Refused` is why a request was not taken at all (its body too large, too slow, broken): what
reading a request's body may come to before anything is dispatched.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

from kfn.core.instances import InvocationResult


class Reason(enum.Enum):
    """Why an invocation did not run (each front-end's table gives it a status or an error)."""

    QUEUE_FULL = "queue_full"          # too many requests waiting for a slot of the function
    THROTTLED = "throttled"            # instances stayed full (their concurrency) on every try
    NO_SLOT = "no_slot"                # no slot within the queue timeout (none ready, or all busy)
    CANNOT_START = "cannot_start"      # no instance, and the platform knows why none starts
    SCALE_FAILED = "scale_failed"      # the scale from zero failed
    FUNCTION_GONE = "function_gone"    # deleted while the request waited
    SHUTTING_DOWN = "shutting_down"    # this gateway is closing
    TURNED_AWAY = "turned_away"        # instances draining or still loading on every try
    UNREACHABLE = "unreachable"        # no instance could be reached (nothing was sent)
    NO_STORE = "no_store"              # this gateway takes no asynchronous invocations
    STORE_FAILED = "store_failed"      # the event store did not confirm (retry with the same id)
    TOO_LARGE = "too_large"            # an event over the asynchronous payload limit


@dataclass(frozen=True, slots=True)
class Ran:
    """The function's answer: its result, or its error (`result.function_error`)."""

    result: InvocationResult


@dataclass(frozen=True, slots=True)
class NotRun:
    """Nothing ran (no slot, no instance reached, turned away, not stored); `retry_after` is set
    when trying again later may go otherwise."""

    reason: Reason
    message: str
    retry_after: int | None = None


@dataclass(frozen=True, slots=True)
class TimedOut:
    """The instance did not answer in time; the function may have run (it counts as its timeout)."""

    message: str


@dataclass(frozen=True, slots=True)
class InstanceLost:
    """The instance failed after it may have run the invocation (never sent again)."""

    message: str


@dataclass(frozen=True, slots=True)
class Accepted:
    """An asynchronous invocation durably stored, under `invocation_id`."""

    invocation_id: str


Outcome = Ran | NotRun | TimedOut | InstanceLost
Acceptance = Accepted | NotRun


class Refusal(enum.Enum):
    """Why a request's body was not taken."""

    TOO_LARGE = "too_large"     # over the limit (413)
    TOO_SLOW = "too_slow"       # not all there within the body timeout (408)
    BROKEN = "broken"           # a broken body or connection (400)


class Refused(Exception):
    """A request's body was not taken (`kfn_gateway.connections.read_body`): `refusal` says why."""

    def __init__(self, refusal: Refusal, message: str) -> None:
        super().__init__(message)
        self.refusal = refusal
