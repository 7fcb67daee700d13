"""The trigger seam: event sources other than HTTP, each one turning its events into asynchronous
invocations through one callable, the event store's `accept`.

- `EventSink(function, payload, invocation_id)` stores one asynchronous invocation and returns
  only once it is durable (`kfn.events.store.EventStore.accept`); it raises when it could not
  (then the source keeps its event and tries again). The id is the source's own idempotency key:
  the same event offered twice gets the same id, and the store keeps one.
- `TriggerSource` is one kind of trigger (`kind`, a name of `kfn.core.triggerspec.TRIGGER_KINDS`):
  `start(sink)`, then `update(functions)` whenever the functions change (it takes the triggers of
  its own kind from their `spec.triggers`), `close()`.
- `Triggers` runs several sources for one process and follows an instance backend's functions.

A new kind of trigger is a field of `kfn.core.triggerspec.Trigger` (named in `TRIGGER_KINDS`) and a
source implementing `TriggerSource`, registered in `kfn.triggers.registry`; the gateway, the
store and the delivery engine need no change.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from kfn.core.aiotasks import stop_tasks
from kfn.core.functions import Function, FunctionRef
from kfn.core.instances import Listener

logger = logging.getLogger(__name__)

# function, payload (the event, as the function receives it), invocation id → stored (or raises).
EventSink = Callable[[FunctionRef, bytes, str], Awaitable[Any]]


class TriggerSource(Protocol):
    """One kind of event source; see the module docstring."""

    kind: str

    async def start(self, sink: EventSink) -> None:
        """Begin delivering events to `sink` (for the functions of the last `update`); returns at
        once, working in the background."""

    def update(self, functions: Sequence[Function]) -> None:
        """The functions now (all of them: the source picks the triggers of its kind). Returns at
        once; triggers added, changed or removed take effect in the background."""

    async def close(self) -> None:
        """Stop; events taken but not yet stored are left to their origin to offer again."""

    def problems(self) -> dict[FunctionRef, str]:
        """Why some functions' triggers of this kind do not work right now (a missing stream, an
        unreachable server), for `kfn list` and the logs."""


class FunctionSource(Protocol):
    """Where functions come from: an `InstanceBackend` has these two methods."""

    def functions(self) -> list[Function]: ...

    def add_listener(self, listener: Listener) -> None: ...


def triggers_of(function: Function, kind: str) -> list[tuple[int, Any]]:
    """`(index, the trigger's value of that kind)` for each of a function's triggers of `kind`;
    the index (its place in spec.triggers) is part of the trigger's identity."""
    out = []
    for index, trigger in enumerate(function.spec.triggers):
        value = getattr(trigger, kind, None)
        if value is not None:
            out.append((index, value))
    return out


class Triggers:
    """The trigger sources of one process (local mode: every kind; on Kubernetes the gateways run
    the NATS triggers and the operator's leader the schedules) behind one start/update/close.

    `missing` names kinds this process would serve but cannot (e.g. NATS triggers without a NATS
    server): their functions are reported by `problems`.
    """

    def __init__(self, sources: Iterable[TriggerSource], *, missing: Mapping[str, str] | None = None,
                 debounce: float = 0.2) -> None:
        self.sources = {source.kind: source for source in sources}
        self._missing = dict(missing or {})
        self._debounce = debounce
        self._functions: list[Function] = []
        self._follow_task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    async def start(self, sink: EventSink) -> None:
        for source in self.sources.values():
            await source.start(sink)

    def update(self, functions: Sequence[Function]) -> None:
        self._functions = list(functions)
        for source in self.sources.values():
            try:
                source.update(self._functions)
            except Exception:
                logger.exception("the %s triggers could not take the new functions", source.kind)

    def follow(self, functions: FunctionSource) -> None:
        """Keep the sources up to date with `functions` (now and after every change it reports).
        Changes are taken in bursts, `debounce` seconds apart at most: a backend reports every
        instance change too, and one update per burst is enough."""
        self.update(functions.functions())

        def changed(_: FunctionRef) -> None:
            self._changed.set()

        functions.add_listener(changed)

        async def loop() -> None:
            while True:
                await self._changed.wait()
                await asyncio.sleep(self._debounce)
                self._changed.clear()
                self.update(functions.functions())

        self._follow_task = asyncio.create_task(loop(), name="kfn-triggers-follow")

    async def close(self) -> None:
        if self._follow_task is not None:
            await stop_tasks([self._follow_task], what="triggers")
            self._follow_task = None
        for source in self.sources.values():
            with contextlib.suppress(Exception):
                await source.close()

    def problems(self) -> dict[FunctionRef, list[str]]:
        out: dict[FunctionRef, list[str]] = {}
        for source in self.sources.values():
            for ref, problem in source.problems().items():
                out.setdefault(ref, []).append(problem)
        for function in self._functions:
            for kind, why in self._missing.items():
                if triggers_of(function, kind):
                    out.setdefault(function.ref, []).append(f"{kind} triggers do not run: {why}")
        return out
