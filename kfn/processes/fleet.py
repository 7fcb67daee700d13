"""One function's local instances: the fleet that `ProcessBackend` keeps for each function.

A `Fleet` holds the function's definition, its wanted replicas and its instances. Its reconcile
task asks `kfn.processes.plan` what to start and stop and does it; each instance is an
`InstanceProcess` (`kfn.processes.supervisor`) owned by a task of its own from spawn to reap,
whose end the fleet records (backoff, the problem callers learn, the function's log). What all
fleets of one backend share is their `Site`.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable

from kfn.core.functions import Function, FunctionRef
from kfn.core.instances import Instance, Listener, StartProblem, StartReason
from kfn.processes import plan
from kfn.processes.code import unsupported
from kfn.processes.confine import Confinement
from kfn.processes.interpreters import Choice
from kfn.processes.logs import LogBuffer
from kfn.processes.setup import HostBuilder, InstanceSetup
from kfn.processes.supervisor import CRASHED, START_FAILED, UNSUPPORTED, InstanceProcess, Outcome, Settings
from kfn_runtime.config import Config

logger = logging.getLogger(__name__)

OutputHook = Callable[[FunctionRef, list[str]], None]


class Site:
    """What every fleet of one backend shares: how instances are set up and confined, whether the
    backend is quiescing or closing, where output goes, and who hears of changes. The backend
    fills `setup` and `confinement` when it starts and sets the flags as it shuts down."""

    def __init__(self, *, settings: Settings, max_backoff: float, on_output: OutputHook | None) -> None:
        self.settings = settings
        self.max_backoff = max_backoff
        self.on_output = on_output
        self.setup: InstanceSetup | None = None
        self.confinement = Confinement()
        self.listeners: list[Listener] = []
        self.closing = False
        self.quiescing = False

    def notify(self, ref: FunctionRef) -> None:
        """Tell every listener that `ref`'s instances changed; a failing listener is logged."""
        for listener in list(self.listeners):
            try:
                listener(ref)
            except Exception:
                logger.exception("instance listener failed for %s", ref)


