"""Stopping background tasks that may not want to stop."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

logger = logging.getLogger(__name__)


async def stop_tasks(tasks: Iterable[asyncio.Task[object]], *, what: str, attempts: int = 10,
                     wait: float = 1.0) -> None:
    """Cancel `tasks` and wait for them, for at most about `attempts * wait` seconds.

    A task awaiting library I/O can swallow a cancellation (a client that turns it into its own
    timeout error, then a retry loop that catches that): so cancel again after each `wait`,
    instead of waiting on it forever. Tasks still running at the end are logged and left behind;
    exceptions the tasks ended with are logged, never raised.
    """
    started = [t for t in tasks if t is not None]
    pending = [t for t in started if not t.done()]
    for _ in range(attempts):
        if not pending:
            break
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=wait)
        pending = [t for t in pending if not t.done()]
    if pending:
        logger.warning("%s: tasks did not stop: %s", what, ", ".join(t.get_name() for t in pending))
    for task in started:
        if task.done() and not task.cancelled() and task.exception() is not None:
            logger.warning("%s: task %s ended with %r", what, task.get_name(), task.exception())
