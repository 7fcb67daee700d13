"""`kfn local` as a careless operator and a hostile environment run it: a signal at every moment of
startup and shutdown, two in a row, a part that cannot start, a function that ignores SIGTERM, a
request or an accepted event in flight at SIGTERM. Each process is stopped by its PID and its
whole process group is killed afterwards; every wait is bounded."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.localmode import REPO, HttpResult, descendants, http, lines, recording, write_manifest
from tests.support.nats import NatsServer
from tests.support.ports import free_port

pytestmark = [pytest.mark.timeout(120)]

QUICK = """
    def handler(event, context):
        return {"ok": True}
"""

# Sleeps `event.body` seconds, deaf to SIGTERM (as a handler stuck in a C call or a careless one).
STUBBORN = """
    import signal, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def handler(event, context):
        time.sleep(float(event.get("body") or 1))
        return {"slept": event.get("body")}
"""


class Kfn:
    """A `kfn local` process in a session of its own (its instances in its process group)."""

    def __init__(self, directory: Path, *args: str, port: int | None = None) -> None:
        self.directory = directory
        self.port = port if port is not None else free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = directory.parent / f"kfn-local-{self.port}-{time.monotonic_ns()}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("KFN_")}
        env["XDG_CACHE_HOME"] = str(directory.parent / "cache")
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "kfn", "local", str(directory), "--port", str(self.port), *args],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                start_new_session=True)
        self.seen: set[int] = set()
        threading.Thread(target=self._watch, daemon=True).start()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def serving(self, timeout: float = 30.0) -> bool:
        """Whether it answers /healthz within `timeout` (False at once if it exited)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            with contextlib.suppress(OSError):
                if http("GET", self.url + "/healthz", timeout=1.0).status == 200:
                    return True
            time.sleep(0.05)
        return False

    def signal(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)

    def wait(self, timeout: float) -> int | None:
        """The exit code, or None if it still runs after `timeout` seconds."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def _watch(self) -> None:
        """Note every process below it (instances, zygotes, environments) while it runs."""
        while self.process.poll() is None:
            self.seen.update(descendants(self.process.pid))
            time.sleep(0.05)

    def group(self) -> list[str]:
        """The processes it started (seen below it, or in its process group) still alive."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == self.process.pid:
                continue
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                fields = stat[stat.rfind(")") + 2:].split()
                if fields[0] != "Z" and (int(fields[2]) == self.process.pid or int(entry.name) in self.seen):
                    command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    found.append(f"{entry.name} {command}")
        return found

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        for pid in self.seen:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def kfn_local(directory: Path, *args: str, port: int | None = None) -> Iterator[Kfn]:
    local = Kfn(directory, *args, port=port)
    try:
        yield local
    finally:
        local.kill()


