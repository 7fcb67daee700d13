"""Function instances for the runtime's end-to-end tests, on 127.0.0.1.

Two ways to run one: an `InstanceHost` in the test's own event loop (`python_host` for kfn's
Python runtime, forked from a zygote; `command_host` for one command per environment), or a
whole pod process, `python -m kfn_runtime` (`RuntimeProcess`). Either way every process the
instance started is stopped by its PID and process group when the test ends, even if the
instance's own cleanup did not get to it.
"""
from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from kfn_runtime import contract
from kfn_runtime.environments import CommandSpawner, ZygoteSpawner
from kfn_runtime.execution import HostConfig, Invocation
from kfn_runtime.host import InstanceHost
from kfn_runtime.variables import lambda_environment
from tests.support.localmode import descendants
from tests.support.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
RUNTIME_DIR = REPO / "runtime-images" / "python"
PYTHON = sys.executable
T = TypeVar("T")


def write_code(directory: Path, files: dict[str, str]) -> Path:
    """A function's code directory holding `files` (dedented); returns it."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return directory


# --- processes ---------------------------------------------------------------------------------

def _start_time(pid: int) -> str | None:
    """The process's start time (from /proc), which tells it from a later process reusing its PID."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    return None if fields[0] == "Z" else fields[19]


def pid_alive(pid: int) -> bool:
    return _start_time(pid) is not None


