"""The operator's small HTTP endpoints (liveness while standing by, the autoscaler's /metrics):
one GET route each, on a port of its own."""
from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web


async def serve_get(port: int, path: str, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                    ) -> web.AppRunner:
    """`GET path` answered by `handler` on 0.0.0.0:port; returns once listening (OSError if the port
    cannot be had, nothing left listening). The caller must `await runner.cleanup()`."""
    app = web.Application()
    app.router.add_get(path, handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host="0.0.0.0", port=port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
