"""One function instance: execution environments, the Lambda Runtime API they poll, and dispatch.

An `InstanceHost` runs up to `concurrency` execution environments: processes that each handle one
invocation at a time through the AWS Lambda Runtime API (`GET .../invocation/next`, `POST
.../response`, `.../error`, `.../init/error`), exactly as a Lambda execution environment does, so
any runtime interface client works in them (kfn's own, AWS's `awslambdaric` and `aws-lambda-ric`,
custom runtimes). Each environment gets a Runtime API listener of its own on 127.0.0.1, so the host
always knows which process holds which invocation; an environment forked from kfn's zygote talks to
the host over kfn's own channel instead (`kfn_runtime.runtime_api`, `kfn_runtime.frames`).

The records it keeps (its configuration, environments, invocations) are `kfn_runtime.execution`'s;
Lambda's REPORT line is `kfn_runtime.reports`', the environments' variables `kfn_runtime.variables`'.
The host queues and dispatches invocations and ends them; its environments' lives are
`kfn_runtime.pool`'s, its log lines `kfn_runtime.transcript`'s.

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
import time

from kfn_runtime import awslambda, contract
from kfn_runtime.execution import (
    BUSY,
    CLOSED,
    DEAD,
    DRAINING,
    IDLE,
    LOADING,
    READY,
    RETURNING,
    STARTING,
    Environment,
    HostConfig,
    InitFailed,
    Invocation,
    Rejected,
)
from kfn_runtime.pool import EnvironmentPool
from kfn_runtime.reports import kib_to_mb, peak_memory_mb, report_line
from kfn_runtime.runtime_api import ChannelAPI, RuntimeAPI
from kfn_runtime.transcript import Transcript

TYPE_CHECKING = False  # importing typing costs milliseconds on every cold start
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Protocol

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

class InstanceHost:
    """See the module docstring. Call `start`, then `invoke` many times, then `drain`/`close`."""

    def __init__(self, config: HostConfig, spawner: Spawner, *,
                 log: Callable[[str, str], None] | None = None) -> None:
        """`log(environment id, line)` receives every line the environments print."""
        self.config = config
        self.state = LOADING
        self._spawner = spawner
        self._transcript = Transcript(log or (lambda env_id, line: None))   # (environment id, line of its output)
        # Bytes an environment wrote to stdout/stderr (its spawner calls this): logged by line, and
        # kept for the log tail of its invocation.
        self.output: Callable[[Environment, bytes], None] = self._transcript.output
        self._pool = EnvironmentPool(self, spawner, self._transcript.log)
        self._queue: collections.deque[Invocation] = collections.deque()
        self._ready = asyncio.Event()
        self._init_error: InitFailed | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._idle_changed = asyncio.Event()
        self.completed = 0
        self.on_env_change: Callable[[], None] = lambda: None
        # Called when the instance can no longer start environments (its zygote died, say).
        self.on_failure: Callable[[str], object] = lambda why: None

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def environments(self) -> list[Environment]:
        return self._pool.live

    @property
    def in_flight(self) -> int:
        return sum(1 for env in self._pool.envs.values() if env.state == BUSY) + len(self._queue)

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
                env = await self._pool.new(since=begun)
                while env.state == STARTING:
                    if self._init_error is not None:
                        raise self._init_error
                    self._idle_changed.clear()
                    await self._idle_changed.wait()
                if env.state == DEAD:
                    raise self._init_error or InitFailed(
                        "the runtime exited before it asked for work",
                        awslambda.error_payload(awslambda.ERROR_EXIT, "Runtime exited without providing a reason"))
        except TimeoutError:
            # Lambda reports an init phase past its limit as a timeout (Sandbox.Timedout).
            raise InitFailed(f"the runtime did not ask for work within {limit:g}s (the init timeout)",
                             awslambda.error_payload(awslambda.ERROR_TIMED_OUT,
                                                     f"Init phase timed out after {limit:.2f} seconds")) from None
        self.state = READY
        self._reaper = asyncio.get_running_loop().create_task(self._pool.reap_idle(), name="kfn-env-reaper")

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
            self._finish(invocation, awslambda.error_payload(awslambda.ERROR_UNAVAILABLE, "the instance stopped"),
                         awslambda.UNHANDLED)
        self._queue.clear()
        await self._pool.close("the instance stopped")

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
        env = self._pool.idle()
        if env is not None:
            self._dispatch(env, invocation)
        else:
            # Every environment busy: the invocation waits for one, up to `queue_limit` of them.
            # Several gateways each fill an instance up to its concurrency without knowing of the
            # others; a short wait here beats sending the client away.
            if len(self._queue) >= self.config.queue_limit + max(
                    0, self.config.concurrency - sum(1 for e in self._pool.envs.values() if e.state == BUSY)):
                raise Rejected(contract.REJECTED_CONCURRENCY,
                               f"all {self.config.concurrency} environments of this instance are busy "
                               f"and {len(self._queue)} invocations wait")
            self._queue.append(invocation)
            # Lambda's init phase has its own limit; a queued invocation waits at most that for an
            # environment, then has its own timeout (the timer is replaced when one takes it).
            invocation.timer = asyncio.get_running_loop().call_later(
                self.config.init_timeout + invocation.timeout, self._queue_timed_out, invocation)
            coming = sum(1 for e in self._pool.envs.values() if e.state in (STARTING, RETURNING))
            if coming < len(self._queue) and len(self.environments) < self.config.concurrency:
                try:
                    await self._pool.new()
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
        transcript = self._transcript
        if invocation.log is not None:
            transcript.drain(env)   # what the one before printed late is not this invocation's
        transcript.platform_line(env, invocation, f"START RequestId: {invocation.id} Version: {self.config.version}")
        api.deliver(invocation)
        if invocation.timer is not None:
            invocation.timer.cancel()
        invocation.timer = asyncio.get_running_loop().call_later(invocation.timeout, self._timed_out, env, invocation)

    def _queue_timed_out(self, invocation: Invocation) -> None:
        with contextlib.suppress(ValueError):
            self._queue.remove(invocation)
            self._finish(invocation, awslambda.error_payload(
                awslambda.ERROR_TIMED_OUT, f"RequestId: {invocation.id} Error: no execution environment took the "
                f"invocation within {self.config.init_timeout + invocation.timeout:.2f} seconds"), awslambda.UNHANDLED)

    def _timed_out(self, env: Environment, invocation: Invocation) -> None:
        if invocation.future.done():
            return
        message = f"RequestId: {invocation.id} Error: Task timed out after {invocation.timeout:.2f} seconds"
        if invocation.log is not None:
            self._transcript.drain(env)
        self._transcript.platform_line(env, invocation, message)
        self._finish(invocation, awslambda.error_payload(awslambda.ERROR_TIMED_OUT, message), awslambda.UNHANDLED)
        # Lambda resets the environment: whatever the handler still does dies with it.
        self._pool.kill(env, "timed out")

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
            self._transcript.platform_line(env, invocation, f"END RequestId: {invocation.id}")
            # The environment's peak as its own client reported it with this result, else read from /proc.
            peak_mb = kib_to_mb(env.peak_kib) if env.peak_kib is not None else peak_memory_mb(env.pid)
            env.peak_kib = None
            self._transcript.platform_line(env, invocation, report_line(
                invocation.id, duration_ms=(now - invocation.started) * 1000, memory_mb=self.config.memory_mb,
                max_memory_mb=peak_mb, init_ms=invocation.init_ms))
        self._idle_changed.set()

    # -- environments ------------------------------------------------------------------------------

    def runtime_api(self, env: Environment) -> RuntimeAPI:
        """A Runtime API connection (HTTP) for `env`, for a spawner that connects it itself."""
        return RuntimeAPI(self, env)

    def channel(self, env: Environment) -> ChannelAPI:
        """A connection of kfn's own channel for `env` (`kfn_runtime.frames`), for a spawner that
        hands its environment the other end (the zygote's)."""
        return ChannelAPI(self, env)

    def env_exited(self, env: Environment, code: int | None) -> None:
        """The spawner saw an environment's process end (on its own, or killed)."""
        if self._pool.envs.get(env.id) is not env:
            return
        if env.state != DEAD:
            # Not one the host stopped: say so, as Lambda's log does for a runtime that exits.
            env.state = DEAD
            invocation = env.invocation
            if invocation is not None and not invocation.future.done():
                self._transcript.platform_line(env, invocation, f"RequestId: {invocation.id} Error: Runtime exited "
                                                                f"with error: exit status {code}")
            else:
                self._transcript.log(env.id, f"Error: Runtime exited with error: exit status {code}")
            self.forget(env, f"Runtime exited with error: exit status {code}")
        self._idle_changed.set()

    def forget(self, env: Environment, why: str) -> None:
        """`env` is gone (killed by the pool, or its process ended): its invocation fails with
        Lambda's `Runtime.ExitError` (saying `why`), and queued invocations get an environment on its way."""
        invocation = env.invocation
        if invocation is not None and not invocation.future.done():
            message = why if why.startswith("Runtime exited") else f"Runtime exited ({why})"
            self._finish(invocation, awslambda.error_payload(
                awslambda.ERROR_EXIT, f"RequestId: {invocation.id} Error: {message}"), awslambda.UNHANDLED)
        if env.server is not None:
            env.server.close()
        if env.poll is not None:
            env.poll.close()
        self._pool.envs.pop(env.id, None)
        self.on_env_change()
        if self._queue and self.state == READY:
            # Invocations were waiting for environments: make sure one is on its way.
            coming = sum(1 for e in self._pool.envs.values() if e.state in (STARTING, RETURNING))
            if coming < len(self._queue) and len(self.environments) < self.config.concurrency:
                asyncio.get_running_loop().create_task(self._replace())
        self._idle_changed.set()

    async def _replace(self) -> None:
        try:
            await self._pool.new()
        except OSError as e:
            while self._queue:
                self._finish(self._queue.popleft(), awslambda.error_payload(
                    awslambda.ERROR_UNAVAILABLE, f"cannot start: {e}"), awslambda.UNHANDLED)

    # -- what environments say, through the Runtime API --------------------------------------------

    def polled(self, env: Environment, api: RuntimeAPI | ChannelAPI) -> None:
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
            self._transcript.drain(env)
        if error:
            if not body:
                body = awslambda.error_payload(error_type or awslambda.ERROR_UNKNOWN,
                                               "the function failed without saying why")
            self._finish(invocation, body, awslambda.UNHANDLED, error_type)
        else:
            self._finish(invocation, body, None)
        return 202

    def init_failed(self, env: Environment, body: bytes, error_type: str | None) -> None:
        try:
            message = json.loads(body).get("errorMessage") or error_type or "init failed"
        except (ValueError, AttributeError):
            message = body.decode(errors="replace")[:500] or error_type or "init failed"
            body = awslambda.error_payload(error_type or awslambda.ERROR_UNKNOWN, message)
        self._init_error = InitFailed(str(message), body)
        # Lambda serves an init error as the answer to the invocation that waited for this environment.
        if self._queue:
            self._finish(self._queue.popleft(), body, awslambda.UNHANDLED, error_type)
        self._idle_changed.set()
