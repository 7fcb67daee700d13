"""The seam between the data path and whatever runs function instances.

The gateway routes to `Instance`s and asks an `InstanceBackend` for more of them; the autoscaler
tells the backend how many to run. Local mode's backend runs runtime processes on 127.0.0.1
(`kfn.processes`); on Kubernetes the backend patches Deployments and watches EndpointSlices
(`kfn_gateway.kubernetes`). Everything above this seam is the same code in both places.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from kfn.functions import Function


@dataclass(frozen=True)
class Instance:
    """One ready instance of a function: an address that serves the runtime's HTTP protocol."""

    function: str
    id: str          # unique among the function's instances: a pod name, or "hello-3" locally
    host: str
    port: int
    capacity: int    # max in-flight requests (the function's spec.concurrency)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


# Called with a function's name whenever its functions or ready instances may have changed.
Listener = Callable[[str], None]


class InstanceBackend(Protocol):
    """Runs instances of functions. All methods are called from one event loop."""

    async def start(self) -> None:
        """Begin watching/serving; returns once the initial state is known."""

    async def close(self) -> None:
        """Stop every watch and (where the backend owns them) every instance; waits for them."""

    def function(self, name: str) -> Function | None:
        """The current definition of a function, or None if there is no such function."""

    def functions(self) -> list[Function]:
        """Every known function."""

    def ready(self, name: str) -> list[Instance]:
        """The instances that may receive new requests now (never draining or failed ones)."""

    def desired(self, name: str) -> int:
        """The replica count last asked for (by `scale`, or the initial minReplicas)."""

    async def scale(self, name: str, replicas: int, *, reason: str = "") -> None:
        """Ask for `replicas` instances. Idempotent and quick: it does not wait for readiness."""

    def report_failure(self, instance: Instance, *, error: str) -> None:
        """The gateway could not talk to `instance`: take it out of rotation until it recovers."""

    def add_listener(self, listener: Listener) -> None:
        """Call `listener(name)` after any change to a function or its ready instances."""
