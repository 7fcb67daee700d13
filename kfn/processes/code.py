"""A function's code and dependencies on disk, as its local instances find them.

Inline files are written once per code version into `WORK/code/NAMESPACE/NAME/HASH`. Requirements
are built once per requirement set and Python version (Node.js runtime), as on Kubernetes: installed
with pip (npm for Node.js) and packed into an archive of the cluster's format (`kfn_runtime.archive`)
kept in a cache directory shared by every function, `DEPS/archives/KEY.tar.gz` (beside it KEY.log, the
last build's installer output); instances use its unpacked tree `DEPS/KEY`. An archive in the cache
whose tree is gone is unpacked again without running the installer.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from kfn.core.functions import Function, FunctionRef
from kfn.core.instances import StartReason
from kfn.processes.interpreters import Choice
from kfn_runtime import archive
from kfn_runtime import requirements as runtime_requirements

logger = logging.getLogger(__name__)

# Lines of pip's output quoted in the error when an install fails, each cut to PIP_ERROR_CHARS.
PIP_ERROR_LINES = 20
PIP_ERROR_CHARS = 500
# A line of an installer's output longer than this is passed on in pieces of it.
LINE_BYTES = 64 * 1024
# The "image" of local builds in their archives' keys: the machine's own toolchain, never a runtime image's.
LOCAL_IMAGE = "local"
ARCHIVES = "archives"         # DEPS/archives: KEY.tar.gz and KEY.log
ARCHIVE_SUFFIX = ".tar.gz"
LOG_SUFFIX = ".log"
COMPLETE = ".kfn-complete"    # in DEPS/KEY once the tree is whole


class Unsupported(Exception):
    """The function needs something local mode cannot give it; retrying will not help. `reason` is
    the class of it a caller may be told; the message (pip's output, say) is the owner's only."""

    def __init__(self, message: str, reason: StartReason = StartReason.CONFIGURATION) -> None:
        super().__init__(message)
        self.reason = reason


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


def _publish(partial: Path, target: Path) -> None:
    """Mark a finished install complete and move it where instances look (replacing a stale one). A
    complete tree there already (another kfn local process sharing the cache built the same set) is
    kept, since instances may be running on it: `partial` is removed instead."""
    (partial / COMPLETE).touch()
    if not (target / COMPLETE).exists():
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        try:
            partial.rename(target)
            return
        except OSError:
            if not (target / COMPLETE).exists():   # not another process's tree arriving first
                raise
    shutil.rmtree(partial, ignore_errors=True)


def mkdirs(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _empty(directory: Path) -> None:
    """Remove what `directory` holds, keeping it."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)


async def _read_lines(stream: asyncio.StreamReader, each: Callable[[str], None]) -> None:
    """Call `each` with every line of `stream` (decoded, without its line end; one longer than
    LINE_BYTES in pieces of LINE_BYTES, so no line is held whole) as it comes; returns at the end of
    the stream."""
    pending = b""
    while chunk := await stream.read(64 * 1024):
        *lines, pending = (pending + chunk).split(b"\n")
        while len(pending) > LINE_BYTES:
            lines.append(pending[:LINE_BYTES])
            pending = pending[LINE_BYTES:]
        for line in lines:
            each(line.decode(errors="replace").rstrip("\r"))
    if pending:
        each(pending.decode(errors="replace"))


class CodeStore:
    """Code directories under `work_dir`; requirement builds (archives and their unpacked trees)
    under `deps_cache`."""

    def __init__(self, work_dir: Path, deps_cache: Path, *, python: str = sys.executable,
                 pip_timeout: float = 600.0) -> None:
        self._work_dir = work_dir
        self._deps_cache = deps_cache
        self._python = python
        self._pip_timeout = pip_timeout
        self._installs: dict[str, asyncio.Task[None]] = {}
        self._keys: dict[FunctionRef, str] = {}   # the key of each function's requirements, as last asked for

    def code_dir(self, function: Function) -> Path:
        """The function's inline files in a directory per code version, written once."""
        ref = function.ref
        code_dir = self._work_dir / "code" / ref.namespace / ref.name / function.code_hash()
        if code_dir.is_dir():
            return code_dir
        assert function.spec.source is not None and function.spec.source.files is not None
        partial = Path(tempfile.mkdtemp(prefix=".partial-", dir=mkdirs(code_dir.parent)))
        for file_name, content in function.spec.source.files.items():
            (partial / file_name).write_text(content, encoding="utf-8")
        try:
            partial.rename(code_dir)
        except OSError:
            shutil.rmtree(partial, ignore_errors=True)  # another instance wrote it first
        return code_dir

    @property
    def archives(self) -> Path:
        """The directory of built archives (KEY.tar.gz) and their builds' output (KEY.log)."""
        return self._deps_cache / ARCHIVES

    def build_log(self, ref: FunctionRef) -> Path | None:
        """The file holding the installer's output of the last build of the requirements `ref` last
        asked for (`dependencies`), or None when it asked for none or no build left one."""
        key = self._keys.get(ref)
        path = self.archives / f"{key}{LOG_SUFFIX}" if key is not None else None
        return path if path is not None and path.is_file() else None

    async def dependencies(self, function: Function, *, log: Callable[[str], None],
                           npm: Sequence[str] | None = None, python: Choice | None = None) -> Path:
        """The unpacked tree of the function's requirements, built once per requirement set and
        Python version (pip of the `python` the function runs on, else of the store's interpreter);
        with the `npm` command instead when given (Node.js: package specs, installed into the
        result's node_modules). An archive of the set already in the cache is unpacked without
        running the installer; otherwise the installer's output goes to `log` and to the set's
        build log, and the tree is archived into the cache before it is used.

        Runs as long as the installer does (bounded by the pip timeout) or one unpack; Unsupported
        with the installer's output if the install fails, so the function reports it instead of
        retrying until it changes. Concurrent callers for the same set share one build.
        """
        interpreter = python.python if python is not None else self._python
        runtime: str
        if npm is not None:
            runtime = function.spec.runtime
        elif python is not None and python.version.replace(".", "").isdigit():
            runtime = python.running
        else:
            runtime = f"python{sys.version_info.major}.{sys.version_info.minor}"
        key = archive.deps_key(runtime=runtime, image=LOCAL_IMAGE, requirements=function.spec.requirements)
        self._keys[function.ref] = key
        target = self._deps_cache / key
        if (target / COMPLETE).exists():
            return target
        task = self._installs.get(key)
        if task is None or task.done():
            meta = archive.manifest(key=key, runtime=runtime, installer="npm" if npm is not None else "pip",
                                    requirements=function.spec.requirements)
            task = asyncio.get_running_loop().create_task(
                self._build(function.name, function.spec.requirements, meta, target, log, npm, interpreter))
            self._installs[key] = task
        try:
            await asyncio.shield(task)
        finally:
            if task.done():
                self._installs.pop(key, None)
        return target

    async def close(self) -> None:
        """Stop builds in progress (their installers are killed) and wait for them."""
        tasks = list(self._installs.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._installs.clear()

    async def _build(self, name: str, requirements: Sequence[str], meta: Mapping[str, Any], target: Path,
                     log: Callable[[str], None], npm: Sequence[str] | None, python: str) -> None:
        """Make `target` the unpacked tree of `requirements` (the archive `meta` describes): the cached
        archive unpacked, else installed and archived. Runs as long as `_install`; raises what it raises."""
        key = str(meta["key"])
        mkdirs(self.archives)
        partial = Path(tempfile.mkdtemp(prefix=".partial-", dir=self._deps_cache))
        try:
            if await asyncio.to_thread(self._unpack_cached, key, partial):
                log(f"[kfn] requirements for {name} unpacked from {self.archives / (key + ARCHIVE_SUFFIX)}")
            else:
                log(f"[kfn] installing requirements for {name}: {' '.join(requirements)}")
                await self._install(requirements, partial, self.archives / f"{key}{LOG_SUFFIX}", log, npm, python)
                await asyncio.to_thread(self._archive, partial, key, meta)
            await asyncio.to_thread(_publish, partial, target)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise

    def _unpack_cached(self, key: str, partial: Path) -> bool:
        """Unpack the cached archive of `key` into the empty `partial`: True if done; False if there is
        none, or it is unusable (then removed, logged, and `partial` left empty). OSError, the archive
        kept and `partial` left empty, when the disk fails the unpacking (full, say): the archive is no
        worse for it."""
        path = self.archives / f"{key}{ARCHIVE_SUFFIX}"
        problem: Exception
        try:
            # Not blocking on a FIFO put in its place; anything but a regular file is unusable.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            return False
        except OSError as e:
            problem = e
        else:
            try:
                with open(fd, "rb") as f:
                    if not stat.S_ISREG(os.fstat(fd).st_mode):
                        raise archive.ArchiveError("not a regular file")
                    os.set_blocking(fd, True)
                    meta = archive.unpack(f, str(partial))   # OSError: the disk's failure, raised
                if meta.get("key") != key:
                    raise archive.ArchiveError(f"its manifest names the key {meta.get('key')!r}")
                return True
            except archive.ArchiveError as e:
                problem = e
        logger.warning("the cached archive %s is unusable (%s): removing it and building the requirements again",
                       path, problem)
        with contextlib.suppress(OSError):
            path.unlink()
        _empty(partial)
        return False

    def _archive(self, tree: Path, key: str, meta: Mapping[str, Any]) -> None:
        """Pack `tree` into the cache as KEY.tar.gz (atomically replacing any). The archive only saves a
        later install, so failing to write it is logged, not raised."""
        try:
            path, digest = archive.pack_to_file(str(tree), str(self.archives), meta)
        except (archive.ArchiveError, OSError) as e:
            logger.warning("the requirements %s are installed but cannot be archived: %s", key, e)
            return
        try:
            os.replace(path, self.archives / f"{key}{ARCHIVE_SUFFIX}")
        except OSError as e:
            logger.warning("the archive of the requirements %s cannot be kept: %s", key, e)
            with contextlib.suppress(OSError):
                os.unlink(path)
            return
        logger.info("requirements %s archived (%s)", key, digest)

    async def _install(self, requirements: Sequence[str], partial: Path, build_log: Path, log: Callable[[str], None],
                       npm: Sequence[str] | None, python: str) -> None:
        """Run pip (npm when given) into `partial`, its output to `log` and into `build_log` line by
        line. Runs as long as the installer, at most the pip timeout (then it is killed); Unsupported
        if it cannot run, fails or times out; on cancellation it is killed first."""
        tool, env = "pip", None
        command = runtime_requirements.pip_command(requirements, str(partial), python=python)
        if npm is not None:
            # Install scripts run the `node` npm runs with (the function's), first on PATH.
            tool, command = "npm", runtime_requirements.npm_command(requirements, str(partial), npm=npm)
            env = {**os.environ, "PATH": os.pathsep.join([os.path.dirname(npm[0]), os.environ.get("PATH", "")])}
        tail: collections.deque[str] = collections.deque(maxlen=PIP_ERROR_LINES)
        with build_log.open("w", encoding="utf-8", errors="replace") as record:
            def line(text: str) -> None:
                log(f"[{tool}] {text}")
                tail.append(text if len(text) <= PIP_ERROR_CHARS else text[:PIP_ERROR_CHARS] + "...")
                record.write(text + "\n")
                record.flush()

            try:
                proc = await asyncio.create_subprocess_exec(
                    *command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT, start_new_session=True, env=env)
            except OSError as e:
                record.write(f"cannot run {tool}: {e}\n")
                raise Unsupported(f"spec.requirements: cannot run {tool}: {e}", StartReason.REQUIREMENTS) from None
            assert proc.stdout is not None
            try:
                async with asyncio.timeout(self._pip_timeout):
                    await _read_lines(proc.stdout, line)
                    await proc.wait()
            except BaseException as e:  # a timeout, or the backend closing: the installer must not outlive us
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await asyncio.shield(proc.wait())
                if isinstance(e, TimeoutError):
                    raise Unsupported(f"spec.requirements: {tool} did not finish within {self._pip_timeout:g}s",
                                      StartReason.REQUIREMENTS) from None
                raise
        if proc.returncode != 0:
            text = "\n  ".join(tail) or "(no output)"
            raise Unsupported(f"spec.requirements: {tool} install failed (exit code {proc.returncode}):\n  {text}",
                              StartReason.REQUIREMENTS)
