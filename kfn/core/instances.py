"""The seam between the data path and whatever runs function instances.

The gateway routes to `Instance`s and asks an `InstanceBackend` for more of them; the autoscaler
tells the backend how many to run. Local mode's backend runs instances as processes on 127.0.0.1
(`kfn.processes`); on Kubernetes the backend scales Deployments and watches their pods
(`kfn.kube.backend`). Everything above this seam is the same code in both places.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Protocol

from kfn.core.functions import Function, FunctionRef


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
    function_error: str | None = None  # "Unhandled" when the function failed (payload: Lambda's error object)
    error_type: str | None = None
    log_result: str | None = None      # base64 of the invocation's last 4 KB of output
    rejected: str | None = None        # why it turned the invocation away (concurrency, draining, loading)
    rejection: str = ""                # and in words


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

    def problem(self, ref: FunctionRef) -> str | None:
        """Why the function's instances cannot start right now (a failed start, a bad image), or
        None. The gateway answers waiting requests with it instead of letting them time out."""

    async def scale(self, ref: FunctionRef, replicas: int, *, reason: str = "") -> None:
        """Ask for `replicas` instances. Idempotent and quick: it does not wait for readiness."""

    def report_failure(self, instance: Instance, *, error: str) -> None:
        """The gateway could not talk to `instance`: take it out of rotation until it recovers."""

    def add_listener(self, listener: Listener) -> None:
        """Call `listener(ref)` after any change to a function or its ready instances."""

    def logs(self, ref: FunctionRef, *, tail: int,
             follow: bool) -> AbstractAsyncContextManager[AsyncIterator[str]]:
        """The function's instance output: the last `tail` lines, then (with `follow`) new lines
        until the caller leaves or the backend closes. Enter it to start reading."""
