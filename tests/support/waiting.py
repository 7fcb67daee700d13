"""Waiting in tests: poll a condition until it holds, bounded in time and in the number of polls.

    wait_until(lambda: path.exists(), timeout=10, what="the pid file")          # blocking
    ready = await eventually(lambda: backend.ready(HELLO), what="an instance")  # in an event loop

Both return the predicate's first truthy value, and fail the test with an AssertionError naming
what was awaited (`what`, or else the predicate's source line), how long and how many polls it
took, and the last value (or the last exception listed in `ignoring`) seen.
"""
from __future__ import annotations

import asyncio
import inspect
import linecache
import math
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

TIMEOUT = 30.0        # long enough for a loaded 2-core machine; a wait that holds returns at once
_SHOWN = 1500         # characters of the last value a failure shows


def wait_until(predicate: Callable[[], T], *, timeout: float = TIMEOUT, interval: float = 0.05, what: str = "",
               ignoring: tuple[type[BaseException], ...] = ()) -> T:
    """Call `predicate` every `interval` seconds until it returns something truthy, and return that.

    Blocks for at most `timeout` seconds and `timeout / interval` polls (plus one last poll at the
    deadline); then raises AssertionError. An exception of a type in `ignoring` counts as "not yet".
    """
    polls = _polls(timeout, interval)
    deadline = time.monotonic() + timeout
    last: object = None
    for poll in range(1, polls + 1):
        try:
            value = predicate()
        except ignoring as e:
            last = e
        else:
            if value:
                return value
            last = value
        if poll == polls or time.monotonic() >= deadline:
            break
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
    raise AssertionError(_failure(predicate, what, timeout, poll, last))


async def eventually(predicate: Callable[[], T | Awaitable[T]], *, timeout: float = TIMEOUT, interval: float = 0.01,
                     what: str = "", ignoring: tuple[type[BaseException], ...] = ()) -> T:
    """`wait_until` for a coroutine: awaits `interval` between polls, so the event loop runs meanwhile.

    `predicate` may return an awaitable (an async check); its result is what counts. Runs for at
    most `timeout` seconds and `timeout / interval` polls; then raises AssertionError.
    """
    polls = _polls(timeout, interval)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: object = None
    for poll in range(1, polls + 1):
        try:
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
        except ignoring as e:
            last = e
        else:
            if value:
                return value
            last = value
        if poll == polls or loop.time() >= deadline:
            break
        await asyncio.sleep(min(interval, max(0.0, deadline - loop.time())))
    raise AssertionError(_failure(predicate, what, timeout, poll, last))


def _polls(timeout: float, interval: float) -> int:
    if timeout <= 0 or interval <= 0:
        raise ValueError(f"timeout and interval must be positive (got {timeout}, {interval})")
    return math.ceil(timeout / interval) + 1


def _failure(predicate: Callable[..., object], what: str, timeout: float, polls: int, last: object) -> str:
    return (f"timed out after {timeout:g}s ({polls} polls) waiting for {what or _describe(predicate)}"
            f" (last: {repr(last)[:_SHOWN]})")


def _describe(predicate: Callable[..., object]) -> str:
    """The predicate's name, or for a lambda where it was written and its source line."""
    code = getattr(predicate, "__code__", None)
    if code is None:
        return repr(predicate)
    if code.co_name != "<lambda>":
        return str(getattr(predicate, "__qualname__", code.co_name))
    line = linecache.getline(code.co_filename, code.co_firstlineno).strip()
    return f"the condition at {code.co_filename}:{code.co_firstlineno} ({line})"
