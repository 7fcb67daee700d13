"""A process running one function's NATS trigger into an event store, for tests that SIGKILL it.

    python -m tests.e2e.trigger_worker '{"nats": URL, "store": {...}, "log": PATH, "subject": "orders.>",
                                         "stream": "ORDERS", "ack_wait": 2, "hold_acks": false}'

Its sink logs `stored ID` once the store accepted an event (one write per line). With
`hold_acks` it then never returns, so the message is stored but never acknowledged: a SIGKILL
then lands exactly between the two. `ready` is logged once the trigger consumes. SIGTERM stops it.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from typing import Any

from kfn.core.functions import FunctionRef, parse_function
from kfn.triggers.nats import NatsSubjectSource
from tests.e2e.async_worker import open_store

FN = FunctionRef("default", "orders")


async def main(args: dict[str, Any]) -> None:
    log = os.open(args["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(line: str) -> None:
        os.write(log, (line + "\n").encode())

    store = open_store(args["store"])
    await store.start()

    async def sink(ref: FunctionRef, payload: bytes, invocation_id: str) -> None:
        await store.accept(ref, payload, invocation_id)
        write(f"stored {invocation_id}")
        if args.get("hold_acks"):
            await asyncio.Event().wait()

    trigger: dict[str, Any] = {"subject": args["subject"]}
    if args.get("stream"):
        trigger["stream"] = args["stream"]
    function = parse_function({
        "apiVersion": "kfn.dev/v1alpha1", "kind": "Function", "metadata": {"name": FN.name},
        "spec": {"handler": "main.handler", "source": {"files": {"main.py": "x = 1"}},
                 "triggers": [{"nats": trigger}]},
    })
    source = NatsSubjectSource(args["nats"], ack_wait=float(args.get("ack_wait", 30)), fetch_wait=0.2)
    await source.start(sink)
    source.update([function])
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    for _ in range(400):
        if source.consuming():
            break
        await asyncio.sleep(0.05)
    write("ready")
    await stop.wait()
    await source.close()
    await store.close()
    os.close(log)


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
