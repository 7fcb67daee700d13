"""How execution environments start: forked from a zygote, or one command each.

`ZygoteSpawner` is kfn's Python runtime. One process (`python -m kfn_runtime.zygote`) imports the
function once; every environment is a fork of it, so adding one costs a fork (milliseconds), not
an interpreter start and an import. The zygote reports its init error, forks on request (the host
hands it the environment's output pipe and its end of kfn's channel), and reports each
environment's exit.

`CommandSpawner` starts a command per environment: a runtime interface client (kfn's Node.js
client, AWS's awslambdaric or aws-lambda-ric, a custom runtime's bootstrap). Each pays its own
cold start; an init error reaches the host through the Runtime API, as on Lambda.

`ExternalSpawner` runs environments in another container of the pod: a Lambda container image
(spec.image), whose entrypoint runs unchanged under `contract.LAUNCHER`. The two talk through
FIFOs in a shared directory; the pod shares one process namespace, so the host kills by PID.

Environments run in process groups of their own, so what a handler starts dies with it. A
platform may also give the spawners a hook that confines what they start (kfn local puts an
instance's processes into its cgroup that way): `preexec`, run in each process a command spawner
starts, before exec; `adopt(pid)`, run (in a thread) on the zygote once it is started and before it
loads the function, which waits for the host's `go` (a zygote started without `preexec` starts
faster: no Python in the forked child, so no copy of this process's page tables).
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import socket
import sys

from kfn_runtime import awslambda
from kfn_runtime.execution import Environment, InitFailed
from kfn_runtime.variables import log_stream_name

TYPE_CHECKING = False  # importing typing costs milliseconds on every cold start
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from kfn_runtime.host import InstanceHost

ENV_CONTROL_FD = "KFN_CONTROL_FD"
STOP_GRACE = 3.0


class _OutputPipe(asyncio.Protocol):
    def __init__(self, host: InstanceHost, env: Environment) -> None:
        self._host = host
        self._env = env

    def data_received(self, data: bytes) -> None:
        self._host.output(self._env, data)


async def _read_output(host: InstanceHost, env: Environment, fd: int) -> asyncio.BaseTransport:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_read_pipe(lambda: _OutputPipe(host, env), os.fdopen(fd, "rb", buffering=0))
    return transport


class ZygoteSpawner:
    """Forks environments from one process that has initialised the function."""

    def __init__(self, *, python: str = sys.executable, env: dict[str, str], cwd: str,
                 python_flags: Sequence[str] = ("-S",), adopt: Callable[[int], None] | None = None) -> None:
        self._python = python
        self._env = env
        self._cwd = cwd
        self._flags = tuple(python_flags)
        self._adopt = adopt
        self._process: asyncio.subprocess.Process | None = None
        self._control: socket.socket | None = None
        self._buffer = b""
        self._pending: dict[str, asyncio.Future[int]] = {}
        self._envs: dict[int, Environment] = {}
        self._host: InstanceHost | None = None
        self._ready: asyncio.Future[str] | None = None
        self._output: asyncio.BaseTransport | None = None
        self._watch: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def start(self, host: InstanceHost) -> None:
        self._host = host
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ours.setblocking(False)
        self._control = ours
        read_fd, write_fd = os.pipe()
        env = dict(self._env, **{ENV_CONTROL_FD: str(theirs.fileno())})
        try:
            self._process = await asyncio.create_subprocess_exec(
                self._python, *self._flags, "-m", "kfn_runtime.zygote", env=env, cwd=self._cwd,
                stdin=asyncio.subprocess.DEVNULL, stdout=write_fd, stderr=write_fd,
                pass_fds=(theirs.fileno(),), start_new_session=True)
        except OSError as e:
            os.close(read_fd)
            if not os.path.isdir(self._cwd):  # noqa: ASYNC240 - a failure path, once
                raise InitFailed(f"the code directory {self._cwd} does not exist", platform=True) from None
            raise InitFailed(f"cannot run {self._python}: {e.strerror or e}", platform=True) from None
        finally:
            theirs.close()
            os.close(write_fd)
        init = Environment("init")
        self._output = await _read_output(host, init, read_fd)
        self._ready = loop.create_future()
        loop.add_reader(ours.fileno(), self._readable)
        self._watch = loop.create_task(self._wait_zygote(), name="kfn-zygote")
        if self._adopt is not None:
            await asyncio.to_thread(self._adopt, self._process.pid)
        with contextlib.suppress(OSError):   # a zygote already gone says so through its exit
            await loop.sock_sendall(ours, b"go\n")   # it may load the function now
        word = await self._ready
        if word != "ready":
            raise InitFailed(*_init_error(word))

    async def _wait_zygote(self) -> None:
        assert self._process is not None
        code = await self._process.wait()
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(f"exit {code}")
        elif self._host is not None and self._host.state != "closed":
            self._host.on_failure(f"its zygote exited with code {code}")
        for future in self._pending.values():
            if not future.done():
                future.set_exception(OSError(f"the zygote exited with code {code}"))
        # Its environments are orphans now (they keep their pipes); the host's kills still reach them.

    def _readable(self) -> None:
        assert self._control is not None
        try:
            data = self._control.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(self._control.fileno())
            return
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            self._message(line.decode())

    def _message(self, line: str) -> None:
        word, _, rest = line.partition(" ")
        if word in ("ready", "init-error") and self._ready is not None and not self._ready.done():
            self._ready.set_result(line)
        elif word == "forked":
            env_id, _, pid = rest.partition(" ")
            future = self._pending.pop(env_id, None)
            if future is not None and not future.done():
                future.set_result(int(pid))
        elif word == "exited":
            pid_text, _, code = rest.partition(" ")
            env = self._envs.pop(int(pid_text), None)
            if env is not None and self._host is not None:
                self._host.env_exited(env, int(code))

    async def spawn(self, host: InstanceHost, env: Environment) -> None:
        if self._control is None or self._process is None or self._process.returncode is not None:
            raise OSError("the zygote is not running")
        read_fd, write_fd = os.pipe()
        loop = asyncio.get_running_loop()
        # kfn's own client talks to the host over its own channel (`kfn_runtime.frames`) on a Unix
        # socket handed over at fork: cheaper per message than HTTP on loopback TCP (the TCP
        # Runtime API listener stays, for anything else in the environment).
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        await loop.connect_accepted_socket(lambda: host.channel(env), ours)
        future: asyncio.Future[int] = loop.create_future()
        self._pending[env.id] = future
        try:
            message = json.dumps({"fork": env.id, "api": f"127.0.0.1:{env.port}",
                                  "stream": log_stream_name(host.config.version)}).encode() + b"\n"
            socket.send_fds(self._control, [message], [write_fd, theirs.fileno()])
        except OSError:
            os.close(read_fd)
            self._pending.pop(env.id, None)
            raise
        finally:
            os.close(write_fd)
            theirs.close()
        env.process = await _read_output(host, env, read_fd)
        async with asyncio.timeout(10):
            env.pid = await future
        self._envs[env.pid] = env

    def kill(self, env: Environment) -> None:
        if env.pid is not None:
            kill_group(env.pid)

    async def close(self) -> None:
        process = self._process
        if self._control is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self._control.fileno())
            self._control.close()
            self._control = None
        for pid in list(self._envs):
            kill_group(pid)
        if process is not None and process.returncode is None:
            kill_group(process.pid, signal.SIGTERM)
            try:
                async with asyncio.timeout(STOP_GRACE):
                    await process.wait()
            except TimeoutError:
                kill_group(process.pid)
                await process.wait()
        if process is not None:
            kill_group(process.pid)   # anything left in its group
        if self._watch is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        if self._output is not None:
            self._output.close()


def _init_error(word: str) -> tuple[str, bytes | None]:
    """The zygote's last word as (message, Lambda's error object): its init error, or the runtime
    exiting before it was ready (`Runtime.ExitError`, as Lambda reports a runtime that exits)."""
    if word.startswith("init-error "):
        payload = word[len("init-error "):].encode()
        try:
            return str(json.loads(payload).get("errorMessage") or "init failed"), payload
        except ValueError:
            return payload.decode(errors="replace"), None
    status = word.removeprefix("exit ")
    exited = awslambda.error_payload(awslambda.ERROR_EXIT, f"Runtime exited with error: exit status {status}")
    return f"the runtime stopped before it was ready ({word})", exited


class CommandSpawner:
    """Starts `command` once per environment, with the Runtime API's address in its environment."""

    def __init__(self, command: Sequence[str], *, env: dict[str, str], cwd: str,
                 preexec: Callable[[], None] | None = None) -> None:
        self._command = list(command)
        self._env = env
        self._cwd = cwd
        self._preexec = preexec
        self._processes: dict[str, asyncio.subprocess.Process] = {}
        self._watches: set[asyncio.Task[None]] = set()

    async def start(self, host: InstanceHost) -> None:
        return None  # init happens in each environment; errors come through the Runtime API

    async def spawn(self, host: InstanceHost, env: Environment) -> None:
        read_fd, write_fd = os.pipe()
        try:
            process = await asyncio.create_subprocess_exec(
                *self._command, env=dict(self._env, AWS_LAMBDA_RUNTIME_API=f"127.0.0.1:{env.port}",
                                         AWS_LAMBDA_LOG_STREAM_NAME=log_stream_name(host.config.version)),
                cwd=self._cwd, stdin=asyncio.subprocess.DEVNULL, stdout=write_fd, stderr=write_fd,
                start_new_session=True, preexec_fn=self._preexec)
        except OSError:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        env.pid = process.pid
        env.process = await _read_output(host, env, read_fd)
        self._processes[env.id] = process
        task = asyncio.get_running_loop().create_task(self._wait(host, env, process))
        self._watches.add(task)
        task.add_done_callback(self._watches.discard)

    async def _wait(self, host: InstanceHost, env: Environment, process: asyncio.subprocess.Process) -> None:
        code = await process.wait()
        kill_group(process.pid)   # what it left behind
        self._processes.pop(env.id, None)
        host.env_exited(env, code)

    def kill(self, env: Environment) -> None:
        if env.pid is not None:
            kill_group(env.pid)

    async def close(self) -> None:
        for process in list(self._processes.values()):
            kill_group(process.pid)
        if self._watches:
            await asyncio.gather(*self._watches, return_exceptions=True)


