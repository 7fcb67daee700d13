"""`python -m kfn_runtime.requirements`: pip-install a function's requirements, for an init container.

Reads the requirement lines from KFN_REQUIREMENTS (one per line; blank lines and # comments are
skipped) and installs them with `pip install --no-cache-dir --target KFN_DEPS_DIR`, where the
runtime later finds them (second on sys.path). Exits 0 when done or when there is nothing to
install, 1 with pip's output and a one-line reason on stderr when pip fails, 2 on bad input.
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


def main(environ: Mapping[str, str] = os.environ) -> int:
    try:
        requirements = parse_requirements(environ.get(contract.ENV_REQUIREMENTS, ""))
    except RequirementsError as e:
        sys.stderr.write(f"kfn-runtime: {e}\n")
        return 2
    target = environ.get(contract.ENV_DEPS_DIR) or contract.DEFAULT_DEPS_DIR
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
    # Only /tmp is writable under a read-only root filesystem; pip builds there.
    env = {**environ, "PIP_NO_CACHE_DIR": "1", "TMPDIR": environ.get("TMPDIR", "/tmp")}
    result = subprocess.run(pip_command(requirements, target), env=env)
    if result.returncode != 0:
        sys.stderr.write(f"kfn-runtime: pip could not install the requirements (exit code {result.returncode}); "
                         f"see pip's output above\n")
        return 1
    print("kfn-runtime: requirements installed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
