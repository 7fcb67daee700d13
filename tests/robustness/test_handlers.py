"""Handlers that misbehave: forking, exiting, daemonizing, eating memory. Each test asserts what
the caller gets and that kfn local is left as it was (never how fast)."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.robustness.harness import serving
from tests.support.localmode import pid_alive, write_manifest
from tests.support.waiting import wait_until

FORK_AND_EXIT = """
    import os
    def handler(event, context):
        if event["rawPath"] == "/exit":
            os._exit(3)                       # the environment dies mid-invocation
        pid = os.fork()
        if pid == 0:                          # a child that outlives the invocation, in its group
            import time
            time.sleep(1000)
            os._exit(0)
        return {"child": pid}
"""


def test_a_handler_whose_process_exits_is_a_runtime_exit_error_and_the_next_request_is_served(tmp_path: Path) -> None:
    write_manifest(tmp_path, "forky", FORK_AND_EXIT)
    with serving(tmp_path) as local:
        result = local.invoke("forky", path="/exit")
        assert result.status == 500
        assert result.headers["X-Kfn-Error-Type"] == "Runtime.ExitError"
        assert local.invoke("forky").status == 200


def test_a_child_forked_by_a_handler_is_gone_once_its_instance_stops(tmp_path: Path) -> None:
    write_manifest(tmp_path, "forky", FORK_AND_EXIT)
    local_cm = serving(tmp_path)
    local = local_cm.__enter__()
    child = 0
    try:
        child = local.invoke("forky").json()["child"]
        assert pid_alive(child)
    finally:
        local_cm.__exit__(None, None, None)
    try:
        assert child and not pid_alive(child)
    finally:
        if child and pid_alive(child):
            os.kill(child, signal.SIGKILL)


def test_a_daemon_started_by_a_handler_is_gone_once_kfn_local_stops(tmp_path: Path) -> None:
    write_manifest(tmp_path, "daemon", """
        import os, subprocess
        def handler(event, context):
            # setsid: a session of its own, out of its environment's process group
            script = "echo $$ > " + os.environ["PIDFILE"] + "; exec sleep 1000"
            daemon = subprocess.Popen(["setsid", "-f", "sh", "-c", script])
            daemon.wait()
            return "started"
    """, env=[{"name": "PIDFILE", "value": str(tmp_path / "daemon.pid")}])
    local_cm = serving(tmp_path)
    local = local_cm.__enter__()
    pid = 0
    try:
        assert local.invoke("daemon").status == 200
        pid = int(wait_until(lambda: (tmp_path / "daemon.pid").read_text().strip() if (tmp_path / "daemon.pid").exists()
                                      else "", timeout=10, what="the daemon's pid"))
        assert pid_alive(pid)
    finally:
        local_cm.__exit__(None, None, None)
    try:
        assert pid and not pid_alive(pid)
    finally:
        if pid and pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


HOG = """
    def handler(event, context):
        hoard = [bytearray(1024 * 1024) for _ in range(400)]   # 400 MiB
        return {"allocated": len(hoard)}
"""


@pytest.mark.parametrize("cgroups", ["auto", "off"])   # off: RLIMIT_DATA
def test_a_handler_over_its_memory_limit_fails_as_out_of_memory_and_the_next_request_is_served(
        tmp_path: Path, cgroups: str) -> None:
    write_manifest(tmp_path, "hog", HOG, resources={"limits": {"memory": "96Mi"}})
    write_manifest(tmp_path, "modest", 'def handler(event, context):\n    return "fine"\n',
                   resources={"limits": {"memory": "96Mi"}})
    with serving(tmp_path, "--cgroups", cgroups) as local:
        result = local.invoke("hog", timeout=60)
        assert result.status == 500
        assert result.headers["X-Kfn-Error-Type"] == "Runtime.OutOfMemory"
        logs = local.output()
        assert "exceeded its memory limit of 96 MiB" in logs
        assert local.invoke("modest").status == 200
        assert local.invoke("hog", timeout=60).headers["X-Kfn-Error-Type"] == "Runtime.OutOfMemory"


def test_what_a_killed_kfn_local_left_running_is_stopped_by_the_next_one(tmp_path: Path) -> None:
    pidfile = tmp_path / "daemon.pid"
    write_manifest(tmp_path, "daemon", """
        import os, subprocess
        def handler(event, context):
            script = "echo $$ > " + os.environ["PIDFILE"] + "; exec sleep 1000"
            subprocess.Popen(["setsid", "-f", "sh", "-c", script]).wait()
            return "started"
    """, env=[{"name": "PIDFILE", "value": str(pidfile)}])
    first = serving(tmp_path)
    local = first.__enter__()
    daemon = 0
    try:
        assert local.invoke("daemon").status == 200
        (instance,) = local.instances("daemon")["instances"]
        if not instance.get("cgroup"):
            pytest.skip("no writable cgroup v2 hierarchy here: process groups only")
        daemon = int(wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), timeout=10,
                                what="the daemon's pid"))
        assert local.process is not None
        os.kill(local.process.pid, signal.SIGKILL)   # kfn local dies without stopping its instances
        local.process.wait(timeout=30)
        assert pid_alive(daemon)
        with serving(tmp_path):
            wait_until(lambda: not pid_alive(daemon), timeout=30, what="the orphaned daemon to be stopped")
    finally:
        first.__exit__(None, None, None)
        if daemon and pid_alive(daemon):
            os.kill(daemon, signal.SIGKILL)
