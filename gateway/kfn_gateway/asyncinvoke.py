"""Asynchronous invocations delivered through the gateway: the delivery engine's `invoke`.

The gateway stores asynchronous invocations (`Dispatcher.accept_event`: /async-function/, the Invoke
API's InvocationType=Event, triggers through the store's `accept`); a `kfn.events.delivery`
`DeliveryEngine` hands them to functions later. Here is what joins the two:

- `gateway_invoker(dispatcher)`: the engine's `invoke(function, payload, invocation_id)`, running
  each event through `Dispatcher.invoke_event` → `Dispatcher.dispatch`, so a stored event takes a
  slot, scales a function from zero, waits in the same queue and counts in the same metrics as an
  HTTP request. Outcomes become the engine's terms: `NotRun` (throttled, no instance, the queue
  timed out, the function is gone) → `NotInvoked`, not an attempt; `TimedOut` and `InstanceLost`
  (it may have run) → `InvocationFailed`, an attempt; `Ran` is the `InvocationResult` itself, a
  function error included. An event does not join a function's queue once it is half full: it
  is put back (`NotInvoked`), leaving the rest of the queue to callers.
- `async_configs(backend)`: every function's `AsyncConfig` (spec.async, timeout, concurrency).
- `AsyncDelivery`: the engine of one gateway process, its configurations kept in step with the
  backend, and its queue metrics (`kfn.events.metrics.AsyncCollector`) on the gateway's registry,
  which the autoscaler reads (`kfn_async_queue_depth`); beside it, `kfn.events.orphans.Orphans`
  removes the queued events of functions the backend has not listed for `OrphanSettings.grace`
  (kfn_async_events_discarded_total on the same registry).
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Collection, Mapping

from kfn.core.asyncpolicy import AsyncConfig, InvocationFailed, NotInvoked
from kfn.core.functions import Function, FunctionRef
from kfn.core.instances import InstanceBackend, Invocation, InvocationResult
from kfn.events.delivery import DeliveryEngine, DeliverySettings, Invoke, Post
from kfn.events.metrics import AsyncCollector
from kfn.events.orphans import Orphans, OrphanSettings
from kfn.events.store import EventStore
from kfn_gateway.dispatch import Dispatcher
from kfn_gateway.http_api import status_of
from kfn_gateway.outcomes import InstanceLost, NotRun, Ran, TimedOut
from kfn_gateway.server import Gateway
from kfn_runtime import awslambda

logger = logging.getLogger(__name__)


def gateway_invoker(dispatcher: Dispatcher) -> Invoke:
    """The delivery engine's `invoke`, through `dispatcher` (see the module docstring)."""
    settings = dispatcher.settings

    async def invoke(ref: FunctionRef, payload: bytes, invocation_id: str) -> InvocationResult:
        function = dispatcher.backend.function(ref)
        if function is None:
            raise NotInvoked(f"function {str(ref)!r} does not exist (any more)")
        queued, limit = dispatcher.stats(ref).queued, settings.queue_limit
        if queued and queued >= limit // 2:
            # Stored events can wait; callers cannot. Half the function's queue stays theirs, so a
            # backlog of events never turns HTTP requests away with 429s.
            raise NotInvoked(f"function {str(ref)!r} has {queued} requests waiting for an instance",
                             retry_after=settings.retry_after)
        outcome = await dispatcher.invoke_event(function, Invocation(payload=payload, request_id=invocation_id),
                                                status=status_of)
        if isinstance(outcome, Ran):
            return outcome.result
        if isinstance(outcome, NotRun):
            raise NotInvoked(outcome.message, retry_after=outcome.retry_after)
        if isinstance(outcome, TimedOut):
            raise InvocationFailed(outcome.message, error_type=awslambda.ERROR_TIMED_OUT)
        assert isinstance(outcome, InstanceLost)
        raise InvocationFailed(outcome.message, error_type=awslambda.ERROR_EXIT)

    return invoke


def async_configs(backend: InstanceBackend, *, region: str,
                  memo: dict[FunctionRef, tuple[Function, AsyncConfig]] | None = None,
                  ) -> dict[FunctionRef, AsyncConfig]:
    """`AsyncConfig` of every function `backend` knows. With `memo` (kept by the caller between
    calls), a function whose definition is the very object it was computed from keeps its config:
    every pod change anywhere asks again, and with a thousand functions building each one anew
    was a tenth of a gateway's time while they were applied."""
    out: dict[FunctionRef, AsyncConfig] = {}
    for function in backend.functions():
        try:
            known = memo.get(function.ref) if memo is not None else None
            if known is not None and known[0] is function:
                config = known[1]
            else:
                config = AsyncConfig.of(function, region=region)
                if memo is not None:
                    memo[function.ref] = (function, config)
            out[function.ref] = config
            check_destinations(config, backend)
        except ValueError as e:   # a destination naming no valid function: its events wait, the rest go on
            out.pop(function.ref, None)
            logger.warning("function %s: its async settings cannot be used: %s", function.ref, e)
    if memo is not None:
        for ref in [ref for ref in memo if ref not in out]:
            del memo[ref]
    return out


