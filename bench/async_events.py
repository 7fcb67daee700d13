"""Raw throughput of the async event stores: accepts per second and deliveries per second to a
no-op function, on SQLite (local mode's store) and on JetStream (a nats-server on 127.0.0.1).

Accepts are measured two ways: one at a time (each waits for its own durable commit, as a
single client does) and 64 at once (as a busy gateway does; SQLite groups them into one commit,
JetStream pipelines the publishes). Deliveries go through the whole engine (claim, lease,
invoke, complete) to a function that returns at once, so they show the store's and the
engine's cost per event, not a function's. This is the store's ceiling, without the gateway's
HTTP in front (bench/async_local.py measures the whole path through `kfn local`).

    python bench/async_events.py [--events 2000]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from kfn.core.asyncpolicy import AsyncConfig
from kfn.core.functions import FunctionRef
from kfn.core.instances import InvocationResult
from kfn.events.delivery import DeliveryEngine, DeliverySettings
from kfn.events.jetstream import JetStreamStore
from kfn.events.sqlite import SqliteStore
from kfn.events.store import EventStore

FN = FunctionRef("default", "noop")
PAYLOAD = b'{"order": 12345, "items": ["a", "b", "c"]}'


async def measure(store: EventStore, events: int) -> tuple[float, float, float]:
    await store.start()
    try:
        start = time.perf_counter()
        for i in range(events):
            await store.accept(FN, PAYLOAD, f"seq-{i}")
        sequential = events / (time.perf_counter() - start)
        start = time.perf_counter()
        pending: set[asyncio.Task[object]] = set()
        for i in range(events):
            if len(pending) >= 64:
                _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            pending.add(asyncio.create_task(store.accept(FN, PAYLOAD, f"par-{i}")))
        await asyncio.gather(*pending)
        concurrent = events / (time.perf_counter() - start)

        invoked = 0
        all_invoked = asyncio.Event()

        async def noop(ref: FunctionRef, payload: bytes, invocation_id: str) -> InvocationResult:
            nonlocal invoked
            invoked += 1
            if invoked >= 2 * events:
                all_invoked.set()
            return InvocationResult(payload=b"null")

        configs = {FN: AsyncConfig(FN, concurrency=64)}
        engine = DeliveryEngine(store, noop, lambda: configs, settings=DeliverySettings(poll=0.05, stats_interval=60))
        start = time.perf_counter()
        await engine.start()
        await asyncio.wait_for(all_invoked.wait(), timeout=300)
        elapsed = time.perf_counter() - start
        await engine.close()
        done = invoked
        return sequential, concurrent, done / elapsed
    finally:
        await store.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_nats(directory: str) -> tuple[subprocess.Popen[bytes], int] | None:
    server = shutil.which("nats-server") or "/usr/sbin/nats-server"
    if not os.path.exists(server):
        return None
    port = free_port()
    process = subprocess.Popen([server, "-js", "-sd", f"{directory}/nats", "-a", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    return process, port


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2000)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        rows.append(("SQLite (WAL, synchronous=FULL)",
                     asyncio.run(measure(SqliteStore(Path(directory) / "events.sqlite3", poll=0.05), args.events))))
        started = start_nats(directory)
        if started is None:
            print("nats-server not found: JetStream skipped (make install installs it)")
        else:
            process, port = started
            try:
                store = JetStreamStore(f"nats://127.0.0.1:{port}", connect_attempts=5)
                rows.append(("JetStream (nats-server, file storage)", asyncio.run(measure(store, args.events))))
            finally:
                os.kill(process.pid, signal.SIGTERM)
                process.wait(timeout=10)
    print(f"\nAsync event stores, {args.events} events of {len(PAYLOAD)} bytes, {os.cpu_count()} CPUs\n")
    print("| store | accepts/s, one at a time | accepts/s, 64 at once | deliveries/s to a no-op |")
    print("|---|---:|---:|---:|")
    for name, (sequential, concurrent, delivered) in rows:
        print(f"| {name} | {sequential:,.0f} | {concurrent:,.0f} | {delivered:,.0f} |")


if __name__ == "__main__":
    main()
