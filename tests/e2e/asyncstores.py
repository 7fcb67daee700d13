"""Both async event stores for one set of scenarios (the `backend` and `store` fixtures of
tests/e2e/conftest.py): SQLite in a temporary directory, and JetStream on a real `nats-server`
(`tests.support.nats`) on 127.0.0.1.

Every loop waiting for something is bounded. The fault ledger (`record`) writes one JSON line per
scenario and backend to `.cache/async-faults.jsonl`, so the counts can be read as a table after a run.
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from kfn.core.asyncpolicy import AsyncConfig, RetryDelays
from kfn.core.functions import FunctionRef
from kfn.core.instances import InvocationResult
from kfn.events.delivery import DeliveryEngine, DeliverySettings
from kfn.events.jetstream import JetStreamStore
from kfn.events.sqlite import SqliteStore
from kfn.events.store import EventStore
from tests.support.nats import NatsServer
from tests.support.ports import free_port

REPO = Path(__file__).resolve().parents[2]
LEDGER = REPO / ".cache" / "async-faults.jsonl"
FN = FunctionRef("default", "worker")
LEASE = 1.0
# Lambda's policy with delays short enough for tests.
FAST = DeliverySettings(
    delays=RetryDelays(function_errors=(0.2, 0.4), system_initial=0.05, system_max=0.5,
                       destination_initial=0.1, destination_max=0.5),
    heartbeat=0.3, poll=0.1, timeout_margin=0.2, destination_timeout=2.0, stats_interval=0.2, error_backoff=0.2)


@dataclass
class Backend:
    """One of the two stores, and how a scenario restarts its storage."""

    name: str
    directory: Path
    nats: NatsServer | None = None

    def store(self, **kwargs: Any) -> EventStore:
        lease = kwargs.pop("lease", LEASE)
        if self.nats is not None:
            return JetStreamStore(self.nats.url, lease=lease, connect_attempts=1, publish_timeout=2.0, **kwargs)
        return SqliteStore(self.directory / "events.sqlite3", lease=lease, poll=0.05, **kwargs)

    def worker_store(self) -> dict[str, Any]:
        """How a worker process opens the same store (see async_worker.py)."""
        if self.nats is not None:
            return {"kind": "jetstream", "url": self.nats.url, "lease": LEASE}
        return {"kind": "sqlite", "path": str(self.directory / "events.sqlite3"), "lease": LEASE}


@dataclass
class FakeFunction:
    """An `invoke` for the engine: records every call; `answer` decides each result."""

    answer: Callable[[bytes, int], Awaitable[InvocationResult]] | None = None
    calls: list[str] = field(default_factory=list)
    running: int = 0
    most_running: int = 0

    async def __call__(self, ref: FunctionRef, payload: bytes, invocation_id: str) -> InvocationResult:
        self.calls.append(invocation_id)
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            if self.answer is None:
                await asyncio.sleep(0)
                return InvocationResult(payload=b'{"ok": true}')
            return await self.answer(payload, self.calls.count(invocation_id))
        finally:
            self.running -= 1

    def distinct(self) -> set[str]:
        return set(self.calls)


def engine(store: EventStore, function: FakeFunction, config: AsyncConfig | None = None,
           settings: DeliverySettings = FAST, **kwargs: Any) -> DeliveryEngine:
    configs = {FN: config or AsyncConfig(FN, timeout=1.0, concurrency=8)}
    return DeliveryEngine(store, function, lambda: configs, settings=settings, **kwargs)


class Receiver:
    """An HTTP endpoint on 127.0.0.1 that records POSTs; it can be down (nothing listening)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.received: list[tuple[dict[str, str], bytes]] = []
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> None:
        async def hook(request: web.Request) -> web.Response:
            self.received.append((dict(request.headers), await request.read()))
            return web.Response(status=204)

        app = web.Application()
        app.router.add_post("/hook", hook)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.received]


def record(scenario: str, backend: str, **counts: int) -> None:
    """One row of the fault table: accepted / delivered / retried / dead-lettered / lost (and more)."""
    LEDGER.parent.mkdir(exist_ok=True)
    with LEDGER.open("a") as out:
        out.write(json.dumps({"scenario": scenario, "backend": backend, **counts}) + "\n")
