"""Python interpreters for local instances: the version each function's runtime declares.

A `python3.X` function runs on a Python 3.X: kfn's own interpreter when it is that version, else
the first `python3.X` found on PATH, in /usr/local/bin or /usr/bin, or in a pyenv install
($PYENV_ROOT or ~/.pyenv: versions/3.X*/bin/python3.X) whose `sys.version_info` really is 3.X (a
name proves nothing). The runtime package (kfn_runtime) is standard-library only, so any of them
runs it; the instance host stays in kfn's process, only the zygote and its environments run on
the chosen interpreter.

When the machine has no Python of the declared version, the function runs on kfn's own
interpreter and `Choice.substituted` says so: local mode warns at load, shows it in `kfn list`,
/system/functions and /system/errors, writes it in the function's log before each instance's
output, and the environment's AWS_EXECUTION_ENV names the version that really runs. With
`kfn local --strict-runtimes` such functions are refused instead (`Choice.refusal`).
"""
from __future__ import annotations

import glob
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

# Where interpreters are looked for after PATH (the system's and `make altinstall`'s).
KNOWN_DIRS = ("/usr/local/bin", "/usr/bin")
# Prints "3.13 /usr/bin/python3.13": the version an interpreter really is, and the binary itself (a
# pyenv shim or a wrapper resolves to it, so environments start without going through them).
_PROBE = "import sys; print('%d.%d' % sys.version_info[:2], sys.executable)"

# "3.13" → the path of a Python 3.13, or None when the machine has none.
Finder = Callable[[str], str | None]

_probed: dict[tuple[str, float], tuple[str, str]] = {}
_versions_lock = threading.Lock()


def wanted_version(runtime: str) -> str:
    """"python3.13" → "3.13"."""
    return runtime.removeprefix("python")


def pyenv_dirs() -> list[str]:
    """The bin directories of pyenv's installs, newest name last (pyenv's own order)."""
    root = os.environ.get("PYENV_ROOT") or os.path.join(os.path.expanduser("~"), ".pyenv")
    return sorted(glob.glob(os.path.join(glob.escape(root), "versions", "*", "bin")))


def candidates(version: str) -> Iterator[str]:
    """Every executable that might be Python `version`, most preferred first (duplicates skipped)."""
    name = f"python{version}"
    seen: set[str] = set()
    directories = [d or "." for d in os.environ.get("PATH", "").split(os.pathsep)] + list(KNOWN_DIRS)
    directories += [d for d in pyenv_dirs() if os.path.basename(os.path.dirname(d)).startswith(version)]
    for directory in directories:
        path = os.path.join(directory, name)
        if path in seen:
            continue
        seen.add(path)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            yield path


def probe(python: str) -> tuple[str, str]:
    """("X.Y", its executable) of an interpreter, remembered per binary; ("", python) when it cannot
    run or answers nonsense (bounded: 10 s)."""
    try:
        key = (python, os.stat(python).st_mtime)
    except OSError:
        return "", python
    with _versions_lock:
        known = _probed.get(key)
    if known is not None:
        return known
    try:
        out = subprocess.run([python, "-I", "-S", "-c", _PROBE], capture_output=True, text=True, timeout=10,
                             stdin=subprocess.DEVNULL).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out = ""
    version, _, executable = out.partition(" ")
    valid = version.count(".") == 1 and version.replace(".", "").isdigit()
    real = os.path.isabs(executable) and os.path.isfile(executable) and os.access(executable, os.X_OK)
    result = (version, executable if real else python) if valid else ("", python)
    with _versions_lock:
        _probed[key] = result
    return result


def version_of(python: str) -> str:
    """The "X.Y" an interpreter really is; "" when it cannot run."""
    return probe(python)[0]


def find_python(version: str) -> str | None:
    """The first interpreter (see `candidates`) that really is Python `version` (as the binary it
    runs, past shims), or None."""
    for path in candidates(version):
        found, executable = probe(path)
        if found == version:
            return executable
    return None


@dataclass(frozen=True)
class Choice:
    """The interpreter a Python runtime runs on here."""

    runtime: str      # as declared: "python3.13"
    python: str       # the interpreter's path
    version: str      # what it really is: "3.11"

    @property
    def running(self) -> str:
        """The runtime that really runs, e.g. "python3.11"."""
        return f"python{self.version}"

    @property
    def substituted(self) -> bool:
        return self.running != self.runtime

    def warning(self) -> str | None:
        """What a user must read when the function does not run on its declared version; else None."""
        if not self.substituted:
            return None
        wanted = wanted_version(self.runtime)
        return (f"spec.runtime {self.runtime}: there is no Python {wanted} on this machine, so it runs on "
                f"Python {self.version} ({self.python}) and code needing {wanted} may fail. Install python{wanted} "
                f"(on PATH, in {' or '.join(KNOWN_DIRS)}, or with pyenv), or pass --strict-runtimes to refuse "
                f"such functions")

    def refusal(self) -> str | None:
        """Why `--strict-runtimes` refuses the function, or None if it runs on its declared version."""
        if not self.substituted:
            return None
        wanted = wanted_version(self.runtime)
        return (f"spec.runtime: {self.runtime} needs Python {wanted} and this machine has none (looked for "
                f"python{wanted} on PATH, in {', '.join(KNOWN_DIRS)} and pyenv); --strict-runtimes refuses to "
                f"run it on Python {self.version}")


class Interpreters:
    """Chooses, once per runtime, the interpreter its functions run on (thread-safe: the manifest
    reader asks from a worker thread, the backend from the event loop)."""

    def __init__(self, *, default: str = sys.executable, find: Finder = find_python) -> None:
        self._default = default
        self._find = find
        self._lock = threading.Lock()
        self._chosen: dict[str, Choice] = {}
        self._choosing: dict[str, threading.Lock] = {}   # per runtime: one look at a time

    def default_version(self) -> str:
        """The version of the interpreter used when none of the declared version exists."""
        if os.path.realpath(self._default) == os.path.realpath(sys.executable):
            return f"{sys.version_info.major}.{sys.version_info.minor}"
        return version_of(self._default)

    def choose(self, runtime: str) -> Choice:
        """The interpreter for `runtime` (e.g. python3.13): of that version when the machine has
        one, else the default one (a substitution the Choice reports). Chosen once per runtime (a
        Python installed later is used after a restart); the first call may run each candidate once
        to read its version (bounded, 10 s each), so call it off the event loop first. A call
        while another thread chooses for the same runtime waits for that choice."""
        with self._lock:
            known = self._chosen.get(runtime)
            if known is not None:
                return known
            choosing = self._choosing.setdefault(runtime, threading.Lock())
        with choosing:
            with self._lock:
                known = self._chosen.get(runtime)
            if known is not None:
                return known
            wanted = wanted_version(runtime)
            default_version = self.default_version()
            if default_version == wanted:
                choice = Choice(runtime, self._default, wanted)
            else:
                found = self._find(wanted)
                choice = (Choice(runtime, found, wanted) if found is not None
                          else Choice(runtime, self._default, default_version or "?"))
            with self._lock:
                return self._chosen.setdefault(runtime, choice)
