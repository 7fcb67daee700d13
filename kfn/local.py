"""`kfn local`: the whole data path on one machine.

One process serves every Function manifest in a directory: the gateway (the same code as on
Kubernetes), the autoscaler (the same loop, fed by the gateway's own metrics) and a
`ProcessBackend` that runs instances as local runtime processes. The directory is polled, so
editing, adding or deleting a manifest takes effect without a restart.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from kfn import naming, units
from kfn.cli import CommandError
from kfn.functions import Function
from kfn.manifests import MANIFEST_SUFFIXES, MAX_MANIFEST_BYTES, ManifestError, load_text
from kfn.processes import ProcessBackend

logger = logging.getLogger(__name__)

POLL_INTERVAL = 1.0
# Files parsed per poll: a directory that suddenly holds thousands of changed files is taken in
# over several polls instead of stalling the event loop's neighbours (the gateway).
MAX_PARSES_PER_POLL = 50
MAX_FILES = 10_000


def main(args: argparse.Namespace) -> int:
    """`kfn local [DIR]`: serves until SIGINT/SIGTERM, then drains and exits 0."""
    directory = Path(args.directory)
    if not directory.exists():
        raise CommandError(f"{directory}: no such directory (give the directory holding your Function manifests)",
                           exit_code=2)
    if not directory.is_dir():
        raise CommandError(f"{directory}: not a directory (give the directory holding your Function manifests)",
                           exit_code=2)
    settings = _gateway_settings(args)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    work_dir = Path(args.work_dir) if getattr(args, "work_dir", None) else None
    local = LocalMode(directory, host=args.host, port=args.port, settings=settings, work_dir=work_dir)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(local.run())
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(local.run())


def _gateway_settings(args: argparse.Namespace) -> object:
    from kfn_gateway.server import GatewaySettings

    overrides: dict[str, object] = {}
    if getattr(args, "max_body_size", None) is not None:
        try:
            size = int(units.parse_quantity(args.max_body_size))
        except ValueError as e:
            raise CommandError(f"--max-body-size {e}", exit_code=2) from None
        if size <= 0:
            raise CommandError(f"--max-body-size must be positive (got {args.max_body_size})", exit_code=2)
        overrides["max_body_bytes"] = size
    if getattr(args, "queue_limit", None) is not None:
        if args.queue_limit < 0:
            raise CommandError(f"--queue-limit must be 0 or more (got {args.queue_limit})", exit_code=2)
        overrides["queue_limit"] = args.queue_limit
    if getattr(args, "queue_timeout", None) is not None:
        try:
            overrides["queue_timeout"] = units.parse_duration(args.queue_timeout)
        except ValueError as e:
            raise CommandError(f"--queue-timeout {e}", exit_code=2) from None
    return GatewaySettings(**overrides)


# -- the manifest directory ----------------------------------------------------------------------

@dataclass
class _File:
    path: Path
    stamp: tuple[int, int]                  # (mtime_ns, size): cheap change detection
    digest: str = ""                        # content hash: a touch without a change is no change
    functions: list[Function] = field(default_factory=list)   # the last valid content
    error: str | None = None


class ManifestDirectory:
    """The Functions defined by the manifest files in one directory, kept in step with a backend.

    A broken file is reported and its previous functions keep serving; a function name defined
    by two files is served from the file that had it first, and the other file is reported.
    """

    def __init__(self, directory: Path, backend: ProcessBackend, *, interval: float = POLL_INTERVAL) -> None:
        self.directory = directory
        self._backend = backend
        self._interval = interval
        self._files: dict[Path, _File] = {}
        self._owners: dict[str, Path] = {}           # function name → the file serving it
        self._conflicts: dict[Path, list[str]] = {}  # file → messages about names it cannot have
        self._listing_error: str | None = None

    async def run(self) -> None:
        """Polls the directory every interval until cancelled; never raises on bad files."""
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.poll()
            except Exception:
                logger.exception("could not reload manifests from %s", self.directory)

    async def poll(self) -> None:
        """One pass: reads changed files, then adds, rolls and removes functions accordingly."""
        try:
            paths = await asyncio.to_thread(self._list)
        except OSError as e:
            message = f"{self.directory}: cannot list manifests: {e.strerror or e}; still serving the last ones read"
            if message != self._listing_error:
                logger.error("%s", message)
            self._listing_error = message
            return
        self._listing_error = None
        changed = False
        budget = MAX_PARSES_PER_POLL
        for path in set(self._files) - set(paths):
            del self._files[path]
            logger.info("%s: removed", path)
            changed = True
        for path in paths:
            if budget <= 0:
                break
            try:
                st = path.stat()
            except OSError:
                continue  # deleted between listing and stat: the next poll sees it gone
            stamp = (st.st_mtime_ns, st.st_size)
            known = self._files.get(path)
            if known is not None and known.stamp == stamp:
                continue
            budget -= 1
            if await self._read(path, stamp, known):
                changed = True
        if changed:
            self._apply()

    def _list(self) -> list[Path]:
        paths = sorted(p for p in self.directory.iterdir()
                       if p.suffix in MANIFEST_SUFFIXES and not p.name.startswith(".") and p.is_file())
        return paths[:MAX_FILES]

    async def _read(self, path: Path, stamp: tuple[int, int], known: _File | None) -> bool:
        """Reads one file; True if what it defines (or its error) changed."""
        raw: bytes | None = None
        if stamp[1] > MAX_MANIFEST_BYTES:
            error = f"{path}: larger than {MAX_MANIFEST_BYTES} bytes: not a manifest kfn local reads"
        else:
            try:
                raw = await asyncio.to_thread(path.read_bytes)
            except OSError as e:
                error = f"{path}: cannot read: {e.strerror or e}"
        digest = hashlib.sha256(raw).hexdigest() if raw is not None else ""
        if known is not None and raw is not None and known.digest == digest:
            known.stamp = stamp
            return False
        entry = known or _File(path=path, stamp=stamp)
        entry.stamp, entry.digest = stamp, digest
        self._files[path] = entry
        if raw is not None:
            try:
                text = raw.decode("utf-8")
                entry.functions = await asyncio.to_thread(load_text, text, file=str(path))
                entry.error = None
                return True
            except UnicodeDecodeError:
                error = f"{path}: not UTF-8 text"
            except ManifestError as e:
                error = str(e)
        entry.error = error
        kept = f"; still serving {', '.join(f.name for f in entry.functions)} from its last valid version" \
            if entry.functions else ""
        logger.error("invalid manifest %s%s:\n  %s", path, kept, error.replace("\n", "\n  "))
        return True

    def _apply(self) -> None:
        wanted: dict[str, Function] = {}
        owners: dict[str, Path] = {}
        conflicts: dict[Path, list[str]] = {}
        entries = sorted(self._files.values(), key=lambda f: f.path)
        # A file that already serves a name keeps it; other names go to files in name order.
        for entry in entries:
            for fn in entry.functions:
                if self._owners.get(fn.name) == entry.path:
                    owners[fn.name] = entry.path
                    wanted[fn.name] = fn
        for entry in entries:
            for fn in entry.functions:
                if owners.get(fn.name) == entry.path:
                    continue
                if fn.name in owners:
                    conflicts.setdefault(entry.path, []).append(
                        f"{entry.path}: metadata.name: function {fn.name!r} is already defined in "
                        f"{owners[fn.name]}; this definition is ignored")
                    continue
                owners[fn.name] = entry.path
                wanted[fn.name] = fn
        for path, messages in conflicts.items():
            if messages != self._conflicts.get(path):
                for message in messages:
                    logger.error("%s", message)
        self._conflicts = conflicts
        for name in list(self._owners):
            if name not in wanted:
                logger.info("function %s: manifest removed, draining its instances", name)
                self._backend.remove_function(name)
        for name, fn in wanted.items():
            current = self._backend.function(name)
            if current is None:
                logger.info("function %s: added from %s", name, owners[name])
                self._backend.set_function(fn)
            elif current.spec_hash() != fn.spec_hash():
                logger.info("function %s: changed in %s, rolling its instances", name, owners[name])
                self._backend.set_function(fn)
            elif current != fn:
                self._backend.set_function(fn)
        self._owners = owners

    def errors(self) -> list[dict[str, object]]:
        """Every current problem with the manifests, one entry per file (JSON-ready)."""
        out: list[dict[str, object]] = []
        if self._listing_error:
            out.append({"file": str(self.directory), "error": self._listing_error, "functions": []})
        for entry in sorted(self._files.values(), key=lambda f: f.path):
            messages = ([entry.error] if entry.error else []) + self._conflicts.get(entry.path, [])
            if messages:
                out.append({"file": str(entry.path), "error": "\n".join(messages),
                            "functions": [f.name for f in entry.functions if self._owners.get(f.name) == entry.path]})
        return out

    def file_of(self, name: str) -> Path | None:
        return self._owners.get(name)

    def file_error(self, name: str) -> str | None:
        path = self._owners.get(name)
        entry = self._files.get(path) if path is not None else None
        return entry.error if entry is not None else None


# -- local routes ------------------------------------------------------------------------------

class LocalRoutes:
    """What only local mode can answer: instance logs, manifest errors and instance addresses."""

    def __init__(self, backend: ProcessBackend, manifests: ManifestDirectory) -> None:
        self._backend = backend
        self._manifests = manifests
        self._closing = asyncio.Event()

    def add_to(self, app: web.Application) -> None:
        app.router.add_get(naming.SYSTEM_LOGS_PATH + "/{name}", self.logs)
        app.router.add_get(naming.SYSTEM_ERRORS_PATH, self.errors)
        app.router.add_get(naming.SYSTEM_INSTANCES_PATH + "/{name}", self.instances)
        app.on_shutdown.append(self._on_shutdown)

    async def _on_shutdown(self, app: web.Application) -> None:
        # Followers would otherwise hold the server's graceful shutdown for its whole timeout.
        self._closing.set()

    def _unknown(self, name: str) -> web.Response:
        return web.json_response({"error": f"no function named {name!r}", "function": name}, status=404)

    async def logs(self, request: web.Request) -> web.StreamResponse:
        """Recent instance output as text; with follow=1, streams new lines until the client leaves."""
        name = request.match_info["name"]
        buffer = self._backend.logs(name)
        if buffer is None:
            return self._unknown(name)
        try:
            tail = int(request.query.get("tail", "100"))
            if tail < 0:
                raise ValueError
        except ValueError:
            return web.json_response({"error": f"tail must be a non-negative integer (got {request.query['tail']!r})"},
                                     status=400)
        follow = request.query.get("follow", "").lower() in ("1", "true", "yes")
        if not follow:
            lines = buffer.tail(tail)
            return web.Response(text="".join(line + "\n" for line in lines), content_type="text/plain")
        response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8",
                                               "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        await response.prepare(request)
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            async with buffer.follow(tail=tail) as lines:
                iterator = aiter(lines)
                while True:
                    nxt = asyncio.ensure_future(anext(iterator))
                    done, _ = await asyncio.wait({nxt, closing}, return_when=asyncio.FIRST_COMPLETED)
                    if nxt not in done:
                        nxt.cancel()
                        break
                    try:
                        line = nxt.result()
                    except StopAsyncIteration:
                        break
                    await response.write((line + "\n").encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            closing.cancel()
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response

    async def errors(self, request: web.Request) -> web.Response:
        """Manifest problems per file and instance problems per function."""
        functions = []
        for fn in self._backend.functions():
            error = self._backend.error(fn.name)
            if error:
                functions.append({"function": fn.name, "file": str(self._manifests.file_of(fn.name) or ""),
                                  "error": error})
        return web.json_response({"manifests": self._manifests.errors(), "functions": functions})

    async def instances(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        status = self._backend.status(name)
        if status is None:
            return self._unknown(name)
        status["file"] = str(self._manifests.file_of(name) or "")
        status["manifestError"] = self._manifests.file_error(name)
        return web.json_response(status)


def _echo(name: str, lines: list[str]) -> None:
    """Instance output on kfn local's stderr, as a developer running it in a terminal expects."""
    # One write per batch: a line-buffered stream would make a system call per line.
    sys.stderr.write("".join(line + "\n" for line in lines))


