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

Pool mode (KFN_POOL=1, a warm pool's generic instance; `kfn_runtime.specialize`): the instance
starts with no function. It needs KFN_POOL_KEY and KFN_POD_UID (else it exits EXIT_BAD_CONFIG),
removes the key from its environment at once (and from what /proc shows of it) and makes itself
non-dumpable, so that the function it becomes cannot read the key. If its code directory holds
the marker of an earlier specialisation (the container restarted), it exits EXIT_LOAD_FAILED
saying so: a pool instance never comes back generic. Then:
  0. pool: it listens; /_/ready answers 200 "pool", invocations 503 (loading). It waits for one
     signed `POST /_/specialize` (401 unsigned, 400 for a body it cannot use, 409 once one came),
     whose variables overlay the pod's own (not those naming its volumes, its port or the pool),
     writes the marker and the code files into KFN_CODE_DIR, and goes on from step 1 (the
     requirements' archive, then init) with the configuration the request gave. Its answer: 200
     {"status": "ready", "startupMs": ...} once ready, or 502 with the reason (Lambda's error
     object for an init failure) before the process exits EXIT_LOAD_FAILED as above. SIGTERM or
     SIGINT before it is ready ends the process with 0.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time

from kfn_runtime import awslambda, contract
from kfn_runtime.config import Config, ConfigError

TYPE_CHECKING = False  # importing typing costs milliseconds on every cold start
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, MutableMapping
    from typing import Any

    from kfn_runtime.execution import InitFailed
    from kfn_runtime.front import FrontServer
    from kfn_runtime.host import InstanceHost
    from kfn_runtime.output import BatchedLines
    from kfn_runtime.specialize import PoolSettings
    from kfn_runtime.wire import Request

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
    return await _fetch_requirements(requirements, deps_dir, log, termination_log) is None


async def _fetch_requirements(requirements: RequirementsArchive, deps_dir: str, log: Callable[..., None],
                              termination_log: str) -> str | None:
    """`fetch_requirements`, but the reason it failed, or None once fetched."""
    from kfn_runtime import fetch

    started = time.monotonic()
    try:
        meta = await asyncio.to_thread(fetch.fetch, requirements.url, requirements.token, requirements.digest,
                                       deps_dir)
    except fetch.FetchFailed as e:
        sys.stderr.write(f"kfn-runtime: cannot fetch the requirements: {e}\n")
        sys.stderr.flush()
        _write_termination_log(requirements_termination_message(str(e)), termination_log)
        return str(e)
    log("requirements fetched", key=meta.get("key"), ms=round((time.monotonic() - started) * 1000, 1))
    return None


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
    initialised = await _initialise(host, config, stopping, output, termination_log)
    if initialised is not True:
        front.close()
        return contract.EXIT_LOAD_FAILED if isinstance(initialised, InitFailed) else contract.EXIT_OK
    log("ready", port=port, function=config.function_name, runtime=running,
        startupMs=round((time.monotonic() - started) * 1000, 1))
    return await _until_stopped(host, front, config, stop, log)


async def _initialise(host: InstanceHost, config: Config, stopping: asyncio.Task[Any], output: BatchedLines,
                      termination_log: str) -> InitFailed | bool:
    """Start `host`'s init and wait for it or for `stopping`, whichever ends first; runs as long as
    the init (at most its timeout). True once the host is ready. False when `stopping` ended first:
    the init is cancelled and the host closed. The InitFailed when the init failed: its error (and
    Lambda's error object) is printed, left as the termination message, and the host closed."""
    from kfn_runtime.execution import InitFailed

    # A Lambda image's first environment starts in the image's own container, which may still be
    # pulling: its init is given that long too.
    init = asyncio.get_running_loop().create_task(host.start(
        timeout=max(config.init_timeout, IMAGE_START_TIMEOUT) if config.runtime == contract.RUNTIME_IMAGE else None))
    done, _ = await asyncio.wait({init, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if init not in done:
        init.cancel()
        await host.close()
        return False
    try:
        init.result()
    except InitFailed as e:
        output.flush()
        sys.stderr.write(f"kfn-runtime: cannot initialise {config.handler or config.command}: {e}\n")
        sys.stderr.write(e.payload.decode(errors="replace") + "\n")
        sys.stderr.flush()
        write_termination_message(e, termination_log)
        await host.close()
        return e
    return True


async def _until_stopped(host: InstanceHost, front: FrontServer, config: Config, stop: asyncio.Event,
                         log: Callable[..., None]) -> int:
    """Serve a ready instance until `stop` is set, then drain it (at most its drain timeout); the exit code."""
    await stop.wait()
    host.drain()
    log("draining", inFlight=host.in_flight, drainTimeoutS=config.drain_timeout)
    idle = await host.wait_idle(config.drain_timeout)
    await host.close()
    front.close()
    code = contract.EXIT_OK if idle else contract.EXIT_DRAIN_TIMEOUT
    log("stopped", exitCode=code)
    return code


# -- pool mode ------------------------------------------------------------------------------------

# Waiting for the last answer of an instance about to exit to leave: at most this many turns of 10 ms.
_CLOSE_TURNS = 100


def hide_pool_key(environ: MutableMapping[str, str] = os.environ) -> str:
    """Take the pool key (`contract.ENV_POOL_KEY`) out of this process's environment and return it.

    On Linux the process also becomes non-dumpable first (ptrace and /proc/PID/{environ,mem} are
    then closed to processes of the same uid, the function's), and the key's bytes in the block
    /proc/PID/environ shows are overwritten. Either failing is ignored: the key still leaves
    `os.environ` (and the C environment its children would inherit)."""
    key = environ.get(contract.ENV_POOL_KEY, "")
    if sys.platform == "linux":
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(4, 0, 0, 0, 0)   # PR_SET_DUMPABLE, 0
            entries = ctypes.POINTER(ctypes.c_void_p).in_dll(libc, "environ")
            prefix = contract.ENV_POOL_KEY.encode() + b"="
            for i in range(1_000_000):   # the C environment ends with a NULL entry
                address = entries[i]
                if not address:
                    break
                entry = ctypes.string_at(address)
                if entry.startswith(prefix):
                    ctypes.memset(address + len(prefix), 0, len(entry) - len(prefix))
        except (OSError, AttributeError, ValueError):
            pass
    environ.pop(contract.ENV_POOL_KEY, None)
    return key


def writable_import_path(path: list[str], written: tuple[str, ...]) -> str | None:
    """The first entry of `path` (sys.path; "" is the working directory) at or under one of the
    directories in `written` (those a specialised pool instance writes and its function can), or None.

    A pool instance's function runs as the host's user and can write there: what it left would be
    imported by the host's next start in the container (before the key is hidden or the marker
    checked), with the pool key in its environment."""
    def resolved(entry: str) -> str:
        return os.path.realpath(entry or os.getcwd())

    roots = [resolved(d) for d in written if d]
    for entry in path:
        found = resolved(entry)
        if any(found == root or found.startswith(root.rstrip(os.sep) + os.sep) for root in roots):
            return found
    return None


def restarted_termination_message(code_dir: str) -> bytes:
    """What the pod's termination message says when a pool instance's container restarted after it
    was specialised: the platform's failure, nothing of the function ran in this container."""
    from kfn_runtime.specialize import MARKER

    return json.dumps({contract.TERMINATION_MARK: True, "errorType": awslambda.ERROR_UNAVAILABLE,
                       "errorMessage": f"the instance restarted after it was specialised ({code_dir} holds "
                                       f"{MARKER}); a pool instance does not come back generic"[:256],
                       "platform": True}).encode()


def _answer(status: int, error_type: str, message: str) -> bytes:
    from kfn_runtime.wire import response

    return response(status, awslambda.error_payload(error_type, message), [("Content-Type", "application/json")])


def write_code_files(code_dir: str, files: Mapping[str, str]) -> None:
    """Write the marker of a specialisation (`specialize.MARKER`), then `files`, into `code_dir`,
    each created new (an existing one, or a link in its place, is an error). Names must have
    passed `specialize.check_file_name`. Raises OSError."""
    from kfn_runtime.specialize import MARKER

    os.makedirs(code_dir, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    for name, text in ((MARKER, f"{time.time():.3f}\n"), *files.items()):
        fd = os.open(os.path.join(code_dir, name), flags, 0o644)
        with os.fdopen(fd, "wb") as out:
            out.write(text.encode("utf-8", "surrogatepass"))


async def run_pool(settings: PoolSettings, environ: Mapping[str, str], *,
                   termination_log: str = contract.TERMINATION_LOG) -> int:
    """Serve as a pool instance (pool mode in the module's docstring), until SIGTERM or SIGINT or
    a failed specialisation; the exit code. `environ` is the pod's environment (without the key)."""
    from kfn_runtime.output import BatchedLines

    output = BatchedLines(sys.stdout)
    try:
        return await _serve_pool(settings, environ, output, termination_log)
    finally:
        output.flush()


async def _serve_pool(settings: PoolSettings, environ: Mapping[str, str], output: BatchedLines,
                      termination_log: str) -> int:
    from kfn_runtime import specialize
    from kfn_runtime.execution import LOADING
    from kfn_runtime.front import FrontServer, GenericHost

    def log(event: str, **fields: object) -> None:
        output.flush()
        _log(event, **fields)

    generic = GenericHost(max_payload=settings.max_body_bytes)
    front = FrontServer(generic)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # The one specialisation: what it asks for (set by the first valid request), and its answer.
    requested: asyncio.Future[tuple[Config, RequirementsArchive | None, dict[str, str]]] = loop.create_future()
    reply = _Reply(loop)

    async def on_specialize(request: Request) -> bytes:
        presented = request.headers.get(contract.HEADER_SIGNATURE.lower(), "")
        if not specialize.signature_matches(settings.key, settings.pod_uid, request.body, presented):
            return _answer(401, "Unauthorized", f"{contract.HEADER_SIGNATURE} is not this pod's signature of the body")
        if requested.done():
            return _answer(409, "Conflict", "this instance is specialised already, or being specialised")
        try:
            body = specialize.Specialization.parse(request.body)
            env = specialize.merged_env(environ, body.env)
            config, requirements = Config.from_env(env), RequirementsArchive.from_env(env)
        except (specialize.BadSpecialization, ConfigError) as e:
            return _answer(400, "InvalidRequestContentException", str(e))
        requested.set_result((config, requirements, body.files))
        return await reply.wait()

    try:
        port = await front.listen(settings.host, settings.port)
    except OSError as e:
        sys.stderr.write(f"kfn-runtime: cannot listen on {settings.host}:{settings.port}: {e}\n")
        return contract.EXIT_LOAD_FAILED
    front.specialize = on_specialize
    log("pool", port=port, podUid=settings.pod_uid)
    stopping = loop.create_task(stop.wait())
    watched: set[asyncio.Future[Any]] = {requested, stopping}
    await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
    if not requested.done() or stop.is_set():
        return await _pool_exit(front, reply, _stopping_answer(), contract.EXIT_OK, log)
    started = time.monotonic()
    generic.state = LOADING
    config, requirements, files = requested.result()
    try:
        write_code_files(config.code_dir, files)
    except OSError as e:
        reason = f"cannot write the function's code into {config.code_dir}: {e}"
        sys.stderr.write(f"kfn-runtime: {reason}\n")
        _write_termination_log(json.dumps({contract.TERMINATION_MARK: True, "platform": True,
                                           "errorType": awslambda.ERROR_UNAVAILABLE,
                                           "errorMessage": reason[:256]}).encode(), termination_log)
        return await _pool_exit(front, reply, _answer(502, awslambda.ERROR_UNAVAILABLE, reason),
                                contract.EXIT_LOAD_FAILED, log)
    if requirements is not None:
        fetching = loop.create_task(_fetch_requirements(requirements, config.deps_dir, log, termination_log))
        await asyncio.wait({fetching, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not fetching.done():
            fetching.cancel()
            return await _pool_exit(front, reply, _stopping_answer(), contract.EXIT_OK, log)
        failed = fetching.result()
        if failed is not None:
            return await _pool_exit(front, reply, _answer(502, awslambda.ERROR_UNAVAILABLE,
                                                           f"the requirements could not be fetched: {failed}"),
                                    contract.EXIT_LOAD_FAILED, log)
    host = await _start_specialised(config, front, output, stopping, reply, started, port, log, termination_log)
    if isinstance(host, int):
        return host
    return await _until_stopped(host, front, config, stop, log)


async def _start_specialised(config: Config, front: FrontServer, output: BatchedLines, stopping: asyncio.Task[Any],
                             reply: _Reply, started: float, port: int, log: Callable[..., None],
                             termination_log: str) -> InstanceHost | int:
    """Build and initialise the function's host as the normal path does (runs until it is ready,
    fails or `stopping` ends), and answer the specialise request; the host once ready (the
    instance then serves it), else the exit code (the process ends)."""
    from kfn_runtime.execution import InitFailed
    from kfn_runtime.launch import build_host, running_runtime
    from kfn_runtime.wire import response

    running = running_runtime(config)
    if running != config.runtime and config.runtime.startswith("python"):
        log("warning: this image runs another Python than the function declares", declared=config.runtime,
            running=running, executable=sys.executable)

    def environment_output(env_id: str, line: str) -> None:
        output.write([line])

    host = build_host(config, log=environment_output)
    front.attach(host)
    initialised = await _initialise(host, config, stopping, output, termination_log)
    if isinstance(initialised, InitFailed):
        failed = response(502, initialised.payload, [("Content-Type", "application/json")])
        return await _pool_exit(front, reply, failed, contract.EXIT_LOAD_FAILED, log)
    if not initialised:
        return await _pool_exit(front, reply, _stopping_answer(), contract.EXIT_OK, log)
    ms = round((time.monotonic() - started) * 1000, 1)
    reply.give(response(200, json.dumps({"status": "ready", "startupMs": ms}).encode(),
                        [("Content-Type", "application/json")]))
    log("specialized", function=config.function_name, ms=ms)
    log("ready", port=port, function=config.function_name, runtime=running, startupMs=ms)
    return host


def _stopping_answer() -> bytes:
    return _answer(503, "ServiceUnavailableException", "the instance is shutting down")


class _Reply:
    """The answer to the one specialise request that was taken, as the instance decides it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.answer: asyncio.Future[bytes] = loop.create_future()
        self.waiting = False
        self._taken = asyncio.Event()

    async def wait(self) -> bytes:
        """The answer, once given (the request's connection writes it at once)."""
        self.waiting = True
        try:
            return await self.answer
        finally:
            # Set in the step that returns the answer to the connection, which writes it in that
            # same step: whoever waits for this runs after the write.
            self._taken.set()

    def give(self, answer: bytes) -> None:
        if not self.answer.done():
            self.answer.set_result(answer)

    async def written(self, timeout: float) -> None:
        """Return once a waiting request's answer is written (at most `timeout` s)."""
        if self.waiting:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._taken.wait()


async def _pool_exit(front: FrontServer, reply: _Reply, last: bytes, code: int, log: Callable[..., None]) -> int:
    """Give the specialise request its answer `last` (if it waits for one), close the server once
    that is written (at most about two seconds later), and return `code`."""
    reply.give(last)
    await reply.written(1.0)
    front.close()
    for _ in range(_CLOSE_TURNS):
        if not front.connections:
            break
        await asyncio.sleep(0.01)
    log("stopped", exitCode=code)
    return code


def _pool_main() -> int:
    from kfn_runtime.specialize import MARKER, PoolSettings

    key = hide_pool_key()
    environ = {**os.environ, contract.ENV_POOL_KEY: key}
    try:
        settings = PoolSettings.from_env(environ)
    except ConfigError as e:
        sys.stderr.write(f"kfn-runtime: {e}\n")
        return contract.EXIT_BAD_CONFIG
    del environ[contract.ENV_POOL_KEY]
    writable = writable_import_path(sys.path, (settings.code_dir, environ.get(contract.ENV_DEPS_DIR)
                                               or contract.DEFAULT_DEPS_DIR))
    if writable is not None:
        sys.stderr.write(f"kfn-runtime: {writable} is on this process's import path and is written once it is "
                         f"specialised (python -m puts the working directory there): a function could put its "
                         f"code there for the next start of its container. Start a pool instance in another "
                         f"working directory\n")
        return contract.EXIT_BAD_CONFIG
    termination_log = os.environ.get(contract.ENV_TERMINATION_LOG) or contract.TERMINATION_LOG
    if os.path.lexists(os.path.join(settings.code_dir, MARKER)):
        sys.stderr.write(f"kfn-runtime: {settings.code_dir} holds {MARKER}: this pool instance was specialised "
                         f"before its container restarted, and does not come back generic\n")
        _write_termination_log(restarted_termination_message(settings.code_dir), termination_log)
        return contract.EXIT_LOAD_FAILED
    return asyncio.run(run_pool(settings, environ, termination_log=termination_log))


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
    if os.environ.get(contract.ENV_POOL, "").strip() == "1":
        return _pool_main()
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
