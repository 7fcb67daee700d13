"""`kfn local` with many functions and no traffic costs (next to) nothing (issue 15, item 14): the
async delivery waits to be woken instead of asking the store about every function every second,
and the autoscaler skips functions at rest (at zero, nothing new) instead of deciding each again.
CPU time is read from /proc/PID/stat (utime + stime) of the kfn local process."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.support.localmode import HELLO, http, running, write_manifest
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(180)

FUNCTIONS = 1000
# A generous bound: with 1,000 functions kfn local took 15-20 % of a core before issue 15,
# 4-8 % once delivery stopped polling, and 1-1.7 % once the autoscaler let functions at rest be.
IDLE_CPU_BOUND = 0.03
WINDOW = 2.0
WINDOWS = 5


def cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rfind(")") + 2:].split()   # the command name may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_kfn_local_with_1000_functions_and_no_traffic_uses_almost_no_cpu(tmp_path: Path) -> None:
    directory = tmp_path / "functions"
    directory.mkdir()
    log = tmp_path / "ran.log"
    for i in range(FUNCTIONS - 1):
        write_manifest(directory, f"fn-{i:04d}", HELLO)
    write_manifest(directory, "recorder", f"""
        def handler(event, context):
            with open({json.dumps(str(log))}, "a") as f:
                f.write(context.aws_request_id + "\\n")
            return {{"ok": True}}
    """)
    with running(directory, extra_args=["--state-dir", str(tmp_path / "state")]) as local:
        assert local.process is not None
        pid = local.process.pid
        # Idle means: some window of a few seconds below the bound (startup's own work settles first).
        usage: list[float] = []
        for _ in range(WINDOWS):
            before, start = cpu_seconds(pid), time.monotonic()
            time.sleep(WINDOW)
            usage.append((cpu_seconds(pid) - before) / (time.monotonic() - start))
            if usage[-1] < IDLE_CPU_BOUND:
                break
        assert min(usage) < IDLE_CPU_BOUND, f"idle CPU per {WINDOW}s window, in cores: {usage}"
        # Waiting without polling still delivers an event at once.
        result = http("POST", f"{local.url}/async-function/recorder", body=b"{}", headers={"X-Call-Id": "after-idle"})
        assert result.status == 202, result.body
        wait_until(lambda: log.exists() and "after-idle" in log.read_text(), timeout=30, what="the event delivered")
