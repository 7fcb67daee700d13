"""Starting `kfn local` as a real process, and talking to it, for end-to-end tests.

Every process started here is stopped by its PID, and its whole process group is killed
afterwards, so no runtime instance outlives a test even if kfn local itself misbehaves.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from multidict import CIMultiDict

from tests.support.functions import function_manifest
from tests.support.ports import free_port
from tests.support.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable

# No proxy: everything here is on 127.0.0.1.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None   # the 3xx itself is the answer


_NO_REDIRECTS = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirects())


# Scale settings quick enough for tests: idle instances stop after 2 s.
QUICK_SCALE = {"idleTimeout": "2s", "stableWindow": "2s"}


def write_manifest(directory: Path, name: str, code: str, *, file: str | None = None, **spec: Any) -> Path:
    """Write a Function manifest (`function_manifest`, with QUICK_SCALE under `spec["scale"]`) as
    `file` (default NAME.yaml) in `directory`; returns its path."""
    path = directory / (file or f"{name}.yaml")
    scale = {**QUICK_SCALE, **spec.pop("scale", {})}
    # Written beside and renamed, so the poller never sees half a file.
    partial = directory / f".{path.name}.partial"
    partial.write_text(yaml.safe_dump(function_manifest(name, code, scale=scale, **spec), sort_keys=False))
    partial.replace(path)
    return path


# The handler says which Python it really runs on and what AWS_EXECUTION_ENV says.
WHICH = """
    import os, sys
    def handler(event, context):
        return {"version": "%d.%d" % sys.version_info[:2], "executionEnv": os.environ.get("AWS_EXECUTION_ENV")}
"""

HELLO = """
    def handler(event, context):
        return {"hello": event.get("body") or "world", "function": context.function_name}
"""


@dataclass
class HttpResult:
    status: int
    headers: CIMultiDict[str]   # case-insensitive, repeats kept (getall)
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http(method: str, url: str, *, body: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 30.0, follow_redirects: bool = True) -> HttpResult:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with (_OPENER if follow_redirects else _NO_REDIRECTS).open(request, timeout=timeout) as response:
            return HttpResult(response.status, CIMultiDict(response.headers.items()), response.read())
    except urllib.error.HTTPError as e:
        return HttpResult(e.code, CIMultiDict(e.headers.items()), e.read())


class LocalMode:
    """A `kfn local DIR` process on a free port."""

    def __init__(self, directory: Path, *, extra_args: list[str] | None = None, log_path: Path | None = None) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path or directory.parent / f"kfn-local-{self.port}.log"
        self.extra_args = extra_args or []
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *, timeout: float = 20.0) -> LocalMode:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KFN_")}
        # Requirements are cached under $XDG_CACHE_HOME: keep the tests' installs out of ~/.cache.
        env["XDG_CACHE_HOME"] = str(self.directory.parent / "cache")
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [PYTHON, "-m", "kfn", "local", str(self.directory), "--port", str(self.port), *self.extra_args],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                start_new_session=True)
        wait_until(self._serving, timeout=timeout, interval=0.05, what=f"kfn local on {self.url}")
        return self

    def _serving(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"kfn local exited with {self.process.returncode}:\n{self.output()}")
        try:
            return http("GET", self.url + "/healthz", timeout=1.0).status == 200
        except OSError:
            return False

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, *, timeout: float = 20.0) -> int | None:
        """SIGTERM, wait, then SIGKILL the whole process group; the exit code of the clean stop, if any."""
        process = self.process
        if process is None:
            return None
        code: int | None = None
        try:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    code = process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=5)
            else:
                code = process.returncode
        finally:
            # Instances are in kfn local's process group: none may outlive the test.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        return code

    # -- HTTP helpers ------------------------------------------------------------------------------

    def invoke(self, name: str, *, body: bytes | None = None, method: str | None = None, path: str = "",
               headers: dict[str, str] | None = None, timeout: float = 30.0,
               follow_redirects: bool = True) -> HttpResult:
        return http(method or ("POST" if body is not None else "GET"), f"{self.url}/function/{name}{path}",
                    body=body, headers=headers, timeout=timeout, follow_redirects=follow_redirects)

    def functions(self) -> dict[str, dict[str, Any]]:
        return {f["name"]: f for f in http("GET", self.url + "/system/functions", timeout=5).json()}

    def function(self, name: str) -> dict[str, Any] | None:
        return self.functions().get(name)

    def instances(self, name: str) -> dict[str, Any]:
        return http("GET", f"{self.url}/system/instances/{name}", timeout=5).json()

    def errors(self) -> dict[str, Any]:
        return http("GET", self.url + "/system/errors", timeout=5).json()

    def ready(self, name: str) -> int:
        info = self.function(name)
        return int(info["availableReplicas"]) if info else 0


@contextlib.contextmanager
def running(directory: Path, *, extra_args: list[str] | None = None) -> Iterator[LocalMode]:
    local = LocalMode(directory, extra_args=extra_args)
    try:
        yield local.start()
    finally:
        local.stop()


def descendants(pid: int) -> list[int]:
    """PIDs of every live process whose parent chain reaches `pid` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may contain spaces and parentheses: the fields follow the last ')'.
        fields = stat[stat.rfind(")") + 2:].split()
        if fields[0] == "Z":
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:].split()[0] != "Z"