class Fleet:
    """One function's definition, wanted replicas and instances, and the task that reconciles them."""

    def __init__(self, function: Function, logs: LogBuffer, site: Site) -> None:
        self.function = function
        self.logs = logs
        self.desired = 0
        self.version = ""     # the spec hash: instances of another version are rolled
        self.processes: dict[str, InstanceProcess] = {}
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.removed = False
        self.ready_cache: list[Instance] = []
        # A configuration local mode cannot run, or a failed pip install: no start until it changes.
        self.blocked: StartProblem | None = None
        self.last_failure: StartProblem | None = None
        self.backoff = plan.Backoff()
        self.python: Choice | None = None   # the interpreter of a Python runtime (None for Node.js)
        self._counter = itertools.count(1)
        self._site = site

    def define(self, function: Function, python: Choice | None) -> None:
        """Take `function` (on `python`) as the definition new instances run; clears what was
        learnt about the previous one."""
        self.function = function
        self.version = function.spec_hash()
        reason = unsupported(function)
        self.blocked = StartProblem(StartReason.CONFIGURATION, reason) if reason else None
        self.last_failure = None
        self.backoff = plan.Backoff()
        self.python = python

    def warn_substitution(self) -> None:
        """At load (kfn local's own log); each instance repeats it first in the function's log."""
        warning = self.python.warning() if self.python is not None else None
        if warning is not None:
            logger.warning("function %s: %s", self.function.ref, warning)

    def runtime_details(self) -> dict[str, str | None]:
        """The runtime that really runs and, when it is not the declared one, why."""
        python = self.python
        return {"runtimeUsed": python.running if python is not None else self.function.spec.runtime,
                "runtimeWarning": python.warning() if python is not None else None}

    def problem(self) -> StartProblem | None:
        """Why the function cannot serve, or why its last instance failed to start; None if fine,
        or while an instance of the current version is starting (its outcome is the news)."""
        if self.blocked:
            return self.blocked
        if self.ready_cache or self.last_failure is None:
            return None
        starting = any(p.state is plan.State.STARTING and p.version == self.version
                       for p in self.processes.values())
        return None if starting else self.last_failure

    def status(self) -> dict[str, object]:
        """A JSON-ready view of the function's instances (for /system/instances and the bench)."""
        ref = self.function.ref
        return {
            "name": ref.name,
            "namespace": ref.namespace,
            "version": self.function.code_hash(),
            "desired": self.desired,
            "error": str(problem) if (problem := self.problem()) is not None else None,   # the owner's view
            **self.runtime_details(),
            "instances": [{
                "id": p.id,
                "state": p.state.value,
                "pid": p.pid,
                "url": p.instance.url if p.instance is not None else None,
                "version": p.function.code_hash(),
                "current": p.version == self.version,
                "memoryLimit": p.confinement.mechanism if p.confinement is not None else None,
                "cgroup": str(p.confinement.v2) if p.confinement is not None and p.confinement.v2 else None,
                "environments": [{"id": env.id, "pid": env.pid, "state": env.state}
                                 for env in (p.host.environments if p.host is not None else [])],
            } for p in self.processes.values()],
        }

    # -- reconciliation --------------------------------------------------------------------------

    def reconcile_soon(self) -> None:
        """Start the reconcile task unless it runs; it exits once the fleet is removed and empty."""
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._reconcile_loop(),
                                                               name=f"kfn-local-{self.function.ref}")

    async def _reconcile_loop(self) -> None:
        """Starts and stops the function's instances until it is removed and all have exited.

        Runs for the function's lifetime; wakes on every change and when a retry is due.
        """
        while True:
            self.wake.clear()
            wake_at = self._reconcile()
            if self.removed and not self.processes:
                return
            timeout = None if wake_at is None else max(0.0, wake_at - time.monotonic())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.wake.wait()

    def _reconcile(self) -> float | None:
        """One step of the plan; returns when to look again (None: on the next change)."""
        site = self._site
        gone = self.removed or site.closing
        wanted = plan.Wanted(replicas=0 if gone else self.desired, version=self.version,
                             can_start=not (gone or self.blocked or site.quiescing))
        step = plan.plan((p.observed() for p in self.processes.values()), wanted, self.backoff,
                         now=time.monotonic())
        for process_id in step.stop:
            self.stop(self.processes[process_id])
        for _ in range(step.start):
            self._launch()
        return step.wake_at

    def _launch(self) -> None:
        function, python = self.function, self.python
        process_id = f"{function.name}-{next(self._counter)}"
        warning = python.warning() if python is not None else None
        if warning is not None:   # before anything the instance writes: its first line in the log
            self.logs.append(f"[kfn] {process_id}: {warning}")
        group = self._site.confinement.instance(
            f"{function.namespace}.{process_id}", function.spec.resources.memory_limit_mb * 1024 * 1024)
        process = InstanceProcess(
            process_id, function, self.version, settings=self._site.settings,
            prepare=lambda: self._prepare(function, python, group.preexec(), group.adopt),
            on_output=self._output, confinement=group)
        process.on_ready = self._ready
        self.processes[process.id] = process
        asyncio.get_running_loop().create_task(self._run(process), name=f"kfn-instance-{process.id}")

    async def _prepare(self, function: Function, choice: Choice | None, preexec: Callable[[], None],
                       adopt: Callable[[int], None]) -> tuple[Config, HostBuilder]:
        """The instance's configuration and host builder (`InstanceSetup.prepare`); installer output
        goes to the function's log."""
        assert self._site.setup is not None
        return await self._site.setup.prepare(function, choice, preexec, adopt, log=self.logs.append)

    def stop(self, process: InstanceProcess) -> None:
        """Take `process` out of rotation now; it drains and exits in the background."""
        if process.stop(closing=self._site.closing):
            self.changed()
        self.wake.set()

    def _ready(self, process: InstanceProcess) -> None:
        assert process.instance is not None
        if self.version == process.version:
            self.backoff = plan.Backoff()
            self.last_failure = None
        elapsed = time.monotonic() - process.started
        self.logs.append(f"[kfn] instance {process.id} ready (pid {process.pid}, {elapsed * 1000:.0f} ms)")
        logger.info("instance %s ready in %.0f ms", process.id, elapsed * 1000)
        self.changed()

    async def _run(self, process: InstanceProcess) -> None:
        """Runs one instance to its end and records why it ended; never raises."""
        try:
            outcome = await process.run()
        except asyncio.CancelledError:
            self.processes.pop(process.id, None)
            self.changed()
            raise
        except Exception as e:  # never let one instance take the backend down
            logger.exception("instance %s: unexpected error", process.id)
            outcome = Outcome(START_FAILED, f"instance {process.id}: {type(e).__name__}: {e}")
        self.processes.pop(process.id, None)
        self._record(process, outcome)
        # After the record: listeners (the gateway) read why it ended through `problem`.
        self.changed()

    def _record(self, process: InstanceProcess, outcome: Outcome) -> None:
        current = self.version == process.version
        name = self.function.name
        if outcome.kind == UNSUPPORTED:
            if current:
                self.blocked = outcome.problem or StartProblem(StartReason.CONFIGURATION, outcome.message)
            self.logs.append(f"[kfn] {name}: {outcome.message}")
            logger.error("function %s cannot run locally: %s", name, outcome.message)
        elif outcome.kind == START_FAILED:
            if not current:
                return
            self.backoff = plan.after_failure(self.backoff, now=time.monotonic(), maximum=self._site.max_backoff)
            delay = plan.retry_delay(self.backoff, now=time.monotonic())
            self.last_failure = outcome.problem or StartProblem(StartReason.PLATFORM, outcome.message)
            self.logs.append(f"[kfn] {outcome.message}\n(retrying in {delay:.3g}s while instances are wanted)")
            logger.error("%s (retrying in %.3gs)", outcome.message, delay)
        elif outcome.kind == CRASHED or outcome.message:
            self.logs.append(f"[kfn] {outcome.message}")
            logger.warning("%s", outcome.message)

    # -- notifications -----------------------------------------------------------------------------

    def _output(self, lines: list[str]) -> None:
        for line in lines:
            self.logs.append(line)
        if self._site.on_output is not None:
            self._site.on_output(self.function.ref, lines)

    def changed(self) -> None:
        """Refresh the ready instances, wake the reconcile task and tell the listeners."""
        self.ready_cache = [p.instance for p in self.processes.values()
                            if p.state is plan.State.READY and p.instance is not None]
        self.wake.set()
        self._site.notify(self.function.ref)
