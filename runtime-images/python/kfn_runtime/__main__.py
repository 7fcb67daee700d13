"""`python -m kfn_runtime`: one function instance in a pod, configured by the KFN_* environment.

Lifecycle:
  1. listen: the invoke endpoint and probes answer from now on; /_/ready says 503 "loading".
  2. init: the function is initialised and its first execution environment started. If that
     fails, the error (Lambda's error object) is printed and the process exits EXIT_LOAD_FAILED.
  3. ready: /_/ready answers 200; invocations run in environments (more start as needed).
  4. drain, on SIGTERM or SIGINT: /_/ready and new invocations answer 503 (the gateway sends them
     elsewhere), in-flight invocations finish (at most KFN_DRAIN_TIMEOUT), then everything stops
     and the process exits 0 (EXIT_DRAIN_TIMEOUT if invocations were still running).
"""
from __future__ import annotations

import asyncio
import json
import signal
import sys
import time

from kfn_runtime import contract
from kfn_runtime.config import Config, ConfigError

TYPE_CHECKING = False  # importing typing costs milliseconds on every cold start
if TYPE_CHECKING:
    from kfn_runtime.output import BatchedLines


def _log(event: str, **fields: object) -> None:
    """One JSON line about the instance itself, written at once."""
    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "msg": event, **fields}
    sys.stdout.write(json.dumps(record, default=str) + "\n")
    sys.stdout.flush()


async def run(config: Config) -> int:
    from kfn_runtime.output import BatchedLines

    # Environments' output and the per-invocation REPORT lines, in batches (see kfn_runtime.output).
    output = BatchedLines(sys.stdout)
    try:
        return await _serve(config, output)
    finally:
        output.flush()


async def _serve(config: Config, output: BatchedLines) -> int:
    from kfn_runtime.front import FrontServer
    from kfn_runtime.host import InitFailed
    from kfn_runtime.launch import build_host

    started = time.monotonic()

    def environment_output(env_id: str, line: str) -> None:
        output.write([line])

    def log(event: str, **fields: object) -> None:
        output.flush()   # after what came before it
        _log(event, **fields)

    host = build_host(config, log=environment_output)
    front = FrontServer(host)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        port = await front.listen(config.host, config.port)
    except OSError as e:
        sys.stderr.write(f"kfn-runtime: cannot listen on {config.host}:{config.port}: {e}\n")
        return contract.EXIT_LOAD_FAILED
    init = loop.create_task(host.start())
    done, _ = await asyncio.wait({init, loop.create_task(stop.wait())}, return_when=asyncio.FIRST_COMPLETED)
    if init not in done:
        init.cancel()
        await host.close()
        front.close()
        return contract.EXIT_OK
    try:
        init.result()
    except InitFailed as e:
        output.flush()
        sys.stderr.write(f"kfn-runtime: cannot initialise {config.handler or config.command}: {e}\n")
        sys.stderr.write(e.payload.decode(errors="replace") + "\n")
        sys.stderr.flush()
        await host.close()
        front.close()
        return contract.EXIT_LOAD_FAILED
    log("ready", port=port, function=config.function_name, runtime=config.runtime,
        startupMs=round((time.monotonic() - started) * 1000, 1))
    await stop.wait()
    host.drain()
    log("draining", inFlight=host.in_flight, drainTimeoutS=config.drain_timeout)
    idle = await host.wait_idle(config.drain_timeout)
    await host.close()
    front.close()
    code = contract.EXIT_OK if idle else contract.EXIT_DRAIN_TIMEOUT
    log("stopped", exitCode=code)
    return code


def main() -> int:
    try:
        config = Config.from_env()
    except ConfigError as e:
        sys.stderr.write(f"kfn-runtime: {e}\n")
        return contract.EXIT_BAD_CONFIG
    return asyncio.run(run(config))


if __name__ == "__main__":
    sys.exit(main())