def make_wheel(directory: Path, name: str, module_source: str, *, version: str = "1.0") -> Path:
    """A pure-Python wheel holding one module: pip installs it without any index or network."""
    import zipfile

    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    dist_info = f"{name}-{version}.dist-info"
    files = {
        f"{name}.py": module_source,
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: kfn-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{path},,\n" for path in files) + f"{dist_info}/RECORD,,\n"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, content in files.items():
            archive.writestr(path, content)
        archive.writestr(f"{dist_info}/RECORD", record)
    return wheel


def kfn(*args: str, gateway: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run the `kfn` command (no KFN_* variables but `gateway` as KFN_GATEWAY); its output, within `timeout`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KFN_")}
    if gateway is not None:
        env["KFN_GATEWAY"] = gateway
    return subprocess.run([PYTHON, "-m", "kfn", *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=REPO)


class ReplicaWatcher:
    """Records the most ready instances a function had, polled in the background."""

    def __init__(self, local: LocalMode, name: str) -> None:
        self.local, self.name = local, name
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ReplicaWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            with contextlib.suppress(OSError):
                self.peak = max(self.peak, self.local.ready(self.name))


# -- asynchronous invocations ------------------------------------------------------------------------

# Retries in fractions of a second, and leases short enough that a restart redelivers at once.
FAST_ASYNC = ["--async-retry-delays", "0.2s,0.4s", "--async-lease", "1s"]


def recording(log: Path, *, before: str = "", after: str = "", result: str = '{"done": key}') -> str:
    """A handler that appends "start KEY" and "done KEY" lines to `log` (KEY: the event's body, or
    the request id), running `before` and `after` (indented code) around nothing else."""
    return f"""
        import json, os, time
        LOG = {json.dumps(str(log))}

        def write(line):
            with open(LOG, "a") as f:
                f.write(line + "\\n")
                f.flush()
                os.fsync(f.fileno())

        def handler(event, context):
            key = (event.get("body") if isinstance(event, dict) else None) or context.aws_request_id
            write("start " + key)
{_indent(before)}
            write("done " + key)
{_indent(after)}
            return {result}
    """


def _indent(code: str) -> str:
    return textwrap.indent(textwrap.dedent(code).strip("\n"), " " * 12) if code.strip() else ""


def lines(log: Path, kind: str) -> list[str]:
    """The keys of `log`'s lines of `kind` ("start KEY", "done KEY", ...), in order; none if no log yet."""
    if not log.exists():
        return []
    return [line.split(" ", 1)[1] for line in log.read_text().splitlines() if line.startswith(kind + " ")]


def post_async(local: LocalMode, name: str, body: str, *, headers: dict[str, str] | None = None) -> str:
    """POST `body` to /async-function/NAME; asserts the 202, returns the invocation's request id."""
    result = http("POST", f"{local.url}/async-function/{name}", body=body.encode(),
                  headers={"Content-Type": "text/plain", **(headers or {})}, timeout=30)
    assert result.status == 202, (result.status, result.body)
    request_id = str(result.json()["requestId"])
    assert result.headers["X-Call-Id"] == request_id
    return request_id
