"""`kfn local`: the whole data path on one machine.

One process serves every Function manifest in a directory: the gateway (the same code as on
Kubernetes), the autoscaler (the same loop, fed by the gateway's own metrics and the queued
async work), a `ProcessBackend` that runs instances as local runtime processes, and a
`ManifestDirectory` that keeps them in step with the files.

Asynchronous invocations (/async-function/, the Invoke API's Event type, schedules, NATS
triggers) are stored in a SQLite database in the state directory (`<DIR>/.kfn/` unless
`--state-dir`), which outlives the process: whatever was accepted before a crash or a SIGKILL is
delivered after the next start. The delivery engine (`kfn_gateway.asyncinvoke.AsyncDelivery`)
hands them to functions through the gateway; schedules fire in the one `kfn local` holding the
state directory's scheduler lock.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from aiohttp import web

from kfn._cogs.lifecycle import Parts
from kfn.core import naming, orphans
from kfn.core.codespec import DEFAULT_RUNTIME
from kfn.core.errors import CommandError
from kfn.core.functions import Function, FunctionRef
from kfn.events.delivery import DeliverySettings
from kfn.events.orphans import OrphanSettings
from kfn.events.sqlite import FILE_NAME, SqliteStore
from kfn.events.store import StoreUnavailable
from kfn.keyfile import open_key_file
from kfn.local.directory import ManifestDirectory
from kfn.processes import ProcessBackend
from kfn.triggers.leader import FileLock
from kfn.triggers.registry import local_settings
from kfn.triggers.service import TriggerService
from kfn_autoscaler import Autoscaler
from kfn_autoscaler.sources import QueuedWorkSource
from kfn_gateway import Gateway, GatewaySettings
from kfn_gateway.asyncinvoke import AsyncDelivery
from kfn_gateway.server import make_runner
from kfn_runtime import awslambda, contract
from kfn_runtime.output import BatchedLines

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalSettings:
    directory: Path
    host: str = "127.0.0.1"
    port: int = 8080
    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    work_dir: Path | None = None    # None: a temporary directory, removed on exit
    keys: Path | None = None        # an API keys file (kfn.keyfile), followed while serving
    cgroups: bool = True            # instances in cgroups where the OS allows (else process groups, rlimits)
    state_dir: Path | None = None   # async events and schedule ticks; None: DIRECTORY/.kfn (kept across runs)
    nats_url: str | None = None     # the NATS server of spec.triggers[].nats (none: those triggers do not run)
    delivery: DeliverySettings = field(default_factory=DeliverySettings)   # retry delays of async events
    async_lease: float = 30.0       # an async event in flight when kfn local died is delivered again after this
    async_discard_after: float = orphans.DEFAULT_GRACE   # queued events of a function whose manifest is gone this long
    strict_runtimes: bool = False   # refuse a function whose Python version is not on this machine (else: warn)
    init_timeout: float = contract.DEFAULT_INIT_TIMEOUT   # a function's init phase; past it, Sandbox.Timedout
    region: str = awslambda.DEFAULT_REGION   # the functions' AWS_REGION, and what their ARNs and events say

    @property
    def state(self) -> Path:
        return self.state_dir if self.state_dir is not None else self.directory / STATE_DIR_NAME


STATE_DIR_NAME = ".kfn"
SCHEDULER_LOCK = "scheduler.lock"
# Past a part's own bound on stopping (the slowest function's drain), before it is left behind.
STOP_MARGIN = 15.0


# -- local routes ------------------------------------------------------------------------------

class LocalRoutes:
    """What only local mode can answer: manifest errors and instance addresses."""

    def __init__(self, backend: ProcessBackend, manifests: ManifestDirectory, gateway: Gateway,
                 triggers: TriggerService | None = None) -> None:
        self._backend = backend
        self._manifests = manifests
        self._gateway = gateway
        self._triggers = triggers

    def add_to(self, app: web.Application) -> None:
        app.router.add_get(naming.SYSTEM_ERRORS_PATH, self.errors)
        app.router.add_get(naming.SYSTEM_INSTANCES_PATH + "/{name}", self.instances)

    async def errors(self, request: web.Request) -> web.Response:
        """Manifest problems per file, instance and trigger problems per function, and warnings:
        functions that serve, but not as declared (another Python than their runtime's)."""
        functions = []
        warnings = []
        triggers = self._triggers.problems() if self._triggers is not None else {}
        for fn in self._backend.functions():
            start = self._backend.problem(fn.ref)   # all of it: /system/errors is the owner's (admin) view
            problems = [p for p in (str(start) if start is not None else None, *triggers.get(fn.ref, ())) if p]
            if problems:
                functions.append({"function": fn.name, "namespace": fn.namespace,
                                  "file": str(self._manifests.file_of(fn.ref) or ""), "error": "; ".join(problems)})
            python = self._backend.python(fn.ref)
            warning = python.warning() if python is not None else None
            if warning:
                warnings.append({"function": fn.name, "namespace": fn.namespace,
                                 "file": str(self._manifests.file_of(fn.ref) or ""), "warning": warning})
        return web.json_response({"manifests": self._manifests.errors(), "functions": functions,
                                  "warnings": warnings})

    async def instances(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        ref = self._gateway.dispatcher.ref(name)
        status = self._backend.status(ref) if ref is not None else None
        if ref is None or status is None:
            return web.json_response({"error": f"no function named {name!r}", "function": name}, status=404)
        status["file"] = str(self._manifests.file_of(ref) or "")
        status["manifestError"] = self._manifests.file_error(ref)
        return web.json_response(status)


_STDERR = BatchedLines(sys.stderr)


def _echo(ref: FunctionRef, lines: list[str]) -> None:
    """Instance output on kfn local's stderr, as a developer running it in a terminal expects:
    in batches, a system call per batch rather than per line (every invocation adds a REPORT line)."""
    _STDERR.write(lines)


# -- the process -------------------------------------------------------------------------------

class LocalMode:
    """Backend, gateway, autoscaler and manifest watcher in one process, started and stopped together."""

    def __init__(self, settings: LocalSettings, *,
                 echo: Callable[[FunctionRef, list[str]], None] | None = _echo) -> None:
        self.settings = settings
        self.directory = settings.directory
        self.host = settings.host
        self.port = settings.port
        self.work_dir = settings.work_dir
        self._echo = echo

    async def run(self) -> int:
        """Serves until SIGINT or SIGTERM; returns the exit code after a clean shutdown.

        Every manifest is read before the gateway listens, so no request for a function that
        exists gets a 404 while starting. The parts start in order and stop in reverse
        (`kfn._cogs.lifecycle.Parts`); a startup failure (the port in use, ...) stops whatever
        started and raises CommandError.
        """
        keys = open_key_file(self.settings.keys) if self.settings.keys is not None else None
        state = self.settings.state
        backend = ProcessBackend(work_dir=self.work_dir, deps_cache=_deps_cache(),
                                 log_files=self.work_dir is not None, on_output=self._echo,
                                 confine=self.settings.cgroups, init_timeout=self.settings.init_timeout,
                                 region=self.settings.region)
        store = SqliteStore(state / FILE_NAME, lease=self.settings.async_lease)
        manifests = ManifestDirectory(self.directory, backend, check=self._check(backend))
        gateway = Gateway(backend, settings=replace(self.settings.gateway, region=self.settings.region), keys=keys,
                          events=store, details=backend.runtime_details)
        triggers = TriggerService(backend, store.accept,
                                  local_settings(state / FILE_NAME, region=self.settings.region,
                                                 nats_url=self.settings.nats_url),
                                  everywhere=("nats",), leader_only=("schedule",),
                                  election=FileLock(state / SCHEDULER_LOCK))
        # The default runtime's interpreter is chosen (its candidates run) while the manifests are read.
        choosing = asyncio.create_task(asyncio.to_thread(backend.choose_runtime, DEFAULT_RUNTIME),
                                       name="kfn-local-interpreter")
        async with Parts("kfn local") as parts:
            parts.add("interpreter choice", lambda: _settle(choosing))
            stop = await parts.start("signal handlers", _stop_on_signals, _restore_signals)
            await parts.start("async event store", lambda: _open(store, state), store.close)  # all accepted is in it
            # SIGTERM every instance, SIGKILL stragglers, reap all: as long as the slowest function may take.
            await parts.start("local instances", backend.start, backend.close,
                              timeout=lambda: _drain_timeout(backend) + STOP_MARGIN)
            await manifests.poll()
            # Deliveries in progress at shutdown may take as long as the slowest function.
            # Leases are renewed well before they run out, however short --async-lease makes them.
            drain = _drain_timeout(backend)
            delivery = AsyncDelivery(gateway, store, settings=replace(
                self.settings.delivery, drain_timeout=drain,
                heartbeat=min(self.settings.delivery.heartbeat, self.settings.async_lease / 3)),
                orphans=OrphanSettings(grace=self.settings.async_discard_after),
                known=lambda: None if manifests.unread() else [fn.ref for fn in backend.functions()])
            app = gateway.make_app()   # starts the gateway with the app, and closes it on cleanup
            LocalRoutes(backend, manifests, gateway, triggers).add_to(app)
            # As kfn_gateway.server.serve does, plus a drain as long as the slowest function may take.
            runner = make_runner(gateway, app, handle_signals=False, shutdown_timeout=drain)
            # Waits for the requests in flight, then closes the gateway.
            await parts.start("gateway", lambda: self._listen(runner), runner.cleanup, timeout=drain + STOP_MARGIN)
            # Deliveries in progress finish (bounded); the rest stay stored.
            await parts.start("delivery", delivery.start, delivery.close, timeout=drain + STOP_MARGIN)
            parts.add("listening", lambda: _stop_listening(runner))   # no more requests (those in flight go on)
            await parts.start("triggers", triggers.start, triggers.close)   # no more events from schedules and NATS
            # Queued async events count as work, so a function at zero with events waiting scales up.
            load = QueuedWorkSource(gateway.metrics_source, delivery.engine.queue_stats)
            parts.task("kfn-autoscaler", Autoscaler(backend, load, interval=1.0, registry=gateway.registry).run)
            parts.task("kfn-manifests", manifests.run)
            if keys is not None:
                parts.task("kfn-keys", keys.run)

            self._announce(backend, manifests, state, keys is not None)
            await stop.wait()
            print("kfn local: shutting down (draining requests and instances)", file=sys.stderr, flush=True)
            backend.quiesce()
        return 0

    async def _listen(self, runner: web.AppRunner) -> None:
        """Set `runner` up and listen; CommandError if the address cannot be had (nothing left listening)."""
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port, reuse_address=True).start()
        except BaseException as e:
            await runner.cleanup()
            if not isinstance(e, OSError):
                raise
            if e.errno == errno.EADDRINUSE:
                raise CommandError(f"cannot listen on {self.host}:{self.port}: the address is already in use "
                                   "(is another kfn local running? pick one with --port)") from None
            raise CommandError(f"cannot listen on {self.host}:{self.port}: {e.strerror or e}") from None

    def _announce(self, backend: ProcessBackend, manifests: ManifestDirectory, state: Path, keys: bool) -> None:
        """Tell the developer what is served, where, and what is wrong with it."""
        names = sorted(f.name for f in backend.functions())
        count = f"{len(names)} function{'s' if len(names) != 1 else ''}"
        listing = f" ({', '.join(names)})" if names else f" (no Function manifests in {self.directory} yet)"
        print(f"kfn local: serving {count} at http://{_url_host(self.host)}:{self.port}{listing}", flush=True)
        print(f"kfn local: async events and schedules in {state}", flush=True)
        if not keys and self.host not in ("127.0.0.1", "::1", "localhost"):
            print(f"kfn local: warning: listening on {self.host} without --keys: anyone who reaches it can "
                  "list the functions and read their logs (see SECURITY.md)", file=sys.stderr, flush=True)
        substituted = sorted(f.name for f in backend.functions()
                             if (python := backend.python(f.ref)) is not None and python.substituted)
        if substituted:
            print(f"kfn local: warning: {len(substituted)} function(s) run on another Python than their "
                  f"spec.runtime, as this machine lacks it: {', '.join(substituted)} (see above, or GET "
                  "/system/errors; --strict-runtimes refuses them instead)", file=sys.stderr, flush=True)
        problems = manifests.errors()
        if problems:
            print(f"kfn local: {len(problems)} manifest file(s) with errors (see above, or GET /system/errors)",
                  file=sys.stderr, flush=True)

    def _check(self, backend: ProcessBackend) -> Callable[[Function], str | None]:
        """The manifest reader's check of each function: with --strict-runtimes, why it is refused
        (its Python is not on this machine). It chooses the interpreter in the reader's worker
        thread either way, so looking for one (running candidates) never holds up the event loop."""
        strict = self.settings.strict_runtimes

        def check(function: Function) -> str | None:
            python = backend.choose_python(function)
            return python.refusal() if strict and python is not None else None

        return check


async def _settle(task: asyncio.Task[object]) -> None:
    """Wait for `task` (a thread's work: it cannot be cancelled), logging its failure."""
    try:
        await task
    except Exception:
        logger.exception("choosing the default runtime's interpreter failed")


async def _open(store: SqliteStore, state: Path) -> None:
    """Open the async event store; CommandError if it cannot be (nothing left open)."""
    try:
        await store.start()
    except (StoreUnavailable, OSError) as e:
        raise CommandError(f"cannot open the async event store in {state}: {e} (choose another place with "
                           "--state-dir)") from None


async def _stop_on_signals() -> asyncio.Event:
    """An event SIGINT and SIGTERM set, until `_restore_signals`."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _restore_signals() -> None:
    """The instances' last output on stderr, and SIGINT and SIGTERM to their defaults again."""
    _STDERR.flush()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(sig)


async def _stop_listening(runner: web.AppRunner) -> None:
    """Close the port to new connections; requests in flight go on."""
    for site in list(runner.sites):
        await site.stop()


def _drain_timeout(backend: ProcessBackend) -> float:
    """Long enough for the slowest function's in-flight requests to finish on shutdown."""
    return max((f.spec.timeout for f in backend.functions()), default=30.0) + 5.0


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _deps_cache() -> Path:
    """Where requirements are installed, kept across runs so a restart does not re-run pip."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kfn" / "deps"

