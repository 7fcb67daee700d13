"""`python -m kfn_runtime.requirements`: install a function's requirements, for an init container.

Reads the requirement lines from KFN_REQUIREMENTS (one per line; blank lines and # comments are
skipped) and installs them with `pip install --no-cache-dir --target KFN_DEPS_DIR`, where the
runtime later finds them (second on sys.path). For a Node.js runtime (KFN_RUNTIME=nodejs*, set by
the Node.js image) they are npm package specs, installed with `npm install --prefix KFN_DEPS_DIR`
into KFN_DEPS_DIR/node_modules (the environments' NODE_PATH). Exits 0 when done or when there is
nothing to install, 1 with the installer's output and a one-line reason on stderr when it fails,
2 on bad input.
"""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence

from kfn_runtime import contract


class RequirementsError(ValueError):
    """A requirement line that must not reach pip (an option smuggled in)."""


def parse_requirements(text: str) -> list[str]:
    lines = []
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not line:
            continue
        if line.startswith("-"):
            raise RequirementsError(f"{contract.ENV_REQUIREMENTS}: options are not allowed, only requirements "
                                    f"such as 'requests==2.32.3' (got {line!r})")
        lines.append(line)
    return lines


def pip_command(requirements: Sequence[str], target: str, *, python: str = sys.executable) -> list[str]:
    return [python, "-m", "pip", "install", "--no-cache-dir", "--disable-pip-version-check", "--no-input",
            "--target", target, "--", *requirements]


def npm_command(requirements: Sequence[str], target: str, *, npm: Sequence[str] = ("npm",)) -> list[str]:
    """npm installing package specs (e.g. 'lodash@4.17.21') into TARGET/node_modules, with no
    package.json or lock file written beside them."""
    return [*npm, "install", "--prefix", target, "--no-save", "--no-package-lock", "--omit=dev", "--no-audit",
            "--no-fund", "--no-update-notifier", "--no-progress", "--", *requirements]


def main(environ: Mapping[str, str] = os.environ) -> int:
    try:
        requirements = parse_requirements(environ.get(contract.ENV_REQUIREMENTS, ""))
    except RequirementsError as e:
        sys.stderr.write(f"kfn-runtime: {e}\n")
        return 2
    target = environ.get(contract.ENV_DEPS_DIR) or contract.DEFAULT_DEPS_DIR
    node = environ.get(contract.ENV_RUNTIME, "").startswith("nodejs")
    tool = "npm" if node else "pip"
    if not requirements:
        print(f"kfn-runtime: no requirements to install ({contract.ENV_REQUIREMENTS} is empty)", flush=True)
        return 0
    print(f"kfn-runtime: installing {len(requirements)} requirement(s) into {target}: {', '.join(requirements)}",
          flush=True)
    try:
        os.makedirs(target, exist_ok=True)
    except OSError as e:
        sys.stderr.write(f"kfn-runtime: cannot create {contract.ENV_DEPS_DIR} {target!r}: {e}\n")
        return 1
    # Only /tmp is writable under a read-only root filesystem; pip builds there (npm keeps its cache there).
    env = {**environ, "PIP_NO_CACHE_DIR": "1", "TMPDIR": environ.get("TMPDIR", "/tmp")}
    if node:
        env.setdefault("npm_config_cache", os.path.join(env["TMPDIR"], ".npm"))
    command = npm_command(requirements, target) if node else pip_command(requirements, target)
    try:
        result = subprocess.run(command, env=env)
    except OSError as e:
        sys.stderr.write(f"kfn-runtime: cannot run {tool}: {e}\n")
        return 1
    if result.returncode != 0:
        sys.stderr.write(f"kfn-runtime: {tool} could not install the requirements (exit code {result.returncode}); "
                         f"see {tool}'s output above\n")
        return 1
    print("kfn-runtime: requirements installed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
