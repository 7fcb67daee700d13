"""Starting a process's parts in order and stopping them in reverse: the one place that orders shutdown.

    async with Parts("kfn gateway") as parts:
        await parts.start("backend", backend.start, backend.close)
        runner = await serve(...)
        parts.add("listener", runner.cleanup)          # started already: only its stop is registered
        parts.task("keys file", keys.run)              # a background task, cancelled on stop
        await stopped.wait()                           # the process serves here
    # leaving the block (normally, by an exception or a cancellation) stopped every part, last first

A part that fails to start leaves nothing behind of its own (its stop is not called); the parts
started before it are stopped, last first, and the start's exception propagates. Each stop is
bounded (`timeout`, per part or for all; a function when the bound is only known at the end); a
stop that fails or overruns is logged and the next part is stopped all the same.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

# How long a part's stop may take unless it says otherwise.
STOP_TIMEOUT = 30.0
# A background task's stop: cancelled, then given this long to end.
TASK_STOP_TIMEOUT = 10.0


@dataclass(frozen=True)
class Part:
    """A started part: its name (for the logs), how it stops and how long that may take."""

    name: str
    stop: Callable[[], Awaitable[object]]
    timeout: float | Callable[[], float]

    def bound(self) -> float:
        return self.timeout() if callable(self.timeout) else self.timeout


class Parts:
    """The parts a process started, stopped in reverse order by `stop` (or on leaving `async with`)."""

    def __init__(self, what: str, *, timeout: float = STOP_TIMEOUT) -> None:
        self.what = what
        self._timeout = timeout
        self._started: list[Part] = []

    async def __aenter__(self) -> Parts:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        traceback: TracebackType | None) -> None:
        await self.stop()

    @contextlib.asynccontextmanager
    async def starting(self) -> AsyncIterator[Parts]:
        """For an object whose `start` and `close` are separate calls: the parts started in the block
        run on after it, unless the block raises (then they are stopped, last first, and the
        exception propagates); `close` calls `stop`."""
        try:
            yield self
        except BaseException:
            await self.stop()
            raise

    async def start(self, name: str, start: Callable[[], Awaitable[T]],
                    stop: Callable[[], Awaitable[object]] | None = None, *,
                    timeout: float | Callable[[], float] | None = None) -> T:
        """Run `start` (as long as it takes) and register `stop` for the way out; returns what
        `start` returned. If `start` raises, nothing is registered and the exception propagates."""
        result = await start()
        if stop is not None:
            self.add(name, stop, timeout=timeout)
        return result

    def add(self, name: str, stop: Callable[[], Awaitable[object]], *,
            timeout: float | Callable[[], float] | None = None) -> None:
        """Register the stop of a part that is running already (or needs no start)."""
        self._started.append(Part(name, stop, self._timeout if timeout is None else timeout))

    def task(self, name: str, run: Callable[[], Coroutine[Any, Any, object]]) -> asyncio.Task[object]:
        """Run `run()` in a background task, cancelled when the parts stop (waited for up to
        TASK_STOP_TIMEOUT). Its failure is logged when it is stopped, never raised."""
        running = asyncio.create_task(run(), name=name)

        async def stop() -> None:
            running.cancel()
            await asyncio.wait({running})
            if not running.cancelled() and running.exception() is not None:
                logger.error("%s: %s had ended with %r", self.what, name, running.exception())

        self.add(name, stop, timeout=TASK_STOP_TIMEOUT)
        return running

    async def stop(self) -> None:
        """Stop every part started, last first; each within its timeout. A part whose stop fails or
        overruns is logged and left behind. A cancellation meanwhile does not interrupt the stops:
        every part is still stopped (bounded as ever), then CancelledError is raised."""
        cancelled = False
        while self._started:
            part = self._started.pop()
            cancelled = await self._stop(part) or cancelled
        if cancelled:
            raise asyncio.CancelledError

    async def _stop(self, part: Part) -> bool:
        """Stop one part; whether the caller was cancelled meanwhile."""
        loop = asyncio.get_running_loop()
        bound = part.bound()
        stopping = asyncio.ensure_future(part.stop())
        deadline = loop.time() + bound
        cancelled = False
        while not stopping.done() and (remaining := deadline - loop.time()) > 0:
            try:
                await asyncio.wait({stopping}, timeout=remaining)
            except asyncio.CancelledError:
                cancelled = True
        if not stopping.done():
            stopping.cancel()
            logger.error("%s: stopping %s took more than %gs; left behind", self.what, part.name, bound)
        elif not stopping.cancelled() and (error := stopping.exception()) is not None:
            logger.error("%s: stopping %s failed", self.what, part.name, exc_info=error)
        return cancelled
