"""Function instances as local processes: what `kfn local` runs behind its gateway.

`ProcessBackend` is the `InstanceBackend` of local mode. Each instance is the Python runtime
(`python -m kfn_runtime`) on a free 127.0.0.1 port, started from a function's inline files. The
runtime reports its port on a pipe once the handler is loaded (`KFN_READY_FD`), so a cold start
costs one interpreter start and one import, with no polling.

Each function has one reconcile task that compares what runs with what is wanted and starts or
stops processes; each process has one task that owns it from spawn to reap. Rolling a changed
function and scaling down share one rule, the one Kubernetes uses for a Deployment with no
unavailability: old instances keep serving until enough new ones are ready.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import hashlib
import itertools
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from kfn.functions import Function
from kfn.instances import Instance, Listener
import kfn_runtime
from kfn_runtime import contract
from kfn_runtime import requirements as runtime_requirements

logger = logging.getLogger(__name__)

LOCAL_HOST = "127.0.0.1"
# The directory holding the kfn_runtime package: the one entry instances get on sys.path.
RUNTIME_PATH = str(Path(kfn_runtime.__file__).resolve().parent.parent)
# Lines kept per function for `kfn logs`, and per instance for crash reports.
DEFAULT_LOG_LINES = 2000
CRASH_LOG_LINES = 20
# A follower that cannot keep up loses lines rather than slowing down the instances.
FOLLOWER_QUEUE = 1000


class LogBuffer:
    """A function's recent log lines, and a fan-out of new lines to followers."""

    def __init__(self, *, max_lines: int = DEFAULT_LOG_LINES, path: Path | None = None) -> None:
        self._lines: collections.deque[str] = collections.deque(maxlen=max_lines)
        self._followers: set[asyncio.Queue[str | None]] = set()
        self._file = path.open("a", encoding="utf-8", buffering=1) if path is not None else None
        self._closed = False

    def append(self, line: str) -> None:
        self._lines.append(line)
        if self._file is not None:
            self._file.write(line + "\n")
        for queue in self._followers:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(line)

    def tail(self, n: int | None = None) -> list[str]:
        """The last `n` lines (all kept lines when `n` is None)."""
        if n is None:
            return list(self._lines)
        if n <= 0:
            return []
        return list(itertools.islice(self._lines, max(0, len(self._lines) - n), None))

    @contextlib.asynccontextmanager
    async def follow(self, *, tail: int | None = 0) -> AsyncIterator[AsyncIterator[str]]:
        """The last `tail` lines, then every new line until the buffer closes.

        Subscribing and taking the tail happen without a suspension point in between, so no
        line is missed or repeated.
        """
        queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=FOLLOWER_QUEUE)
        backlog = self.tail(tail)
        if self._closed:
            queue.put_nowait(None)
        self._followers.add(queue)

        async def lines() -> AsyncIterator[str]:
            for line in backlog:
                yield line
            while (line := await queue.get()) is not None:
                yield line

        try:
            yield lines()
        finally:
            self._followers.discard(queue)

    def close(self) -> None:
        """End every follow; lines kept so far stay readable."""
        self._closed = True
        for queue in self._followers:
            # A full queue gets its end marker by dropping one line: ending matters more.
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(None)
        if self._file is not None:
            self._file.close()
            self._file = None


class State(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"   # out of rotation, finishing in-flight requests
    STOPPING = "stopping"   # asked to stop before it was ready


class StartFailed(Exception):
    """An instance did not become ready; the message says why (with its last log lines)."""


class Unsupported(Exception):
    """The function needs something local mode cannot do; retrying will not help."""


@dataclass(eq=False)
class _Process:
    id: str
    function: Function
    version: str                      # the function's spec hash: a change rolls instances
    state: State = State.STARTING
    proc: asyncio.subprocess.Process | None = None
    instance: Instance | None = None
    started: float = field(default_factory=time.monotonic)
    last_lines: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=CRASH_LOG_LINES))
    task: asyncio.Task[None] | None = None
    stop_task: asyncio.Task[None] | None = None
    output_task: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def describe_output(self) -> str:
        if not self.last_lines:
            return "(no output)"
        return "last output:\n  " + "\n  ".join(self.last_lines)


