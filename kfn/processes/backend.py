"""Function instances as local processes: the instance backend of `kfn local`.

`ProcessBackend` implements `kfn.core.instances.InstanceBackend`. Local mode feeds it functions
(`set_function`, `remove_function`); the gateway and the autoscaler use it through the protocol.
Each function is a `Fleet` (`kfn.processes.fleet`) that reconciles its instances; instances are set
up by `kfn.processes.setup` and run on the interpreter `kfn.processes.interpreters` chooses.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from kfn.core.functions import Function, FunctionRef
from kfn.core.instances import Instance, Listener, NoBuild, StartProblem
from kfn.processes import plan
from kfn.processes.code import CodeStore, mkdirs
from kfn.processes.confine import Confinement
from kfn.processes.fleet import Fleet, OutputHook, Site
from kfn.processes.interpreters import Choice, Interpreters
from kfn.processes.logs import DEFAULT_LOG_BYTES, DEFAULT_LOG_LINES, LogBuffer
from kfn.processes.setup import InstanceSetup
from kfn.processes.supervisor import Settings
from kfn_runtime import contract

logger = logging.getLogger(__name__)


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
        self._pip_timeout = pip_timeout
        self._log_lines = log_lines
        self._log_bytes = log_bytes
        self._log_files = log_files
        self._site = Site(settings=Settings(stop_grace=stop_grace, deregistration_delay=deregistration_delay),
                          max_backoff=max_backoff, on_output=on_output)
        self._functions: dict[FunctionRef, Fleet] = {}
        self._code: CodeStore | None = None
        self._confine = confine

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
        self._site.setup = InstanceSetup(code=self._code, work_dir=self._work_dir, python=self._python,
                                         region=self._region, environment_idle_timeout=self._environment_idle_timeout,
                                         init_timeout=self._init_timeout)
        if self._confine:
            self._site.confinement = await asyncio.to_thread(Confinement.create, f"kfn-local-{os.getpid()}")
            logger.info("local instances: %s", self._site.confinement.describe())

    def quiesce(self) -> None:
        """Start no instance from now on (shutdown has begun); running ones serve until `close`.

        On Ctrl-C in a terminal the instances get SIGINT too and drain on their own: replacing
        them would only start processes that `close` then stops.
        """
        self._site.quiescing = True

    async def close(self) -> None:
        """Stop every instance (SIGTERM, then SIGKILL after the grace period) and reap them all.

        Runs at most the longest function timeout plus the grace period.
        """
        self._site.closing = True
        tasks: list[asyncio.Task[None]] = []
        for fleet in self._functions.values():
            fleet.removed = True
            for process in list(fleet.processes.values()):
                process.stop(closing=True)
            fleet.wake.set()
            if fleet.task is not None:
                tasks.append(fleet.task)
        if self._code is not None:
            await self._code.close()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for fleet in self._functions.values():
            fleet.logs.close()
        self._functions.clear()
        await asyncio.to_thread(self._site.confinement.remove)
        if self._given_work_dir is None and self._work_dir is not None:
            await asyncio.to_thread(shutil.rmtree, self._work_dir, True)

    # -- what local mode feeds in ----------------------------------------------------------------

    def set_function(self, function: Function) -> None:
        """Serve `function`, or roll its instances to this definition if its spec changed."""
        ref = function.ref
        fleet = self._functions.get(ref)
        if fleet is not None and not fleet.removed:
            if fleet.version == function.spec_hash():
                fleet.function = function
                return
            previous = fleet.function
            fleet.define(function, self.choose_python(function))
            scale = function.spec.scale
            fleet.desired = min(max(fleet.desired, scale.minReplicas), scale.maxReplicas)
            what = (f"code {previous.code_hash()} → {function.code_hash()}"
                    if previous.code_hash() != function.code_hash() else "settings")
            fleet.logs.append(f"[kfn] {function.name} changed ({what}): rolling instances")
            fleet.warn_substitution()
            fleet.changed()
            return
        if fleet is not None:
            # Re-added while its old instances still drain: those drain on; new ones start fresh.
            fleet.removed = False
        else:
            path = mkdirs(self.work_dir / "logs") / f"{ref}.log" if self._log_files else None
            logs = LogBuffer(max_lines=self._log_lines, max_bytes=self._log_bytes, path=path)
            fleet = Fleet(function, logs, self._site)
            self._functions[ref] = fleet
        fleet.define(function, self.choose_python(function))
        fleet.desired = function.spec.scale.minReplicas
        fleet.warn_substitution()
        if fleet.blocked:
            fleet.logs.append(f"[kfn] {function.name}: {fleet.blocked.detail}")
        fleet.reconcile_soon()
        fleet.changed()

    def choose_python(self, function: Function) -> Choice | None:
        """The interpreter `function` runs on (None for a runtime that is not Python); see
        `kfn.processes.interpreters`. Safe to call from any thread."""
        if not function.spec.runtime.startswith("python"):
            return None
        return self._interpreters.choose(function.spec.runtime)

    def choose_runtime(self, runtime: str) -> Choice | None:
        """`choose_python` for any function of `runtime`: blocks while the first choice looks at
        the machine's interpreters, so a caller may begin it early in a worker thread."""
        return self._interpreters.choose(runtime) if runtime.startswith("python") else None

    def python(self, ref: FunctionRef) -> Choice | None:
        """The interpreter the function's new instances run on, or None (not Python, or unknown)."""
        fleet = self._live(ref)
        return None if fleet is None else fleet.python

    def runtime_details(self, ref: FunctionRef) -> dict[str, str | None]:
        """The runtime that really runs and, when it is not the declared one, why: fields of
        /system/functions and /system/instances."""
        fleet = self._live(ref)
        return {} if fleet is None else fleet.runtime_details()

    def remove_function(self, ref: FunctionRef) -> None:
        """Stop serving a function: its instances leave rotation at once and drain in the background."""
        fleet = self._functions.get(ref)
        if fleet is None or fleet.removed:
            return
        fleet.removed = True
        fleet.desired = 0
        fleet.logs.append(f"[kfn] {ref.name} removed: draining instances")
        fleet.changed()

    # -- InstanceBackend -----------------------------------------------------------------------

    def _live(self, ref: FunctionRef) -> Fleet | None:
        fleet = self._functions.get(ref)
        return None if fleet is None or fleet.removed else fleet

    def function(self, ref: FunctionRef) -> Function | None:
        fleet = self._live(ref)
        return None if fleet is None else fleet.function

    def functions(self) -> list[Function]:
        return [f.function for f in self._functions.values() if not f.removed]

    def ready(self, ref: FunctionRef) -> list[Instance]:
        fleet = self._functions.get(ref)
        return [] if fleet is None else list(fleet.ready_cache)

    def desired(self, ref: FunctionRef) -> int:
        fleet = self._live(ref)
        return 0 if fleet is None else fleet.desired

    def problem(self, ref: FunctionRef) -> StartProblem | None:
        """Why the function cannot serve, or why its last instance failed to start; None if fine,
        or while an instance of the current version is starting (its outcome is the news)."""
        fleet = self._live(ref)
        return None if fleet is None else fleet.problem()

    async def scale(self, ref: FunctionRef, replicas: int, *, reason: str = "") -> None:
        fleet = self._live(ref)
        if fleet is None or self._site.closing:
            return
        replicas = max(0, replicas)
        if replicas == fleet.desired:
            return
        logger.debug("scaling %s from %d to %d%s", ref, fleet.desired, replicas, f": {reason}" if reason else "")
        fleet.desired = replicas
        fleet.wake.set()

    def report_failure(self, instance: Instance, *, error: str) -> None:
        fleet = self._functions.get(instance.function)
        process = fleet.processes.get(instance.id) if fleet is not None else None
        if fleet is None or process is None or process.state is not plan.State.READY:
            return
        logger.warning("the gateway could not use instance %s (%s): replacing it", instance.id, error)
        fleet.logs.append(f"[kfn] the gateway could not use instance {instance.id} ({error}): replacing it")
        fleet.stop(process)

    def add_listener(self, listener: Listener) -> None:
        self._site.listeners.append(listener)

    @contextlib.asynccontextmanager
    async def logs(self, ref: FunctionRef, *, tail: int, follow: bool,
                   build: bool = False) -> AsyncIterator[AsyncIterator[str]]:
        """The function's instance output (its log buffer); with `build`, the last `tail` lines of
        its requirements' last build (`CodeStore.build_log`: the installer's output, without
        following it: a build in progress also writes to the instance output), or NoBuild on
        entering when it has none."""
        if build:
            path = self._code.build_log(ref) if self._code is not None else None
            found = await asyncio.to_thread(_last_lines, path, tail) if path is not None else None
            if found is None:
                raise NoBuild(f"{ref.name} has no build")
            yield _each(found)
            return
        fleet = self._functions.get(ref)
        buffer = fleet.logs if fleet is not None else LogBuffer(max_lines=0)
        async with buffer.read(tail=tail, follow=follow) as lines:
            yield lines

    # -- what local mode shows ------------------------------------------------------------------

    def status(self, ref: FunctionRef) -> dict[str, object] | None:
        """A JSON-ready view of a function's instances (for /system/instances and the bench)."""
        fleet = self._live(ref)
        return None if fleet is None else fleet.status()


def _last_lines(path: Path, count: int) -> list[str] | None:
    """The last `count` lines of the text file at `path`, or None if it cannot be read."""
    try:
        with path.open(encoding="utf-8", errors="replace") as f:
            return [line.rstrip("\n") for line in collections.deque(f, maxlen=count)]
    except OSError:
        return None


async def _each(lines: list[str]) -> AsyncIterator[str]:
    for line in lines:
        yield line
