"""A function's code and dependencies on disk, as its local instances find them.

Inline files are written once per code version into `WORK/code/NAMESPACE/NAME/HASH`; requirements
are installed with pip (npm for Node.js), once per requirement set and Python version (Node.js
runtime), into a cache directory shared by every function (the same command as the runtime's init
container on Kubernetes).
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from kfn.core.functions import Function
from kfn.core.instances import StartReason
from kfn.processes.interpreters import Choice
from kfn_runtime import requirements as runtime_requirements

# Lines of pip's output quoted in the error when an install fails.
PIP_ERROR_LINES = 20


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
    """Mark a finished install complete and move it where instances look (replacing a stale one)."""
    (partial / ".kfn-complete").touch()
    if target.exists():
        shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)


def mkdirs(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


class CodeStore:
    """Code directories under `work_dir` and pip installs under `deps_cache`."""

    def __init__(self, work_dir: Path, deps_cache: Path, *, python: str = sys.executable,
                 pip_timeout: float = 600.0) -> None:
        self._work_dir = work_dir
        self._deps_cache = deps_cache
        self._python = python
        self._pip_timeout = pip_timeout
        self._installs: dict[Path, asyncio.Task[None]] = {}

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

    async def dependencies(self, function: Function, *, log: Callable[[str], None],
                           npm: Sequence[str] | None = None, python: Choice | None = None) -> Path:
        """The requirements installed with pip, once per requirement set and Python version (pip of
        the `python` the function runs on, else of the store's interpreter); with the `npm` command
        instead when given (Node.js: package specs, installed into the result's node_modules).

        Runs as long as pip does (bounded by the pip timeout); Unsupported with pip's output if
        the install fails, so the function reports it instead of retrying until it changes.
        Concurrent callers for the same set share one pip run.
        """
        interpreter = python.python if python is not None else self._python
        version = list(sys.version_info[:2])   # the cache key's form: [3, 11]
        if python is not None and python.version.replace(".", "").isdigit():
            version = [int(part) for part in python.version.split(".")]
        toolchain = ["npm", function.spec.runtime] if npm is not None else version
        key = hashlib.sha256(json.dumps([toolchain, function.spec.requirements]).encode()).hexdigest()[:12]
        target = self._deps_cache / key
        if (target / ".kfn-complete").exists():
            return target
        task = self._installs.get(target)
        if task is None or task.done():
            task = asyncio.get_running_loop().create_task(self._pip(function, target, log, npm, interpreter))
            self._installs[target] = task
        try:
            await asyncio.shield(task)
        finally:
            if task.done():
                self._installs.pop(target, None)
        return target

    async def close(self) -> None:
        """Stop pip runs in progress (their processes are killed) and wait for them."""
        tasks = list(self._installs.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._installs.clear()

    async def _pip(self, function: Function, target: Path, log: Callable[[str], None],
                   npm: Sequence[str] | None, python: str) -> None:
        requirements = function.spec.requirements
        log(f"[kfn] installing requirements for {function.name}: {' '.join(requirements)}")
        partial = Path(tempfile.mkdtemp(prefix=".partial-", dir=mkdirs(target.parent)))
        tool, env = "pip", None
        command = runtime_requirements.pip_command(requirements, str(partial), python=python)
        if npm is not None:
            # Install scripts run the `node` npm runs with (the function's), first on PATH.
            tool, command = "npm", runtime_requirements.npm_command(requirements, str(partial), npm=npm)
            env = {**os.environ, "PATH": os.pathsep.join([os.path.dirname(npm[0]), os.environ.get("PATH", "")])}
        try:
            proc = await asyncio.create_subprocess_exec(
                *command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, start_new_session=True, env=env)
        except OSError as e:
            shutil.rmtree(partial, ignore_errors=True)
            raise Unsupported(f"spec.requirements: cannot run {tool}: {e}", StartReason.REQUIREMENTS) from None
        try:
            async with asyncio.timeout(self._pip_timeout):
                output, _ = await proc.communicate()
        except BaseException as e:  # a timeout, or the backend closing: pip must not outlive us
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await asyncio.shield(proc.wait())
            shutil.rmtree(partial, ignore_errors=True)
            if isinstance(e, TimeoutError):
                raise Unsupported(f"spec.requirements: {tool} did not finish within {self._pip_timeout:g}s",
                                  StartReason.REQUIREMENTS) from None
            raise
        lines = output.decode(errors="replace").splitlines()
        for line in lines:
            log(f"[{tool}] {line}")
        if proc.returncode != 0:
            shutil.rmtree(partial, ignore_errors=True)
            tail = "\n  ".join(lines[-PIP_ERROR_LINES:]) or "(no output)"
            raise Unsupported(f"spec.requirements: {tool} install failed (exit code {proc.returncode}):\n  {tail}",
                              StartReason.REQUIREMENTS)
        await asyncio.to_thread(_publish, partial, target)
