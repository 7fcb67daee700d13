"""`kfn operator` run in-process for tests: kopf in a thread of its own, stopped on exit."""
from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator

from kfn_operator.config import OperatorConfig
from kfn_operator.handlers import Controller
from kfn_operator.main import operate


@contextlib.asynccontextmanager
async def running_operator(config: OperatorConfig, *, controller: Controller | None = None,
                           wait_ready: bool = True) -> AsyncIterator[None]:
    """`kfn operator` (kopf, in-process) in its own thread and event loop, stopped on exit.

    wait_ready: wait (up to 30 s) for kopf to run first; a replica meant to stand by never gets there."""
    stop, ready = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(operate(config, stop_flag=stop, ready_flag=ready, controller=controller))
        except BaseException as e:  # noqa: BLE001 - surfaced by the fixture, not lost in the thread
            errors.append(e)
            ready.set()

    thread = threading.Thread(target=run, name="kfn-operator", daemon=True)
    thread.start()
    try:
        if wait_ready:
            await asyncio.to_thread(ready.wait, 30)
        if errors:
            raise errors[0]
        yield
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 30)
    assert not thread.is_alive(), "the operator did not stop"
    if errors:
        raise errors[0]
