"""A scheduler process for tests that compete, stop and SIGKILL schedulers.

    python -m tests.e2e.schedule_worker '{"store": {...}, "ticks": {...}, "lock": PATH, "log": PATH,
        "schedule": "rate(1 minute)", "clock": {"base": ..., "real": ..., "speed": 30}}'

It fires one function's schedule (`default/ticker`) under `kfn.triggers.leader.FileLock` (one
scheduler per lock file, as local mode runs it) into the event store, with a simulated clock
that runs `speed` times faster than real time from `base` (epoch seconds of simulated time at
real time `real`), so minute ticks come every few real seconds. Log lines (one write each, so a
SIGKILL leaves whole lines): `leading PID`, `fired TICK ID PID` once the store accepted a tick's
event, `late TICK`, `skipped N`. SIGTERM stops it.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import sys
import time
from typing import Any

import orjson

from kfn.core.functions import FunctionRef, parse_function
from kfn.triggers.leader import FileLock
from kfn.triggers.schedule import ScheduleSource
from kfn.triggers.ticks import KvTicks, SqliteTicks, TickStore
from tests.e2e.async_worker import open_store

FN = FunctionRef("default", "ticker")


def open_ticks(spec: dict[str, Any]) -> TickStore:
    if spec["kind"] == "kv":
        return KvTicks(spec["url"], connect_attempts=5)
    return SqliteTicks(spec["path"])


async def main(args: dict[str, Any]) -> None:
    log = os.open(args["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    pid = os.getpid()

    def write(line: str) -> None:
        os.write(log, (line + "\n").encode())

    clock_args = args["clock"]
    speed = float(clock_args["speed"])

    def clock() -> dt.datetime:
        simulated = clock_args["base"] + (time.time() - clock_args["real"]) * speed
        return dt.datetime.fromtimestamp(simulated, dt.UTC)

    store = open_store(args["store"])
    await store.start()
    ticks = open_ticks(args["ticks"])
    function = parse_function({
        "apiVersion": "kfn.dev/v1alpha1", "kind": "Function", "metadata": {"name": FN.name},
        "spec": {"handler": "main.handler", "source": {"files": {"main.py": "x = 1"}},
                 "triggers": [{"schedule": args["schedule"]}]},
    })

    async def sink(ref: FunctionRef, payload: bytes, invocation_id: str) -> None:
        await store.accept(ref, payload, invocation_id)
        tick = orjson.loads(payload)["time"]
        write(f"fired {tick} {invocation_id} {pid}")
        if dt.datetime.fromisoformat(tick) < clock() - dt.timedelta(seconds=speed):
            write(f"late {tick}")

    source = ScheduleSource(ticks, clock=clock, speed=speed, retry=0.5 * speed, max_wait=1.0, region="us-east-1")

    async def lead() -> None:
        await ticks.start()
        write(f"leading {pid} {clock().isoformat()}")
        skipped = 0
        await source.start(sink)
        source.update([function])
        try:
            while True:
                await asyncio.sleep(0.05)
                if source.counters.skipped != skipped:
                    write(f"skipped {source.counters.skipped - skipped}")
                    skipped = source.counters.skipped
        finally:
            await source.close()
            await ticks.close()

    election = FileLock(args["lock"], retry=0.1)
    task = asyncio.create_task(election.run(lead))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    write(f"started {pid}")
    await stop.wait()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await store.close()
    os.close(log)


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
