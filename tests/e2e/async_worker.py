"""A process that delivers async events (and may accept some first), for tests that SIGKILL it.

    python -m tests.e2e.async_worker '{"store": {...}, "log": PATH, "accept": [IDS], "work": SECONDS}'

Its function writes `start ID` and `done ID` lines to the log (O_APPEND, one write per line, so
a SIGKILL leaves whole lines), and the worker writes `accepted ID` once `accept` returned, i.e.
once the store said the event is durable. SIGTERM stops it.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from typing import Any

from kfn.core.asyncpolicy import AsyncConfig, RetryDelays
from kfn.core.functions import FunctionRef
from kfn.core.instances import InvocationResult
from kfn.events.delivery import DeliveryEngine, DeliverySettings
from kfn.events.jetstream import JetStreamStore
from kfn.events.sqlite import SqliteStore
from kfn.events.store import EventStore

FN = FunctionRef("default", "worker")


def open_store(spec: dict[str, Any]) -> EventStore:
    if spec["kind"] == "jetstream":
        return JetStreamStore(spec["url"], lease=spec["lease"], connect_attempts=5, publish_timeout=2.0)
    return SqliteStore(spec["path"], lease=spec["lease"], poll=0.05)


async def main(args: dict[str, Any]) -> None:
    log = os.open(args["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(line: str) -> None:
        os.write(log, (line + "\n").encode())

    async def invoke(ref: FunctionRef, payload: bytes, invocation_id: str) -> InvocationResult:
        write(f"start {invocation_id}")
        await asyncio.sleep(args.get("work", 0.05))
        write(f"done {invocation_id}")
        return InvocationResult(payload=b"{}")

    store = open_store(args["store"])
    await store.start()
    configs = {FN: AsyncConfig(FN, timeout=5.0, concurrency=args.get("concurrency", 4))}
    settings = DeliverySettings(delays=RetryDelays((0.2, 0.4), 0.05, 0.5, 0.1, 0.5), heartbeat=0.3, poll=0.1,
                                timeout_margin=0.5, stats_interval=1.0, error_backoff=0.2)
    engine = DeliveryEngine(store, invoke, lambda: configs, settings=settings)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await engine.start()
    write("ready")
    for invocation_id in args.get("accept", []):
        await store.accept(FN, json.dumps({"id": invocation_id}).encode(), invocation_id)
        write(f"accepted {invocation_id}")
    await stop.wait()
    await engine.close()
    await store.close()
    os.close(log)


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
