"""The Functions defined by the manifest files of one directory, kept in step with a backend.

The directory is polled: adding, editing or deleting a file takes effect without a restart. A
broken file is reported (and its previous functions keep serving); a function defined by two
files is served from the file that had it first, and the other file is reported. Each file is
read and checked on its own, so one bad file never holds up another. A directory entry that
cannot even be looked at (a symbolic link loop, a link to nothing) is reported like an unreadable
file. Local mode may refuse functions it could parse (`check`: `kfn local --strict-runtimes`); their
file is reported as invalid, as a broken one is.
"""
from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from kfn.core.functions import Function, FunctionRef
from kfn.core.manifests import MANIFEST_SUFFIXES, ManifestError, load_text
from kfn.manifests import decode, read_bytes

logger = logging.getLogger(__name__)

POLL_INTERVAL = 1.0
MAX_FILES = 10_000
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


def _parse(path: Path, check: Check | None = None) -> tuple[str, list[Function] | None, str | None]:
    """(digest, functions or None, error or None) of one file; never raises."""
    try:
        raw = read_bytes(path)
        digest = hashlib.sha256(raw).hexdigest()
        functions = load_text(decode(raw, file=str(path)), file=str(path))
        refusals = [f"{fn.name}: {problem}" for fn in functions if check is not None and (problem := check(fn))]
        if refusals:
            raise ManifestError.of(str(path), "; ".join(refusals))
        return digest, functions, None
    except ManifestError as e:
        return "", None, str(e)
    except Exception as e:
        logger.exception("reading %s failed", path)
        return "", None, f"{path}: cannot be read: {type(e).__name__}: {e}"


class ManifestDirectory:
    """See the module docstring. `load` reads everything once; `run` keeps polling."""

    def __init__(self, directory: Path, backend: FunctionSink, *, interval: float = POLL_INTERVAL,
                 check: Check | None = None) -> None:
        self.directory = directory
        self._backend = backend
        self._interval = interval
        self._check = check
        self._files: dict[str, _File] = {}          # by path, as listed
        self._owners: dict[FunctionRef, Path] = {}   # function → the file serving it
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
        """One pass: reads every changed file, then adds, rolls and removes functions accordingly.

        Returns once every file is read (in a worker thread, so the gateway sharing the event
        loop keeps serving); the first call is how local mode knows all its functions before it
        serves any.
        """
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
        for name in self._files.keys() - paths.keys():
            del self._files[name]
            logger.info("%s: removed", name)
            changed = True
        for name, stamp in paths.items():
            known = self._files.get(name)
            if known is not None and known.stamp == stamp:
                continue
            if await self._read(Path(name), stamp, known):
                changed = True
        if changed:
            self._apply()

    def _list(self) -> dict[str, tuple[int, int]]:
        # Runs every interval over every file: plain strings, no Path objects (it is most of idle's cost).
        out: dict[str, tuple[int, int]] = {}
        with os.scandir(self.directory) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                if entry.name.startswith(".") or os.path.splitext(entry.name)[1] not in MANIFEST_SUFFIXES:
                    continue
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
        return out

    async def _read(self, path: Path, stamp: tuple[int, int], known: _File | None) -> bool:
        """Reads one file; True if what it defines (or its error) changed."""
        digest, functions, error = await asyncio.to_thread(_parse, path, self._check)
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

    def file_of(self, ref: FunctionRef) -> Path | None:
        return self._owners.get(ref)

    def file_error(self, ref: FunctionRef) -> str | None:
        path = self._owners.get(ref)
        entry = self._files.get(str(path)) if path is not None else None
        return entry.error if entry is not None else None
