"""Stopping background tasks: bounded even when a task swallows its cancellation."""
from __future__ import annotations

import asyncio
import logging

import pytest

from kfn.core.aiotasks import stop_tasks


async def test_a_task_that_swallows_one_cancellation_is_cancelled_again() -> None:
    async def stubborn() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            pass  # what a client turning cancellation into its own error looks like to a retry loop
        await asyncio.sleep(3600)

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await stop_tasks([task], what="test", wait=0.05)
    assert task.cancelled()


async def test_a_task_that_never_stops_is_left_behind_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    release = asyncio.Event()

    async def immortal() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue

    task = asyncio.create_task(immortal(), name="immortal")
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING):
        await stop_tasks([task], what="test", attempts=3, wait=0.01)
    assert not task.done()
    assert "tasks did not stop: immortal" in caplog.text
    release.set()
    task.cancel()
    await asyncio.wait([task], timeout=1)


async def test_an_exception_a_task_ended_with_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    async def broken() -> None:
        raise RuntimeError("boom")

    task = asyncio.create_task(broken(), name="broken")
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING):
        await stop_tasks([task], what="test")
    assert "task broken ended with RuntimeError('boom')" in caplog.text
