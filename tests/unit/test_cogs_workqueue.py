"""kfn._cogs.workqueue: keys handled once per change, never by two workers at once."""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from kfn._cogs.workqueue import WorkQueue
from tests.support.waiting import eventually


@contextlib.asynccontextmanager
async def running(queue: WorkQueue[str]) -> AsyncIterator[WorkQueue[str]]:
    task = asyncio.create_task(queue.run())
    try:
        yield queue
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(predicate: Callable[[], bool]) -> None:
    await eventually(predicate, timeout=5.0, interval=0.005)


def recorder(gate: asyncio.Event | None = None) -> tuple[list[str], Callable[[str], Awaitable[None]]]:
    handled: list[str] = []

    async def handle(key: str) -> None:
        handled.append(key)
        if gate is not None:
            await gate.wait()
    return handled, handle


async def test_a_key_asked_for_several_times_before_a_worker_takes_it_is_handled_once() -> None:
    handled, handle = recorder()
    queue = WorkQueue("test", handle, workers=1)
    for _ in range(5):
        queue.add("a")
    queue.add("b")
    async with running(queue):
        await until(lambda: len(handled) == 2)
        await asyncio.sleep(0.05)
    assert handled == ["a", "b"]


async def test_a_key_asked_for_while_it_is_handled_is_handled_again_afterwards_never_twice_at_once() -> None:
    gate = asyncio.Event()
    active: list[str] = []
    most = 0
    handled: list[str] = []

    async def handle(key: str) -> None:
        nonlocal most
        active.append(key)
        most = max(most, active.count(key))
        handled.append(key)
        await gate.wait()
        active.remove(key)

    queue = WorkQueue("test", handle, workers=4)
    queue.add("a")
    async with running(queue):
        await until(lambda: handled == ["a"])
        queue.add("a")
        queue.add("a")
        await asyncio.sleep(0.05)
        assert handled == ["a"]          # not while the first is handled
        gate.set()
        await until(lambda: handled == ["a", "a"])
        await asyncio.sleep(0.05)
    assert handled == ["a", "a"] and most == 1


async def test_keys_asked_for_later_wait_and_changes_meanwhile_make_one() -> None:
    handled, handle = recorder()
    queue = WorkQueue("test", handle, workers=1)
    async with running(queue):
        queue.add_after("a", 0.1)
        queue.add_after("a", 0.1)
        await asyncio.sleep(0.03)
        assert handled == []
        await until(lambda: handled == ["a"])
        await asyncio.sleep(0.15)
    assert handled == ["a"]


async def test_a_failing_key_is_tried_again_and_dropped_after_its_retries_while_others_go_on(
        caplog: pytest.LogCaptureFixture) -> None:
    attempts: list[str] = []

    async def handle(key: str) -> None:
        attempts.append(key)
        if key == "bad":
            raise RuntimeError("no")

    queue = WorkQueue("test", handle, workers=1, retries=3, retry_first=0.01, retry_most=0.02)
    queue.add("bad")
    queue.add("good")
    async with running(queue):
        await until(lambda: attempts.count("bad") == 3)
        await asyncio.sleep(0.1)
    assert attempts.count("bad") == 3 and attempts.count("good") == 1
    assert any("giving up on bad after 3 failures" in r.getMessage() for r in caplog.records)


async def test_workers_handle_different_keys_at_once() -> None:
    gate = asyncio.Event()
    handled, handle = recorder(gate)
    queue = WorkQueue("test", handle, workers=3)
    for key in "abc":
        queue.add(key)
    async with running(queue):
        await until(lambda: sorted(handled) == ["a", "b", "c"])
        gate.set()


def test_a_queue_without_workers_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one worker"):
        WorkQueue("test", recorder()[1], workers=0)


async def test_a_key_of_a_queue_without_a_retry_limit_is_tried_until_it_succeeds_while_others_go_on() -> None:
    attempts: list[str] = []

    async def handle(key: str) -> None:
        attempts.append(key)
        if key == "bad" and attempts.count("bad") < 12:
            raise RuntimeError("no")

    queue = WorkQueue("test", handle, workers=1, retries=None, retry_first=0.001, retry_most=0.005)
    queue.add("bad")
    queue.add("good")
    async with running(queue):
        await until(lambda: attempts.count("bad") == 12)
        queue.add("later")
        await until(lambda: "later" in attempts)
    assert attempts.count("good") == 1 and attempts.count("bad") == 12


def test_a_queue_that_would_never_try_a_key_is_refused() -> None:
    with pytest.raises(ValueError, match="at least once"):
        WorkQueue("test", recorder()[1], retries=0)
