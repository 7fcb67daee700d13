"""kfn as the candidate of ../shared/peers-bench: deploys the harness's handler.py as `hello`
(handler) and `sleep` (sleep_handler) in `kfn local`, then becomes that server (exec, so the PID the
harness started, signals and all, is kfn local's own).

    CANDIDATE_CMD='/path/to/.venv/bin/python /path/to/bench/peers/candidate.py {port} {here}/handlers'

(`make bench-peers` sets it.) Function settings are what a user would write for these handlers:
both start at zero instances (the harness's first request is a cold start), one instance each
(`maxReplicas: 1`: on a laptop-sized machine more instances add processes, not CPUs), `hello`
with the default concurrency (10 execution environments; KFN_HELLO_CONCURRENCY overrides), and
`sleep` with 64, enough for the harness's 64 connections. The manifests go to a directory named
after the port, rewritten on every start, so repeated runs leave one small directory behind.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml


def manifest(name: str, handler: str, code: str, *, concurrency: int, max_replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "kfn.dev/v1alpha1", "kind": "Function", "metadata": {"name": name},
        "spec": {"runtime": f"python{sys.version_info[0]}.{sys.version_info[1]}", "handler": handler,
                 "source": {"files": {"handler.py": code}}, "concurrency": concurrency,
                 "scale": {"minReplicas": 0, "maxReplicas": max_replicas, "idleTimeout": "10m"}},
    }


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit("usage: candidate.py PORT HANDLERS_DIR")
    port, handlers = sys.argv[1], Path(sys.argv[2])
    code = (handlers / "handler.py").read_text()
    hello_concurrency = int(os.environ.get("KFN_HELLO_CONCURRENCY", "10"))
    functions = [manifest("hello", "handler.handler", code, concurrency=hello_concurrency, max_replicas=1),
                 manifest("sleep", "handler.sleep_handler", code, concurrency=64, max_replicas=1)]
    directory = Path(tempfile.gettempdir()) / f"kfn-peers-{port}"
    directory.mkdir(exist_ok=True)
    for stale in directory.glob("*.yaml"):
        stale.unlink()
    (directory / "functions.yaml").write_text(yaml.safe_dump_all(functions, sort_keys=False))
    kfn = Path(sys.executable).with_name("kfn")
    os.execv(kfn, [str(kfn), "local", str(directory), "--host", "127.0.0.1", "--port", port, "--log-level", "warning"])


if __name__ == "__main__":
    main()
