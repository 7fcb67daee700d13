"""One local instance: an instance host (`kfn_runtime.host`) in this process, from start to stop.

A local instance runs exactly what a pod runs, minus the pod: an `InstanceHost` whose execution
environments are local processes (forked from a zygote for Python, one command each for Node.js),
polling a Runtime API that this process serves on 127.0.0.1. The gateway reaches it in-process
(`Instance.endpoint`), so a request costs one hop between processes each way.

`run` reports how the instance's life ended in the `Outcome` it returns; the backend decides what
to do about it. Its processes run confined (`kfn.processes.confine`): when the instance stops,
whatever is left of them is killed, and an invocation whose process went over the function's
memory limit is reported as Lambda reports it, `Runtime.OutOfMemory`.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from kfn.core.functions import Function
from kfn.core.instances import InitError, Instance, Invocation, InvocationResult, StartProblem, StartReason
from kfn.processes.code import Unsupported
from kfn.processes.confine import InstanceGroup
from kfn.processes.plan import Observed, State
from kfn_runtime import awslambda
from kfn_runtime.config import Config
from kfn_runtime.environments import kill_group
from kfn_runtime.execution import InitFailed, Rejected
from kfn_runtime.execution import Invocation as HostInvocation
from kfn_runtime.host import InstanceHost

logger = logging.getLogger(__name__)

LOCAL_HOST = "127.0.0.1"
# Lines of an instance's last output quoted when it fails.
CRASH_LOG_LINES = 20


@dataclass(frozen=True)
class Outcome:
    """How an instance's life ended, from its supervisor's point of view. `message` is for the
    function's owner (it quotes the function's output); `problem`, for a start that failed, is
    what callers may learn of it."""

    kind: str                 # one of the constants below
    message: str = ""
    problem: StartProblem | None = None


STOPPED = "stopped"            # asked to stop (or the backend closed), and it did
START_FAILED = "start-failed"  # never became ready
UNSUPPORTED = "unsupported"    # cannot run locally until the function changes
CRASHED = "crashed"            # stopped working while serving, unasked


@dataclass(frozen=True)
class Settings:
    stop_grace: float = 5.0
    # How long a ready instance keeps taking invocations after leaving rotation: requests the
    # gateway dispatched just before are still on their way (a pod's preStop pause, locally).
    deregistration_delay: float = 0.5


# What `run` gets from the backend: the instance's configuration, and how to build its host
# given where its output goes.
Prepare = Callable[[], Awaitable[tuple[Config, Callable[[Callable[[str, str], None]], InstanceHost]]]]
OutputSink = Callable[[list[str]], None]


class _Endpoint:
    """The gateway's in-process way into an instance host."""

    def __init__(self, host: InstanceHost, group: InstanceGroup | None = None,
                 log: Callable[[str], None] = lambda line: None) -> None:
        self._host = host
        self._group = group
        self._log = log
        self._oom_kills = group.oom_kills() if group is not None else 0

    async def invoke(self, invocation: Invocation) -> InvocationResult:
        client_context = None
        if invocation.client_context:
            try:
                client_context = base64.b64decode(invocation.client_context, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                client_context = None
        run = HostInvocation(invocation.payload, request_id=invocation.request_id, timeout=self._host.config.timeout,
                             client_context=client_context, trace_id=invocation.trace_id,
                             want_log=invocation.want_log)
        try:
            await self._host.invoke(run)
        except Rejected as e:
            return InvocationResult(rejected=e.reason, rejection=str(e))
        if run.function_error and run.error_type in (awslambda.ERROR_EXIT, "MemoryError"):
            self._check_memory(run)
        return InvocationResult(
            payload=run.result, function_error=run.function_error, error_type=run.error_type,
            log_result=base64.b64encode(run.log_tail()).decode() if invocation.want_log else None)


    def _check_memory(self, run: HostInvocation) -> None:
        """An environment that died (the kernel's OOM kill in a cgroup) or failed to allocate (under
        RLIMIT_DATA) because of the memory limit: say so, as Lambda does, and reset it."""
        group = self._group
        if group is None:
            return
        if run.error_type == awslambda.ERROR_EXIT:
            kills = group.oom_kills()
            if kills <= self._oom_kills:
                return
            self._oom_kills = kills
            how = "killed by the kernel"
        elif group.rlimit:
            how = "out of memory (an allocation failed)"
            env = run.env
            if env is not None and env.pid is not None:
                kill_group(env.pid)   # Lambda resets an environment that ran out of memory
        else:
            return
        limit = group.memory_bytes // (1024 * 1024)
        message = (f"RequestId: {run.id} Error: Runtime exited: {how}: the function exceeded its memory limit of "
                   f"{limit} MiB (spec.resources.limits.memory)")
        self._log(f"[kfn] {message}")
        run.error_type = awslambda.ERROR_OUT_OF_MEMORY
        run.result = awslambda.error_payload(awslambda.ERROR_OUT_OF_MEMORY, message)


def start_problem(error: InitFailed, detail: str) -> StartProblem:
    """What callers may learn of an instance whose init failed: the function's own init error as
    Lambda reports it (its type and message, never its output), or that the platform failed."""
    if error.platform:
        return StartProblem(StartReason.PLATFORM, detail)
    return StartProblem(StartReason.INIT, detail, InitError.of_payload(
        error.payload, default_type=awslambda.ERROR_UNKNOWN, default_message=str(error)))


class InstanceProcess:
    """Supervises one local instance of one function version."""

    def __init__(self, id: str, function: Function, version: str, *, settings: Settings, prepare: Prepare,
                 on_output: OutputSink, confinement: InstanceGroup | None = None) -> None:
        self.id = id
        self.function = function
        self.version = version
        self.state = State.STARTING
        self.started = time.monotonic()
        self.instance: Instance | None = None
        self.host: InstanceHost | None = None
        self._settings = settings
        self._prepare = prepare
        self._on_output = on_output
        self.confinement = confinement
        self._last_lines: collections.deque[str] = collections.deque(maxlen=CRASH_LOG_LINES)
        self._stop = asyncio.Event()
        self._closing = False
        self.on_ready: Callable[[InstanceProcess], None] = lambda _: None

    @property
    def pid(self) -> int | None:
        """The zygote's process id, for Python instances (None otherwise)."""
        spawner = getattr(self.host, "_spawner", None)
        return getattr(spawner, "pid", None)

    def observed(self) -> Observed:
        return Observed(id=self.id, version=self.version, state=self.state, started=self.started)

    def describe_output(self) -> str:
        if not self._last_lines:
            return "(no output)"
        return "last output:\n  " + "\n  ".join(self._last_lines)

    def _output(self, env_id: str, line: str) -> None:
        self._last_lines.append(line[:500])
        self._on_output([f"[{self.id}] {line}"])

    async def run(self) -> Outcome:
        """Prepares and starts the instance, serves until asked to stop, then stops it.

        Runs as long as the instance does; cancelling it stops the instance's processes.
        """
        host: InstanceHost | None = None
        try:
            try:
                _, build = await self._prepare()
            except Unsupported as e:
                return Outcome(UNSUPPORTED, str(e), StartProblem(e.reason, str(e)))
            if self.state is not State.STARTING:
                return Outcome(STOPPED)
            host = self.host = build(self._output)
            failed = asyncio.get_running_loop().create_future()

            def fail(why: str) -> None:
                if not failed.done():
                    failed.set_result(why)

            host.on_failure = fail
            starting = asyncio.ensure_future(host.start())   # at most the function's init timeout
            stopped = asyncio.ensure_future(self._stop.wait())
            await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if not starting.done():   # asked to stop while starting
                starting.cancel()
                with contextlib.suppress(asyncio.CancelledError, InitFailed):
                    await starting
                return Outcome(STOPPED)
            try:
                starting.result()
            except InitFailed as e:
                if self.state is not State.STARTING:
                    return Outcome(STOPPED)
                message = f"instance {self.id} failed to start: {e}; {self.describe_output()}"
                return Outcome(START_FAILED, message, start_problem(e, message))
            if self.state is not State.STARTING:
                return Outcome(STOPPED)
            self.state = State.READY
            endpoint = _Endpoint(host, self.confinement, lambda line: self._on_output([f"[{self.id}] {line}"]))
            self.instance = Instance(function=self.function.ref, id=self.id, host=LOCAL_HOST, port=0,
                                     capacity=self.function.spec.concurrency, endpoint=endpoint)
            self.on_ready(self)
            stop = asyncio.ensure_future(self._stop.wait())
            done, _ = await asyncio.wait({stop, failed}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if failed in done and not self._stop.is_set():
                self.state = State.STOPPING
                return Outcome(CRASHED, f"instance {self.id} stopped working while serving ({failed.result()}); "
                                        f"{self.describe_output()}")
            if not self._closing:
                await asyncio.sleep(self._settings.deregistration_delay)
            host.drain()
            await host.wait_idle(self.function.spec.timeout + self._settings.stop_grace)
            return Outcome(STOPPED)
        finally:
            if host is not None:
                await asyncio.shield(host.close())
            if self.confinement is not None:
                await asyncio.shield(self._clean_up(self.confinement))

    async def _clean_up(self, group: InstanceGroup) -> None:
        """Kill what the instance's processes left behind (daemons that left their process group)."""
        left = await asyncio.to_thread(group.kill)
        if left:
            self._on_output([f"[kfn] instance {self.id}: killed {left} process(es) its environments left running"])
        await asyncio.to_thread(group.remove)

    def stop(self, *, closing: bool = False) -> bool:
        """Take the instance out of rotation now; it finishes what it runs and stops in the background.

        Returns whether it was in rotation. `closing` (the backend shutting down) skips the
        deregistration pause: the gateway has drained already.
        """
        self._closing = self._closing or closing
        if self.state in (State.DRAINING, State.STOPPING):
            return False
        was_ready = self.state is State.READY
        self.state = State.DRAINING if was_ready else State.STOPPING
        self._stop.set()
        return was_ready
