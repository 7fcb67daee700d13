"""Asynchronous invocations end to end through `kfn local`: accepted per second at /async-function/
and deliveries per second to a no-op function (issue 11).

    python bench/async_local.py [--events 2000] [--clients 1,32]

A fresh `kfn local` serves one no-op function (one warm instance, concurrency 16, up to 4
instances). For each number of clients, `--events` POSTs to /async-function/noop go out over
keep-alive connections, each answered 202 once its event is in SQLite (fsync'd, group-committed);
meanwhile the delivery engine hands them to the function through the gateway. Measured:

  - accepted/s: events answered 202 per second, from the first POST to the last 202;
  - 202 latency: median and p99 of one POST (the durable store included);
  - delivered/s: events delivered (the function ran and the event was removed) per second, from
    the first POST until `kfn_async_events_total{outcome="delivered"}` counts them all, i.e. the
    rate of the whole path, accept → store → engine → dispatch → instance → complete.

Prints a Markdown table. Every process it starts is stopped by PID, its process group killed.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.startup import free_port, kfn_local  # noqa: E402 - the bench directory is not a package on sys.path

PYTHON = sys.executable
NOOP = "def handler(event, context):\n    return None\n"
PAYLOAD = b'{"order": 12345, "items": ["a", "b", "c"]}'


async def delivered(session: aiohttp.ClientSession, base: str) -> int:
    async with session.get(base + "/metrics") as response:
        for line in (await response.text()).splitlines():
            if line.startswith('kfn_async_events_total{outcome="delivered"}'):
                return int(float(line.rsplit(" ", 1)[1]))
    return 0


async def wait_ready(session: aiohttp.ClientSession, base: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("kfn local exited (see its log)")
        with contextlib.suppress(aiohttp.ClientError, OSError):
            async with session.get(base + "/system/functions/noop") as response:
                if response.status == 200 and (await response.json())["availableReplicas"] >= 1:
                    return
        await asyncio.sleep(0.05)
    raise SystemExit("kfn local did not become ready in 120 s")


async def run(base: str, process: subprocess.Popen[bytes], events: int, clients: int) -> dict[str, float]:
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        await wait_ready(session, base, process)
        before = await delivered(session, base)
        latencies: list[float] = []
        sent = 0

        async def client() -> None:
            nonlocal sent
            while sent < events:
                sent += 1
                started = time.perf_counter()
                async with session.post(base + "/async-function/noop", data=PAYLOAD,
                                        headers={"Content-Type": "application/json"}) as response:
                    await response.read()
                    if response.status != 202:
                        raise SystemExit(f"/async-function answered {response.status}")
                latencies.append((time.perf_counter() - started) * 1000)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        accepted = time.perf_counter() - started
        deadline = time.monotonic() + 600
        while await delivered(session, base) - before < events:
            if time.monotonic() > deadline:
                raise SystemExit("the events were not all delivered within 10 minutes")
            await asyncio.sleep(0.02)
        finished = time.perf_counter() - started
    latencies.sort()
    return {"accepted": events / accepted, "p50": statistics.median(latencies),
            "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], "delivered": events / finished}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--clients", default="1,32", help="comma-separated numbers of concurrent clients")
    args = parser.parse_args()
    rows = []
    for clients in (int(c) for c in args.clients.split(",")):
        with tempfile.TemporaryDirectory(prefix="kfn-bench-async-") as tmp:
            directory = Path(tmp) / "functions"
            directory.mkdir()
            manifest = {"apiVersion": "kfn.dev/v1alpha1", "kind": "Function", "metadata": {"name": "noop"},
                        "spec": {"handler": "main.handler", "source": {"files": {"main.py": NOOP}},
                                 "concurrency": 16, "scale": {"minReplicas": 1, "maxReplicas": 4}}}
            (directory / "noop.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
            port = free_port()
            with kfn_local(directory, port, Path(tmp) / "kfn-local.log", stop_timeout=60) as process:
                rows.append((clients, asyncio.run(run(f"http://127.0.0.1:{port}", process, args.events, clients))))
    print(f"\nAsync invocations through kfn local (SQLite, synchronous=FULL), {args.events} events of "
          f"{len(PAYLOAD)} bytes to a no-op function, {os.cpu_count()} CPUs\n")
    print("| clients | accepted/s (202) | 202 latency p50 / p99 ms | delivered/s, end to end |")
    print("|---:|---:|---:|---:|")
    for clients, row in rows:
        print(f"| {clients} | {row['accepted']:,.0f} | {row['p50']:.1f} / {row['p99']:.1f} | {row['delivered']:,.0f} |")


if __name__ == "__main__":
    main()
