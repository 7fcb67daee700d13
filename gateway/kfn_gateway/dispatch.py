"""The dispatch core: one invocation to a slot of some instance of its function, and back.

`Dispatcher` owns the gateway's data path below the protocols: which function a name means, each
function's `Route` (instances, slots, the queue, metrics), holding a request while its function
scales from zero, sending the invocation to an instance (another one if nothing ran), storing
asynchronous invocations, and running stored ones as HTTP ones run. It answers with a typed
outcome (`kfn_gateway.outcomes`) and never in a protocol's terms: the front-ends
(`http_api`, `lambda_api`, `asyncinvoke`) each map outcomes to theirs in one table.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from kfn.core.functions import Function, FunctionRef
from kfn.core.instances import Instance, InstanceBackend, Invocation, InvocationResult
from kfn.core.scaling import MetricsSource
from kfn.events.store import AcceptOptions, EventStore, StoreUnavailable
from kfn_gateway.invoking import InstanceClient, InstanceFailed, InstanceTimeout, NotSent
from kfn_gateway.metrics import FunctionStats, GatewayMetrics, LoadSource
from kfn_gateway.outcomes import Acceptance, Accepted, InstanceLost, NotRun, Outcome, Ran, Reason, TimedOut
from kfn_gateway.routing import (
    FunctionGone,
    QueueFull,
    QueueTimeout,
    Route,
    ScaleFailed,
    ShuttingDown,
    StartFailed,
    Unavailable,
)
from kfn_gateway.settings import GatewaySettings
from kfn_runtime import awslambda

logger = logging.getLogger(__name__)

# How often an invocation no instance ran is tried on another one.
MAX_ATTEMPTS = 3
# Status recorded for a request whose client went away before it was answered (nginx's choice).
CLIENT_CLOSED = 499
# Refs by the name in a URL, so the hot path parses each name once (bounded: names come from clients).
_REF_CACHE_SIZE = 4096
# Pause before sending an invocation a full instance turned away to the next try (times the attempt).
REJECTED_BACKOFF = 0.02

_UNAVAILABLE: dict[type[Unavailable], Reason] = {
    QueueFull: Reason.QUEUE_FULL, QueueTimeout: Reason.NO_SLOT, FunctionGone: Reason.FUNCTION_GONE,
    ScaleFailed: Reason.SCALE_FAILED, StartFailed: Reason.CANNOT_START, ShuttingDown: Reason.SHUTTING_DOWN,
}

T = TypeVar("T")


class Dispatcher:
    """Runs invocations on a backend's instances; see the module docstring.

    `start()` before the first invocation (opens the pool of connections to instances and follows
    the backend's changes); `close()` turns waiting requests away and closes that pool.
    """

    def __init__(self, backend: InstanceBackend, settings: GatewaySettings, metrics: GatewayMetrics, *,
                 events: EventStore | None = None) -> None:
        self.backend = backend
        self.settings = settings
        # Where asynchronous invocations are stored (kfn.events); None: this gateway takes none.
        self.events = events
        self._metrics = metrics
        self._routes: dict[FunctionRef, Route] = {}
        self._refs: dict[str, FunctionRef | None] = {}
        self._listeners: list[Callable[[FunctionRef], None]] = []
        self._client = InstanceClient()
        self._listening = False
        self.source = LoadSource(backend, self._routes.get)

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the connection pool to instances and follow the backend's changes; idempotent."""
        await self._client.start()
        if not self._listening:
            self.backend.add_listener(self._on_change)
            self._listening = True

    async def close(self) -> None:
        """Turn waiting requests away and close connections to instances; returns at once."""
        for route in list(self._routes.values()):
            await route.close()
        await self._client.close()

    def on_change(self, listener: Callable[[FunctionRef], None]) -> None:
        """Call `listener(ref)` on every change of the backend, before the dispatcher takes it in."""
        self._listeners.append(listener)

    # -- which function, which route -------------------------------------------------------------

    @property
    def metrics_source(self) -> MetricsSource:
        """The autoscaler's view of this gateway's load, computed in-process."""
        return self.source

    def routes(self) -> list[Route]:
        return list(self._routes.values())

    def ref(self, text: str) -> FunctionRef | None:
        """The function a URL names (NAME or NAME.NAMESPACE), or None if it cannot name one."""
        cache = self._refs
        if text in cache:
            return cache[text]
        try:
            ref: FunctionRef | None = FunctionRef.parse(text, default_namespace=self.settings.default_namespace)
        except ValueError:
            ref = None
        if len(cache) >= _REF_CACHE_SIZE:
            cache.clear()
        cache[text] = ref
        return ref

    def function(self, name: str) -> Function | None:
        """The function `name` (NAME or NAME.NAMESPACE) names, if there is one."""
        ref = self.ref(name)
        return self.backend.function(ref) if ref is not None else None

    def route(self, ref: FunctionRef) -> Route:
        """The function's route (its instances, queue and metrics), made on first use."""
        route = self._routes.get(ref)
        if route is None:
            route = self._routes[ref] = Route(ref, self.backend, self._metrics.for_function(ref),
                                              queue_limit=self.settings.queue_limit)
        return route

    def stats(self, ref: FunctionRef) -> FunctionStats:
        """What this gateway has seen of the function: invocations, last use, in flight, queued."""
        route = self._routes.get(ref)
        if route is None:
            return FunctionStats(invocations=0, last_used=None, in_flight=0, queued=0)
        metrics = route.metrics
        queued = route.queued
        return FunctionStats(invocations=metrics.invocations, last_used=metrics.last_used,
                             in_flight=metrics.held - queued, queued=queued)

    def _on_change(self, ref: FunctionRef) -> None:
        for listener in self._listeners:
            listener(ref)
        route = self._routes.get(ref)
        if route is not None:
            try:
                gone = route.refresh()
            except Exception:
                logger.exception("could not refresh instances of function %s", ref)
            else:
                for instance in gone:
                    # Idle connections to an instance that is draining or gone would only go stale.
                    self._client.close_idle(instance)
            if route.metrics.held == 0 and self.backend.function(ref) is None:
                del self._routes[ref]

    # -- holding a request -------------------------------------------------------------------------

    async def held(self, route: Route, answer: Awaitable[T], *, status: Callable[[T], int],
                   failed: Callable[[], T], lost: Callable[[], T]) -> T:
        """`answer`, awaited as a request held for `route`'s function: counted in its metrics (the
        load the autoscaler sees) from now until answered, with the status `status(answer)`. Runs
        as long as `answer`. A client that went away counts as 499 (cancelled: re-raised; a
        connection error: answered `lost()`); any other failure of the gateway itself is logged
        and answered `failed()`, so one broken request never takes down another.
        """
        metrics = route.metrics
        started = metrics.arrive()
        code = 500
        try:
            out = await answer
            code = status(out)
            return out
        except asyncio.CancelledError:
            code = CLIENT_CLOSED
            raise
        except ConnectionError:
            code = CLIENT_CLOSED
            return lost()
        except Exception:
            logger.exception("invoking function %s failed", route.ref)
            return failed()
        finally:
            metrics.finish(code, started)

    @staticmethod
    def count(route: Route, status: int) -> None:
        """Count an answer given without holding the request for an instance."""
        route.metrics.finish(status, route.metrics.arrive())

    # -- running an invocation -----------------------------------------------------------------

    async def dispatch(self, function: Function, route: Route, invocation: Invocation) -> Outcome:
        """Run one invocation on some instance of `function`: a slot, the instance, the result.

        Waits for a slot (a cold start included) at most the queue timeout, and for the instance
        at most the function's timeout plus a margin. An invocation no instance ran goes to
        another (at most MAX_ATTEMPTS in all). Raises nothing but cancellation: the outcome says.
        """
        settings = self.settings
        timeout = function.spec.timeout + settings.upstream_timeout_margin
        attempts = 0
        while True:
            try:
                instance = await route.acquire(timeout=settings.queue_timeout)
            except StartFailed as e:
                init_error = e.problem.init_error
                if init_error is None:   # the platform's failure: its public reason, nothing ran
                    return NotRun(Reason.CANNOT_START, str(e), settings.retry_after)
                # The function's own init failed: that is its error, as Lambda answers an invocation
                # whose environment could not initialize (its output stays in its logs).
                return Ran(InvocationResult(payload=init_error.payload(invocation.request_id),
                                            function_error=awslambda.UNHANDLED, error_type=init_error.error_type))
            except Unavailable as e:
                return NotRun(_UNAVAILABLE.get(type(e), Reason.NO_SLOT), str(e),
                              settings.retry_after if e.retry else None)
            try:
                result = await self._call(route, instance, invocation, timeout)
            except NotSent as e:
                self._report(route, instance, str(e))
                attempts += 1
                if attempts >= MAX_ATTEMPTS:
                    return NotRun(Reason.UNREACHABLE, str(e))
                continue
            except InstanceTimeout:
                return TimedOut(f"function {str(route.ref)!r} did not answer within {timeout:g}s")
            except InstanceFailed as e:
                if e.instance_failed:
                    self._report(route, instance, str(e))
                return InstanceLost(str(e))
            if result.rejected is None:
                return Ran(result)
            # Nothing ran: try again. A draining or loading instance is skipped from now on, without
            # reporting a failure (its backend stops it, and it finishes what it has); a full one
            # stays in rotation (several gateways share it) and is given a moment to free a slot.
            full = result.rejected == "concurrency"
            if not full:
                route.drop(instance)
            attempts += 1
            if attempts >= MAX_ATTEMPTS:
                return NotRun(Reason.THROTTLED if full else Reason.TURNED_AWAY,
                              f"instance {instance.id} turned the invocation away "
                              f"({result.rejection or result.rejected})", settings.retry_after)
            if full:
                await asyncio.sleep(REJECTED_BACKOFF * attempts)

    async def _call(self, route: Route, instance: Instance, invocation: Invocation, timeout: float) -> InvocationResult:
        """`invocation` on `instance`, holding its slot until the instance is done with it.

        If the caller goes away first (the client disconnected), the instance still runs the
        invocation to its end (as Lambda does), so the slot is given back only then: another
        request must not be sent to an instance that is still busy with this one.
        """
        call = asyncio.ensure_future(self._client.invoke(instance, invocation, timeout=timeout))
        try:
            result = await asyncio.shield(call)
        except asyncio.CancelledError:
            if call.done():
                route.release(instance)
            else:
                call.add_done_callback(lambda done: _release_when_done(done, route, instance))
            raise
        except BaseException:
            route.release(instance)
            raise
        route.release(instance)
        return result

    def _report(self, route: Route, instance: Instance, error: str) -> None:
        route.drop(instance)
        try:
            self.backend.report_failure(instance, error=error)
        except Exception:
            logger.exception("reporting a failure of instance %s failed", instance.id)

    # -- asynchronous invocations ----------------------------------------------------------------

    async def accept_event(self, function: Function, payload: bytes, *, invocation_id: str,
                           callback_url: str | None = None, caller_chosen: bool = False) -> Acceptance:
        """Store an asynchronous invocation of `function` durably: Accepted(its invocation id).

        Returns only once the event store holds the event (the caller may then answer 202), as
        long as the store takes (JetStream: its publish timeout and retries). An id already
        stored is accepted again without storing anything new, with the same answer, so a caller
        retrying after a failure or a timeout gets one event. Counts nothing: the caller answers.
        `caller_chosen`: the caller named the id (X-Call-Id), de-duplicated apart from kfn's own.
        NotRun when this gateway has no event store, the store did not confirm (the event may or
        may not be stored: retry with the same id), or the payload is over the async limit.
        """
        store = self.events
        if store is None:
            return NotRun(Reason.NO_STORE, "this gateway takes no asynchronous invocations: it has no event store "
                                           "(kfn gateway: --nats-url or $KFN_NATS_URL)")
        limit = self.settings.max_async_payload_bytes
        if len(payload) > limit:
            return NotRun(Reason.TOO_LARGE,
                          f"the event is {len(payload)} bytes; an asynchronous invocation's limit is {limit}")
        options = AcceptOptions(callback_url=callback_url, caller_chosen=caller_chosen)
        try:
            accepted = await store.accept(function.ref, payload, invocation_id, options)
        except StoreUnavailable as e:
            return NotRun(Reason.STORE_FAILED, f"could not store the event: {e}", self.settings.retry_after)
        return Accepted(accepted.invocation_id)

    async def invoke_event(self, function: Function, invocation: Invocation, *,
                           status: Callable[[Outcome], int]) -> Outcome:
        """Run an invocation no HTTP request carries (a stored asynchronous event) as an HTTP one
        runs: through `dispatch` (a slot, scale from zero, the queue), counted in the function's
        metrics with the status `status(outcome)`, so its load is what the autoscaler sees. Runs
        as long as `dispatch`."""
        route = self.route(function.ref)
        metrics = route.metrics
        started = metrics.arrive()
        code = 500
        try:
            outcome = await self.dispatch(function, route, invocation)
            code = status(outcome)
            return outcome
        except asyncio.CancelledError:
            code = CLIENT_CLOSED
            raise
        finally:
            metrics.finish(code, started)


def _release_when_done(call: asyncio.Future[InvocationResult], route: Route, instance: Instance) -> None:
    if not call.cancelled():
        call.exception()   # retrieved: nobody waits for it any more
    route.release(instance)
