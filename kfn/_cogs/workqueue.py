"""A queue of keys to work on, each at most once at a time (as client-go's workqueue).

`WorkQueue.add(key)` asks for `key` to be handled; a key asked for again before a worker took it is
handled once, and one asked for while a worker handles it is handled again afterwards (so the
last change is never missed, and never handled by two workers at once). `add_after(key, delay)`
asks later. `run` handles keys with `workers` workers until cancelled: a handler that raises is
logged and its key asked for again after a growing delay (`retry_first` doubling up to
`retry_most`); `retries` failures in a row drop it (logged): the next change asks again. With
`retries=None` a key is never dropped: it is tried every `retry_most` seconds at most until its
handler succeeds (for keys whose work no later change would ask for again, such as recreating
something deleted); a failing key waits on a timer, never holding a worker from the others.
"""
from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from kfn.core.aiotasks import stop_tasks

logger = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)


class WorkQueue(Generic[K]):
    """Keys waiting for `handle`, each handled by one worker at a time (see the module docstring)."""

    def __init__(self, what: str, handle: Callable[[K], Awaitable[object]], *, workers: int = 4,
                 retries: int | None = 5, retry_first: float = 0.5, retry_most: float = 30.0) -> None:
        if workers < 1:
            raise ValueError("a work queue needs at least one worker")
        if retries is not None and retries < 1:
            raise ValueError("a work queue tries a key at least once (retries >= 1, or None: until it succeeds)")
        self.what = what
        self._handle = handle
        self._workers = workers
        self._retries = retries
        self._retry_first = retry_first
        self._retry_most = retry_most
        self._order: collections.deque[K] = collections.deque()
        self._queued: set[K] = set()
        self._busy: set[K] = set()
        self._again: set[K] = set()
        self._failures: dict[K, int] = {}
        self._timers: dict[K, asyncio.TimerHandle] = {}
        self._ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def __len__(self) -> int:
        """Keys waiting (not those being handled, nor those asked for later)."""
        return len(self._order)

    def add(self, key: K) -> None:
        """Ask for `key` to be handled (once, however often asked before a worker takes it)."""
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        if key in self._busy:
            self._again.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._order.append(key)
            self._ready.set()

    def add_after(self, key: K, delay: float) -> None:
        """Ask for `key` in `delay` seconds (an earlier `add` or `add_after` of it wins)."""
        if key in self._queued or key in self._timers:
            return
        self._timers[key] = asyncio.get_running_loop().call_later(delay, self._due, key)

    def _due(self, key: K) -> None:
        self._timers.pop(key, None)
        self.add(key)

    async def run(self) -> None:
        """Handle keys with the workers; runs until cancelled (then stops the workers: a handler in
        flight is cancelled)."""
        self._tasks = [asyncio.create_task(self._work(), name=f"kfn-{self.what}-{i}") for i in range(self._workers)]
        try:
            await asyncio.gather(*self._tasks)
        finally:
            for timer in self._timers.values():
                timer.cancel()
            self._timers.clear()
            await stop_tasks(self._tasks, what=self.what)

    async def _work(self) -> None:
        while True:
            while not self._order:
                self._ready.clear()
                await self._ready.wait()
            key = self._order.popleft()
            self._queued.discard(key)
            self._busy.add(key)
            try:
                await self._handle(key)
                self._failures.pop(key, None)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - one key's failure never stops the queue
                failures = self._failures[key] = self._failures.get(key, 0) + 1
                if self._retries is not None and failures >= self._retries:
                    logger.warning("%s: giving up on %s after %d failures: %s", self.what, key, failures, e)
                    self._failures.pop(key, None)
                else:
                    delay = min(self._retry_most, self._retry_first * 2 ** min(failures - 1, 32))
                    logger.info("%s: %s failed (%s); trying again in %.1fs", self.what, key, e, delay)
                    self.add_after(key, delay)
            finally:
                self._busy.discard(key)
                if key in self._again:
                    self._again.discard(key)
                    self.add(key)
