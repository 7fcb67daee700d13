"""One function instance: execution environments, the Lambda Runtime API they poll, and dispatch.

An `InstanceHost` runs up to `concurrency` execution environments: processes that each handle one
invocation at a time through the AWS Lambda Runtime API (`GET .../invocation/next`, `POST
.../response`, `.../error`, `.../init/error`), exactly as a Lambda execution environment does, so
any runtime interface client works in them (kfn's own, AWS's `awslambdaric` and `aws-lambda-ric`,
custom runtimes). Each environment gets a Runtime API listener of its own on 127.0.0.1, so the host
always knows which process holds which invocation.

Environments start lazily: the first when the instance starts (the instance is ready once it polls
for work), more whenever an invocation finds none idle, up to `concurrency`; extra ones idle for
`idle_timeout` are stopped. How an environment starts is a `Spawner`'s business: kfn's Python
runtime forks them from a zygote that has imported the function already (so a new environment
costs a fork, not a cold start); other runtimes start a command per environment.

An invocation that outlives its timeout ends as Lambda's do: the caller gets the timeout error
and its environment is killed and forgotten, so its slot is free at once. An environment that
dies mid-invocation fails that invocation with Lambda's `Runtime.ExitError`.

The host is asyncio code over the standard library: it runs inside `python -m kfn_runtime` in a
pod, and inside `kfn local` for local instances.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import math
import os
import signal
import time
import uuid
from urllib.parse import unquote

from kfn_runtime import contract
from kfn_runtime.wire import BadRequest, Request, RequestParser, response

TYPE_CHECKING = False  # importing typing costs milliseconds on every cold start
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Protocol

    class Spawner(Protocol):
        """How environments start and stop (see `kfn_runtime.environments`)."""

        async def start(self, host: InstanceHost) -> None:
            """Prepare (e.g. boot a zygote). Raises InitFailed with the function's init error."""

        async def spawn(self, host: InstanceHost, env: Environment) -> None:
            """Start `env`'s process, polling http://127.0.0.1:env.port. Raises OSError if it cannot."""

        def kill(self, env: Environment) -> None:
            """Kill `env`'s process (and what it started) at once."""

        async def close(self) -> None:
            """Stop everything it started; returns once it is all gone."""

API_PREFIX = "/2018-06-01/runtime"
NEXT_PATH = f"{API_PREFIX}/invocation/next"
INIT_ERROR_PATH = f"{API_PREFIX}/init/error"
LOG_TAIL_BYTES = 4096
MAX_RESPONSE_BYTES = 6 * 1024 * 1024 + 100       # Lambda's synchronous response limit (as the RIE)

LOADING, READY, DRAINING, CLOSED = "loading", "ready", "draining", "closed"
# An environment starts, polls (idle), runs an invocation (busy), answers and polls again
# (returning, then idle), until it dies.
STARTING, IDLE, BUSY, RETURNING, DEAD = "starting", "idle", "busy", "returning", "dead"


class InitFailed(Exception):
    """The function could not be initialised; `payload` is the Lambda error object (JSON bytes):
    the function's own init error, or Lambda's for a runtime that exited (`Runtime.ExitError`) or
    an init phase that timed out (`Sandbox.Timedout`). `platform` says the platform failed instead
    (no interpreter, no code directory): nothing of the function ran."""

    def __init__(self, message: str, payload: bytes | None = None, *, platform: bool = False) -> None:
        super().__init__(message)
        self.payload = payload or _error(contract.ERROR_UNKNOWN, message)
        self.platform = platform


