"""The Functions defined by the manifest files of one directory, kept in step with a backend.

The directory is polled: adding, editing or deleting a file takes effect without a restart (within
`interval`). Where the kernel reports changes (`kfn.local.watch`: Linux inotify), a poll is
skipped while it reports none in the directory and in the directories its symbolic links lead
to, so an idle directory of a thousand manifests is not listed and stat-ed every second; every
`rescan` seconds it is all the same. A change that a rescan finds and the kernel never reported
(a network filesystem, a bind mount from another machine) makes it poll every interval again. A
broken file is reported (and its previous functions keep serving); a function defined by two
files is served from the file that had it first, and the other file is reported. Each file is
read and checked on its own, so one bad file never holds up another. A directory entry that
cannot even be looked at (a symbolic link loop, a link to nothing) is reported like an unreadable
file. Local mode may refuse functions it could parse (`check`: `kfn local --strict-runtimes`); their
file is reported as invalid, as a broken one is.
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from kfn.core.functions import Function, FunctionRef
from kfn.core.manifests import MANIFEST_SUFFIXES, ManifestError, load_text
from kfn.local.watch import ChangeWatch, Watch
from kfn.manifests import decode, read_bytes

logger = logging.getLogger(__name__)

POLL_INTERVAL = 1.0
# While the kernel reports changes, a full look this often all the same (see the module docstring).
RESCAN_INTERVAL = 10.0
MAX_FILES = 10_000
# Files read per hop to the worker thread (one hop per file was most of a thousand files' reading).
READ_BATCH = 64
# A check of each function a file defines: why local mode refuses it (naming the field), or None.
Check = Callable[[Function], str | None]


class FunctionSink(Protocol):
    """What the directory feeds: local mode's process backend."""

    def function(self, ref: FunctionRef) -> Function | None: ...

    def set_function(self, function: Function) -> None: ...

    def remove_function(self, ref: FunctionRef) -> None: ...


@dataclass
class _File:
    path: Path
    stamp: tuple[int, int]                  # (mtime_ns, size): cheap change detection
    digest: str = ""                        # content hash: a touch without a change is no change
    functions: list[Function] = field(default_factory=list)   # the last valid content
    error: str | None = None


# (digest, functions or None, error or None) of one file, as read
Parsed = tuple[str, list[Function] | None, str | None]


def _parse(path: Path, check: Check | None = None) -> Parsed:
    """One file, read and checked; never raises."""
    try:
        raw = read_bytes(path)
        digest = hashlib.sha256(raw).hexdigest()
        functions = load_text(decode(raw, file=str(path)), file=str(path))
    except ManifestError as e:
        return "", None, str(e)
    except Exception as e:
        logger.exception("reading %s failed", path)
        return "", None, f"{path}: cannot be read: {type(e).__name__}: {e}"
    return _refused(str(path), (digest, functions, None), check) if check is not None else (digest, functions, None)


def _refused(path: str, parsed: Parsed, check: Check) -> Parsed:
    """`parsed` with `check` applied to its functions: an error naming the refused ones, if any."""
    digest, functions, _ = parsed
    if functions is None:
        return parsed
    try:
        refusals = [f"{fn.name}: {problem}" for fn in functions if (problem := check(fn))]
    except Exception as e:
        logger.exception("checking %s failed", path)
        return "", None, f"{path}: cannot be checked: {type(e).__name__}: {e}"
    if refusals:
        return "", None, str(ManifestError.of(path, "; ".join(refusals)))
    return digest, functions, None


def _parse_all(names: list[str]) -> list[Parsed]:
    return [_parse(Path(name)) for name in names]


def _checked(files: list[tuple[str, tuple[int, int]]], parsed: list[Parsed], check: Check) -> list[Parsed]:
    return [_refused(name, result, check) for (name, _), result in zip(files, parsed, strict=True)]