@dataclass(eq=False)
class _Function:
    function: Function
    logs: LogBuffer
    desired: int
    processes: dict[str, _Process] = field(default_factory=dict)
    counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    removed: bool = False
    ready_cache: list[Instance] = field(default_factory=list)
    # Problems with the current version: a configuration local mode cannot run, a failed pip
    # install (both block starts until the function changes), or the last failed start.
    blocked: str | None = None
    last_failure: str | None = None
    start_failures: int = 0
    retry_at: float = 0.0
    version: str = ""   # the function's spec hash, kept with it (instances compare against it often)

    def define(self, function: Function) -> None:
        self.function = function
        self.version = function.spec_hash()
        self.blocked = ProcessBackend.unsupported(function)
        self.last_failure = None
        self.start_failures = 0
        self.retry_at = 0.0


class ProcessBackend:
    """Runs each function's instances as runtime processes on 127.0.0.1.

    Local mode feeds it functions with `set_function`/`remove_function`; the gateway and the
    autoscaler use it through `kfn.instances.InstanceBackend`.
    """

    def __init__(self, *, work_dir: Path | None = None, deps_cache: Path | None = None,
                 python: str = sys.executable, start_timeout: float = 30.0, stop_grace: float = 5.0,
                 deregistration_delay: float = 0.5,
                 max_start_failures: int = 5, max_backoff: float = 10.0, pip_timeout: float = 600.0,
                 log_lines: int = DEFAULT_LOG_LINES, log_files: bool = False,
                 on_output: Callable[[str, list[str]], None] | None = None) -> None:
        self._given_work_dir = work_dir
        self._work_dir: Path | None = None
        self._deps_cache = deps_cache
        self._python = python
        self._start_timeout = start_timeout
        self._stop_grace = stop_grace
        self._deregistration_delay = deregistration_delay
        self._max_start_failures = max_start_failures
        self._max_backoff = max_backoff
        self._pip_timeout = pip_timeout
        self._log_lines = log_lines
        self._log_files = log_files
        self._on_output = on_output
        self._functions: dict[str, _Function] = {}
        self._listeners: list[Listener] = []
        self._installs: dict[Path, asyncio.Task[None]] = {}
        self._output_tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._quiescing = False

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def work_dir(self) -> Path:
        if self._work_dir is None:
            raise RuntimeError("ProcessBackend.start() has not been called")
        return self._work_dir

    async def start(self) -> None:
        """Prepares the work directory and returns; instances start as functions are set and scaled."""
        if self._given_work_dir is not None:
            self._given_work_dir.mkdir(parents=True, exist_ok=True)
            self._work_dir = self._given_work_dir.resolve()
        else:
            self._work_dir = Path(tempfile.mkdtemp(prefix="kfn-local-"))
        if self._deps_cache is None:
            self._deps_cache = self._work_dir / "deps"

    def quiesce(self) -> None:
        """Start no instance from now on (shutdown has begun); running ones serve until `close`.

        On Ctrl-C in a terminal the instances get SIGINT too and drain on their own: replacing
        them would only start processes that `close` then stops.
        """
        self._quiescing = True

    async def close(self) -> None:
        """Stop every instance (SIGTERM, then SIGKILL after the grace period) and reap them all.

        Runs at most the longest function timeout plus the grace period.
        """
        self._closing = True
        for state in self._functions.values():
            state.removed = True
            for process in list(state.processes.values()):
                self._stop(state, process)
        tasks: list[asyncio.Task[None]] = []
        for state in self._functions.values():
            tasks.extend(p.task for p in state.processes.values() if p.task is not None)
            tasks.extend(p.stop_task for p in state.processes.values() if p.stop_task is not None)
            if state.task is not None:
                state.task.cancel()
                tasks.append(state.task)
        tasks.extend(self._installs.values())
        for task in self._installs.values():
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for state in self._functions.values():
            state.logs.close()
        # Output normally ends with its process; a handler's orphaned child may still hold the pipe.
        for task in self._output_tasks:
            task.cancel()
        self._functions.clear()
        if self._given_work_dir is None and self._work_dir is not None:
            await asyncio.to_thread(shutil.rmtree, self._work_dir, True)

    # -- what local mode feeds in ----------------------------------------------------------------

    def set_function(self, function: Function) -> None:
        """Serve `function`, or roll its instances to this definition if its spec changed."""
        name = function.name
        state = self._functions.get(name)
        if state is not None and not state.removed:
            if state.version == function.spec_hash():
                state.function = function
                return
            previous = state.function
            state.define(function)
            scale = function.spec.scale
            state.desired = min(max(state.desired, scale.minReplicas), scale.maxReplicas)
            what = (f"code {previous.code_hash()} → {function.code_hash()}"
                    if previous.code_hash() != function.code_hash() else "settings")
            state.logs.append(f"[kfn] {name} changed ({what}): rolling instances")
            self._changed(state)
            return
        if state is not None:
            # Re-added while its old instances still drain: those drain on; the new one starts fresh.
            state.removed = False
        else:
            state = _Function(function=function, logs=self._new_log_buffer(name), desired=0)
            self._functions[name] = state
        state.define(function)
        state.desired = function.spec.scale.minReplicas
        if state.blocked:
            state.logs.append(f"[kfn] {name}: {state.blocked}")
        if state.task is None or state.task.done():
            state.task = asyncio.get_running_loop().create_task(self._reconcile_loop(state), name=f"kfn-local-{name}")
        self._changed(state)

    def remove_function(self, name: str) -> None:
        """Stop serving `name`: its instances leave rotation at once and drain in the background."""
        state = self._functions.get(name)
        if state is None or state.removed:
            return
        state.removed = True
        state.desired = 0
        state.logs.append(f"[kfn] {name} removed: draining instances")
        self._changed(state)

    # -- InstanceBackend -----------------------------------------------------------------------

    def function(self, name: str) -> Function | None:
        state = self._functions.get(name)
        return None if state is None or state.removed else state.function

    def functions(self) -> list[Function]:
        return [s.function for s in self._functions.values() if not s.removed]

    def ready(self, name: str) -> list[Instance]:
        state = self._functions.get(name)
        return [] if state is None else list(state.ready_cache)

    def desired(self, name: str) -> int:
        state = self._functions.get(name)
        return 0 if state is None or state.removed else state.desired

    async def scale(self, name: str, replicas: int, *, reason: str = "") -> None:
        state = self._functions.get(name)
        if state is None or state.removed or self._closing:
            return
        replicas = max(0, replicas)
        if replicas == state.desired:
            return
        if state.desired == 0 and replicas > 0:
            # A new cold start gets a fresh set of attempts even after giving up earlier.
            state.start_failures = 0
            state.retry_at = 0.0
        logger.debug("scaling %s from %d to %d%s", name, state.desired, replicas, f": {reason}" if reason else "")
        state.desired = replicas
        state.wake.set()

    def report_failure(self, instance: Instance, *, error: str) -> None:
        state = self._functions.get(instance.function)
        process = state.processes.get(instance.id) if state is not None else None
        if state is None or process is None or process.state is not State.READY:
            return
        logger.warning("the gateway could not use instance %s (%s): replacing it", instance.id, error)
        state.logs.append(f"[kfn] the gateway could not use instance {instance.id} ({error}): replacing it")
        self._stop(state, process)

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    # -- what local mode shows ------------------------------------------------------------------

    def logs(self, name: str) -> LogBuffer | None:
        state = self._functions.get(name)
        return None if state is None or state.removed else state.logs

    def error(self, name: str) -> str | None:
        """Why the function cannot serve, or why its last instance failed to start; None if fine."""
        state = self._functions.get(name)
        if state is None or state.removed:
            return None
        return state.blocked or state.last_failure

    def status(self, name: str) -> dict[str, object] | None:
        """A JSON-ready view of a function's instances (for /system/instances and the bench)."""
        state = self._functions.get(name)
        if state is None or state.removed:
            return None
        return {
            "name": name,
            "version": state.function.code_hash(),
            "desired": state.desired,
            "error": self.error(name),
            "instances": [{
                "id": p.id,
                "state": p.state.value,
                "pid": p.pid,
                "url": p.instance.url if p.instance is not None else None,
                "version": p.function.code_hash(),
                "current": p.version == state.version,
            } for p in state.processes.values()],
        }

    # -- reconciliation --------------------------------------------------------------------------

    async def _reconcile_loop(self, state: _Function) -> None:
        """Starts and stops a function's instances until it is removed and all have exited.

        Runs for the function's lifetime; wakes on every change and when a retry is due.
        """
        while True:
            state.wake.clear()
            delay = self._reconcile(state)
            if state.removed and not state.processes:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await state.wake.wait()

    def _reconcile(self, state: _Function) -> float | None:
        """One step towards the wanted instances; returns when to look again (None: on a change)."""
        wanted = 0 if state.removed or self._closing else state.desired
        version = state.version
        current = [p for p in state.processes.values()
                   if p.version == version and p.state in (State.STARTING, State.READY)]
        current_ready = [p for p in current if p.state is State.READY]
        old = [p for p in state.processes.values() if p.version != version]
        delay: float | None = None

        # Old instances that are not serving yet never will: stop them.
        for p in old:
            if p.state is State.STARTING:
                self._stop(state, p)

        missing = wanted - len(current)
        if missing > 0 and not state.blocked and not state.removed and not self._quiescing:
            if state.start_failures >= self._max_start_failures:
                pass  # gave up; a change or a new cold start resets the count
            elif time.monotonic() < state.retry_at:
                delay = state.retry_at - time.monotonic()
            else:
                for _ in range(missing):
                    self._launch(state)
        elif missing < 0:
            # Not-yet-ready instances go first (they serve nobody), then the newest ready ones.
            excess = sorted(current, key=lambda p: (p.state is State.READY, -p.started))
            for p in excess[:-missing]:
                self._stop(state, p)

        # Like a Deployment's rolling update with no unavailability: old instances serve until
        # enough new ones are ready, so traffic never sees a gap, even if the new version fails.
        keep_old = max(0, wanted - len(current_ready))
        old_ready = sorted((p for p in old if p.state is State.READY), key=lambda p: p.started, reverse=True)
        for p in old_ready[keep_old:]:
            self._stop(state, p)
        return delay

    def _launch(self, state: _Function) -> None:
        name = state.function.name
        process = _Process(id=f"{name}-{next(state.counter)}", function=state.function, version=state.version)
        state.processes[process.id] = process
        process.task = asyncio.get_running_loop().create_task(self._run(state, process),
                                                              name=f"kfn-instance-{process.id}")

    def _stop(self, state: _Function, process: _Process) -> None:
        """Take `process` out of rotation now; it drains and exits in the background."""
        if process.state in (State.DRAINING, State.STOPPING):
            return
        was_ready = process.state is State.READY
        process.state = State.DRAINING if was_ready else State.STOPPING
        if was_ready:
            self._changed(state)
        if process.proc is not None and process.stop_task is None:
            process.stop_task = asyncio.get_running_loop().create_task(self._terminate(process))
        state.wake.set()

    async def _terminate(self, process: _Process) -> None:
        """SIGTERM (the runtime finishes in-flight requests), then SIGKILL if it takes too long.

        Runs at most the deregistration delay plus the function's timeout plus the grace period
        (a few seconds for a process that was not ready yet); the process's own task reaps it.
        """
        proc = process.proc
        assert proc is not None
        if process.instance is not None and not self._closing:
            # Requests the gateway dispatched just before the instance left rotation are still on
            # their way; a runtime that drains finishes what it has received, but whatever is
            # still in its socket when it stops is lost. The same race as a pod's endpoint removal
            # against its SIGTERM, with the same cure (a preStop pause). When the backend closes,
            # the gateway has already drained, so there is nothing to wait for.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._deregistration_delay):
                    await proc.wait()
        if proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        grace = self._stop_grace
        if process.instance is not None:
            grace += process.function.spec.timeout
        try:
            async with asyncio.timeout(grace):
                await proc.wait()
        except TimeoutError:
            logger.warning("instance %s did not exit %gs after SIGTERM: killing it", process.id, grace)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    # -- one instance, from spawn to reap --------------------------------------------------------

    async def _run(self, state: _Function, process: _Process) -> None:
        """Prepares, spawns and watches one instance until it exits; records why it did.

        Runs as long as the instance does. A failed start is counted (with backoff before the
        next attempt); a crash of a ready instance takes it out of rotation and the reconcile
        loop replaces it if it is still wanted.
        """
        name = state.function.name
        try:
            try:
                env, code_dir = await self._prepare(state, process)
                if process.state is not State.STARTING:
                    return
                port = await self._spawn(state, process, env, code_dir)
            except Unsupported as e:
                if state.version == process.version:
                    state.blocked = str(e)
                state.logs.append(f"[kfn] {name}: {e}")
                logger.error("function %s cannot run locally: %s", name, e)
                return
            except StartFailed as e:
                if process.state is not State.STARTING:
                    return  # stopped on purpose while starting
                if state.version == process.version:
                    self._start_failed(state, f"instance {process.id} failed to start: {e}")
                return
            if process.state is not State.STARTING:
                return  # stopped while starting: _terminate has it
            process.state = State.READY
            process.instance = Instance(function=name, id=process.id, host=LOCAL_HOST, port=port,
                                        capacity=process.function.spec.concurrency)
            if state.version == process.version:
                state.start_failures = 0
                state.last_failure = None
            elapsed = time.monotonic() - process.started
            state.logs.append(f"[kfn] instance {process.id} ready on {process.instance.url} "
                              f"(pid {process.pid}, {elapsed * 1000:.0f} ms)")
            logger.info("instance %s ready on %s in %.0f ms", process.id, process.instance.url, elapsed * 1000)
            self._changed(state)
            assert process.proc is not None
            code = await process.proc.wait()
            if process.state is State.READY and self._quiescing and code == 0:
                process.state = State.STOPPING   # it got the terminal's Ctrl-C, as kfn local did
                self._changed(state)
            elif process.state is State.READY:
                # Nobody asked it to stop: a crash. Out of rotation now; reconcile replaces it.
                process.state = State.STOPPING
                self._changed(state)
                await self._output_done(process)
                message = f"instance {process.id} exited with code {code} while serving; {process.describe_output()}"
                state.logs.append(f"[kfn] {message}")
                logger.warning("%s", message)
            elif code not in (0, -signal.SIGTERM, -signal.SIGKILL):
                # Asked to stop, but it died of something else first (often what the gateway saw).
                await self._output_done(process)
                message = f"instance {process.id} exited with code {code}; {process.describe_output()}"
                state.logs.append(f"[kfn] {message}")
                logger.warning("%s", message)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # never let one instance take the backend down
            logger.exception("instance %s: unexpected error", process.id)
            if state.version == process.version:
                self._start_failed(state, f"instance {process.id}: {type(e).__name__}: {e}")
        finally:
            await self._reap(process)
            state.processes.pop(process.id, None)
            if process.instance is not None and process.state is not State.READY:
                self._changed(state)
            state.wake.set()

    async def _reap(self, process: _Process) -> None:
        proc = process.proc
        if proc is None:
            return
        if proc.returncode is None:
            if process.stop_task is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            else:
                with contextlib.suppress(Exception):
                    await asyncio.shield(process.stop_task)
        # The task may be cancelled (backend closing): the process must still be reaped.
        with contextlib.suppress(ProcessLookupError):
            if proc.returncode is None:
                proc.kill()
        await asyncio.shield(proc.wait())

    def _start_failed(self, state: _Function, message: str) -> None:
        state.start_failures += 1
        backoff = min(self._max_backoff, 0.5 * 2 ** (state.start_failures - 1))
        state.retry_at = time.monotonic() + backoff
        if state.start_failures >= self._max_start_failures:
            message = (f"{message}\n(gave up after {state.start_failures} failed starts; "
                       "fix the function or send a new request)")
        else:
            message = f"{message}\n(retrying in {backoff:g}s)"
        state.last_failure = message
        state.logs.append(f"[kfn] {message}")
        logger.error("%s", message)

    async def _spawn(self, state: _Function, process: _Process, env: dict[str, str], code_dir: Path) -> int:
        """Starts the runtime and waits for it to report its port; StartFailed if it does not."""
        loop = asyncio.get_running_loop()
        read_fd, write_fd = os.pipe()
        env[contract.ENV_READY_FD] = str(write_fd)
        try:
            process.proc = await asyncio.create_subprocess_exec(
                self._python, "-S", "-m", "kfn_runtime", env=env, cwd=str(code_dir),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                pass_fds=(write_fd,), limit=1024 * 1024)
        except OSError as e:
            os.close(read_fd)
            raise StartFailed(f"cannot run {self._python}: {e}") from None
        finally:
            os.close(write_fd)
        process.output_task = loop.create_task(self._pump_output(state, process))
        self._output_tasks.add(process.output_task)
        process.output_task.add_done_callback(self._output_tasks.discard)
        if process.state is not State.STARTING:
            os.close(read_fd)
            raise StartFailed("stopped while starting")
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                                    os.fdopen(read_fd, "rb", buffering=0))
        try:
            async with asyncio.timeout(self._start_timeout):
                line = await reader.readline()
                if not line:
                    # The pipe closed without a word: the runtime exited (or closed it). Let its
                    # last output arrive before reporting it.
                    code = await process.proc.wait()
                    await self._output_done(process)
                    raise StartFailed(f"the runtime exited with code {code} before it was ready; "
                                      f"{process.describe_output()}")
        except TimeoutError:
            raise StartFailed(f"not ready after {self._start_timeout:g}s; {process.describe_output()}") from None
        finally:
            transport.close()
        words = line.decode(errors="replace").split()
        if len(words) != 2 or words[0] != "ready" or not words[1].isdigit():
            raise StartFailed(f"the runtime said {line!r} instead of 'ready <port>'")
        return int(words[1])

    @staticmethod
    async def _output_done(process: _Process) -> None:
        """Waits (briefly) for an exited instance's last output to be read."""
        if process.output_task is not None:
            with contextlib.suppress(TimeoutError, Exception):
                async with asyncio.timeout(1.0):
                    await asyncio.shield(process.output_task)

    async def _pump_output(self, state: _Function, process: _Process) -> None:
        """Copies an instance's output into the function's logs; runs until the output closes.

        Reads whatever is available rather than line by line: under load a runtime logs a line
        per request, and one wake-up per batch keeps that cheap for the gateway sharing this loop.
        """
        proc = process.proc
        assert proc is not None and proc.stdout is not None
        prefix = f"[{process.id}] "
        partial = b""
        while True:
            chunk = await proc.stdout.read(65536)
            if not chunk:
                if partial:
                    self._output(state, process, [prefix + partial.decode(errors="replace").rstrip("\r")])
                return
            *complete, partial = (partial + chunk).split(b"\n")
            if len(partial) > 65536:
                # A line without an end in sight: keep it as it is rather than buffer without bound.
                complete.append(partial)
                partial = b""
            if complete:
                self._output(state, process, [prefix + line.decode(errors="replace").rstrip("\r") for line in complete])

    def _output(self, state: _Function, process: _Process, lines: list[str]) -> None:
        cut = len(process.id) + 3
        for line in lines:
            process.last_lines.append(line[cut:])
            state.logs.append(line)
        if self._on_output is not None:
            self._on_output(process.function.name, lines)

    # -- code, dependencies, environment ----------------------------------------------------------

    @staticmethod
    def unsupported(function: Function) -> str | None:
        """Why local mode cannot run `function` (naming the field), or None if it can."""
        spec = function.spec
        if spec.source is None or spec.source.files is None:
            if spec.source is not None and spec.source.configMap is not None:
                return ("spec.source.configMap: ConfigMaps exist only on Kubernetes; "
                        "kfn local needs the code inline in spec.source.files")
            return "spec.image: custom images are not supported by kfn local; put the code in spec.source.files"
        if spec.image is not None:
            return "spec.image: custom images are not supported by kfn local; remove it to use the Python runtime"
        for i, var in enumerate(spec.env):
            if var.valueFrom is not None:
                return (f"spec.env[{i}].valueFrom: references to Secrets, ConfigMaps and fields are not "
                        f"supported by kfn local ({var.name}); use a plain value")
        return None

    async def _prepare(self, state: _Function, process: _Process) -> tuple[dict[str, str], Path]:
        function = process.function
        problem = self.unsupported(function)
        if problem:
            raise Unsupported(problem)
        code_dir = self._write_code(function)
        env = {k: v for k, v in os.environ.items() if not k.startswith("KFN_")}
        # The runtime starts with `python -S` and sees the standard library, the runtime and the
        # function's requirements: what its image holds on Kubernetes, so a handler that imports
        # a package it does not list fails here too. Skipping site also makes cold starts faster.
        env["PYTHONPATH"] = RUNTIME_PATH
        spec = function.spec
        for var in spec.env:
            env[var.name] = var.value or ""
        if spec.requirements:
            env[contract.ENV_DEPS_DIR] = str(await self._install(state, function))
        env.update({
            contract.ENV_HANDLER: spec.handler,
            contract.ENV_CODE_DIR: str(code_dir),
            contract.ENV_FUNCTION_NAME: function.name,
            contract.ENV_FUNCTION_VERSION: function.code_hash(),
            contract.ENV_NAMESPACE: function.namespace,
            contract.ENV_TIMEOUT: repr(float(spec.timeout)),
            contract.ENV_CONCURRENCY: str(spec.concurrency),
            contract.ENV_MEMORY_MB: str(spec.resources.memory_limit_mb),
            contract.ENV_HOST: LOCAL_HOST,
            contract.ENV_PORT: "0",
            contract.ENV_DRAIN_TIMEOUT: repr(float(spec.timeout) + 1.0),
            "PYTHONUNBUFFERED": "1",
        })
        return env, code_dir

    def _write_code(self, function: Function) -> Path:
        """The function's inline files in a directory per code version, written once."""
        code_dir = self.work_dir / "code" / function.name / function.code_hash()
        if code_dir.is_dir():
            return code_dir
        assert function.spec.source is not None and function.spec.source.files is not None
        partial = Path(tempfile.mkdtemp(prefix=".partial-", dir=_mkdirs(code_dir.parent)))
        for file_name, content in function.spec.source.files.items():
            (partial / file_name).write_text(content, encoding="utf-8")
        try:
            partial.rename(code_dir)
        except OSError:
            shutil.rmtree(partial, ignore_errors=True)  # another instance wrote it first
        return code_dir

    async def _install(self, state: _Function, function: Function) -> Path:
        """The requirements installed with pip into a cache directory, once per requirement set.

        Runs as long as pip does (bounded by the pip timeout); Unsupported with pip's output if
        the install fails, so the function reports it instead of retrying.
        """
        assert self._deps_cache is not None
        key = hashlib.sha256(json.dumps([sys.version_info[:2], function.spec.requirements]).encode()).hexdigest()[:12]
        target = self._deps_cache / key
        if (target / ".kfn-complete").exists():
            return target
        task = self._installs.get(target)
        if task is None or (task.done() and task.exception() is None and not (target / ".kfn-complete").exists()):
            task = asyncio.get_running_loop().create_task(self._pip(state, function, target))
            self._installs[target] = task
        try:
            await asyncio.shield(task)
        except Unsupported:
            self._installs.pop(target, None)  # a changed function may try again
            raise
        return target

    async def _pip(self, state: _Function, function: Function, target: Path) -> None:
        requirements = function.spec.requirements
        state.logs.append(f"[kfn] installing requirements for {function.name}: {' '.join(requirements)}")
        partial = Path(tempfile.mkdtemp(prefix=".partial-", dir=_mkdirs(target.parent)))
        # The same pip command as the runtime's init step on Kubernetes.
        proc = await asyncio.create_subprocess_exec(
            *runtime_requirements.pip_command(requirements, str(partial), python=self._python),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        try:
            async with asyncio.timeout(self._pip_timeout):
                output, _ = await proc.communicate()
        except BaseException as e:  # a timeout, or the backend closing: pip must not outlive us
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await asyncio.shield(proc.wait())
            shutil.rmtree(partial, ignore_errors=True)
            if isinstance(e, TimeoutError):
                raise Unsupported(f"spec.requirements: pip did not finish within {self._pip_timeout:g}s") from None
            raise
        lines = output.decode(errors="replace").splitlines()
        for line in lines:
            state.logs.append(f"[pip] {line}")
        if proc.returncode != 0:
            shutil.rmtree(partial, ignore_errors=True)
            tail = "\n  ".join(lines[-CRASH_LOG_LINES:]) or "(no output)"
            raise Unsupported(f"spec.requirements: pip install failed (exit code {proc.returncode}):\n  {tail}")
        (partial / ".kfn-complete").touch()
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)

    # -- notifications -----------------------------------------------------------------------------

    def _new_log_buffer(self, name: str) -> LogBuffer:
        path = None
        if self._log_files:
            path = _mkdirs(self.work_dir / "logs") / f"{name}.log"
        return LogBuffer(max_lines=self._log_lines, path=path)

    def _changed(self, state: _Function) -> None:
        state.ready_cache = [p.instance for p in state.processes.values()
                             if p.state is State.READY and p.instance is not None]
        state.wake.set()
        name = state.function.name
        for listener in list(self._listeners):
            try:
                listener(name)
            except Exception:
                logger.exception("instance listener failed for %s", name)


def _mkdirs(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
