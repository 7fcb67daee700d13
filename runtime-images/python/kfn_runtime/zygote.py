"""`python -m kfn_runtime.zygote`: initialise a Python function once, then fork environments.

Started by the instance host (`kfn_runtime.environments.ZygoteSpawner`) with the function's Lambda
environment and a control socket (KFN_CONTROL_FD). Once the host says `go` (it has confined this
process where the platform does), it imports the handler as Lambda's init phase does (code
directory first on sys.path, then the dependencies; the working directory is the code directory),
then says `ready` — or `init-error {...}` with Lambda's error object, and exits 1.

On `{"fork": ID, "api": HOST:PORT, "stream": NAME}` with a pipe's write end attached, it forks: the
child (its own AWS_LAMBDA_LOG_STREAM_NAME, as every Lambda environment has) becomes
execution environment ID, writing its output to the pipe and polling for invocations over kfn's own
channel, the Unix socket attached too (`kfn_runtime.ric.serve`, `kfn_runtime.frames`; the Runtime
API stays at HOST:PORT, AWS_LAMBDA_RUNTIME_API, for anything else in it); the zygote answers
`forked ID PID`, and `exited PID CODE` when that child ends. It stops with its control socket (its
host is gone) or on SIGTERM.

The zygote never handles an invocation and starts no threads, so every fork starts from the same
state: the module as initialised, before any invocation.
"""
from __future__ import annotations

import gc
import json
import os
import select
import signal
import socket
import sys
import traceback

from kfn_runtime import awslambda, contract, ric
from kfn_runtime.handlers import HandlerLoadError, load_handler, prepare_path
from kfn_runtime.logs import configure_handler_logging

TYPE_CHECKING = False  # importing typing costs milliseconds on every cold start
if TYPE_CHECKING:
    from kfn_runtime.handlers import Handler

ENV_CONTROL_FD = "KFN_CONTROL_FD"
_OWN_FILES = os.path.dirname(os.path.abspath(__file__))


def _send(sock: socket.socket, line: str) -> None:
    sock.sendall(line.encode() + b"\n")


def _init_error(error: HandlerLoadError) -> bytes:
    """Lambda's error object for a handler that cannot be loaded, worded as awslambdaric words it
    (what callers of the Invoke API get), with the stack frames of the function's code only."""
    cause, module = error.__cause__, error.module
    if isinstance(cause, SyntaxError):
        return awslambda.error_payload(awslambda.ERROR_USER_CODE_SYNTAX, f"Syntax error in module '{module}': {cause}",
                                       stack_trace=_user_frames(cause))
    if isinstance(cause, ImportError):
        return awslambda.error_payload(awslambda.ERROR_IMPORT_MODULE, f"Unable to import module '{module}': {cause}",
                                       stack_trace=[])
    if cause is None:
        missing = isinstance(error.__context__, AttributeError)
        message = f"Handler '{error.attribute}' missing on module '{module}'" if missing else str(error)
        return awslambda.error_payload(awslambda.ERROR_HANDLER_NOT_FOUND, message, stack_trace=[])
    # What the module raised at import, as awslambdaric reports it: its type and its own message.
    return awslambda.error_payload(type(cause).__name__, str(cause), stack_trace=_user_frames(cause))


def _user_frames(error: BaseException) -> list[str]:
    """The frames of `error`'s traceback from the first one in the function's code on: the
    runtime's own and importlib's are where the platform is installed, nobody's business."""
    stack = traceback.extract_tb(error.__traceback__)
    while stack and (os.path.dirname(os.path.abspath(stack[0].filename)) == _OWN_FILES
                     or stack[0].filename.startswith("<frozen importlib")
                     or os.path.basename(os.path.dirname(stack[0].filename)) == "importlib"):
        stack.pop(0)
    return traceback.format_list(stack)