def check_destinations(config: AsyncConfig, backend: InstanceBackend) -> None:
    """ValueError if a destination is a key-protected function (spec.http.auth key) of another
    namespace: a key-protected function runs only for a key of its namespace, and a destination
    record (whose response payload the sending function chooses) is no way around that. Functions
    of its own namespace may send it theirs, as that namespace's key holders may call it."""
    for target in (config.on_success, config.on_failure):
        ref = target.function if target is not None else None
        if ref is None or ref.namespace == config.function.namespace:
            continue
        destination = backend.function(ref)
        if destination is not None and destination.spec.http.auth.type == "key":
            raise ValueError(f"the destination {ref} is a key-protected function of another namespace: only "
                             f"functions of {ref.namespace} may send it their outcomes")


def delivery_margin(gateway: Gateway) -> float:
    """How long past a function's timeout the engine waits for an invocation through `gateway`:
    longer than the gateway's own bounds (the queue wait, then the instance's timeout and margin),
    so that the gateway, which knows whether anything ran, always answers first."""
    settings = gateway.settings
    return settings.queue_timeout + settings.upstream_timeout_margin + 1.0


class AsyncDelivery:
    """The delivery engine of one gateway process (local mode; each gateway replica on Kubernetes).

    `start()` starts the engine and the removal of deleted functions' queues (`orphans`) and
    registers their metrics; `close()` stops both (the engine lets the deliveries in progress
    finish for up to `settings.drain_timeout`) and unregisters the metrics. The store is the
    caller's to start before and close after.
    """

    def __init__(self, gateway: Gateway, store: EventStore, *, settings: DeliverySettings | None = None,
                 post: Post | None = None, orphans: OrphanSettings | None = None,
                 known: Callable[[], Collection[FunctionRef] | None] | None = None) -> None:
        self.gateway = gateway
        self.store = store
        self._region = gateway.settings.region
        self._configs: dict[FunctionRef, AsyncConfig] | None = None
        settings = settings or DeliverySettings()
        # The engine's own limit is a backstop only (see `delivery_margin`).
        margin = max(settings.timeout_margin, delivery_margin(gateway))
        self.engine = DeliveryEngine(store, gateway_invoker(gateway.dispatcher), self.configs, post=post,
                                     settings=dataclasses.replace(settings, timeout_margin=margin))
        # `known`: the functions that exist, None when not all can be read (default: the backend's).
        self.orphans = Orphans(store, known or self._known, settings=orphans or OrphanSettings(),
                               removed=self.engine.refresh_stats)
        self._collector = AsyncCollector(self.engine, discarded=lambda: self.orphans.discarded)
        self._registered = False
        self._listening = False
        self._memo: dict[FunctionRef, tuple[Function, AsyncConfig]] = {}

    def configs(self) -> Mapping[FunctionRef, AsyncConfig]:
        """Every function's async settings, computed again only after the backend changed."""
        if self._configs is None:
            self._configs = async_configs(self.gateway.backend, region=self._region, memo=self._memo)
        return self._configs

    def _known(self) -> Collection[FunctionRef]:
        # A backend that can tell a Function that exists but is invalid (so not served) from a
        # deleted one says so (`KubernetesBackend.existing`): its queue is not an orphan's.
        existing = getattr(self.gateway.backend, "existing", None)
        served = [function.ref for function in self.gateway.backend.functions()]
        return served if existing is None else {*served, *existing()}

    def _on_change(self, ref: FunctionRef) -> None:
        # Every instance change is reported too; the next read recomputes, which is cheap.
        self._configs = None
        self.engine.refresh()

    async def start(self) -> None:
        """Start delivering (returns at once; the engine works in the background)."""
        if not self._listening:
            self.gateway.backend.add_listener(self._on_change)
            self._listening = True
        if not self._registered:
            self.gateway.registry.register(self._collector)
            self._registered = True
        await self.engine.start()
        self.orphans.start()

    async def close(self) -> None:
        """Stop delivering: at most `drain_timeout` for the deliveries in progress; the events of
        those not finished then are released, due again at once for the other replicas."""
        await self.orphans.close()
        await self.engine.close()
        if self._registered:
            self.gateway.registry.unregister(self._collector)
            self._registered = False
