"""A test's worker process: `python -m MODULE ARGS_JSON` from the repository, its stderr kept
beside its log (LOG.err), started, killed or stopped by its PID."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Self

from tests.e2e.asyncstores import REPO


class WorkerProcess:
    module: str = ""   # set by each kind of worker: tests.e2e.async_worker, ...

    def __init__(self, log: Path, args: dict[str, Any]) -> None:
        self.log = log
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        with self.log.with_suffix(".err").open("ab") as errors:
            self.process = subprocess.Popen([sys.executable, "-m", self.module, json.dumps(self.args)],
                                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=errors)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL: whatever it was doing is cut off where it stood."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 15 s; nothing if it has already ended."""
        if self.process is None or self.process.poll() is not None:
            return
        os.kill(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
