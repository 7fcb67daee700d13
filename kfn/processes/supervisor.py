"""One local instance: a runtime process, from spawn to reap.

An `InstanceProcess` starts `python -m kfn_runtime` in a session (process group) of its own, so
whatever its handler starts goes with it; waits for the runtime to report its port on a pipe
(`KFN_READY_FD`: a cold start costs one interpreter start and one import, with no polling);
copies its output to the function's log; and on `stop` gives it SIGTERM to drain, then SIGKILL
to the whole group after a grace period. `run` reports what happened through the outcome it
returns; the backend decides what to do about it.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from kfn.core.functions import Function
from kfn.core.instances import Instance
from kfn.processes.code import Unsupported
from kfn.processes.plan import Observed, State
from kfn_runtime import contract

logger = logging.getLogger(__name__)

LOCAL_HOST = "127.0.0.1"
# Lines of an instance's last output quoted when it fails.
CRASH_LOG_LINES = 20
# Output read per wake-up; a longer line is cut into pieces of this size.
READ_CHUNK = 65536


class StartFailed(Exception):
    """An instance did not become ready; the message says why (with its last output)."""


@dataclass(frozen=True)
class Outcome:
    """How an instance's life ended, from its supervisor's point of view."""

    kind: str                 # one of the constants below
    message: str = ""
    exit_code: int | None = None


STOPPED = "stopped"           # asked to stop (or the backend closed), and it did
START_FAILED = "start-failed"  # never became ready
UNSUPPORTED = "unsupported"   # cannot run locally until the function changes
CRASHED = "crashed"           # exited while serving, unasked


@dataclass(frozen=True)
class Settings:
    python: str
    start_timeout: float = 30.0
    stop_grace: float = 5.0
    # How long a ready instance keeps its socket open after leaving rotation: requests the gateway
    # dispatched just before are still on their way (a pod's preStop pause, locally).
    deregistration_delay: float = 0.5


Prepare = Callable[[], Awaitable[tuple[dict[str, str], Path]]]
OutputSink = Callable[[list[str]], None]


class InstanceProcess:
    """Supervises one runtime process of one function version."""

    def __init__(self, id: str, function: Function, version: str, *, settings: Settings, prepare: Prepare,
                 on_output: OutputSink) -> None:
        self.id = id
        self.function = function
        self.version = version
        self.state = State.STARTING
        self.started = time.monotonic()
        self.instance: Instance | None = None
        self._settings = settings
        self._prepare = prepare
        self._on_output = on_output
        self._proc: asyncio.subprocess.Process | None = None
        self._last_lines: collections.deque[str] = collections.deque(maxlen=CRASH_LOG_LINES)
        self._output_task: asyncio.Task[None] | None = None
        self._stop_task: asyncio.Task[None] | None = None
        self._closing = False
        self.on_ready: Callable[[InstanceProcess], None] = lambda _: None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def observed(self) -> Observed:
        return Observed(id=self.id, version=self.version, state=self.state, started=self.started)

    def describe_output(self) -> str:
        if not self._last_lines:
            return "(no output)"
        return "last output:\n  " + "\n  ".join(self._last_lines)

    # -- the instance's life ---------------------------------------------------------------------

    async def run(self) -> Outcome:
        """Prepares, spawns and watches the instance until it exits and is reaped.

        Runs as long as the instance does; cancelling it kills the process group and reaps it.
        """
        try:
            try:
                env, code_dir = await self._prepare()
                if self.state is not State.STARTING:
                    return Outcome(STOPPED)
                port = await self._spawn(env, code_dir)
            except Unsupported as e:
                return Outcome(UNSUPPORTED, str(e))
            except StartFailed as e:
                if self.state is not State.STARTING:
                    return Outcome(STOPPED)  # stopped on purpose while starting
                return Outcome(START_FAILED, f"instance {self.id} failed to start: {e}")
            if self.state is not State.STARTING:
                return Outcome(STOPPED)  # stopped while starting: the stop task has it
            self.state = State.READY
            self.instance = Instance(function=self.function.ref, id=self.id, host=LOCAL_HOST, port=port,
                                     capacity=self.function.spec.concurrency)
            self.on_ready(self)
            assert self._proc is not None
            code = await self._proc.wait()
            if self.state is State.READY and not self._closing:
                # Nobody asked it to stop: a crash. Out of rotation now; the backend replaces it.
                self.state = State.STOPPING
                await self._output_done()
                return Outcome(CRASHED, f"instance {self.id} exited with code {code} while serving; "
                                        f"{self.describe_output()}", exit_code=code)
            if code not in (0, -signal.SIGTERM, -signal.SIGKILL) and not self._closing:
                # Asked to stop, but it died of something else first (often what the gateway saw).
                await self._output_done()
                return Outcome(STOPPED, f"instance {self.id} exited with code {code}; {self.describe_output()}",
                               exit_code=code)
            return Outcome(STOPPED, exit_code=code)
        finally:
            await self._reap()

    def stop(self, *, closing: bool = False) -> bool:
        """Take the instance out of rotation now; it drains and exits in the background.

        Returns whether it was in rotation. `closing` (the backend shutting down) skips the
        deregistration pause: the gateway has drained already.
        """
        self._closing = self._closing or closing
        if self.state in (State.DRAINING, State.STOPPING):
            return False
        was_ready = self.state is State.READY
        self.state = State.DRAINING if was_ready else State.STOPPING
        if self._proc is not None and self._stop_task is None:
            self._stop_task = asyncio.get_running_loop().create_task(self._terminate(),
                                                                     name=f"kfn-stop-{self.id}")
        return was_ready

    async def _terminate(self) -> None:
        """SIGTERM (the runtime finishes in-flight requests), then SIGKILL if it takes too long.

        Runs at most the deregistration delay plus the function's timeout plus the grace period.
        """
        proc = self._proc
        assert proc is not None
        if self.instance is not None and not self._closing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.deregistration_delay):
                    await proc.wait()
        if proc.returncode is not None:
            return
        self._signal(signal.SIGTERM, group=False)
        grace = self._settings.stop_grace
        if self.instance is not None:
            grace += self.function.spec.timeout
        try:
            async with asyncio.timeout(grace):
                await proc.wait()
        except TimeoutError:
            logger.warning("instance %s did not exit %gs after SIGTERM: killing it", self.id, grace)
            self._signal(signal.SIGKILL)
            await proc.wait()

    def _signal(self, sig: signal.Signals, *, group: bool = True) -> None:
        proc = self._proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(proc.pid, sig)
            elif proc.returncode is None:
                proc.send_signal(sig)

    async def _reap(self) -> None:
        """Wait for the process to exit (killing it unless a stop is under way), then make sure
        nothing of its process group is left: children a handler started die with it."""
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None and self._stop_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._stop_task)
        if proc.returncode is None:
            self._signal(signal.SIGKILL)
        await asyncio.shield(proc.wait())
        self._signal(signal.SIGKILL)  # stragglers of the group (a handler's orphans)
        await self._output_done()

    # -- starting --------------------------------------------------------------------------------

    async def _spawn(self, env: dict[str, str], code_dir: Path) -> int:
        """Starts the runtime and waits for it to report its port; StartFailed if it does not."""
        loop = asyncio.get_running_loop()
        read_fd, write_fd = os.pipe()
        env[contract.ENV_READY_FD] = str(write_fd)
        try:
            self._proc = await asyncio.create_subprocess_exec(
                self._settings.python, "-S", "-m", "kfn_runtime", env=env, cwd=str(code_dir),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                pass_fds=(write_fd,), start_new_session=True, limit=READ_CHUNK)
        except OSError as e:
            os.close(read_fd)
            raise StartFailed(f"cannot run {self._settings.python}: {e.strerror or e}") from None
        finally:
            os.close(write_fd)
        self._output_task = loop.create_task(self._pump_output(), name=f"kfn-output-{self.id}")
        if self.state is not State.STARTING:
            os.close(read_fd)
            raise StartFailed("stopped while starting")
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                                    os.fdopen(read_fd, "rb", buffering=0))
        try:
            async with asyncio.timeout(self._settings.start_timeout):
                line = await reader.readline()
                if not line:
                    # The pipe closed without a word: the runtime exited (or closed it). Let its
                    # last output arrive before reporting it.
                    code = await self._proc.wait()
                    await self._output_done()
                    raise StartFailed(f"the runtime exited with code {code} before it was ready; "
                                      f"{self.describe_output()}")
        except TimeoutError:
            raise StartFailed(f"not ready after {self._settings.start_timeout:g}s; {self.describe_output()}") from None
        finally:
            transport.close()
        words = line.decode(errors="replace").split()
        if len(words) != 2 or words[0] != "ready" or not words[1].isdigit():
            raise StartFailed(f"the runtime said {line!r} instead of 'ready <port>'")
        return int(words[1])

    # -- output ----------------------------------------------------------------------------------

    async def _output_done(self) -> None:
        """Waits (briefly) for an exited instance's last output to be read."""
        if self._output_task is not None:
            with contextlib.suppress(TimeoutError, Exception):
                async with asyncio.timeout(1.0):
                    await asyncio.shield(self._output_task)
            if not self._output_task.done():
                # A handler's orphan may still hold the pipe; the group is killed, but do not wait.
                self._output_task.cancel()

    async def _pump_output(self) -> None:
        """Copies the instance's output into the function's log; runs until the output closes.

        Reads whatever is available rather than line by line: under load a runtime logs a line
        per request, and one wake-up per batch keeps that cheap for the gateway sharing this loop.
        """
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        prefix = f"[{self.id}] "
        partial = b""
        while True:
            chunk = await proc.stdout.read(READ_CHUNK)
            if not chunk:
                if partial:
                    self._output([partial.decode(errors="replace").rstrip("\r")], prefix)
                return
            *complete, partial = (partial + chunk).split(b"\n")
            if len(partial) > READ_CHUNK:
                # A line without an end in sight: keep it as it is rather than buffer without bound.
                complete.append(partial)
                partial = b""
            if complete:
                self._output([line.decode(errors="replace").rstrip("\r") for line in complete], prefix)

    def _output(self, lines: list[str], prefix: str) -> None:
        self._last_lines.extend(line[:500] for line in lines)
        self._on_output([prefix + line for line in lines])