class Rejected(Exception):
    """The instance turned an invocation away without running it; `reason` is a contract.REJECTED_*."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Invocation:
    """One invocation as the host carries it: the event in, and the outcome out."""

    __slots__ = ("client_context", "deadline", "env", "error_type", "function_error", "future", "id", "init_ms",
                 "log", "payload", "result", "started", "timeout", "timer", "trace_id", "want_log")

    def __init__(self, payload: bytes, *, request_id: str | None = None, timeout: float,
                 client_context: str | None = None, trace_id: str | None = None, want_log: bool = False) -> None:
        self.id = request_id or str(uuid.uuid4())
        self.payload = payload
        self.timeout = timeout
        self.client_context = client_context      # JSON text (already decoded from base64)
        self.trace_id = trace_id
        self.want_log = want_log
        self.future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.env: Environment | None = None
        self.deadline = 0.0          # wall clock, set when an environment takes it
        self.started = 0.0           # monotonic, likewise
        self.result = b""
        self.function_error: str | None = None   # "Unhandled" when the function failed
        self.error_type: str | None = None
        # Its log as Lambda returns it for LogType=Tail: START, what its environment printed, END, REPORT.
        self.log: bytearray | None = bytearray() if want_log else None
        self.timer: asyncio.TimerHandle | None = None   # the timeout, while an environment runs it
        self.init_ms: float | None = None   # the cold start it paid: its environment's init (first invocation)

    def log_tail(self) -> bytes:
        """The last LOG_TAIL_BYTES of its log (Lambda's LogResult, before base64)."""
        return bytes(self.log[-LOG_TAIL_BYTES:]) if self.log is not None else b""


class Environment:
    __slots__ = ("api", "id", "init_ms", "invocation", "last_used", "output", "pid", "poll", "port", "process",
                 "server", "started", "state")

    def __init__(self, id: str) -> None:
        self.id = id
        self.state = STARTING
        self.port = 0
        self.server: asyncio.Server | None = None
        self.api: _RuntimeAPI | None = None
        self.poll: _RuntimeAPI | None = None      # the connection waiting in GET next
        self.invocation: Invocation | None = None
        self.pid: int | None = None
        # The spawner's handle, if it has one: the read transport of the environment's output pipe
        # (what `InstanceHost.output` is fed from), which the host drains when an invocation ends.
        self.process: Any = None
        self.output = bytearray()                 # an unfinished output line
        self.started = time.monotonic()
        self.last_used = self.started
        self.init_ms: float | None = None         # from start to its first poll; its first invocation reports it


class HostConfig:
    """What an instance needs to know. Built by the pod's entry point or by kfn local."""

    def __init__(self, *, function_name: str, namespace: str = "", version: str = "$LATEST", timeout: float,
                 concurrency: int, memory_mb: int, region: str = "us-east-1", idle_timeout: float = 60.0,
                 max_payload: int = 16 * 1024 * 1024, account_id: str = "000000000000",
                 init_timeout: float = contract.DEFAULT_INIT_TIMEOUT, queue_limit: int | None = None) -> None:
        self.function_name = function_name
        self.namespace = namespace
        self.version = version
        self.timeout = timeout
        self.concurrency = concurrency
        self.memory_mb = memory_mb
        self.region = region
        self.idle_timeout = idle_timeout
        self.max_payload = max_payload
        self.init_timeout = init_timeout   # Lambda's limit on an environment's init phase
        # Invocations that may wait for a busy instance's environments (default: its concurrency).
        self.queue_limit = concurrency if queue_limit is None else queue_limit
        self.arn = f"arn:aws:lambda:{region}:{account_id}:function:{function_name}"


class InstanceHost:
    """See the module docstring. Call `start`, then `invoke` many times, then `drain`/`close`."""

    def __init__(self, config: HostConfig, spawner: Spawner, *,
                 log: Callable[[str, str], None] | None = None) -> None:
        """`log(environment id, line)` receives every line the environments print."""
        self.config = config
        self.state = LOADING
        self._spawner = spawner
        self._log = log or (lambda env_id, line: None)   # (environment id, line of its output)
        self._envs: dict[str, Environment] = {}
        self._queue: collections.deque[Invocation] = collections.deque()
        self._ids = 0
        self._ready = asyncio.Event()
        self._init_error: InitFailed | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._idle_changed = asyncio.Event()
        self.completed = 0
        self.on_env_change: Callable[[], None] = lambda: None
        # Called when the instance can no longer start environments (its zygote died, say).
        self.on_failure: Callable[[str], object] = lambda why: None
        self._arn_header = f"Lambda-Runtime-Invoked-Function-Arn: {config.arn}\r\n".encode()

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def environments(self) -> list[Environment]:
        return [env for env in self._envs.values() if env.state != DEAD]

    @property
    def in_flight(self) -> int:
        return sum(1 for env in self._envs.values() if env.state == BUSY) + len(self._queue)

    async def start(self, *, timeout: float | None = None) -> None:
        """Initialise the function and start the first environment; returns once it polls for work,
        at most `timeout` seconds (default: the init timeout, `config.init_timeout`) after the call.

        Raises InitFailed (the function's own init error, or why no environment came up in time).
        """
        limit = self.config.init_timeout if timeout is None else timeout
        begun = time.monotonic()
        try:
            async with asyncio.timeout(limit):
                await self._spawner.start(self)
                env = await self._new_env(since=begun)
                while env.state == STARTING:
                    if self._init_error is not None:
                        raise self._init_error
                    self._idle_changed.clear()
                    await self._idle_changed.wait()
                if env.state == DEAD:
                    raise self._init_error or InitFailed("the runtime exited before it asked for work", _error(
                        contract.ERROR_EXIT, "Runtime exited without providing a reason"))
        except TimeoutError:
            # Lambda reports an init phase past its limit as a timeout (Sandbox.Timedout).
            raise InitFailed(f"the runtime did not ask for work within {limit:g}s (the init timeout)", _error(
                contract.ERROR_TIMED_OUT, f"Init phase timed out after {limit:.2f} seconds")) from None
        self.state = READY
        self._reaper = asyncio.get_running_loop().create_task(self._reap_idle(), name="kfn-env-reaper")

    def drain(self) -> None:
        """Take no new invocations from now on (they are rejected as `draining`)."""
        if self.state in (LOADING, READY):
            self.state = DRAINING

    async def wait_idle(self, timeout: float) -> bool:
        """Wait (at most `timeout` s) until no invocation is in flight; whether that happened."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self.in_flight:
                    self._idle_changed.clear()
                    await self._idle_changed.wait()
                return True
        return False

    async def close(self) -> None:
        """Stop every environment and what started them; queued and running invocations fail."""
        self.state = CLOSED
        if self._reaper is not None:
            self._reaper.cancel()
        for invocation in list(self._queue):
            self._finish(invocation, _error("Runtime.Unavailable", "the instance stopped"), "Unhandled")
        self._queue.clear()
        for env in list(self._envs.values()):
            self._kill(env, "the instance stopped")
        await self._spawner.close()
        for env in list(self._envs.values()):
            if env.server is not None:
                env.server.close()
        self._envs.clear()

    # -- invocations -----------------------------------------------------------------------------

    async def invoke(self, invocation: Invocation) -> Invocation:
        """Run one invocation in an environment; returns it with its result filled in.

        Returns after the function answers, fails or times out (`invocation.timeout` after an
        environment took it). Raises Rejected, without running it, while loading or draining,
        or when every environment is busy and no more may start.
        """
        if self.state != READY:
            if self.state == LOADING:
                raise Rejected(contract.REJECTED_LOADING, "the function is loading")
            raise Rejected(contract.REJECTED_DRAINING, "the instance is shutting down")
        env = self._idle_env()
        if env is not None:
            self._dispatch(env, invocation)
        else:
            # Every environment busy: the invocation waits for one, up to `queue_limit` of them.
            # Several gateways each fill an instance up to its concurrency without knowing of the
            # others; a short wait here beats sending the client away.
            if len(self._queue) >= self.config.queue_limit + max(
                    0, self.config.concurrency - sum(1 for e in self._envs.values() if e.state == BUSY)):
                raise Rejected(contract.REJECTED_CONCURRENCY,
                               f"all {self.config.concurrency} environments of this instance are busy "
                               f"and {len(self._queue)} invocations wait")
            self._queue.append(invocation)
            # Lambda's init phase has its own limit; a queued invocation waits at most that for an
            # environment, then has its own timeout (the timer is replaced when one takes it).
            invocation.timer = asyncio.get_running_loop().call_later(
                self.config.init_timeout + invocation.timeout, self._queue_timed_out, invocation)
            coming = sum(1 for e in self._envs.values() if e.state in (STARTING, RETURNING))
            if coming < len(self._queue) and len(self.environments) < self.config.concurrency:
                try:
                    await self._new_env()
                except OSError as e:
                    with contextlib.suppress(ValueError):
                        self._queue.remove(invocation)
                    raise Rejected(contract.REJECTED_CONCURRENCY, f"cannot start an environment: {e}") from None
        try:
            await invocation.future
        except asyncio.CancelledError:
            # The caller left (a client gone, a gateway shutting down): Lambda runs it to its end anyway.
            with contextlib.suppress(ValueError):
                self._queue.remove(invocation)
            raise
        return invocation

    def _idle_env(self) -> Environment | None:
        for env in self._envs.values():
            if env.state == IDLE:
                return env
        return None

    def _dispatch(self, env: Environment, invocation: Invocation) -> None:
        api = env.poll
        assert api is not None
        env.poll = None
        env.state = BUSY
        env.invocation = invocation
        invocation.env = env
        invocation.started = time.monotonic()
        invocation.deadline = time.time() + invocation.timeout
        invocation.init_ms, env.init_ms = env.init_ms, None
        if invocation.log is not None:
            self._drain(env)   # what the one before printed late is not this invocation's
        self._platform_line(env, invocation, f"START RequestId: {invocation.id} Version: {self.config.version}")
        payload = invocation.payload
        head = [b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nLambda-Runtime-Aws-Request-Id: ",
                invocation.id.encode(), b"\r\nLambda-Runtime-Deadline-Ms: %d\r\n" % (invocation.deadline * 1000),
                self._arn_header]
        if invocation.trace_id:
            head.append(b"Lambda-Runtime-Trace-Id: %s\r\n" % _header_safe(invocation.trace_id))
        if invocation.client_context:
            head.append(b"Lambda-Runtime-Client-Context: %s\r\n" % _header_safe(invocation.client_context))
        head.append(b"Content-Length: %d\r\n\r\n" % len(payload))
        head.append(payload)
        api.send(b"".join(head))
        if invocation.timer is not None:
            invocation.timer.cancel()
        invocation.timer = asyncio.get_running_loop().call_later(invocation.timeout, self._timed_out, env, invocation)

    def _queue_timed_out(self, invocation: Invocation) -> None:
        with contextlib.suppress(ValueError):
            self._queue.remove(invocation)
            self._finish(invocation, _error(
                "Sandbox.Timedout", f"RequestId: {invocation.id} Error: no execution environment took the "
                f"invocation within {self.config.init_timeout + invocation.timeout:.2f} seconds"), "Unhandled")

    def _timed_out(self, env: Environment, invocation: Invocation) -> None:
        if invocation.future.done():
            return
        message = f"RequestId: {invocation.id} Error: Task timed out after {invocation.timeout:.2f} seconds"
        if invocation.log is not None:
            self._drain(env)
        self._platform_line(env, invocation, message)
        self._finish(invocation, _error("Sandbox.Timedout", message), "Unhandled")
        # Lambda resets the environment: whatever the handler still does dies with it.
        self._kill(env, "timed out")

    def _finish(self, invocation: Invocation, result: bytes, function_error: str | None,
                error_type: str | None = None) -> None:
        if invocation.future.done():
            return
        invocation.result = result
        invocation.function_error = function_error
        if function_error and error_type is None:
            with contextlib.suppress(ValueError, AttributeError):
                error_type = json.loads(result).get("errorType")
        invocation.error_type = error_type
        self.completed += 1
        if invocation.timer is not None:
            invocation.timer.cancel()
        invocation.future.set_result(None)
        env = invocation.env
        if env is not None and env.invocation is invocation:
            env.invocation = None
            env.last_used = now = time.monotonic()
            if env.state == BUSY:
                env.state = RETURNING   # until it polls again
            self._platform_line(env, invocation, f"END RequestId: {invocation.id}")
            self._platform_line(env, invocation, report_line(
                invocation.id, duration_ms=(now - invocation.started) * 1000, memory_mb=self.config.memory_mb,
                max_memory_mb=peak_memory_mb(env.pid), init_ms=invocation.init_ms))
        self._idle_changed.set()

    def _platform_line(self, env: Environment, invocation: Invocation, line: str) -> None:
        """One of Lambda's own lines about an invocation (START, END, REPORT, a timeout): in the
        environment's log, and in the invocation's log tail, on a line of its own."""
        self._log(env.id, line)
        log = invocation.log
        if log is not None:
            if log and not log.endswith(b"\n"):
                log += b"\n"   # what the function printed last did not end its line
            log += line.encode() + b"\n"

    # -- environments ------------------------------------------------------------------------------

    async def _new_env(self, *, since: float | None = None) -> Environment:
        """Start an environment; `since`: when its init began, if before now (the instance's first)."""
        self._ids += 1
        env = Environment(f"env-{self._ids}")
        if since is not None:
            env.started = since
        # Counted (as starting) before the first await: invocations arriving meanwhile must not
        # start environments of their own for the same need.
        self._envs[env.id] = env
        loop = asyncio.get_running_loop()
        try:
            env.server = await loop.create_server(lambda: _RuntimeAPI(self, env), "127.0.0.1", 0)
            env.port = env.server.sockets[0].getsockname()[1]
            await self._spawner.spawn(self, env)
        except BaseException:
            self._envs.pop(env.id, None)
            if env.server is not None:
                env.server.close()
            raise
        # Lambda bounds an environment's init; one that never asks for work must not hold its slot.
        # (The first one is bounded by `start`'s own timeout.)
        if self.state == READY:
            loop.call_later(self.config.init_timeout, self._init_overdue, env)
        self.on_env_change()
        return env

    def _init_overdue(self, env: Environment) -> None:
        if env.state == STARTING and self._envs.get(env.id) is env:
            self._log(env.id, f"Error: the environment did not ask for work within {self.config.init_timeout:g}s "
                              "of starting (its init phase timed out)")
            self._kill(env, "init timed out")

    def _kill(self, env: Environment, why: str) -> None:
        if env.state == DEAD:
            return
        env.state = DEAD
        with contextlib.suppress(ProcessLookupError, OSError):
            self._spawner.kill(env)
        self._forget(env, why)

    def runtime_api(self, env: Environment) -> asyncio.Protocol:
        """A Runtime API connection for `env`, for a spawner that connects it itself."""
        return _RuntimeAPI(self, env)

    def env_exited(self, env: Environment, code: int | None) -> None:
        """The spawner saw an environment's process end (on its own, or killed)."""
        if self._envs.get(env.id) is not env:
            return
        if env.state != DEAD:
            # Not one the host stopped: say so, as Lambda's log does for a runtime that exits.
            env.state = DEAD
            invocation = env.invocation
            if invocation is not None and not invocation.future.done():
                self._platform_line(env, invocation, f"RequestId: {invocation.id} Error: Runtime exited with error: "
                                                     f"exit status {code}")
            else:
                self._log(env.id, f"Error: Runtime exited with error: exit status {code}")
            self._forget(env, f"Runtime exited with error: exit status {code}")
        self._idle_changed.set()

    def _forget(self, env: Environment, why: str) -> None:
        invocation = env.invocation
        if invocation is not None and not invocation.future.done():
            message = why if why.startswith("Runtime exited") else f"Runtime exited ({why})"
            self._finish(invocation, _error("Runtime.ExitError", f"RequestId: {invocation.id} Error: {message}"),
                         "Unhandled")
        if env.server is not None:
            env.server.close()
        if env.poll is not None:
            env.poll.close()
        self._envs.pop(env.id, None)
        self.on_env_change()
        if self._queue and self.state == READY:
            # Invocations were waiting for environments: make sure one is on its way.
            coming = sum(1 for e in self._envs.values() if e.state in (STARTING, RETURNING))
            if coming < len(self._queue) and len(self.environments) < self.config.concurrency:
                asyncio.get_running_loop().create_task(self._replace())
        self._idle_changed.set()

    async def _replace(self) -> None:
        try:
            await self._new_env()
        except OSError as e:
            while self._queue:
                self._finish(self._queue.popleft(), _error("Runtime.Unavailable", f"cannot start: {e}"), "Unhandled")

    async def _reap_idle(self) -> None:
        """Stops environments idle for longer than idle_timeout, keeping one; runs until closed."""
        interval = max(0.5, min(10.0, self.config.idle_timeout / 4))
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            idle = sorted((e for e in self._envs.values() if e.state == IDLE), key=lambda e: e.last_used)
            live = len(self.environments)
            for env in idle:
                if live <= 1:
                    break
                if now - env.last_used > self.config.idle_timeout:
                    self._kill(env, "idle")
                    live -= 1

    # -- what environments say, through the Runtime API --------------------------------------------

    def polled(self, env: Environment, api: _RuntimeAPI) -> None:
        if env.state == DEAD:
            api.close()
            return
        env.poll = api
        env.last_used = now = time.monotonic()
        if env.state == STARTING:
            env.init_ms = (now - env.started) * 1000
        env.state = IDLE
        if self._queue and self.state in (READY, DRAINING):
            self._dispatch(env, self._queue.popleft())
        self._idle_changed.set()

    def answered(self, env: Environment, request_id: str, body: bytes, *, error: bool,
                 error_type: str | None) -> int:
        """An environment posted a result; the status to answer it with (202, or 400 for a stale id)."""
        invocation = env.invocation
        if invocation is None or invocation.id != request_id:
            return 400
        if invocation.log is not None:
            self._drain(env)
        if error:
            if not body:
                body = _error(error_type or "Runtime.Unknown", "the function failed without saying why")
            self._finish(invocation, body, "Unhandled", error_type)
        else:
            self._finish(invocation, body, None)
        return 202

    def init_failed(self, env: Environment, body: bytes, error_type: str | None) -> None:
        try:
            message = json.loads(body).get("errorMessage") or error_type or "init failed"
        except (ValueError, AttributeError):
            message = body.decode(errors="replace")[:500] or error_type or "init failed"
            body = _error(error_type or "Runtime.Unknown", message)
        self._init_error = InitFailed(str(message), body)
        # Lambda serves an init error as the answer to the invocation that waited for this environment.
        if self._queue:
            self._finish(self._queue.popleft(), body, "Unhandled", error_type)
        self._idle_changed.set()

    def _drain(self, env: Environment) -> None:
        """Take in at once what `env` has written to its output pipe and the loop has not read yet.

        The pipe and the Runtime API are read by the same loop in no set order: a result may be
        handled before the output the handler printed ahead of it, which would then miss its
        invocation's log tail and land in the next one's (another caller's). What a runtime wrote
        before posting its result is in the pipe by then, so reading the pipe here, without
        waiting, gives the invocation all of it. A pipe already closed, or none, is left alone.
        """
        transport = env.process
        if transport is None or not hasattr(transport, "get_extra_info") or transport.is_closing():
            return
        try:
            fd = transport.get_extra_info("pipe").fileno()
        except (AttributeError, ValueError):
            return
        for _ in range(64):   # at most a pipe's worth is there (its writer blocks beyond); bounded anyway
            try:
                data = os.read(fd, 65536)
            except OSError:   # BlockingIOError: nothing more for now
                return
            if not data:
                return
            self.output(env, data)

    def output(self, env: Environment, data: bytes) -> None:
        """Bytes an environment wrote to stdout/stderr: logged by line, and kept for a log tail."""
        invocation = env.invocation
        if invocation is not None and invocation.log is not None:
            invocation.log += data
            if len(invocation.log) > 2 * LOG_TAIL_BYTES:
                del invocation.log[:-LOG_TAIL_BYTES]
        env.output += data
        *lines, rest = env.output.split(b"\n")
        if len(rest) > 65536:
            lines.append(rest)
            rest = bytearray()
        env.output = bytearray(rest)
        for line in lines:
            self._log(env.id, line.decode(errors="replace").rstrip("\r"))


def report_line(request_id: str, *, duration_ms: float, memory_mb: int, max_memory_mb: int | None = None,
                init_ms: float | None = None) -> str:
    """Lambda's REPORT line of an invocation, in its format; `Max Memory Used` when the environment's
    peak is known, `Init Duration` on the invocation that paid its environment's cold start."""
    line = (f"REPORT RequestId: {request_id}\tDuration: {duration_ms:.2f} ms\tBilled Duration: "
            f"{math.ceil(duration_ms)} ms\tMemory Size: {memory_mb} MB")
    if max_memory_mb is not None:
        line += f"\tMax Memory Used: {max_memory_mb} MB"
    if init_ms is not None:
        line += f"\tInit Duration: {init_ms:.2f} ms"
    return line


def peak_memory_mb(pid: int | None) -> int | None:
    """The peak resident memory of process `pid` so far (VmHWM), in MB rounded up as Lambda's
    `Max Memory Used`; None where it cannot be read (the process is gone, no /proc)."""
    if pid is None:
        return None
    try:
        fd = os.open(f"/proc/{pid}/status", os.O_RDONLY)
    except OSError:
        return None
    try:
        status = os.read(fd, 8192)
    except OSError:
        return None
    finally:
        os.close(fd)
    at = status.find(b"VmHWM:")
    if at < 0:
        return None
    fields = status[at + 6:status.find(b"\n", at)].split()
    if not fields or not fields[0].isdigit():
        return None
    return -(-int(fields[0]) // 1024)   # kB


def reserved_variables(*, function_name: str, version: str, memory_mb: int, region: str, handler: str | None,
                       task_root: str, runtime_dir: str, execution_env: str | None = None) -> dict[str, str]:
    """The variables Lambda reserves, in its names and formats, except the per-environment log
    stream (`AWS_LAMBDA_LOG_STREAM_NAME`): the same for every environment of a function version."""
    out = {
        "AWS_LAMBDA_FUNCTION_NAME": function_name,
        "AWS_LAMBDA_FUNCTION_VERSION": version,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(memory_mb),
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{function_name}",
        "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
        "AWS_REGION": region,
        "AWS_DEFAULT_REGION": region,
        "AWS_XRAY_CONTEXT_MISSING": "LOG_ERROR",
        "LAMBDA_TASK_ROOT": task_root,
        "LAMBDA_RUNTIME_DIR": runtime_dir,
        "TZ": ":UTC",
    }
    if execution_env:
        out["AWS_EXECUTION_ENV"] = execution_env   # set for managed runtimes only, as on Lambda
    if handler:
        out["_HANDLER"] = handler
    return out


def log_stream_name(version: str) -> str:
    """A new environment's AWS_LAMBDA_LOG_STREAM_NAME, in Lambda's format."""
    return f"{time.strftime('%Y/%m/%d', time.gmtime())}/[{version}]{os.urandom(16).hex()}"


def lambda_environment(config: HostConfig, *, handler: str, task_root: str, runtime_dir: str, execution_env: str,
                       user_env: dict[str, str] | None = None) -> dict[str, str]:
    """The whole environment of an execution environment the host starts: Lambda's reserved
    variables over the function's own (spec.env); nothing else of the host's environment."""
    env = dict(user_env or {})
    env.update(reserved_variables(function_name=config.function_name, version=config.version,
                                  memory_mb=config.memory_mb, region=config.region, handler=handler,
                                  task_root=task_root, runtime_dir=runtime_dir, execution_env=execution_env))
    env.update({
        "AWS_LAMBDA_LOG_STREAM_NAME": log_stream_name(config.version),
        "LANG": "C.UTF-8",
        "PATH": env.get("PATH") or "/usr/local/bin:/usr/bin:/bin",
        "PYTHONUNBUFFERED": "1",
    })
    return env


def _header_safe(value: str) -> bytes:
    """A header value that cannot end its line early: line breaks (JSON whitespace, in a client
    context) and NULs are dropped, and what Latin-1 cannot say is replaced."""
    if "\r" in value or "\n" in value or "\0" in value:
        value = value.replace("\r", "").replace("\n", "").replace("\0", "")
    return value.encode("latin-1", "replace")


def _error(error_type: str, message: str) -> bytes:
    return json.dumps({"errorType": error_type, "errorMessage": message}).encode()


_ACK = contract.RUNTIME_API_ACCEPTED
_POST_PREFIX = f"POST {API_PREFIX}/invocation/".encode()
_NEXT_REQUEST = b"GET " + NEXT_PATH.encode() + b" HTTP/1.1\r\nHost: runtime\r\n\r\n"   # kfn's own client's


class _RuntimeAPI(asyncio.Protocol):
    """One environment's connection to its Runtime API.

    A client that pipelines (posts a result and asks for the next invocation in one write, as
    kfn's own does) gets the post's 202 together with that next invocation: one write each way
    per invocation instead of two.
    """

    def __init__(self, host: InstanceHost, env: Environment) -> None:
        self._host = host
        self._env = env
        # A result over Lambda's limit is read and thrown away, never buffered, and refused with
        # 413 on a connection that goes on: the environment lives on, as on Lambda.
        self._parser = RequestParser(max_body=MAX_RESPONSE_BYTES, skip_oversized=True)
        self._transport: asyncio.Transport | None = None
        self._ack = b""   # a 202 held back to go out with the next answer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            if not self._parser.pending:
                if data == _NEXT_REQUEST:
                    self._host.polled(self._env, self)
                    return
                if data.endswith(_NEXT_REQUEST) and data.startswith(_POST_PREFIX) and self._pipelined(data):
                    return
            self._parser.feed(data)
            requests = []
            while (request := self._parser.next()) is not None:
                requests.append(request)
            if not requests and self._parser.awaiting_continue():
                self.send(b"HTTP/1.1 100 Continue\r\n\r\n")   # curl waits a second for it otherwise
            for i, request in enumerate(requests):
                pipelined = i + 1 < len(requests) and requests[i + 1].method == "GET"
                self._handle(request, pipelined=pipelined)
        except BadRequest as e:
            self.send(response(e.status, _error("InvalidRequest", str(e)), [("Content-Type", "application/json")],
                               close=True))
            self.close()

    def _pipelined(self, data: bytes) -> bool:
        """kfn's own client's result + GET next, in one segment: handled without the general parser.

        Returns False, having done nothing, for anything but exactly that (the parser takes it).
        """
        head_end = data.find(b"\r\n\r\n")
        line_end = data.find(b"\r\n")
        request_line = data[len(_POST_PREFIX):line_end]
        if not request_line.endswith(b" HTTP/1.1"):
            return False
        request_id, _, kind = request_line[:-9].decode("latin-1").rpartition("/")
        if "%" in request_id:
            request_id = unquote(request_id)   # AWS's Node.js client encodes ids (":" as %3A)
        if kind not in ("response", "error") or "/" in request_id:
            return False
        head = data[line_end:head_end + 2].lower()
        at = head.find(b"\r\ncontent-length:")
        if at < 0:
            return False
        length_end = head.find(b"\r\n", at + 2)
        length_text = head[at + 17:length_end].strip()
        body_end = len(data) - len(_NEXT_REQUEST)
        # Digits only, and few enough for int() (it refuses over 4,300): the parser refuses the rest.
        if (not length_text.isdigit() or len(length_text) > 19 or int(length_text) != body_end - head_end - 4
                or b"transfer-encoding" in head):
            return False
        error_type = None
        at = head.find(b"\r\nlambda-runtime-function-error-type:")
        if at >= 0:
            error_type = data[line_end + at + 37:line_end + head.find(b"\r\n", at + 2)].strip().decode("latin-1")
        self._answered(request_id, kind, data[head_end + 4:body_end], error_type, pipelined=True)
        self._host.polled(self._env, self)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self._env.poll is self:
            self._env.poll = None

    def send(self, data: bytes) -> None:
        if self._ack:
            data, self._ack = self._ack + data, b""
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _answered(self, request_id: str, kind: str, body: bytes, error_type: str | None, *, pipelined: bool) -> None:
        host, env = self._host, self._env
        if len(body) > MAX_RESPONSE_BYTES:
            self._too_large(request_id, len(body))
            return
        status = host.answered(env, request_id, body, error=kind == "error", error_type=error_type)
        if status == 202 and pipelined:
            self._ack += _ACK   # goes out with the answer to the GET next that follows
        elif status == 202:
            self.send(_ACK)
        else:
            self.send(response(status, _error("InvalidRequestID", "Invalid request ID"),
                               [("Content-Type", "application/json")]))

    def _too_large(self, request_id: str | None, size: int) -> None:
        """A result (or error) over Lambda's limit: its invocation fails with Lambda's
        Function.ResponseSizeTooLarge, and the environment is answered 413 as Lambda's Runtime API
        answers it; the environment goes on to its next invocation."""
        if request_id is not None:
            too_large = contract.ERROR_RESPONSE_SIZE_TOO_LARGE
            self._host.answered(self._env, request_id, _error(
                too_large, f"Response payload size ({size} bytes) exceeded maximum allowed payload size "
                f"({MAX_RESPONSE_BYTES} bytes)."), error=True, error_type=too_large)
        self.send(response(413, _error("RequestEntityTooLarge",
                                       f"Exceeded maximum allowed payload size ({MAX_RESPONSE_BYTES} bytes)."),
                           [("Content-Type", "application/json")]))

    def _handle(self, request: Request, *, pipelined: bool = False) -> None:
        path = request.path
        host, env = self._host, self._env
        if request.oversized:
            request_id = None
            if request.method == "POST" and path.startswith(f"{API_PREFIX}/invocation/"):
                request_id = unquote(path[len(API_PREFIX) + len("/invocation/"):].rpartition("/")[0])
            elif request.method == "POST" and path == INIT_ERROR_PATH:
                host.init_failed(env, b"", request.headers.get("lambda-runtime-function-error-type"))
            self._too_large(request_id, request.oversized)
            return
        if request.method == "GET" and path == NEXT_PATH:
            host.polled(env, self)
            return
        if request.method == "POST" and path.startswith(f"{API_PREFIX}/invocation/"):
            request_id, _, kind = path[len(API_PREFIX) + len("/invocation/"):].rpartition("/")
            if "%" in request_id:
                request_id = unquote(request_id)
            if kind in ("response", "error"):
                self._answered(request_id, kind, request.body,
                               request.headers.get("lambda-runtime-function-error-type"), pipelined=pipelined)
                return
        if request.method == "POST" and path == INIT_ERROR_PATH:
            host.init_failed(env, request.body, request.headers.get("lambda-runtime-function-error-type"))
            self.send(response(202, b'{"status":"OK"}', [("Content-Type", "application/json")]))
            return
        self.send(response(404, _error("NotFound", f"no such Runtime API path: {path}"),
                           [("Content-Type", "application/json")]))


def kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal a process and its process group (it leads one of its own), ignoring the gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)
