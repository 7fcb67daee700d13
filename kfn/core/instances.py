"""The seam between the data path and whatever runs function instances.

The gateway routes to `Instance`s and asks an `InstanceBackend` for more of them; the autoscaler
tells the backend how many to run. Local mode's backend runs instances as processes on 127.0.0.1
(`kfn.processes`); on Kubernetes the backend scales Deployments and watches their pods
(`kfn.kube.backend`). Everything above this seam is the same code in both places.
"""
from __future__ import annotations

import enum
import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Protocol

from kfn.core.functions import Function, FunctionRef
from kfn_runtime import awslambda


# Made for every request: slots and no frozen-ness keep construction cheap on the hot path.
@dataclass(slots=True)
class Invocation:
    """One invocation on its way to an instance: the event and what goes with it."""

    payload: bytes                     # the event, as the function receives it (JSON)
    request_id: str                    # context.aws_request_id
    client_context: str | None = None  # base64 JSON, as Lambda's Invoke API takes it
    trace_id: str | None = None
    want_log: bool = False             # return the tail of the invocation's log


@dataclass(slots=True)
class InvocationResult:
    """What an instance answered. `rejected` set means it did not run the function at all."""

    payload: bytes = b""
    function_error: str | None = None  # awslambda.UNHANDLED when the function failed (payload: Lambda's error object)
    error_type: str | None = None
    log_result: str | None = None      # base64 of the last 4 KB of the invocation's log, START to REPORT
    rejected: str | None = None        # why it turned the invocation away (concurrency, draining, loading)
    rejection: str = ""                # and in words


class StartReason(enum.StrEnum):
    """Why a function's instances cannot start, as any caller may be told: the class of the failure
    in a few words, never what the function printed or pip said (SECURITY.md: logs need the admin
    key). Only INIT is the function's own doing; the others are the platform's."""

    INIT = "the function failed to initialize"              # its init (import, handler, init code) failed
    REQUIREMENTS = "its requirements could not be installed"
    IMAGE = "its image cannot be pulled"
    CAPACITY = "no node can run its instances"
    CONFIGURATION = "its configuration cannot run here"      # e.g. kfn local and spec.image; a missing Secret
    PLATFORM = "its instances cannot be started"             # anything else of the platform's


@dataclass(frozen=True)
class InitError:
    """A function's own init failed, in Lambda's terms (`Runtime.ImportModuleError`, ...): callers
    get it as the function's error, as Lambda answers an invocation whose environment's init
    failed. `message` is the exception's message (what Lambda's errorMessage says), never the
    function's output."""

    error_type: str
    message: str
    stack_trace: tuple[str, ...] = ()

    def payload(self, request_id: str) -> bytes:
        """Lambda's error object for the invocation `request_id`."""
        return awslambda.error_payload(self.error_type, self.message, request_id=request_id,
                                       stack_trace=self.stack_trace)

    @classmethod
    def of_payload(cls, payload: bytes, *, default_type: str, default_message: str) -> InitError:
        """From Lambda's error object (JSON bytes, as a runtime posts it to .../init/error); the
        defaults stand for what the payload does not say (it may not even be JSON)."""
        try:
            data: object = json.loads(payload)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            return cls(default_type, default_message)
        error_type, message, trace = data.get("errorType"), data.get("errorMessage"), data.get("stackTrace")
        lines = tuple(str(line) for line in trace) if isinstance(trace, list) else ()
        return cls(error_type if isinstance(error_type, str) and error_type else default_type,
                   message if isinstance(message, str) else default_message, lines)


@dataclass(frozen=True)
class StartProblem:
    """Why a function's instances cannot start right now.

    `reason` is all a caller of the function learns (with its request id); `detail` (the
    function's last output, pip's, a pod's termination message) is only for the function's owner:
    logs, `/system/errors`, `/system/functions`, the status. `init_error` is set when the
    function's own init failed: callers then get it as the function's error (Lambda's 200 with
    `X-Amz-Function-Error`, API Gateway's 500) rather than a 503.
    """

    reason: StartReason
    detail: str = ""
    init_error: InitError | None = None

    def __str__(self) -> str:
        """Everything, for the owner's eyes only (never a caller's answer)."""
        return f"{self.reason}: {self.detail}" if self.detail else str(self.reason)


class NoBuild(LookupError):
    """The function has no build whose output could be read (`InstanceBackend.logs` with `build`):
    it has no requirements, or none was built yet, or its output is gone."""


class Endpoint(Protocol):
    """An instance reached in-process (local mode) rather than over HTTP."""

    async def invoke(self, invocation: Invocation) -> InvocationResult:
        """Run one invocation; returns when the function answers, fails or times out. Raises
        ConnectionError if the instance is gone."""


@dataclass(frozen=True)
class Instance:
    """One ready instance of a function: an HTTP address serving the instance contract
    (kfn_runtime.contract), or an in-process `endpoint`."""

    function: FunctionRef
    id: str          # unique among the function's instances: a pod name, or "hello-3" locally
    host: str
    port: int
    capacity: int    # max in-flight invocations (the function's spec.concurrency)
    endpoint: Endpoint | None = field(default=None, compare=False, repr=False)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


# Called with a function whenever its definition or its ready instances may have changed.
Listener = Callable[[FunctionRef], None]


class InstanceBackend(Protocol):
    """Runs instances of functions. All methods are called from one event loop."""

    async def start(self) -> None:
        """Begin watching/serving; returns once the initial state is known."""

    async def close(self) -> None:
        """Stop every watch and (where the backend owns them) every instance; waits for them."""

    def function(self, ref: FunctionRef) -> Function | None:
        """The current definition of a function, or None if there is no such function."""

    def functions(self) -> list[Function]:
        """Every known function."""

    def ready(self, ref: FunctionRef) -> list[Instance]:
        """The instances that may receive new requests now (never draining or failed ones)."""

    def desired(self, ref: FunctionRef) -> int:
        """The replica count last asked for (by `scale`, or the initial minReplicas)."""

    def problem(self, ref: FunctionRef) -> StartProblem | None:
        """Why the function's instances cannot start right now (a failed start, a bad image), or
        None. The gateway answers waiting requests with it instead of letting them time out
        (callers learn its `reason` only, or its `init_error` as the function's error)."""

    async def scale(self, ref: FunctionRef, replicas: int, *, reason: str = "") -> None:
        """Ask for `replicas` instances. Idempotent and quick: it does not wait for readiness."""

    def report_failure(self, instance: Instance, *, error: str) -> None:
        """The gateway could not talk to `instance`: take it out of rotation until it recovers."""

    def add_listener(self, listener: Listener) -> None:
        """Call `listener(ref)` after any change to a function or its ready instances."""

    def logs(self, ref: FunctionRef, *, tail: int, follow: bool,
             build: bool = False) -> AbstractAsyncContextManager[AsyncIterator[str]]:
        """The function's instance output: the last `tail` lines, then (with `follow`) new lines
        until the caller leaves or the backend closes. Enter it to start reading.

        With `build`, the output of the function's latest build of its requirements instead (its
        installer's); entering raises `NoBuild` when the function has none."""
