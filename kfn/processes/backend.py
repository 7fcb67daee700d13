"""Function instances as local processes: the instance backend of `kfn local`.

`ProcessBackend` implements `kfn.core.instances.InstanceBackend`. Local mode feeds it functions
(`set_function`, `remove_function`); the gateway and the autoscaler use it through the protocol.
Each function has one reconcile task that asks `kfn.processes.plan` what to start and stop and
does it; each instance is an `InstanceProcess` (`kfn.processes.supervisor`) owned by a task of its
own from spawn to reap.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import kfn_runtime
from kfn.core.functions import Function, FunctionRef
from kfn.core.instances import Instance, Listener, StartProblem, StartReason
from kfn.processes import nodejs, plan
from kfn.processes.code import CodeStore, Unsupported, mkdirs, unsupported
from kfn.processes.confine import Confinement
from kfn.processes.interpreters import Choice, Interpreters
from kfn.processes.logs import DEFAULT_LOG_BYTES, DEFAULT_LOG_LINES, LogBuffer
from kfn.processes.supervisor import CRASHED, LOCAL_HOST, START_FAILED, UNSUPPORTED, InstanceProcess, Outcome, Settings
from kfn_runtime import contract
from kfn_runtime.config import Config
from kfn_runtime.host import InstanceHost
from kfn_runtime.launch import build_host

logger = logging.getLogger(__name__)

# The directory holding the kfn_runtime package: the one entry instances get on sys.path.
RUNTIME_PATH = str(Path(kfn_runtime.__file__).resolve().parent.parent)
# kfn's Runtime API client for Node.js (runtime-images/nodejs), for local Node.js instances.
NODE_CLIENT = str(Path(RUNTIME_PATH).parent / "nodejs" / "ric.mjs")
# PATH in local instances: the usual system directories, as in a Lambda environment.
LOCAL_PATH = "/usr/local/bin:/usr/bin:/bin"
# The largest event the gateway sends (a 6 MiB body in base64, plus the rest of the event).
MAX_EVENT_BYTES = 12 * 1024 * 1024

OutputHook = Callable[[FunctionRef, list[str]], None]


@dataclass(eq=False)
class _Function:
    function: Function
    logs: LogBuffer
    desired: int
    version: str = ""     # the spec hash: instances of another version are rolled
    processes: dict[str, InstanceProcess] = field(default_factory=dict)
    counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    removed: bool = False
    ready_cache: list[Instance] = field(default_factory=list)
    # A configuration local mode cannot run, or a failed pip install: no start until it changes.
    blocked: StartProblem | None = None
    last_failure: StartProblem | None = None
    backoff: plan.Backoff = field(default_factory=plan.Backoff)
    python: Choice | None = None   # the interpreter of a Python runtime (None for Node.js)

    def define(self, function: Function, python: Choice | None) -> None:
        self.function = function
        self.version = function.spec_hash()
        reason = unsupported(function)
        self.blocked = StartProblem(StartReason.CONFIGURATION, reason) if reason else None
        self.last_failure = None
        self.backoff = plan.Backoff()
        self.python = python


class ProcessBackend:
    """Runs each function's instances as runtime processes on 127.0.0.1."""

    def __init__(self, *, work_dir: Path | None = None, deps_cache: Path | None = None,
                 python: str = sys.executable, interpreters: Interpreters | None = None,
                 region: str, environment_idle_timeout: float = 60.0,
                 init_timeout: float = contract.DEFAULT_INIT_TIMEOUT, stop_grace: float = 5.0,
                 deregistration_delay: float = 0.5, max_backoff: float = 10.0, pip_timeout: float = 600.0,
                 log_lines: int = DEFAULT_LOG_LINES, log_bytes: int = DEFAULT_LOG_BYTES, log_files: bool = False,
                 on_output: OutputHook | None = None, confine: bool = True) -> None:
        self._given_work_dir = work_dir
        self._work_dir: Path | None = None
        self._deps_cache = deps_cache
        self._python = python
        # The interpreter of each Python runtime: `python` unless the machine has the declared version.
        self._interpreters = interpreters if interpreters is not None else Interpreters(default=python)
        self._region = region
        self._environment_idle_timeout = environment_idle_timeout
        self._init_timeout = init_timeout   # each environment's init phase (Lambda's 10 s)
        self._settings = Settings(stop_grace=stop_grace,
                                  deregistration_delay=deregistration_delay)
        self._max_backoff = max_backoff
        self._pip_timeout = pip_timeout
        self._log_lines = log_lines
        self._log_bytes = log_bytes
        self._log_files = log_files
        self._on_output = on_output
        self._functions: dict[FunctionRef, _Function] = {}
        self._listeners: list[Listener] = []
        self._code: CodeStore | None = None
        self._closing = False
        self._quiescing = False
        self._confine = confine
        self._confinement = Confinement()

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
        self._code = CodeStore(self._work_dir, self._deps_cache or self._work_dir / "deps",
                               python=self._python, pip_timeout=self._pip_timeout)
        if self._confine:
            self._confinement = await asyncio.to_thread(Confinement.create, f"kfn-local-{os.getpid()}")
            logger.info("local instances: %s", self._confinement.describe())

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
        tasks: list[asyncio.Task[None]] = []
        for state in self._functions.values():
            state.removed = True
            for process in list(state.processes.values()):
                process.stop(closing=True)
            state.wake.set()
            if state.task is not None:
                tasks.append(state.task)
        if self._code is not None:
            await self._code.close()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for state in self._functions.values():
            state.logs.close()
        self._functions.clear()
        await asyncio.to_thread(self._confinement.remove)
        if self._given_work_dir is None and self._work_dir is not None:
            await asyncio.to_thread(shutil.rmtree, self._work_dir, True)

    # -- what local mode feeds in ----------------------------------------------------------------

    def set_function(self, function: Function) -> None:
        """Serve `function`, or roll its instances to this definition if its spec changed."""
        ref = function.ref
        state = self._functions.get(ref)
        if state is not None and not state.removed:
            if state.version == function.spec_hash():
                state.function = function
                return
            previous = state.function
            state.define(function, self.choose_python(function))
            scale = function.spec.scale
            state.desired = min(max(state.desired, scale.minReplicas), scale.maxReplicas)
            what = (f"code {previous.code_hash()} → {function.code_hash()}"
                    if previous.code_hash() != function.code_hash() else "settings")
            state.logs.append(f"[kfn] {function.name} changed ({what}): rolling instances")
            self._warn_substitution(state)
            self._changed(state)
            return
        if state is not None:
            # Re-added while its old instances still drain: those drain on; new ones start fresh.
            state.removed = False
        else:
            state = _Function(function=function, logs=self._new_log_buffer(ref), desired=0)
            self._functions[ref] = state
        state.define(function, self.choose_python(function))
        state.desired = function.spec.scale.minReplicas
        self._warn_substitution(state)
        if state.blocked:
            state.logs.append(f"[kfn] {function.name}: {state.blocked.detail}")
        if state.task is None or state.task.done():
            state.task = asyncio.get_running_loop().create_task(self._reconcile_loop(state),
                                                                name=f"kfn-local-{ref}")
        self._changed(state)

    def choose_python(self, function: Function) -> Choice | None:
        """The interpreter `function` runs on (None for a runtime that is not Python); see
        `kfn.processes.interpreters`. Safe to call from any thread."""
        if not function.spec.runtime.startswith("python"):
            return None
        return self._interpreters.choose(function.spec.runtime)

    def python(self, ref: FunctionRef) -> Choice | None:
        """The interpreter the function's new instances run on, or None (not Python, or unknown)."""
        state = self._live(ref)
        return None if state is None else state.python

    def runtime_details(self, ref: FunctionRef) -> dict[str, str | None]:
        """The runtime that really runs and, when it is not the declared one, why: fields of
        /system/functions and /system/instances."""
        state = self._live(ref)
        if state is None:
            return {}
        python = state.python
        return {"runtimeUsed": python.running if python is not None else state.function.spec.runtime,
                "runtimeWarning": python.warning() if python is not None else None}

    def _warn_substitution(self, state: _Function) -> None:
        """At load (kfn local's own log); each instance repeats it first in the function's log."""
        warning = state.python.warning() if state.python is not None else None
        if warning is not None:
            logger.warning("function %s: %s", state.function.ref, warning)

    def remove_function(self, ref: FunctionRef) -> None:
        """Stop serving a function: its instances leave rotation at once and drain in the background."""
        state = self._functions.get(ref)
        if state is None or state.removed:
            return
        state.removed = True
        state.desired = 0
        state.logs.append(f"[kfn] {ref.name} removed: draining instances")
        self._changed(state)

    # -- InstanceBackend -----------------------------------------------------------------------

    def _live(self, ref: FunctionRef) -> _Function | None:
        state = self._functions.get(ref)
        return None if state is None or state.removed else state

    def function(self, ref: FunctionRef) -> Function | None:
        state = self._live(ref)
        return None if state is None else state.function

    def functions(self) -> list[Function]:
        return [s.function for s in self._functions.values() if not s.removed]

    def ready(self, ref: FunctionRef) -> list[Instance]:
        state = self._functions.get(ref)
        return [] if state is None else list(state.ready_cache)

    def desired(self, ref: FunctionRef) -> int:
        state = self._live(ref)
        return 0 if state is None else state.desired

    def problem(self, ref: FunctionRef) -> StartProblem | None:
        """Why the function cannot serve, or why its last instance failed to start; None if fine,
        or while an instance of the current version is starting (its outcome is the news)."""
        state = self._live(ref)
        if state is None:
            return None
        if state.blocked:
            return state.blocked
        if state.ready_cache or state.last_failure is None:
            return None
        starting = any(p.state is plan.State.STARTING and p.version == state.version
                       for p in state.processes.values())
        return None if starting else state.last_failure

    async def scale(self, ref: FunctionRef, replicas: int, *, reason: str = "") -> None:
        state = self._live(ref)
        if state is None or self._closing:
            return
        replicas = max(0, replicas)
        if replicas == state.desired:
            return
        logger.debug("scaling %s from %d to %d%s", ref, state.desired, replicas, f": {reason}" if reason else "")
        state.desired = replicas
        state.wake.set()

    def report_failure(self, instance: Instance, *, error: str) -> None:
        state = self._functions.get(instance.function)
        process = state.processes.get(instance.id) if state is not None else None
        if state is None or process is None or process.state is not plan.State.READY:
            return
        logger.warning("the gateway could not use instance %s (%s): replacing it", instance.id, error)
        state.logs.append(f"[kfn] the gateway could not use instance {instance.id} ({error}): replacing it")
        self._stop(state, process)

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    @contextlib.asynccontextmanager
    async def logs(self, ref: FunctionRef, *, tail: int, follow: bool) -> AsyncIterator[AsyncIterator[str]]:
        state = self._functions.get(ref)
        buffer = state.logs if state is not None else LogBuffer(max_lines=0)
        async with buffer.read(tail=tail, follow=follow) as lines:
            yield lines

    # -- what local mode shows ------------------------------------------------------------------

    def status(self, ref: FunctionRef) -> dict[str, object] | None:
        """A JSON-ready view of a function's instances (for /system/instances and the bench)."""
        state = self._live(ref)
        if state is None:
            return None
        return {
            "name": ref.name,
            "namespace": ref.namespace,
            "version": state.function.code_hash(),
            "desired": state.desired,
            "error": str(problem) if (problem := self.problem(ref)) is not None else None,   # the owner's view
            **self.runtime_details(ref),
            "instances": [{
                "id": p.id,
                "state": p.state.value,
                "pid": p.pid,
                "url": p.instance.url if p.instance is not None else None,
                "version": p.function.code_hash(),
                "current": p.version == state.version,
                "memoryLimit": p.confinement.mechanism if p.confinement is not None else None,
                "cgroup": str(p.confinement.v2) if p.confinement is not None and p.confinement.v2 else None,
                "environments": [{"id": env.id, "pid": env.pid, "state": env.state}
                                 for env in (p.host.environments if p.host is not None else [])],
            } for p in state.processes.values()],
        }

    # -- reconciliation --------------------------------------------------------------------------

    async def _reconcile_loop(self, state: _Function) -> None:
        """Starts and stops a function's instances until it is removed and all have exited.

        Runs for the function's lifetime; wakes on every change and when a retry is due.
        """
        while True:
            state.wake.clear()
            wake_at = self._reconcile(state)
            if state.removed and not state.processes:
                return
            timeout = None if wake_at is None else max(0.0, wake_at - time.monotonic())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await state.wake.wait()

    def _reconcile(self, state: _Function) -> float | None:
        """One step of the plan; returns when to look again (None: on the next change)."""
        gone = state.removed or self._closing
        wanted = plan.Wanted(replicas=0 if gone else state.desired, version=state.version,
                             can_start=not (gone or state.blocked or self._quiescing))
        step = plan.plan((p.observed() for p in state.processes.values()), wanted, state.backoff,
                         now=time.monotonic())
        for process_id in step.stop:
            self._stop(state, state.processes[process_id])
        for _ in range(step.start):
            self._launch(state)
        return step.wake_at

    def _launch(self, state: _Function) -> None:
        function, python = state.function, state.python
        process_id = f"{function.name}-{next(state.counter)}"
        warning = python.warning() if python is not None else None
        if warning is not None:   # before anything the instance writes: its first line in the log
            state.logs.append(f"[kfn] {process_id}: {warning}")
        group = self._confinement.instance(
            f"{function.namespace}.{process_id}", function.spec.resources.memory_limit_mb * 1024 * 1024)
        process = InstanceProcess(
            process_id, function, state.version, settings=self._settings,
            prepare=lambda: self._prepare(state, function, python, group.preexec(), group.adopt),
            on_output=lambda lines: self._output(state, lines), confinement=group)
        process.on_ready = lambda p: self._ready(state, p)
        state.processes[process.id] = process
        asyncio.get_running_loop().create_task(self._run(state, process), name=f"kfn-instance-{process.id}")

    def _stop(self, state: _Function, process: InstanceProcess) -> None:
        """Take `process` out of rotation now; it drains and exits in the background."""
        if process.stop(closing=self._closing):
            self._changed(state)
        state.wake.set()

    def _ready(self, state: _Function, process: InstanceProcess) -> None:
        assert process.instance is not None
        if state.version == process.version:
            state.backoff = plan.Backoff()
            state.last_failure = None
        elapsed = time.monotonic() - process.started
        state.logs.append(f"[kfn] instance {process.id} ready (pid {process.pid}, {elapsed * 1000:.0f} ms)")
        logger.info("instance %s ready in %.0f ms", process.id, elapsed * 1000)
        self._changed(state)

    async def _run(self, state: _Function, process: InstanceProcess) -> None:
        """Runs one instance to its end and records why it ended; never raises."""
        try:
            outcome = await process.run()
        except asyncio.CancelledError:
            state.processes.pop(process.id, None)
            self._changed(state)
            raise
        except Exception as e:  # never let one instance take the backend down
            logger.exception("instance %s: unexpected error", process.id)
            outcome = Outcome(START_FAILED, f"instance {process.id}: {type(e).__name__}: {e}")
        state.processes.pop(process.id, None)
        self._record(state, process, outcome)
        # After the record: listeners (the gateway) read why it ended through `problem`.
        self._changed(state)

    def _record(self, state: _Function, process: InstanceProcess, outcome: Outcome) -> None:
        current = state.version == process.version
        name = state.function.name
        if outcome.kind == UNSUPPORTED:
            if current:
                state.blocked = outcome.problem or StartProblem(StartReason.CONFIGURATION, outcome.message)
            state.logs.append(f"[kfn] {name}: {outcome.message}")
            logger.error("function %s cannot run locally: %s", name, outcome.message)
        elif outcome.kind == START_FAILED:
            if not current:
                return
            state.backoff = plan.after_failure(state.backoff, now=time.monotonic(), maximum=self._max_backoff)
            delay = plan.retry_delay(state.backoff, now=time.monotonic())
            state.last_failure = outcome.problem or StartProblem(StartReason.PLATFORM, outcome.message)
            state.logs.append(f"[kfn] {outcome.message}\n(retrying in {delay:.3g}s while instances are wanted)")
            logger.error("%s (retrying in %.3gs)", outcome.message, delay)
        elif outcome.kind == CRASHED or outcome.message:
            state.logs.append(f"[kfn] {outcome.message}")
            logger.warning("%s", outcome.message)

    # -- code, dependencies, environment ----------------------------------------------------------

    async def _prepare(self, state: _Function, function: Function, choice: Choice | None,
                       preexec: Callable[[], None], adopt: Callable[[int], None]) -> tuple[
            Config, Callable[[Callable[[str, str], None]], InstanceHost]]:
        """The instance's configuration (code written, requirements installed) and its host builder."""
        problem = unsupported(function)
        if problem:
            raise Unsupported(problem)
        assert self._code is not None
        code_dir = self._code.code_dir(function)
        spec = function.spec
        node: str | None = None
        if spec.runtime.startswith("nodejs"):
            node = await asyncio.to_thread(nodejs.find_node, spec.runtime)
        deps_dir = str(self.work_dir / "no-deps")
        if spec.requirements:
            deps_dir = str(await self._code.dependencies(function, log=state.logs.append,
                                                         npm=nodejs.npm(node) if node else None, python=choice))
        # The function's own variables and nothing of kfn local's environment: instances see
        # what a pod would show them (the Lambda variables come from the instance host).
        user_env = {var.name: var.value or "" for var in spec.env}
        config = Config(
            handler=spec.handler, runtime=spec.runtime, command=None, code_dir=str(code_dir), deps_dir=deps_dir,
            runtime_dir=RUNTIME_PATH, function_name=function.name, function_version="$LATEST",
            namespace=function.namespace, region=self._region, timeout=float(spec.timeout),
            concurrency=spec.concurrency, memory_mb=spec.resources.memory_limit_mb, host=LOCAL_HOST, port=0,
            drain_timeout=float(spec.timeout) + 1.0, idle_timeout=self._environment_idle_timeout,
            max_body_bytes=MAX_EVENT_BYTES, user_env=user_env, init_timeout=self._init_timeout)
        python, path = self._python, LOCAL_PATH
        python_version = None
        if choice is not None:
            python, python_version = choice.python, choice.version
        if node is not None:   # as on Lambda, the runtime's node is the one on PATH
            path = os.pathsep.join([os.path.dirname(node), LOCAL_PATH])

        def build(log: Callable[[str, str], None]) -> InstanceHost:
            return build_host(config, log=log, python=python, python_version=python_version, node=node or "node",
                              path=path, node_client=NODE_CLIENT, preexec=preexec, adopt=adopt)

        return config, build

    # -- notifications -----------------------------------------------------------------------------

    def _new_log_buffer(self, ref: FunctionRef) -> LogBuffer:
        path = None
        if self._log_files:
            path = mkdirs(self.work_dir / "logs") / f"{ref}.log"
        return LogBuffer(max_lines=self._log_lines, max_bytes=self._log_bytes, path=path)

    def _output(self, state: _Function, lines: list[str]) -> None:
        for line in lines:
            state.logs.append(line)
        if self._on_output is not None:
            self._on_output(state.function.ref, lines)

    def _changed(self, state: _Function) -> None:
        state.ready_cache = [p.instance for p in state.processes.values()
                             if p.state is plan.State.READY and p.instance is not None]
        state.wake.set()
        ref = state.function.ref
        for listener in list(self._listeners):
            try:
                listener(ref)
            except Exception:
                logger.exception("instance listener failed for %s", ref)
