"""Running the handler: concurrency slots, the per-invocation timeout, sync and async handlers.

Sync handlers run on a pool of at most `concurrency` threads; the request thread waits for the
result until the deadline, so it can answer 504 on time. A Python thread cannot be killed, so a
timed-out sync handler keeps its slot until it returns; if it is still running `stuck_grace`
seconds after its deadline, `on_stuck` is called and the instance is expected to drain and exit so
that its supervisor starts a clean one.

The handler runs in a pool thread rather than in the request's own thread so that the request thread
stays free to answer 504 at the deadline. `async def` handlers run on one event loop in a dedicated
thread (started with the invoker); on timeout their task is cancelled, and the slot is freed when
the task has really finished.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Future, ThreadPoolExecutor

from kfn_runtime.handlers import Handler
from kfn_runtime.logs import current_request_id

TYPE_CHECKING = False  # importing typing costs milliseconds on every cold start
if TYPE_CHECKING:
    from typing import Any

OK = "ok"
ERROR = "error"
TIMEOUT = "timeout"


class Outcome:
    __slots__ = ("kind", "value", "error")

    def __init__(self, kind: str, *, value: Any = None, error: BaseException | None = None) -> None:
        self.kind = kind      # OK, ERROR or TIMEOUT
        self.value = value    # the handler's return value (OK)
        self.error = error    # what it raised (ERROR)


class _Invocation:
    __slots__ = ("request_id", "deadline", "finished", "overdue", "task")

    def __init__(self, request_id: str, deadline: float) -> None:
        self.request_id = request_id
        self.deadline = deadline
        self.finished = False
        self.overdue = False
        self.task: Any = None  # the asyncio task of an async handler, once it has started


class Invoker:
    """Runs one handler with at most `concurrency` invocations in flight."""

    def __init__(self, handler: Handler, *, concurrency: int, stuck_grace: float,
                 on_stuck: Callable[[str, float], None]) -> None:
        self._handler = handler
        self._concurrency = concurrency
        self._stuck_grace = stuck_grace
        self._on_stuck = on_stuck
        self._lock = threading.Lock()
        self._in_flight = 0
        self._overdue = 0
        self._pool: ThreadPoolExecutor | None = None
        self._loop_thread: _LoopThread | None = None
        self._closed = False

    @property
    def in_flight(self) -> int:
        """Slots taken, including handlers that overran their timeout and have not returned yet."""
        return self._in_flight

    @property
    def overdue(self) -> int:
        return self._overdue

    def start(self) -> None:
        """Create the executor for this handler's kind; the threads themselves start on demand."""
        if self._handler.is_async:
            self._loop_thread = _LoopThread()
        else:
            self._pool = ThreadPoolExecutor(max_workers=self._concurrency, thread_name_prefix="kfn-handler")

    def close(self) -> None:
        """Stop taking work. Never waits: a stuck handler thread must not keep the process alive."""
        self._closed = True
        if self._loop_thread is not None:
            self._loop_thread.stop()

    def try_acquire(self) -> bool:
        """Take a concurrency slot if one is free; the caller must then call invoke() exactly once."""
        with self._lock:
            if self._in_flight >= self._concurrency or self._closed:
                return False
            self._in_flight += 1
            return True

    def invoke(self, event: dict[str, Any], context: Any, *, request_id: str, deadline: float) -> Outcome:
        """Run the handler in a slot taken by try_acquire(); blocks until it returns or `deadline`.

        The deadline is on the time.monotonic() clock. The slot is released when the handler has
        returned, which for a timed-out handler is after this method has returned.
        """
        invocation = _Invocation(request_id, deadline)
        try:
            if self._handler.is_async:
                assert self._loop_thread is not None
                future = self._loop_thread.submit(self._run_async(event, context, invocation))
            else:
                assert self._pool is not None
                future = self._pool.submit(self._run_sync, event, context, invocation)
        except BaseException:
            self._release(invocation)
            raise
        try:
            return Outcome(OK, value=future.result(timeout=max(0.0, deadline - time.monotonic())))
        except TimeoutError:
            if future.done():
                # Either the handler raised TimeoutError itself, or it finished just now.
                return self._settled(future)
        except BaseException as e:  # noqa: BLE001 - whatever the handler raised is its answer
            return Outcome(ERROR, error=e)
        self._mark_overdue(invocation)
        if self._handler.is_async:
            assert self._loop_thread is not None
            self._loop_thread.cancel(invocation)
        elif future.cancel():
            self._release(invocation)  # it never started
        return Outcome(TIMEOUT)

    @staticmethod
    def _settled(future: Future[Any]) -> Outcome:
        try:
            return Outcome(OK, value=future.result(timeout=0))
        except BaseException as e:  # noqa: BLE001 - whatever the handler raised is its answer
            return Outcome(ERROR, error=e)

    def _run_sync(self, event: dict[str, Any], context: Any, invocation: _Invocation) -> Any:
        token = current_request_id.set(invocation.request_id)
        try:
            result = self._handler.function(event, context)
            if hasattr(result, "__await__"):
                # A plain function that returned an awaitable (e.g. a decorated coroutine function).
                result = self._await_from_thread(result, invocation)
            return result
        finally:
            current_request_id.reset(token)
            self._release(invocation)

    def _await_from_thread(self, awaitable: Any, invocation: _Invocation) -> Any:
        with self._lock:
            if self._loop_thread is None:
                self._loop_thread = _LoopThread()
        loop_thread = self._loop_thread
        inner = _Invocation(invocation.request_id, invocation.deadline)
        future = loop_thread.submit(_awaiting(awaitable, inner))
        try:
            return future.result(timeout=max(0.0, invocation.deadline - time.monotonic()))
        except TimeoutError:
            if not future.done():
                inner.overdue = True
                loop_thread.cancel(inner)
            raise

    async def _run_async(self, event: dict[str, Any], context: Any, invocation: _Invocation) -> Any:
        try:
            invocation.task = self._loop_thread.current_task()  # type: ignore[union-attr]
            if invocation.overdue:
                return None  # timed out before it was ever scheduled
            current_request_id.set(invocation.request_id)  # the task runs in its own context copy
            return await self._handler.function(event, context)
        finally:
            self._release(invocation)

    def _release(self, invocation: _Invocation) -> None:
        with self._lock:
            invocation.finished = True
            self._in_flight -= 1
            if invocation.overdue:
                self._overdue -= 1

    def _mark_overdue(self, invocation: _Invocation) -> None:
        with self._lock:
            if invocation.finished:
                return
            invocation.overdue = True
            self._overdue += 1
        timer = threading.Timer(self._stuck_grace, self._check_stuck, args=(invocation,))
        timer.daemon = True
        timer.start()

    def _check_stuck(self, invocation: _Invocation) -> None:
        if not invocation.finished and not self._closed:
            self._on_stuck(invocation.request_id, time.monotonic() - invocation.deadline)


async def _awaiting(awaitable: Any, invocation: _Invocation) -> Any:
    import asyncio

    invocation.task = asyncio.current_task()
    if invocation.overdue:
        return None
    current_request_id.set(invocation.request_id)
    return await awaitable


class _LoopThread:
    """One asyncio event loop running forever in a daemon thread."""

    def __init__(self) -> None:
        import asyncio  # only functions with async handlers pay for importing asyncio

        self._asyncio = asyncio
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="kfn-asyncio", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self._asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coroutine: Coroutine[Any, Any, Any]) -> Future[Any]:
        return self._asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def current_task(self) -> Any:
        return self._asyncio.current_task(self.loop)

    def cancel(self, invocation: _Invocation) -> None:
        """Cancel the invocation's task; one not yet started sees `overdue` and returns at once."""
        def cancel() -> None:
            if invocation.task is not None:
                invocation.task.cancel()
        self.loop.call_soon_threadsafe(cancel)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
