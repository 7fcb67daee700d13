"""One function instance: load the handler, serve invocations, drain on SIGTERM.

Lifecycle (`Runtime.run`, in the main thread):
  1. listen: the HTTP server starts, /_/health answers 200, /_/ready answers 503 ("loading").
  2. load: the code directory goes on sys.path and the handler is imported, once. If that fails the
     traceback goes to stderr and the process exits with EXIT_LOAD_FAILED: it never reports ready.
  3. ready: /_/ready answers 200 and, if KFN_READY_FD is set, "ready <port>\\n" is written to it.
  4. drain, on SIGTERM or SIGINT: /_/ready and new invocations answer 503 with Connection: close,
     in-flight invocations finish (at most KFN_DRAIN_TIMEOUT), then the process exits 0.
     A handler still running `stuck_grace` seconds after its timeout also starts a drain, and the
     process then exits EXIT_STUCK: its thread cannot be stopped, so the instance must be replaced.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import traceback
import uuid

from kfn_runtime import contract
from kfn_runtime.config import Config
from kfn_runtime.events import LambdaContext, build_event
from kfn_runtime.handlers import HandlerLoadError, load_handler, prepare_path
from kfn_runtime.invoker import OK, TIMEOUT, Invoker
from kfn_runtime.logs import EventLog, configure_handler_logging
from kfn_runtime.metrics import Metrics, MetricsUnavailable
from kfn_runtime.responses import JSON, HttpResponse, error_response, map_result
from kfn_runtime.server import RuntimeServer

TYPE_CHECKING = False  # importing typing costs milliseconds on every cold start
if TYPE_CHECKING:
    from typing import TextIO

LOADING = "loading"
READY = "ready"
DRAINING = "draining"

_REJECTIONS = frozenset({contract.ERROR_UNAVAILABLE, contract.ERROR_TOO_MANY_REQUESTS})


class Runtime:
    def __init__(self, config: Config, *, stdout: TextIO | None = None, stderr: TextIO | None = None,
                 started: float | None = None) -> None:
        self.config = config
        self._stdout = stdout if stdout is not None else sys.stdout
        self._stderr = stderr if stderr is not None else sys.stderr
        self.log = EventLog(function_name=config.function_name, stream=self._stdout)
        self._state = LOADING
        self._cond = threading.Condition()
        self._active = 0  # accepted invocation requests whose response is not written yet
        self._exit_code = contract.EXIT_OK
        # Wakes the main thread: written by stop() from any thread and by the signal handler.
        # A pipe, not a threading.Event: a signal handler runs inside whatever the main thread was
        # doing, and Event.set() would take the lock Event.wait() may be holding (a deadlock).
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._signalled: int | None = None
        self._invoker: Invoker | None = None
        self._server: RuntimeServer | None = None
        self._started = time.monotonic() if started is None else started  # for the startupMs of the ready line
        self._region = config.namespace or "local"
        self._log_stream = f"{time.strftime('%Y/%m/%d', time.gmtime())}/[{config.function_version}]{uuid.uuid4().hex}"
        self.metrics = Metrics(concurrency=config.concurrency, in_flight=self._in_flight)

    # --- lifecycle -------------------------------------------------------------------------

    @property
    def state(self) -> str:
        return self._state

    @property
    def closing(self) -> bool:
        return self._state == DRAINING

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.port

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT (or a stuck handler); returns the process exit code.

        Runs for the life of the process, in the main thread (signal handlers need it).
        """
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        # The kernel may deliver a signal to any thread; the Python-level handler only runs once
        # the main thread executes bytecode. The wakeup fd gets a byte whichever thread caught it,
        # so the main thread's read below returns and the handler runs.
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        try:
            self.listen()
        except OSError as e:
            self._stderr.write(f"kfn-runtime: cannot listen on {self.config.host}:{self.config.port}: {e}\n")
            return contract.EXIT_LOAD_FAILED
        try:
            self.load()
        except HandlerLoadError as e:
            self._stderr.write(f"kfn-runtime: cannot load handler {self.config.handler!r}: {e}\n")
            self._stderr.write("".join(traceback.format_exception(e)))
            self._stderr.flush()
            return contract.EXIT_LOAD_FAILED
        self.announce()
        while self._state != DRAINING:
            os.read(self._wake_r, 64)  # retried after a signal handler returns (PEP 475)
            if self._signalled is not None:
                self.log.event("stopping", signal=signal.Signals(self._signalled).name)
                self.stop(contract.EXIT_OK)
        return self.drain()

    def listen(self) -> None:
        """Bind and start serving in a daemon thread; probes answer from now on."""
        self._server = RuntimeServer(self.config.host, self.config.port, self)
        thread = threading.Thread(target=self._server.serve_forever, name="kfn-http", daemon=True)
        thread.start()

    def load(self) -> None:
        """Import the handler (runs its module's top-level code); HandlerLoadError on any failure."""
        configure_handler_logging(self._stdout)
        code_dir = self.config.code_dir
        if not os.path.isdir(code_dir):
            raise HandlerLoadError(f"the code directory {code_dir!r} does not exist")
        prepare_path(code_dir, self.config.deps_dir)
        os.chdir(code_dir)  # like Lambda's /var/task: handlers may open files by relative path
        handler = load_handler(self.config.handler)
        invoker = Invoker(handler, concurrency=self.config.concurrency, stuck_grace=self.config.stuck_grace,
                          on_stuck=self._on_stuck)
        invoker.start()
        with self._cond:
            self._invoker = invoker
            if self._state == LOADING:
                self._state = READY

    def announce(self) -> None:
        """Tell the supervisor: a line on stdout and, with KFN_READY_FD, "ready <port>" on that pipe."""
        fd = self.config.ready_fd
        if fd is not None:
            try:
                os.write(fd, f"ready {self.port}\n".encode())
                os.close(fd)
            except OSError as e:
                self._stderr.write(f"kfn-runtime: cannot report readiness on fd {fd}: {e}\n")
        self.log.event("ready", port=self.port, handler=self.config.handler,
                       startupMs=round((time.monotonic() - self._started) * 1000, 1))

    def stop(self, exit_code: int = contract.EXIT_OK) -> None:
        """Start draining; run() then waits for in-flight invocations and returns `exit_code`."""
        with self._cond:
            if self._state == DRAINING:
                self._exit_code = max(self._exit_code, exit_code)
                return
            self._state = DRAINING
            self._exit_code = exit_code
        self._wake()

    def drain(self) -> int:
        """Wait (at most the drain timeout) for accepted invocations to be answered; the exit code."""
        self.log.event("draining", inFlight=self._active, drainTimeoutS=self.config.drain_timeout)
        with self._cond:
            idle = self._cond.wait_for(lambda: self._active == 0, timeout=self.config.drain_timeout)
            left = self._active
        code = self._exit_code
        if not idle:
            code = code or contract.EXIT_DRAIN_TIMEOUT
            self.log.event("drain timed out", level="error", inFlight=left)
        if self._invoker is not None:
            self._invoker.close()
        self.log.event("stopped", exitCode=code)
        return code

    def _on_signal(self, signum: int, frame: object) -> None:
        # Runs in the main thread between two bytecodes of whatever it was doing, possibly while
        # it holds a lock or is writing a log line: so no locks and no buffered I/O here, only a
        # flag, raw writes and _exit.
        if self._state == LOADING:
            # Nothing was ever served; the handler's import may take long, so do not wait for it.
            _raw_log(f"kfn-runtime: {signal.Signals(signum).name} while loading; exiting\n")
            os._exit(contract.EXIT_OK)
        if self._state == DRAINING:
            _raw_log(f"kfn-runtime: {signal.Signals(signum).name} while draining; forced stop\n")
            os._exit(contract.EXIT_DRAIN_TIMEOUT if self._active else self._exit_code)
        self._signalled = signum
        self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"!")
        except BlockingIOError:
            pass  # the pipe already holds unread wake-ups: the main thread will wake anyway

    def _on_stuck(self, request_id: str, overrun: float) -> None:
        self.log.event("handler stuck after timeout; draining to restart", level="error",
                       requestId=request_id, overrunS=round(overrun, 3))
        self.stop(contract.EXIT_STUCK)

    # --- requests --------------------------------------------------------------------------

    def probe(self, route: str, method: str) -> HttpResponse:
        if method not in ("GET", "HEAD"):
            response = error_response(405, "MethodNotAllowed", f"{route} answers GET and HEAD only")
            response.headers.append(("Allow", "GET, HEAD"))
            return response
        if route == contract.PATH_HEALTH:
            return _json(200, {"status": "ok"})
        if route == contract.PATH_READY:
            return _json(200 if self._state == READY else 503, {"status": self._state})
        try:
            body, content_type = self.metrics.render()
        except MetricsUnavailable as e:
            return error_response(501, "NotImplemented", str(e))
        return HttpResponse(200, [("Content-Type", content_type)], body)

    def refusal(self) -> HttpResponse | None:
        """The 503 for an invocation arriving while loading or draining; None when ready."""
        state = self._state
        if state == READY:
            return None
        message = "the function is still loading" if state == LOADING else "the instance is shutting down"
        response = error_response(503, contract.ERROR_UNAVAILABLE, message)
        reason = contract.REJECTED_LOADING if state == LOADING else contract.REJECTED_DRAINING
        response.headers.append((contract.HEADER_REJECTED, reason))
        return response

    def begin(self) -> HttpResponse | None:
        """Admit one invocation (None) or say why not (503 draining, 429 over the concurrency limit)."""
        with self._cond:
            refusal = self.refusal()
            if refusal is not None:
                return refusal
            assert self._invoker is not None
            if not self._invoker.try_acquire():
                response = error_response(
                    429, contract.ERROR_TOO_MANY_REQUESTS,
                    f"all {self.config.concurrency} concurrency slots of this instance are busy")
                response.headers.append((contract.HEADER_REJECTED, contract.REJECTED_CONCURRENCY))
                return response
            self._active += 1
            return None

    def end(self) -> None:
        """The response of an admitted invocation has been written."""
        with self._cond:
            self._active -= 1
            if self._active == 0:
                self._cond.notify_all()

    def invoke(self, *, method: str, target: str, headers: list[tuple[str, str]], body: bytes, peer: str,
               request_id: str, protocol: str) -> HttpResponse:
        """Run the handler for an admitted request; blocks at most the function's timeout."""
        assert self._invoker is not None
        timeout = self.config.timeout
        deadline = time.monotonic() + timeout
        event = build_event(method=method, target=target, headers=headers, body=body, peer=peer,
                            request_id=request_id, protocol=protocol)
        context = LambdaContext(
            function_name=self.config.function_name, function_version=self.config.function_version,
            memory_limit_in_mb=self.config.memory_mb, aws_request_id=request_id, deadline=deadline,
            region=self._region, log_stream_name=self._log_stream)
        outcome = self._invoker.invoke(event, context, request_id=request_id, deadline=deadline)
        if outcome.kind == OK:
            response = map_result(outcome.value)
            if response.error_type is not None:
                self.metrics.failed()
                self._log_error(request_id, f"{response.error_type}: {json.loads(response.body)['errorMessage']}")
            return response
        if outcome.kind == TIMEOUT:
            self.metrics.timed_out()
            message = f"Task timed out after {timeout:.2f} seconds"
            self._log_error(request_id, message)
            return error_response(504, contract.ERROR_TIMEOUT, message)
        error = outcome.error
        assert error is not None
        self.metrics.failed()
        self._log_error(request_id, f"{type(error).__name__}: {error}",
                        "".join(traceback.format_exception(error)))
        return error_response(500, type(error).__name__, str(error))

    def record(self, *, request_id: str, method: str, path: str, status: int, duration: float,
               error_type: str | None) -> None:
        self.metrics.observe(status, duration)
        # "error" when the invocation failed (the handler raised, timed out, returned garbage); a
        # status the handler chose itself is its business, and a rejection is retried elsewhere.
        if error_type is None:
            level = "info"
        elif error_type in _REJECTIONS or status < 500:
            level = "warning"
        else:
            level = "error"
        self.log.invocation(request_id=request_id, method=method, path=path, status=status, duration=duration,
                            error_type=error_type, level=level)

    def log_exception(self, message: str) -> None:
        self._stderr.write(f"kfn-runtime: {message}\n{traceback.format_exc()}")

    def _log_error(self, request_id: str, message: str, details: str = "") -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        try:
            self._stderr.write(f"[ERROR]\t{stamp}\t{request_id}\t{message}\n{details}")
            self._stderr.flush()
        except (OSError, ValueError):
            pass

    def _in_flight(self) -> int:
        invoker = self._invoker
        return invoker.in_flight if invoker is not None else 0


def _json(status: int, value: object) -> HttpResponse:
    return HttpResponse(status, [("Content-Type", JSON)], json.dumps(value).encode())


def _raw_log(line: str) -> None:
    try:
        os.write(2, line.encode())
    except OSError:
        pass


def exit_process(code: int) -> None:
    """End the process now, after flushing the logs.

    os._exit, not sys.exit: a handler thread that never returns must not keep the process alive,
    and the interpreter's shutdown would wait for it.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