class ManifestDirectory:
    """See the module docstring. `poll` reads everything once; `run` keeps polling."""

    def __init__(self, directory: Path, backend: FunctionSink, *, interval: float = POLL_INTERVAL,
                 rescan: float = RESCAN_INTERVAL, check: Check | None = None,
                 watch: Callable[[], Watch | None] | None = ChangeWatch.open,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.directory = directory
        self._backend = backend
        self._interval = interval
        self._rescan = rescan
        self._check = check
        self._open_watch = watch
        self._clock = clock
        self._files: dict[str, _File] = {}          # by path, as listed
        self._owners: dict[FunctionRef, Path] = {}   # function → the file serving it
        self._conflicts: dict[Path, list[str]] = {}  # file → messages about names it cannot have
        self._listing_error: str | None = None
        self._linked: set[str] = set()               # directories the symbolic links listed lead to
        self.trusts_watch = False                    # whether `run` skips polls the kernel reports no change for

    async def run(self) -> None:
        """Polls the directory every interval until cancelled (skipping polls while a change
        watch reports nothing, see the module docstring); never raises on bad files. A watch
        that cannot be had or kept is logged at debug level and every interval is polled."""
        watch = self._open_watch() if self._open_watch is not None else None
        try:
            self.trusts_watch = watch is not None
            looked: float | None = None   # when the last full poll began (None: none yet under the watch)
            carried = False               # a change reported while the last poll was checked
            while True:
                if watch is not None:
                    # Watched before looking: a change made while looking is reported at the next tick.
                    watched = watch.watch([str(self.directory), *sorted(self._linked)])
                    reported = watch.changed() or carried
                    due = (reported or not watched or not self.trusts_watch or looked is None
                           or self._clock() - looked >= self._rescan)
                else:
                    reported, due = False, True
                carried = False
                if due:
                    rescan = looked is not None and not reported
                    looked = self._clock()
                    try:
                        found = await self._poll()
                    except Exception:
                        logger.exception("could not reload manifests from %s", self.directory)
                    else:
                        if watch is not None and self.trusts_watch:
                            # Reported since the listing began: looked at again at the next tick.
                            carried = watch.changed()
                            if found and rescan and not carried:
                                # A rescan found what the kernel never reported: it cannot be relied on here.
                                logger.info("changes in %s are not all reported by the kernel: polling it every "
                                            "%gs", self.directory, self._interval)
                                self.trusts_watch = False
                await asyncio.sleep(self._interval)
        finally:
            if watch is not None:
                watch.close()

    async def poll(self) -> None:
        """One pass: reads every changed file, then adds, rolls and removes functions accordingly.

        Returns once every file is read (in a worker thread, so the gateway sharing the event
        loop keeps serving); the first call is how local mode knows all its functions before it
        serves any.
        """
        await self._poll()

    async def _poll(self) -> bool:
        """`poll`; True if any file was added, removed or touched since the last pass."""
        try:
            paths, linked = await asyncio.to_thread(self._list)
        except OSError as e:
            message = f"{self.directory}: cannot list manifests: {e.strerror or e}; still serving the last ones read"
            if message != self._listing_error:
                logger.error("%s", message)
            self._listing_error = message
            return False
        self._listing_error = None
        self._linked = linked
        changed = False
        found = False
        for name in self._files.keys() - paths.keys():
            del self._files[name]
            logger.info("%s: removed", name)
            changed = found = True
        stale = [(name, stamp) for name, stamp in paths.items()
                 if (known := self._files.get(name)) is None or known.stamp != stamp]
        parsed: list[Parsed] = []
        for start in range(0, len(stale), READ_BATCH):
            names = [name for name, _ in stale[start:start + READ_BATCH]]
            parsed += await asyncio.to_thread(_parse_all, names)
        if self._check is not None and parsed:
            # Checked once all are read: the first check may wait for a look at the machine (local
            # mode's choice of interpreter, begun meanwhile), which the reading need not wait for.
            parsed = await asyncio.to_thread(_checked, stale, parsed, self._check)
        for (name, stamp), result in zip(stale, parsed, strict=True):
            found = True
            if self._read(Path(name), stamp, self._files.get(name), result):
                changed = True
        if changed:
            self._apply()
        return found

    def _list(self) -> tuple[dict[str, tuple[int, int]], set[str]]:
        """Every manifest file's stamp, and the directories (other than this one) that the
        symbolic links among them lead to."""
        # Runs at every poll over every file: plain strings, no Path objects.
        out: dict[str, tuple[int, int]] = {}
        linked: set[str] = set()
        with os.scandir(self.directory) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                if entry.name.startswith(".") or os.path.splitext(entry.name)[1] not in MANIFEST_SUFFIXES:
                    continue
                with contextlib.suppress(OSError):
                    if entry.is_symlink():
                        linked.add(os.path.dirname(os.path.realpath(entry.path)))
                try:
                    st = entry.stat()
                except OSError as e:
                    if e.errno == errno.ENOENT and not os.path.lexists(entry.path):
                        continue  # deleted between listing and stat: the next poll sees it gone
                    # There but unreadable (a symbolic link loop, a link to nothing): reading it
                    # says why, as for any unreadable file. Its stamp is negative, so a repair
                    # (the link then leads to a file) is a change.
                    try:
                        link = os.lstat(entry.path)
                    except OSError:
                        continue
                    out[entry.path] = (-link.st_mtime_ns, -(e.errno or 1))
                else:
                    out[entry.path] = (st.st_mtime_ns, st.st_size)
                if len(out) >= MAX_FILES:
                    break
        linked.discard(os.path.realpath(self.directory))
        return out, linked

    def _read(self, path: Path, stamp: tuple[int, int], known: _File | None,
              parsed: tuple[str, list[Function] | None, str | None]) -> bool:
        """Takes in one file as read (`_parse`); True if what it defines (or its error) changed."""
        digest, functions, error = parsed
        if known is not None and digest and known.digest == digest and known.error is None:
            known.stamp = stamp
            return False
        entry = known or _File(path=path, stamp=stamp)
        entry.stamp, entry.digest = stamp, digest
        self._files[str(path)] = entry
        if functions is not None:
            entry.functions, entry.error = functions, None
            return True
        if error == entry.error:
            return False
        entry.error = error
        kept = f"; still serving {', '.join(f.name for f in entry.functions)} from its last valid version" \
            if entry.functions else ""
        logger.error("invalid manifest %s%s:\n  %s", path, kept, (error or "").replace("\n", "\n  "))
        return True

    def _apply(self) -> None:
        wanted: dict[FunctionRef, Function] = {}
        owners: dict[FunctionRef, Path] = {}
        conflicts: dict[Path, list[str]] = {}
        entries = sorted(self._files.values(), key=lambda f: f.path)
        # A file that already serves a function keeps it; others go to files in name order.
        for entry in entries:
            for fn in entry.functions:
                if self._owners.get(fn.ref) == entry.path:
                    owners[fn.ref] = entry.path
                    wanted[fn.ref] = fn
        for entry in entries:
            for fn in entry.functions:
                if owners.get(fn.ref) == entry.path:
                    continue
                if fn.ref in owners:
                    conflicts.setdefault(entry.path, []).append(
                        f"{entry.path}: metadata.name: function {fn.name!r} is already defined in "
                        f"{owners[fn.ref]}; this definition is ignored")
                    continue
                owners[fn.ref] = entry.path
                wanted[fn.ref] = fn
        for path, messages in conflicts.items():
            if messages != self._conflicts.get(path):
                for message in messages:
                    logger.error("%s", message)
        self._conflicts = conflicts
        for ref in list(self._owners):
            if ref not in wanted:
                logger.info("function %s: manifest removed, draining its instances", ref)
                self._backend.remove_function(ref)
        for ref, fn in wanted.items():
            current = self._backend.function(ref)
            if current is fn:
                continue   # from a file unchanged since it was set: nothing to compare (a thousand spec hashes)
            if current is None:
                logger.info("function %s: added from %s", ref, owners[ref])
                self._backend.set_function(fn)
            elif current.spec_hash() != fn.spec_hash():
                logger.info("function %s: changed in %s, rolling its instances", ref, owners[ref])
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
                            "functions": [f.name for f in entry.functions if self._owners.get(f.ref) == entry.path]})
        return out

    def unread(self) -> bool:
        """Whether some functions may be defined where they cannot be read now: the directory
        cannot be listed, or a file is broken without a valid version read before (which
        functions it defines is not known)."""
        return self._listing_error is not None or any(
            entry.error is not None and not entry.functions for entry in self._files.values())

    def file_of(self, ref: FunctionRef) -> Path | None:
        return self._owners.get(ref)

    def file_error(self, ref: FunctionRef) -> str | None:
        path = self._owners.get(ref)
        entry = self._files.get(str(path)) if path is not None else None
        return entry.error if entry is not None else None