class ExternalSpawner:
    """Environments started by `contract.LAUNCHER` in another container, through FIFOs in `directory`.

    Slot I is environment I of at most `slots`; the host's environment takes the first free slot.
    """

    def __init__(self, directory: str, *, slots: int, function_version: str = "$LATEST") -> None:
        self._dir = directory
        self._slots: list[Environment | None] = [None] * slots
        self._starts: list[int] = []
        self._outputs: list[asyncio.BaseTransport] = []
        self._events: int | None = None
        self._buffer = b""
        self._pending: dict[int, asyncio.Future[int]] = {}
        self._host: InstanceHost | None = None
        self._version = function_version
        self._freed = asyncio.Event()

    async def start(self, host: InstanceHost) -> None:
        """Make the FIFOs (the launcher waits for `events`, made last) and listen to them."""
        self._host = host
        loop = asyncio.get_running_loop()
        os.makedirs(self._dir, exist_ok=True)
        for i in range(len(self._slots)):
            for name in (f"start-{i}", f"out-{i}"):
                path = os.path.join(self._dir, name)
                with contextlib.suppress(FileExistsError):
                    os.mkfifo(path, 0o600)
            # Read-write opens never block and never see an end of file: the host outlives any writer.
            self._starts.append(os.open(os.path.join(self._dir, f"start-{i}"), os.O_RDWR | os.O_NONBLOCK))
            out = os.open(os.path.join(self._dir, f"out-{i}"), os.O_RDWR | os.O_NONBLOCK)
            transport, _ = await loop.connect_read_pipe(functools.partial(_SlotOutput, self, i),
                                                        os.fdopen(out, "rb", 0))
            self._outputs.append(transport)
        events = os.path.join(self._dir, "events")
        with contextlib.suppress(FileExistsError):
            os.mkfifo(events, 0o600)
        self._events = os.open(events, os.O_RDWR | os.O_NONBLOCK)
        loop.add_reader(self._events, self._readable)

    def output(self, slot: int, data: bytes) -> None:
        env = self._slots[slot]
        if env is not None and self._host is not None:
            self._host.output(env, data)

    def _readable(self) -> None:
        assert self._events is not None
        try:
            data = os.read(self._events, 65536)
        except (BlockingIOError, InterruptedError):
            return
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            word, _, rest = line.decode(errors="replace").partition(" ")
            slot_text, _, number = rest.partition(" ")
            try:
                slot, value = int(slot_text), int(number)
            except ValueError:
                continue
            if not 0 <= slot < len(self._slots):
                continue
            if word == "started":
                future = self._pending.pop(slot, None)
                if future is not None and not future.done():
                    future.set_result(value)
            elif word == "exited":
                env = self._slots[slot]
                self._slots[slot] = None
                self._freed.set()
                if env is not None and self._host is not None:
                    self._host.env_exited(env, value)

    async def spawn(self, host: InstanceHost, env: Environment) -> None:
        # A killed environment frees its slot when the launcher reports its exit, a moment later.
        try:
            async with asyncio.timeout(10):
                while None not in self._slots:
                    self._freed.clear()
                    await self._freed.wait()
        except TimeoutError:
            raise OSError("every environment slot of the launcher is taken") from None
        slot = self._slots.index(None)
        self._slots[slot] = env
        env.process = self._outputs[slot]   # the host drains it when an invocation ends
        stream = log_stream_name(self._version)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending[slot] = future
        try:
            os.write(self._starts[slot], f"{env.port} {stream}\n".encode())
            # The launcher answers at once if it runs; a missing one is the pod's problem, not a hang.
            async with asyncio.timeout(30):
                env.pid = await future
        except BaseException:
            self._pending.pop(slot, None)
            if self._slots[slot] is env:
                self._slots[slot] = None
            raise

    def kill(self, env: Environment) -> None:
        if env.pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(env.pid, signal.SIGKILL)

    async def close(self) -> None:
        for env in self._slots:
            if env is not None:
                self.kill(env)
        for fd in self._starts:
            # The launcher's loops end, and with them its container: the pod can stop.
            with contextlib.suppress(OSError):
                os.write(fd, b"stop\n")
        if self._events is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self._events)
            os.close(self._events)
            self._events = None
        for fd in self._starts:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._starts.clear()
        for transport in self._outputs:
            transport.close()
        self._outputs.clear()


class _SlotOutput(asyncio.Protocol):
    def __init__(self, spawner: ExternalSpawner, slot: int) -> None:
        self._spawner = spawner
        self._slot = slot

    def data_received(self, data: bytes) -> None:
        self._spawner.output(self._slot, data)


def kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal a process and its process group (it leads one of its own), ignoring the gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)
