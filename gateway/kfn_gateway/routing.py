"""Which instance serves a request: free slots, the wait for one, and scaling from zero.

A `Route` is one function's view of its ready instances. Each instance has `capacity` slots
(the function's concurrency); a request takes a slot on the least busy instance, or waits in a
bounded FIFO queue until a slot frees up or a new instance becomes ready. Slots are handed to
waiters in arrival order, and a waiter that has been handed a slot it can no longer use (timed
out, cancelled) gives it back, so no slot is ever lost.
"""
from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections import deque

from kfn.core.functions import FunctionRef
from kfn.core.instances import Instance, InstanceBackend, StartProblem, StartReason
from kfn_gateway.metrics import FunctionMetrics

logger = logging.getLogger(__name__)

# A scale from zero the backend could not record is asked again after these delays (doubling).
SCALE_RETRY_INITIAL = 0.5
SCALE_RETRY_MAX = 4.0


class Unavailable(Exception):
    """No slot could be had (each subclass says why); `retry` says whether trying again later may
    go otherwise."""

    def __init__(self, message: str, *, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry  # whether a Retry-After header makes sense


class QueueFull(Unavailable):
    """Too many requests wait for the function already."""


class QueueTimeout(Unavailable):
    """No slot within the queue timeout."""


class FunctionGone(Unavailable):
    """The function was deleted while the request waited."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retry=False)


class ScaleFailed(Unavailable):
    """The scale from zero failed."""


class ShuttingDown(Unavailable):
    """The gateway is closing: its waiting requests are turned away."""


class StartFailed(Unavailable):
    """The function has no instance and the backend says why none starts (an import error, a bad
    image): waiting would only delay that answer. The backend keeps retrying meanwhile.

    The message says the problem's public reason only; `problem` has the rest (its detail is the
    function owner's, never a caller's; its `init_error` is answered as the function's error).
    """

    def __init__(self, message: str, problem: StartProblem | None = None) -> None:
        # (message first: copies of it are made as exceptions are, from their args and __dict__)
        super().__init__(message)
        self.problem = problem or StartProblem(StartReason.PLATFORM)

    @classmethod
    def of(cls, ref: FunctionRef, problem: StartProblem) -> StartFailed:
        return cls(f"function '{ref}' cannot start an instance: {problem.reason}", problem)


class Route:
    """One function's instances, their busy slots, and the requests waiting for a slot."""

    def __init__(self, ref: FunctionRef, backend: InstanceBackend, metrics: FunctionMetrics, *,
                 queue_limit: int) -> None:
        self.ref = ref
        self.metrics = metrics
        self._backend = backend
        self._queue_limit = queue_limit
        self._instances: list[Instance] = list(backend.ready(ref))
        self._busy: dict[str, int] = {}   # instance id → slots taken
        self._waiters: deque[asyncio.Future[Instance]] = deque()
        self._scaling: asyncio.Task[None] | None = None
        # The waiter whose arrival caused a cold start, and when: its wait is the cold start's.
        self._cold_waiter: asyncio.Future[Instance] | None = None
        self._cold_since = 0.0

    @property
    def queued(self) -> int:
        return len(self._waiters)

    async def acquire(self, *, timeout: float) -> Instance:
        """A slot on an instance; call `release` with it when done.

        Returns at once if a slot is free and nobody is waiting; otherwise waits in the queue
        at most `timeout` seconds (starting an instance if the function runs none). Raises
        QueueFull, QueueTimeout, ScaleFailed, StartFailed or FunctionGone instead of waiting
        forever; StartFailed at once when the function has no instance and the backend knows
        why it cannot start one.
        """
        if not self._waiters:
            instance = self._take()
            if instance is not None:
                return instance
            # The listener may lag behind the backend (or a failure was reported): look again.
            self._instances = list(self._backend.ready(self.ref))
            instance = self._take()
            if instance is not None:
                return instance
        if not self._instances:
            problem = self._backend.problem(self.ref)
            if problem:
                self._maybe_cold_start(None)   # demand: the backend keeps trying to start one
                raise StartFailed.of(self.ref, problem)
        if len(self._waiters) >= self._queue_limit:
            if not self._instances:
                self._maybe_cold_start(None)  # turned away, but the function must still start
            raise QueueFull(f"too many requests waiting for function '{self.ref}' "
                            f"({self._queue_limit} queued)")
        waiter: asyncio.Future[Instance] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        if not self._instances:
            self._maybe_cold_start(waiter)
        else:
            self._dispatch()  # a slot may have been missed (e.g. a listener call that never came)
        # A timer rather than asyncio.timeout: half the cost on the path every queued request takes.
        expiry = asyncio.get_running_loop().call_later(timeout, self._expire, waiter, timeout)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.release(waiter.result())
            self._forget(waiter)
            raise
        finally:
            expiry.cancel()

    def _expire(self, waiter: asyncio.Future[Instance], timeout: float) -> None:
        """A waiter's time is up: it leaves the queue with QueueTimeout, unless handed a slot already."""
        if waiter.done():
            return
        self._forget(waiter)
        if not self._instances:
            waiter.set_exception(QueueTimeout(f"function '{self.ref}' has no ready instance after {timeout:g}s"))
        else:
            waiter.set_exception(QueueTimeout(f"no free instance slot for function '{self.ref}' after {timeout:g}s"))

    def release(self, instance: Instance) -> None:
        """Give a slot back; the longest waiter gets it (or any slot now free)."""
        left = self._busy.get(instance.id, 0) - 1
        if left > 0:
            self._busy[instance.id] = left
        else:
            self._busy.pop(instance.id, None)
        if self._waiters:
            self._dispatch()

    def refresh(self) -> list[Instance]:
        """Re-read the ready instances (the backend's listener calls this) and hand out new slots.

        Returns the instances that are no longer ready.
        """
        before = self._instances
        if self._backend.function(self.ref) is None:
            self._instances = []
            self._fail_waiters(FunctionGone(f"function '{self.ref}' was deleted"))
        else:
            self._instances = list(self._backend.ready(self.ref))
            if self._waiters:
                self._dispatch()
            if self._waiters and not self._instances:
                problem = self._backend.problem(self.ref)
                if problem:
                    # A start failed while requests waited for it: tell them now, not at their timeout.
                    self._fail_waiters(StartFailed.of(self.ref, problem))
                else:
                    # The instance asked for may be gone before it served (a warm pool's pod claimed
                    # and deleted, its fallback failing too): asked for again if nothing is desired.
                    self._maybe_cold_start(self._waiters[0])
        ready = {instance.id for instance in self._instances}
        return [instance for instance in before if instance.id not in ready]

    def drop(self, instance: Instance) -> None:
        """Stop choosing `instance` at once (it failed), before the backend confirms it."""
        self._instances = [i for i in self._instances if i.id != instance.id]

    async def close(self) -> None:
        """Cancel a pending cold-start scale call and turn waiters away; returns at once."""
        if self._scaling is not None:
            self._scaling.cancel()
        self._fail_waiters(ShuttingDown("the gateway is shutting down"))

    def _take(self) -> Instance | None:
        # Least in-flight first; an idle instance ends the search early.
        best: Instance | None = None
        best_busy = 0
        busy = self._busy
        for instance in self._instances:
            taken = busy.get(instance.id, 0)
            if taken < instance.capacity and (best is None or taken < best_busy):
                best, best_busy = instance, taken
                if taken == 0:
                    break
        if best is not None:
            busy[best.id] = best_busy + 1
        return best

    def _dispatch(self) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters[0]
            if waiter.done():
                waiters.popleft()
                continue
            instance = self._take()
            if instance is None:
                return
            waiters.popleft()
            waiter.set_result(instance)
            if waiter is self._cold_waiter:
                self._cold_waiter = None
                self.metrics.cold_start_waited(time.monotonic() - self._cold_since)

    def _forget(self, waiter: asyncio.Future[Instance]) -> None:
        try:
            self._waiters.remove(waiter)
        except ValueError:
            pass
        if waiter is self._cold_waiter:
            self._cold_waiter = None

    def _fail_waiters(self, error: Unavailable) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(copy.copy(error))
        self._cold_waiter = None

    def _maybe_cold_start(self, waiter: asyncio.Future[Instance] | None) -> None:
        # One scale call however many requests arrive: the first starts it, the rest wait with it.
        if self._scaling is not None or self._backend.desired(self.ref) > 0:
            return
        self.metrics.cold_start()
        self._cold_waiter = waiter
        self._cold_since = time.monotonic()
        self._scaling = asyncio.get_running_loop().create_task(self._scale_from_zero())

    async def _scale_from_zero(self) -> None:
        """Ask the backend for one instance; runs as long as its `scale` calls.

        A backend that could not record the request (its API unreachable: the Kubernetes API
        server restarting, say) is asked again, with backoff, for as long as requests wait for
        the instance. A failing call turns the waiting requests away with 503 instead of letting
        them time out.
        """
        delay = SCALE_RETRY_INITIAL
        try:
            while True:
                await self._backend.scale(self.ref, 1, reason="cold start")
                if self._backend.desired(self.ref) > 0 or not self._waiters or self._instances:
                    return
                logger.warning("function %s: the scale from zero did not take; asking again in %.1fs while %d "
                               "request(s) wait", self.ref, delay, len(self._waiters))
                await asyncio.sleep(delay)
                delay = min(SCALE_RETRY_MAX, delay * 2)
                if self._backend.function(self.ref) is None:
                    return
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - any backend failure turns the waiters away
            logger.warning("could not scale function %s from zero: %s", self.ref, e)
            self._fail_waiters(ScaleFailed(f"could not start function '{self.ref}': {e}"))
        finally:
            self._scaling = None
