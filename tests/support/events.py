"""The accepting side of an event store, in memory, for the gateway's asynchronous invocations."""
from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from kfn.core.functions import FunctionRef
from kfn.events.store import NO_OPTIONS, Accepted, AcceptOptions, StoreUnavailable


@dataclass
class FakeStore:
    """The accepting side of an event store, in memory; `failing` makes accepts raise StoreUnavailable."""

    events: dict[str, tuple[FunctionRef, bytes]] = field(default_factory=dict)
    failing: bool = False

    async def accept(self, function: FunctionRef, payload: bytes, invocation_id: str,
                     options: AcceptOptions = NO_OPTIONS) -> Accepted:
        if self.failing:
            raise StoreUnavailable("JetStream did not confirm it")
        if invocation_id in self.events:
            return Accepted(invocation_id, duplicate=True)
        self.events[invocation_id] = (function, payload)
        return Accepted(invocation_id)


class KnownFunctions:
    """The functions a process knows (`kfn.events.orphans.Orphans`' `known`), as a test changes them."""

    def __init__(self, *known: FunctionRef) -> None:
        self.known = set(known)

    def __call__(self) -> Collection[FunctionRef]:
        return set(self.known)
