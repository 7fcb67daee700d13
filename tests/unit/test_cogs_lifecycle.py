"""Parts of a process: started in order, stopped in reverse, whatever happens meanwhile."""
from __future__ import annotations

import asyncio
import logging

import pytest

from kfn._cogs.lifecycle import Parts


def recorder(log: list[str], name: str, *, fail: bool = False, hang: bool = False):  # type: ignore[no-untyped-def]
    async def step() -> str:
        log.append(name)
        if hang:
            await asyncio.Event().wait()
        if fail:
            raise RuntimeError(f"{name} failed")
        return name
    return step


async def test_parts_stop_in_the_reverse_order_they_started() -> None:
    log: list[str] = []
    async with Parts("test") as parts:
        for name in ("a", "b", "c"):
            assert await parts.start(name, recorder(log, f"start {name}"), recorder(log, f"stop {name}")) \
                == f"start {name}"
        parts.add("d", recorder(log, "stop d"))
        log.append("serving")
    assert log == ["start a", "start b", "start c", "serving", "stop d", "stop c", "stop b", "stop a"]


async def test_a_failed_start_stops_the_parts_started_before_it_and_raises() -> None:
    log: list[str] = []
    with pytest.raises(RuntimeError, match="start b failed"):
        async with Parts("test") as parts:
            await parts.start("a", recorder(log, "start a"), recorder(log, "stop a"))
            await parts.start("b", recorder(log, "start b", fail=True), recorder(log, "stop b"))
            log.append("never")
    assert log == ["start a", "start b", "stop a"]


async def test_a_failed_stop_is_logged_and_the_others_still_stop(caplog: pytest.LogCaptureFixture) -> None:
    log: list[str] = []
    async with Parts("test") as parts:
        parts.add("a", recorder(log, "stop a"))
        parts.add("b", recorder(log, "stop b", fail=True))
        parts.add("c", recorder(log, "stop c"))
    assert log == ["stop c", "stop b", "stop a"]
    assert "test: stopping b failed" in caplog.text


async def test_a_stop_that_overruns_its_timeout_is_left_behind(caplog: pytest.LogCaptureFixture) -> None:
    log: list[str] = []
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with Parts("test", timeout=5) as parts:
        parts.add("a", recorder(log, "stop a"))
        parts.add("b", recorder(log, "stop b", hang=True), timeout=0.1)
    assert log == ["stop b", "stop a"]
    assert loop.time() - started < 2
    assert "stopping b took more than 0.1s" in caplog.text


async def test_cancelled_while_serving_every_part_stops_and_the_cancellation_propagates() -> None:
    log: list[str] = []
    serving = asyncio.Event()

    async def run() -> None:
        async with Parts("test") as parts:
            await parts.start("a", recorder(log, "start a"), recorder(log, "stop a"))
            parts.task("loop", asyncio.Event().wait)
            serving.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(run())
    await serving.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert log == ["start a", "stop a"]


async def test_cancelled_while_stopping_the_stops_go_on_then_the_cancellation_propagates() -> None:
    log: list[str] = []
    stopping = asyncio.Event()
    release = asyncio.Event()

    async def slow_stop() -> None:
        stopping.set()
        await release.wait()
        log.append("stop b")

    async def run() -> None:
        async with Parts("test") as parts:
            parts.add("a", recorder(log, "stop a"))
            parts.add("b", slow_stop)

    task = asyncio.create_task(run())
    await stopping.wait()
    task.cancel()
    await asyncio.sleep(0.05)
    assert not task.done()     # still stopping b
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert log == ["stop b", "stop a"]


async def test_a_background_task_that_failed_is_logged_when_stopped(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR)

    async def broken() -> None:
        raise ValueError("boom")

    async with Parts("test") as parts:
        task = parts.task("broken", broken)
        await asyncio.wait({task})
    assert "test: broken had ended with ValueError('boom')" in caplog.text


async def test_parts_started_in_a_starting_block_run_on_unless_it_fails() -> None:
    log: list[str] = []
    parts = Parts("test")
    async with parts.starting():
        await parts.start("a", recorder(log, "start a"), recorder(log, "stop a"))
    assert log == ["start a"]
    with pytest.raises(RuntimeError, match="start b failed"):
        async with parts.starting():
            await parts.start("b", recorder(log, "start b", fail=True), recorder(log, "stop b"))
    assert log == ["start a", "start b", "stop a"]
    await parts.stop()   # nothing left to stop
    assert log == ["start a", "start b", "stop a"]


async def test_a_bound_known_only_at_the_end_is_asked_for_when_stopping(caplog: pytest.LogCaptureFixture) -> None:
    bound = [5.0]
    async with Parts("test") as parts:
        parts.add("a", recorder([], "stop a", hang=True), timeout=lambda: bound[0])
        bound[0] = 0.1
    assert "stopping a took more than 0.1s" in caplog.text