# -- the process -------------------------------------------------------------------------------

class LocalMode:
    """Backend, gateway, autoscaler and manifest watcher in one process, started and stopped together."""

    def __init__(self, directory: Path, *, host: str, port: int, settings: object,
                 work_dir: Path | None = None, echo: Callable[[str, list[str]], None] | None = _echo) -> None:
        self.directory = directory
        self.host = host
        self.port = port
        self.settings = settings
        self.work_dir = work_dir
        self._echo = echo

    async def run(self) -> int:
        """Serves until SIGINT or SIGTERM; returns the exit code after a clean shutdown.

        Startup failures (the port in use, ...) stop whatever started and raise CommandError.
        """
        from kfn.autoscaling import Autoscaler
        from kfn_gateway.server import Gateway

        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)

        backend = ProcessBackend(work_dir=self.work_dir, deps_cache=_deps_cache(),
                                 log_files=self.work_dir is not None, on_output=self._echo)
        await backend.start()
        manifests = ManifestDirectory(self.directory, backend)
        gateway = Gateway(backend, settings=self.settings)  # type: ignore[arg-type]
        runner: web.AppRunner | None = None
        tasks: list[asyncio.Task[None]] = []
        try:
            await manifests.poll()
            app = gateway.make_app()   # starts the gateway with the app, and closes it on cleanup
            LocalRoutes(backend, manifests).add_to(app)
            # As kfn_gateway.server.serve does, plus a drain as long as the slowest function may take.
            runner = web.AppRunner(app, handler_cancellation=True, access_log=None, handle_signals=False,
                                   shutdown_timeout=_drain_timeout(backend))
            await runner.setup()
            try:
                await web.TCPSite(runner, self.host, self.port, reuse_address=True).start()
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    raise CommandError(f"cannot listen on {self.host}:{self.port}: the address is already in use "
                                       "(is another kfn local running? pick one with --port)") from None
                raise CommandError(f"cannot listen on {self.host}:{self.port}: {e.strerror or e}") from None
            autoscaler = Autoscaler(backend, gateway.metrics_source, interval=1.0, registry=gateway.registry)
            tasks = [loop.create_task(autoscaler.run(), name="kfn-autoscaler"),
                     loop.create_task(manifests.run(), name="kfn-manifests")]
            names = sorted(f.name for f in backend.functions())
            count = f"{len(names)} function{'s' if len(names) != 1 else ''}"
            listing = f" ({', '.join(names)})" if names else f" (no Function manifests in {self.directory} yet)"
            print(f"kfn local: serving {count} at http://{_url_host(self.host)}:{self.port}{listing}", flush=True)
            problems = manifests.errors()
            if problems:
                print(f"kfn local: {len(problems)} manifest file(s) with errors (see above, or GET /system/errors)",
                      file=sys.stderr, flush=True)
            await stop.wait()
            print("kfn local: shutting down (draining requests and instances)", file=sys.stderr, flush=True)
            backend.quiesce()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if runner is not None:
                await runner.cleanup()       # stop accepting, wait for in-flight requests, close the gateway
            await backend.close()            # SIGTERM every instance, SIGKILL stragglers, reap all
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        return 0


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