def leftovers(local: Kfn, timeout: float = 10.0) -> list[str]:
    """The processes still in the group once `timeout` seconds have passed with some left."""
    deadline = time.monotonic() + timeout
    while (left := local.group()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def in_background(call: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    """Run `call()` in a thread; its result (or exception) lands in the list."""
    out: list[object] = []

    def run() -> None:
        try:
            out.append(call())
        except Exception as e:  # noqa: BLE001 - the test looks at it
            out.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


@pytest.fixture
def functions(tmp_path: Path) -> Path:
    directory = tmp_path / "functions"
    directory.mkdir()
    return directory


# -- a part that cannot start --------------------------------------------------------------------------

def test_a_port_in_use_is_one_line_and_exit_1_with_nothing_left(functions: Path) -> None:
    write_manifest(functions, "warm", QUICK, scale={"minReplicas": 1})
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        with kfn_local(functions, port=holder.getsockname()[1]) as local:
            assert local.wait(60) == 1, local.output()
            assert "kfn local: cannot listen on 127.0.0.1:" in local.output()
            assert "address is already in use" in local.output()
            assert "Traceback" not in local.output()
            assert leftovers(local) == []


def test_an_invalid_keys_file_is_exit_2_and_no_traceback(functions: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys.yaml"
    keys.write_text("keys: [\n")
    with kfn_local(functions, "--keys", str(keys)) as local:
        assert local.wait(30) == 2, local.output()
        assert "kfn local: --keys:" in local.output() and "not valid YAML" in local.output()
        assert "Traceback" not in local.output()


def test_a_state_dir_that_is_a_file_is_exit_1_and_no_traceback(functions: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.write_text("not a directory")
    with kfn_local(functions, "--state-dir", str(state)) as local:
        assert local.wait(30) == 1, local.output()
        assert "kfn local: cannot open the async event store in" in local.output()
        assert "Traceback" not in local.output()
        assert leftovers(local) == []


def test_a_nats_url_of_a_server_that_is_down_neither_blocks_startup_nor_shutdown(functions: Path) -> None:
    write_manifest(functions, "hello", QUICK, triggers=[{"nats": {"subject": "orders.created"}}])
    with kfn_local(functions, "--nats-url", f"nats://127.0.0.1:{free_port()}") as local:
        assert local.serving(), local.output()
        assert http("GET", local.url + "/function/hello", timeout=30).status == 200
        local.signal()
        assert local.wait(30) == 0, local.output()
        assert "Traceback" not in local.output()
        assert leftovers(local) == []


# -- signals during startup ----------------------------------------------------------------------------

@pytest.mark.parametrize("after", [0.3, 0.8, 1.2, 1.6, 2.0, 2.5])
def test_sigterm_at_any_moment_of_startup_ends_it_with_nothing_left_and_no_traceback(
        functions: Path, after: float) -> None:
    for name in ("one", "two"):
        write_manifest(functions, name, QUICK, scale={"minReplicas": 1})
    with kfn_local(functions) as local:
        time.sleep(after)
        local.signal()
        code = local.wait(45)
        assert code in (0, -signal.SIGTERM), local.output()
        assert "Traceback" not in local.output(), local.output()
        assert leftovers(local) == [], local.output()


def test_sigint_twice_while_instances_start_ends_it_with_nothing_left(functions: Path) -> None:
    for name in ("one", "two", "three"):
        write_manifest(functions, name, QUICK, scale={"minReplicas": 1})
    with kfn_local(functions) as local:
        assert local.serving(), local.output()
        local.signal(signal.SIGINT)
        time.sleep(0.1)
        local.signal(signal.SIGINT)
        assert local.wait(45) in (0, 130, -signal.SIGINT), local.output()
        assert "Traceback" not in local.output(), local.output()
        assert leftovers(local) == [], local.output()


# -- signals during shutdown ---------------------------------------------------------------------------

def test_a_request_in_flight_at_sigterm_is_answered(functions: Path) -> None:
    write_manifest(functions, "slow", STUBBORN, timeout=30)
    with kfn_local(functions) as local:
        assert local.serving(), local.output()
        thread, out = in_background(lambda: http("POST", local.url + "/function/slow", body=b"3", timeout=60))
        time.sleep(1.5)   # the instance started and the request is in the handler
        local.signal()
        thread.join(60)
        assert out and isinstance(out[0], HttpResult) and out[0].status == 200, (out, local.output())
        assert local.wait(60) == 0, local.output()
        assert leftovers(local) == [], local.output()


def test_a_handler_deaf_to_sigterm_is_killed_within_its_timeout_and_nothing_is_left(functions: Path) -> None:
    write_manifest(functions, "stuck", STUBBORN, timeout=8)
    with kfn_local(functions) as local:
        assert local.serving(), local.output()
        thread, out = in_background(lambda: http("POST", local.url + "/function/stuck", body=b"600", timeout=90))
        time.sleep(1.5)
        local.signal()
        time.sleep(0.5)
        local.signal()   # a second, impatient SIGTERM
        # The handler's timeout (8 s), the drain margin and the grace period: well under 45 s.
        assert local.wait(45) == 0, local.output()
        assert leftovers(local) == [], local.output()
        thread.join(30)
        assert out, local.output()


def test_an_async_event_accepted_just_before_sigterm_is_kept_and_delivered_after_a_restart(
        functions: Path, tmp_path: Path) -> None:
    log = tmp_path / "calls.log"
    write_manifest(functions, "rec", recording(log))
    with kfn_local(functions, "--async-lease", "1s") as local:
        assert local.serving(), local.output()
        accepted = http("POST", local.url + "/async-function/rec", body=b"first",
                        headers={"Content-Type": "text/plain"}, timeout=30)
        assert accepted.status == 202, accepted
        local.signal()
        assert local.wait(60) == 0, local.output()
    if "first" in lines(log, "done"):
        return   # delivered before stopping: kept either way
    with kfn_local(functions, "--async-lease", "1s") as again:
        assert again.serving(), again.output()
        deadline = time.monotonic() + 30
        while "first" not in lines(log, "done") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "first" in lines(log, "done"), again.output()
        again.signal()
        assert again.wait(60) == 0, again.output()


def test_nats_dying_mid_run_leaves_the_http_path_and_the_shutdown_alone(functions: Path, tmp_path: Path) -> None:
    nats = NatsServer(tmp_path)
    nats.start()
    try:
        write_manifest(functions, "hello", QUICK, triggers=[{"nats": {"subject": "orders.created"}}])
        with kfn_local(functions, "--nats-url", nats.url) as local:
            assert local.serving(), local.output()
            assert http("GET", local.url + "/function/hello", timeout=30).status == 200
            nats.kill()
            time.sleep(1.0)
            assert http("GET", local.url + "/function/hello", timeout=30).status == 200
            local.signal()
            assert local.wait(30) == 0, local.output()
            assert "Traceback" not in local.output(), local.output()
            assert leftovers(local) == [], local.output()
    finally:
        nats.stop()


def test_sigterm_while_pip_hangs_on_an_index_ends_it_with_nothing_left(
        functions: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as index:   # accepts connections, never answers: pip waits on it
        index.bind(("127.0.0.1", 0))
        index.listen(64)
        monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{index.getsockname()[1]}/simple")
        monkeypatch.setenv("PIP_DEFAULT_TIMEOUT", "600")
        write_manifest(functions, "needy", QUICK, scale={"minReplicas": 1},
                       requirements=[f"kfn-attack-missing-{time.monotonic_ns()}==1.0"])
        with kfn_local(functions) as local:
            assert local.serving(), local.output()
            deadline = time.monotonic() + 30
            while not any(" pip " in p or "pip install" in p for p in local.group()) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert any("pip" in p for p in local.group()), (local.group(), local.output())
            local.signal()
            assert local.wait(45) == 0, local.output()
            assert "Traceback" not in local.output(), local.output()
            assert leftovers(local) == [], local.output()