def _become_environment(handler: Handler, control: socket.socket, output_fd: int, api_fd: int, api: str,
                        stream: str | None = None) -> None:
    """In the forked child: the output pipe for stdout and stderr, then serve invocations forever
    over kfn's channel `api_fd` (AWS_LAMBDA_RUNTIME_API names the Runtime API's TCP address too)."""
    os.setsid()   # a process group of its own: what the handler starts dies with the environment
    control.close()
    os.dup2(output_fd, 1)
    os.dup2(output_fd, 2)
    os.close(output_fd)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)
    if "random" in sys.modules:   # imported by the function: forks must not share its random sequence
        sys.modules["random"].seed()
    os.environ["AWS_LAMBDA_RUNTIME_API"] = api
    if stream:
        os.environ["AWS_LAMBDA_LOG_STREAM_NAME"] = stream
    ric.serve(handler, channel=socket.socket(fileno=api_fd))


def _reap(control: socket.socket, children: set[int]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        children.discard(pid)
        code = os.waitstatus_to_exitcode(status)
        try:
            _send(control, f"exited {pid} {code}")
        except OSError:
            return


def _wait_for_go(control: socket.socket) -> bool:
    """Block until the host says `go`; False if it went away first."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = control.recv(64)
        if not chunk:
            return False
        data += chunk
    return True


def main() -> int:
    control = socket.socket(fileno=int(os.environ.pop(ENV_CONTROL_FD)))
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]
        except (AttributeError, ValueError):
            pass
    code_dir = os.environ.get("LAMBDA_TASK_ROOT") or contract.DEFAULT_CODE_DIR
    # kfn's own variable: the handler's environment is Lambda's, with nothing of kfn's in it.
    deps_dir = os.environ.pop(contract.ENV_DEPS_DIR, "") or contract.DEFAULT_DEPS_DIR
    configure_handler_logging(sys.stdout, level=_log_level())
    if not _wait_for_go(control):
        return 0   # the host is gone before the function ran
    try:
        prepare_path(code_dir, deps_dir)
        os.chdir(code_dir)
        handler = load_handler(os.environ.get("_HANDLER", ""))
    except HandlerLoadError as e:
        traceback.print_exception(e.__cause__ or e)
        _send(control, "init-error " + _init_error(e).decode())
        return 1
    except OSError as e:
        _send(control, "init-error " + awslambda.error_payload(awslambda.ERROR_INVALID_ENTRYPOINT,
                                                               f"cannot use {code_dir!r}: {e}").decode())
        return 1
    # Objects made so far are never collected in the environments: without this, a collection
    # in each environment would write to (and so copy) every page of the function's memory.
    gc.freeze()
    _send(control, "ready")

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    signal.signal(signal.SIGCHLD, lambda *_: None)   # wakes the loop through the wakeup fd
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    poller = select.poll()
    poller.register(control.fileno(), select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    children: set[int] = set()
    buffer = b""
    while not stopping:
        for fd, _ in poller.poll():
            if fd == wake_r:
                os.read(wake_r, 1024)
                _reap(control, children)
                continue
            try:
                data, fds, _, _ = socket.recv_fds(control, 65536, 16)
            except OSError:
                data, fds = b"", []
            if not data:
                return 0   # the host is gone; its kills take the environments
            buffer += data
            fds = list(fds)
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                request = json.loads(line)
                output_fd, api_fd = fds.pop(0), fds.pop(0)
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    signal.set_wakeup_fd(-1)
                    os.close(wake_r)
                    os.close(wake_w)
                    _become_environment(handler, control, output_fd, api_fd, request["api"], request.get("stream"))
                    os._exit(1)   # not reached: serve() ends the process
                os.close(output_fd)
                os.close(api_fd)
                children.add(pid)
                _send(control, f"forked {request['fork']} {pid}")
    return 0


def _log_level() -> int:
    """As on Lambda: the root logger keeps Python's WARNING unless AWS_LAMBDA_LOG_LEVEL says otherwise."""
    import logging

    level = os.environ.get("AWS_LAMBDA_LOG_LEVEL", "").upper()
    return {"TRACE": logging.DEBUG, "DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARN": logging.WARNING,
            "ERROR": logging.ERROR, "FATAL": logging.CRITICAL}.get(level, logging.WARNING)


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
