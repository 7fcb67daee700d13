"""`python -m kfn_runtime`: one function instance in a pod, configured by the KFN_* environment.

Lifecycle:
  1. listen: the invoke endpoint and probes answer from now on; /_/ready says 503 "loading".
     Where the requirements were built once (KFN_ARCHIVE_URL), their archive is fetched into
     KFN_DEPS_DIR now (`kfn_runtime.fetch`); if it cannot be, the reason is printed, left as the
     termination message ("requirements": true) and the process exits EXIT_LOAD_FAILED.
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
import os
import signal
import sys
import time

from kfn_runtime import awslambda, contract
from kfn_runtime.config import Config, ConfigError

TYPE_CHECKING = False  # importing typing costs milliseconds on every cold start
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from kfn_runtime.execution import InitFailed
    from kfn_runtime.output import BatchedLines

# How long the first environment of a Lambda image may take to come up (its container's pull included).
IMAGE_START_TIMEOUT = 60.0


def _log(event: str, **fields: object) -> None:
    """One JSON line about the instance itself, written at once."""
    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "msg": event, **fields}
    sys.stdout.write(json.dumps(record, default=str) + "\n")
    sys.stdout.flush()


class RequirementsArchive:
    """Where an instance fetches its requirements built once (`kfn_runtime.fetch`)."""

    __slots__ = ("digest", "token", "url")

    def __init__(self, url: str, token: str, digest: str) -> None:
        self.url, self.token, self.digest = url, token, digest

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> RequirementsArchive | None:
        """The archive the platform names (None without KFN_ARCHIVE_URL); ConfigError when its token
        or digest is missing."""
        url = environ.get(contract.ENV_ARCHIVE_URL, "").strip()
        if not url:
            return None
        from kfn_runtime.archive import DIGEST_PREFIX

        token, digest = environ.get(contract.ENV_ARCHIVE_TOKEN, ""), environ.get(contract.ENV_ARCHIVE_DIGEST, "")
        if not token or not digest.startswith(DIGEST_PREFIX):
            raise ConfigError(f"{contract.ENV_ARCHIVE_URL} needs {contract.ENV_ARCHIVE_TOKEN} and "
                              f"{contract.ENV_ARCHIVE_DIGEST} (sha256:...)")
        return cls(url, token, digest)


async def run(config: Config, requirements: RequirementsArchive | None = None, *,
              termination_log: str = contract.TERMINATION_LOG) -> int:
    """Serve as the module's docstring says, until SIGTERM or SIGINT; the exit code. The reason an
    init (or the requirements' fetch) failed goes to `termination_log`."""
    from kfn_runtime.output import BatchedLines

    # Environments' output and the per-invocation REPORT lines, in batches (see kfn_runtime.output).
    output = BatchedLines(sys.stdout)
    try:
        return await _serve(config, output, requirements, termination_log)
    finally:
        output.flush()


async def fetch_requirements(requirements: RequirementsArchive, deps_dir: str, log: Callable[..., None], *,
                             termination_log: str = contract.TERMINATION_LOG) -> bool:
    """Fetch and unpack the requirements' archive into `deps_dir`, in a thread (the probes keep
    answering), and log how long it took; runs as long as `kfn_runtime.fetch.fetch` (its retries
    included). False, the reason on stderr and in the termination message, when it cannot."""
    from kfn_runtime import fetch

    started = time.monotonic()
    try:
        meta = await asyncio.to_thread(fetch.fetch, requirements.url, requirements.token, requirements.digest,
                                       deps_dir)
    except fetch.FetchFailed as e:
        sys.stderr.write(f"kfn-runtime: cannot fetch the requirements: {e}\n")
        sys.stderr.flush()
        _write_termination_log(requirements_termination_message(str(e)), termination_log)
        return False
    log("requirements fetched", key=meta.get("key"), ms=round((time.monotonic() - started) * 1000, 1))
    return True


async def _serve(config: Config, output: BatchedLines, requirements: RequirementsArchive | None,
                 termination_log: str) -> int:
    from kfn_runtime.execution import InitFailed
    from kfn_runtime.front import FrontServer
    from kfn_runtime.launch import build_host, running_runtime

    started = time.monotonic()
    running = running_runtime(config)
    if running != config.runtime and config.runtime.startswith("python"):
        # An image built on another Python than its tag says (see the chart README): said first.
        _log("warning: this image runs another Python than the function declares", declared=config.runtime,
             running=running, executable=sys.executable)

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
    stopping = loop.create_task(stop.wait())
    if requirements is not None:
        # A SIGTERM meanwhile ends the process once the fetch's thread has (it cannot be interrupted).
        fetching = loop.create_task(fetch_requirements(requirements, config.deps_dir, log,
                                                       termination_log=termination_log))
        await asyncio.wait({fetching, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not fetching.done():
            fetching.cancel()
            front.close()
            return contract.EXIT_OK
        if not fetching.result():
            front.close()
            return contract.EXIT_LOAD_FAILED
    # A Lambda image's first environment starts in the image's own container, which may still be
    # pulling: its init is given that long too.
    init = loop.create_task(host.start(timeout=max(config.init_timeout, IMAGE_START_TIMEOUT)
                                       if config.runtime == contract.RUNTIME_IMAGE else None))
    done, _ = await asyncio.wait({init, stopping}, return_when=asyncio.FIRST_COMPLETED)
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
        write_termination_message(e, termination_log)
        await host.close()
        front.close()
        return contract.EXIT_LOAD_FAILED
    log("ready", port=port, function=config.function_name, runtime=running,
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


def termination_message(error: InitFailed) -> bytes:
    """What the pod's termination message says of an init failure (see contract.TERMINATION_LOG)."""
    try:
        found = json.loads(error.payload)
    except ValueError:
        found = None
    found = found if isinstance(found, dict) else {}
    error_type = str(found.get("errorType") or awslambda.ERROR_UNKNOWN)[:128]
    message = {contract.TERMINATION_MARK: True, "errorType": error_type,
               "errorMessage": str(found.get("errorMessage") or error)[:256]}
    if error.platform:
        message["platform"] = True
    # At most 6 bytes a character (\uXXXX): well within the limit, and always whole JSON.
    return json.dumps(message).encode()


def requirements_termination_message(reason: str) -> bytes:
    """What the pod's termination message says when the requirements could not be fetched: the
    platform's failure, of the requirements' class (`"requirements": true`, see kfn.kube.pods)."""
    return json.dumps({contract.TERMINATION_MARK: True, "errorType": awslambda.ERROR_UNAVAILABLE,
                       "errorMessage": f"the requirements could not be fetched: {reason}"[:256],
                       "platform": True, "requirements": True}).encode()


def write_termination_message(error: InitFailed, path: str = contract.TERMINATION_LOG) -> None:
    """Leave `termination_message(error)` where the kubelet reads it; nothing outside a pod."""
    _write_termination_log(termination_message(error), path)


def _write_termination_log(message: bytes, path: str) -> None:
    try:
        with open(path, "r+b") as out:   # the kubelet's file: never created here
            out.write(message)
            out.truncate()
    except OSError:
        pass


def main() -> int:
    try:
        config = Config.from_env()
        requirements = RequirementsArchive.from_env()
    except ConfigError as e:
        sys.stderr.write(f"kfn-runtime: {e}\n")
        return contract.EXIT_BAD_CONFIG
    termination_log = os.environ.get(contract.ENV_TERMINATION_LOG) or contract.TERMINATION_LOG
    return asyncio.run(run(config, requirements, termination_log=termination_log))


if __name__ == "__main__":
    sys.exit(main())