class Processes:
    """PIDs seen during a test, each with its start time, so they can be killed at the end (by PID
    and process group) without ever hitting a newer process that reuses a PID."""

    def __init__(self) -> None:
        self._seen: dict[int, str] = {}

    def track(self, *roots: int | None) -> None:
        """Remember each root and every live descendant of it."""
        for root in roots:
            if root is None:
                continue
            for pid in (root, *descendants(root)):
                start = _start_time(pid)
                if start is not None:
                    self._seen.setdefault(pid, start)

    def pids(self) -> list[int]:
        return list(self._seen)

    def kill_all(self) -> list[int]:
        """SIGKILL whatever is still alive (and its group); returns those PIDs."""
        killed = []
        for pid, start in self._seen.items():
            if _start_time(pid) != start:
                continue
            killed.append(pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if os.getpgid(pid) == pid:
                    os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        return killed


# --- an InstanceHost in this process -------------------------------------------------------------

class HostLog:
    """The host's log callback: every line every environment printed, with its environment's id."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def __call__(self, env_id: str, line: str) -> None:
        self.lines.append((env_id, line))

    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def has(self, fragment: str) -> bool:
        return any(fragment in line for _, line in self.lines)


class Hosted:
    """An InstanceHost with its spawner and log, as a test drives it."""

    def __init__(self, host: InstanceHost, spawner: ZygoteSpawner | CommandSpawner, log: HostLog,
                 code_dir: Path) -> None:
        self.host = host
        self.spawner = spawner
        self.log = log
        self.code_dir = code_dir
        self.processes = Processes()

    async def invoke(self, event: Any = None, *, payload: bytes | None = None, timeout: float | None = None,
                     **options: Any) -> Invocation:
        """One invocation; bounded, so a hang fails the test instead of stalling it."""
        invocation = Invocation(payload if payload is not None else json.dumps(event).encode(),
                                timeout=timeout if timeout is not None else self.host.config.timeout, **options)
        async with asyncio.timeout(invocation.timeout + self.host.config.init_timeout + 10):
            return await self.host.invoke(invocation)

    async def result(self, event: Any = None, **options: Any) -> Any:
        """The function's result for `event`, which must not be an error."""
        invocation = await self.invoke(event, **options)
        assert invocation.function_error is None, invocation.result
        return json.loads(invocation.result)

    @property
    def zygote_pid(self) -> int | None:
        return self.spawner.pid if isinstance(self.spawner, ZygoteSpawner) else None

    def env_pids(self) -> list[int]:
        return [env.pid for env in self.host.environments if env.pid is not None]

    def track(self) -> None:
        self.processes.track(self.zygote_pid, *self.env_pids())


def host_config(**overrides: Any) -> HostConfig:
    values: dict[str, Any] = {"function_name": "fn", "timeout": 5.0, "concurrency": 1, "memory_mb": 128,
                              "region": "us-east-1"}
    values.update(overrides)
    return HostConfig(**values)


@contextlib.asynccontextmanager
async def _hosting(code_dir: Path, config: HostConfig, spawner: ZygoteSpawner | CommandSpawner, log: HostLog, *,
                   start: bool) -> AsyncIterator[Hosted]:
    host = InstanceHost(config, spawner, log=log)
    hosted = Hosted(host, spawner, log, code_dir)
    # Every environment the host starts is remembered, so none can outlive the test.
    host.on_env_change = hosted.track
    try:
        if start:
            async with asyncio.timeout(30):
                await host.start()
        yield hosted
    finally:
        hosted.track()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(15):
                await host.close()
        hosted.processes.kill_all()


def python_env(config: HostConfig, code_dir: Path, handler: str, user_env: dict[str, str] | None) -> dict[str, str]:
    """What `launch.build_host` gives kfn's Python runtime: Lambda's environment, the runtime importable."""
    env = lambda_environment(config, handler=handler, task_root=str(code_dir), runtime_dir=str(RUNTIME_DIR),
                             execution_env=f"AWS_Lambda_python{sys.version_info[0]}.{sys.version_info[1]}",
                             user_env=user_env)
    env["KFN_DEPS_DIR"] = str(code_dir.parent / "deps")
    env["PYTHONPATH"] = str(RUNTIME_DIR)
    return env


@contextlib.asynccontextmanager
async def python_host(code_dir: Path, handler: str = "main.handler", *, user_env: dict[str, str] | None = None,
                      start: bool = True, **config: Any) -> AsyncIterator[Hosted]:
    """kfn's Python runtime: environments forked from a zygote that imported `handler` from `code_dir`."""
    host_cfg = host_config(**config)
    spawner = ZygoteSpawner(python=PYTHON, env=python_env(host_cfg, code_dir, handler, user_env), cwd=str(code_dir))
    async with _hosting(code_dir, host_cfg, spawner, HostLog(), start=start) as hosted:
        yield hosted


@contextlib.asynccontextmanager
async def command_host(code_dir: Path, command: Sequence[str], *, handler: str = "main.handler",
                       user_env: dict[str, str] | None = None, start: bool = True,
                       **config: Any) -> AsyncIterator[Hosted]:
    """One `command` per environment (a runtime interface client, a custom runtime's bootstrap)."""
    host_cfg = host_config(**config)
    env = lambda_environment(host_cfg, handler=handler, task_root=str(code_dir), runtime_dir=str(RUNTIME_DIR),
                             execution_env="AWS_Lambda_provided.al2023", user_env=user_env)
    spawner = CommandSpawner(command, env=env, cwd=str(code_dir))
    async with _hosting(code_dir, host_cfg, spawner, HostLog(), start=start) as hosted:
        yield hosted


async def gather_bounded(*awaitables: Awaitable[T], timeout: float = 30.0) -> list[T]:
    async with asyncio.timeout(timeout):
        return list(await asyncio.gather(*awaitables))


# --- a pod: python -m kfn_runtime ------------------------------------------------------------------

class RuntimeProcess:
    """One `python -m kfn_runtime` configured by KFN_* variables; `stop()` always ends it and
    everything it started."""

    def __init__(self, workdir: Path, settings: dict[str, str]) -> None:
        self.workdir = workdir
        self.stdout_path = workdir / "stdout.log"
        self.stderr_path = workdir / "stderr.log"
        self.port: int | None = None
        self.processes = Processes()
        env = {k: v for k, v in os.environ.items() if not k.startswith("KFN_")}
        env.update({"PYTHONPATH": str(RUNTIME_DIR), "PYTHONDONTWRITEBYTECODE": "1"})
        env.update(settings)
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.process = subprocess.Popen([PYTHON, "-m", "kfn_runtime"], env=env, cwd=workdir,
                                            stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                            start_new_session=True)
        self.processes.track(self.process.pid)

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, timeout: float = 15.0) -> int:
        """The port from the `{"msg": "ready", "port": ...}` line on stdout."""
        def ready() -> int | None:
            for line in self.log_lines():
                if line.get("msg") == "ready":
                    return int(line["port"])
            if self.process.poll() is not None:
                raise AssertionError(f"the runtime exited with {self.process.returncode}:\n{self.stderr()}")
            return None

        port = wait_until(ready, timeout=timeout, what="the runtime's ready line")
        assert port is not None
        self.port = port
        self.track()
        return port

    def track(self) -> None:
        self.processes.track(self.process.pid)

    def connection(self, timeout: float = 20.0) -> http.client.HTTPConnection:
        assert self.port is not None, "not ready"
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method: str, path: str, *, body: bytes | None = None, headers: dict[str, str] | None = None,
                connection: http.client.HTTPConnection | None = None,
                timeout: float = 20.0) -> tuple[int, dict[str, str], bytes]:
        """(status, headers with lower-case names, body)."""
        conn = connection or self.connection(timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            data = response.read()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, data
        finally:
            if connection is None:
                conn.close()

    def signal(self, signum: int) -> None:
        self.track()
        self.process.send_signal(signum)

    def wait_exit(self, timeout: float = 20.0) -> int:
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.track()
            self.process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)
        self.processes.kill_all()

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for text in self.stdout().splitlines():
            if text.startswith("{"):
                with contextlib.suppress(ValueError):
                    lines.append(json.loads(text))
        return lines


def launch(workdir: Path, *, source: str, handler: str = "main.handler", wait: bool = True,
           **settings: Any) -> RuntimeProcess:
    """A runtime serving `source` as main.py from a fresh code directory; settings are KFN_<NAME>.

    wait: return once it is ready (up to 15 s; an AssertionError if it exited first)."""
    code = write_code(workdir / "code", {"main.py": source})
    env = {contract.ENV_HANDLER: handler, contract.ENV_CODE_DIR: str(code), contract.ENV_HOST: "127.0.0.1",
           contract.ENV_PORT: "0", contract.ENV_FUNCTION_NAME: "demo", contract.ENV_TIMEOUT: "10",
           contract.ENV_DEPS_DIR: str(workdir / "deps")}
    env.update({f"KFN_{k.upper()}": str(v) for k, v in settings.items()})
    runtime = RuntimeProcess(workdir, env)
    if wait:
        runtime.wait_ready()
    return runtime


def invoke(runtime: RuntimeProcess, event: Any, *, headers: dict[str, str] | None = None,
           **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
    """POST `event` as JSON to the runtime's invoke endpoint: (status, headers, body), as `RuntimeProcess.request`."""
    return runtime.request("POST", contract.PATH_INVOKE, body=json.dumps(event).encode(),
                           headers={"Content-Type": "application/json", **(headers or {})}, **kwargs)
