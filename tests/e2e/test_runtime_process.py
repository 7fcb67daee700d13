"""The runtime as a real process (`python -m kfn_runtime`) spoken to over HTTP on 127.0.0.1."""
from __future__ import annotations

import ctypes
import http.client
import json
import os
import platform
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kfn_runtime import contract

pytestmark = [pytest.mark.timeout(60)]

RUNTIME_DIR = Path(__file__).resolve().parents[2] / "runtime-images" / "python"
STARTUP_TIMEOUT = 15.0

# One module with a handler per behaviour; tests pick one with KFN_HANDLER. Coordination with the
# test goes through files, never through sleeps: "block" waits until the test creates `release`.
APP = '''
import asyncio, json, logging, os, time
from pathlib import Path

HERE = Path(__file__).parent
log = logging.getLogger("app")

def wait_for(name, seconds=30.0):
    deadline = time.monotonic() + seconds
    while not (HERE / name).exists() and time.monotonic() < deadline:
        time.sleep(0.01)

def echo(event, context):
    log.info("echoing %s", event["rawPath"])
    print("print from the handler")
    return {"statusCode": 200, "headers": {"content-type": "application/json"},
            "body": json.dumps({"event": event, "requestId": context.aws_request_id,
                                "functionName": context.function_name,
                                "remainingMs": context.get_remaining_time_in_millis()})}

async def async_echo(event, context):
    await asyncio.sleep(0.001)
    return {"async": True, "path": event["rawPath"], "remainingMs": context.get_remaining_time_in_millis()}

def routes(event, context):
    path = event["rawPath"]
    if path == "/fail":
        raise ValueError("bad input: " + event.get("rawQueryString", ""))
    if path == "/slow":
        time.sleep(float(event["queryStringParameters"]["s"]))
        return "slept"
    if path == "/block":
        (HERE / ("started-" + event["queryStringParameters"]["n"])).write_text("")
        wait_for("release")
        return {"statusCode": 200, "body": "released"}
    if path == "/cookies":
        return {"statusCode": 302, "headers": {"Location": "/next"}, "cookies": ["a=1; Path=/", "b=2"]}
    if path == "/binary":
        return {"statusCode": 200, "headers": {"content-type": "application/octet-stream"},
                "isBase64Encoded": True, "body": event["body"] if event["isBase64Encoded"] else ""}
    if path == "/unserialisable":
        return {"when": object()}
    return {"path": path}

async def async_slow(event, context):
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        (HERE / "cancelled").write_text("")
        raise
'''

# The hello-world blueprint the AWS Lambda console creates for Python, unchanged.
AWS_BLUEPRINT = '''import json

def lambda_handler(event, context):
    # TODO implement
    return {
        'statusCode': 200,
        'body': json.dumps('Hello from Lambda!')
    }
'''


class RuntimeProcess:
    """One `python -m kfn_runtime` process; always stopped (by PID) in the fixture's finally."""

    def __init__(self, workdir: Path, env: dict[str, str], *, ready_fd: bool) -> None:
        self.workdir = workdir
        self.stdout_path = workdir / "stdout.log"
        self.stderr_path = workdir / "stderr.log"
        self.port: int | None = int(env[contract.ENV_PORT]) if env.get(contract.ENV_PORT, "0") != "0" else None
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("KFN_")}
        full_env.update({"PYTHONPATH": str(RUNTIME_DIR), "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"})
        full_env.update(env)
        self._ready_read: int | None = None
        pass_fds: tuple[int, ...] = ()
        if ready_fd:
            self._ready_read, write_end = os.pipe()
            full_env[contract.ENV_READY_FD] = str(write_end)
            pass_fds = (write_end,)
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen([sys.executable, "-m", "kfn_runtime"], env=full_env, cwd=workdir,
                                            stdout=out, stderr=err, pass_fds=pass_fds)
        if ready_fd:
            os.close(write_end)

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready_fd(self, timeout: float = STARTUP_TIMEOUT) -> int | None:
        """The port from "ready <port>", or None when the pipe closed without it (the process failed)."""
        assert self._ready_read is not None
        data = b""
        deadline = time.monotonic() + timeout
        try:
            while b"\n" not in data and time.monotonic() < deadline:
                readable, _, _ = select.select([self._ready_read], [], [], max(0.0, deadline - time.monotonic()))
                if not readable:
                    break
                chunk = os.read(self._ready_read, 64)
                if not chunk:
                    break
                data += chunk
        finally:
            os.close(self._ready_read)
            self._ready_read = None
        if not data.startswith(b"ready "):
            return None
        self.port = int(data.split()[1])
        return self.port

    def request(self, method: str, path: str, *, body: bytes | None = None, headers: dict[str, str] | None = None,
                connection: http.client.HTTPConnection | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = connection or http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            data = response.read()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, data
        finally:
            if connection is None:
                conn.close()

    def get_json(self, path: str) -> tuple[int, object]:
        status, _, body = self.request("GET", path)
        return status, json.loads(body)

    def signal(self, signum: int) -> None:
        os.kill(self.process.pid, signum)

    def wait_exit(self, timeout: float = 20.0) -> int:
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        if self._ready_read is not None:
            os.close(self._ready_read)
            self._ready_read = None

    def stdout(self) -> str:
        return self.stdout_path.read_text()

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def log_lines(self) -> list[dict]:
        return [json.loads(line) for line in self.stdout().splitlines() if line.startswith("{")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition: Callable[[], bool], *, seconds: float = 10.0, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., RuntimeProcess]]:
    """Start a runtime on 127.0.0.1 serving `source` as main.py (or `files`) from a fresh code dir."""
    started: list[RuntimeProcess] = []

    def start_(handler: str = "main.routes", *, source: str = APP, files: dict[str, str] | None = None,
               ready_fd: bool = True, wait: bool = True, **env: object) -> RuntimeProcess:
        code = tmp_path / f"code{len(started)}"
        code.mkdir()
        for name, text in (files or {"main.py": source}).items():
            (code / name).write_text(text)
        settings = {contract.ENV_HANDLER: handler, contract.ENV_CODE_DIR: str(code), contract.ENV_HOST: "127.0.0.1",
                    contract.ENV_PORT: "0", contract.ENV_FUNCTION_NAME: "demo", contract.ENV_TIMEOUT: "10",
                    contract.ENV_DEPS_DIR: str(tmp_path / "deps")}
        settings.update({f"KFN_{k.upper()}": str(v) for k, v in env.items()})
        runtime = RuntimeProcess(code, settings, ready_fd=ready_fd)
        started.append(runtime)
        if ready_fd and wait:
            port = runtime.wait_ready_fd()
            assert port, f"the runtime did not become ready:\n{runtime.stderr()}"
        return runtime

    try:
        yield start_
    finally:
        for runtime in started:
            runtime.stop()


def in_thread(function: Callable[[], object]) -> tuple[threading.Thread, list]:
    result: list = []
    thread = threading.Thread(target=lambda: result.append(function()), daemon=True)
    thread.start()
    return thread, result


# --- invocations -----------------------------------------------------------------------------

def test_sync_handler_gets_the_event_and_context(start: Callable[..., RuntimeProcess]) -> None:
    rt = start("main.echo")
    status, headers, body = rt.request("POST", "/orders/7?tag=a&tag=b", body=b'{"qty": 2}',
                                       headers={"Content-Type": "application/json", "Cookie": "s=1; t=2",
                                                "X-Forwarded-For": "203.0.113.5"})
    assert status == 200
    data = json.loads(body)
    event = data["event"]
    assert event["rawPath"] == "/orders/7"
    assert event["queryStringParameters"] == {"tag": "a,b"}
    assert event["cookies"] == ["s=1", "t=2"]
    assert event["body"] == '{"qty": 2}'
    assert event["requestContext"]["http"]["method"] == "POST"
    assert event["requestContext"]["http"]["sourceIp"] == "203.0.113.5"
    assert data["functionName"] == "demo"
    assert 0 < data["remainingMs"] <= 10_000
    assert headers[contract.HEADER_REQUEST_ID.lower()] == data["requestId"]


def test_async_handler_runs_on_the_event_loop(start: Callable[..., RuntimeProcess]) -> None:
    rt = start("main.async_echo")
    status, headers, body = rt.request("GET", "/hello")
    data = json.loads(body)
    assert (status, headers["content-type"]) == (200, "application/json")
    assert (data["async"], data["path"]) == (True, "/hello")
    assert data["remainingMs"] > 0


def test_aws_hello_world_blueprint_runs_unchanged(start: Callable[..., RuntimeProcess]) -> None:
    rt = start("lambda_function.lambda_handler", files={"lambda_function.py": AWS_BLUEPRINT})
    status, headers, body = rt.request("GET", "/")
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == "Hello from Lambda!"


def test_returned_value_without_status_code_is_json(start: Callable[..., RuntimeProcess]) -> None:
    rt = start()
    status, headers, body = rt.request("GET", "/anything")
    assert (status, headers["content-type"], json.loads(body)) == (200, "application/json", {"path": "/anything"})


def test_cookies_and_headers_of_the_response(start: Callable[..., RuntimeProcess]) -> None:
    rt = start()
    conn = http.client.HTTPConnection("127.0.0.1", rt.port, timeout=10)
    try:
        conn.request("GET", "/cookies")
        response = conn.getresponse()
        response.read()
        assert response.status == 302
        assert response.getheader("Location") == "/next"
        assert response.msg.get_all("Set-Cookie") == ["a=1; Path=/", "b=2"]
    finally:
        conn.close()


def test_binary_bodies_round_trip_through_base64(start: Callable[..., RuntimeProcess]) -> None:
    rt = start()
    payload = bytes(range(256)) * 4
    status, headers, body = rt.request("POST", "/binary", body=payload,
                                       headers={"Content-Type": "application/octet-stream"})
    assert (status, body) == (200, payload)


def test_chunked_request_body_is_read(start: Callable[..., RuntimeProcess]) -> None:
    rt = start("main.echo")
    conn = http.client.HTTPConnection("127.0.0.1", rt.port, timeout=10)
    try:
        conn.request("POST", "/c", body=iter([b"hello ", b"chunked ", b"world"]),
                     headers={"Content-Type": "text/plain"}, encode_chunked=True)
        response = conn.getresponse()
        data = json.loads(response.read())
    finally:
        conn.close()
    assert response.status == 200
    assert data["event"]["body"] == "hello chunked world"


def test_keep_alive_connection_serves_many_requests(start: Callable[..., RuntimeProcess]) -> None:
    rt = start()
    conn = http.client.HTTPConnection("127.0.0.1", rt.port, timeout=10)
    try:
        for i in range(20):
            status, headers, body = rt.request("GET", f"/n{i}", connection=conn)
            assert status == 200
            assert "connection" not in headers
    finally:
        conn.close()


def test_handler_exception_is_a_500_and_the_next_request_succeeds(start: Callable[..., RuntimeProcess]) -> None:
    rt = start()
    status, _, body = rt.request("GET", "/fail?id=42")
    assert status == 500
    assert json.loads(body) == {"errorType": "ValueError", "errorMessage": "bad input: id=42"}
    assert rt.request("GET", "/ok")[0] == 200
    assert "Traceback" in rt.stderr()
    assert 'raise ValueError("bad input: "' in rt.stderr()


def test_unserialisable_return_value_is_a_500(start: Callable[..., RuntimeProcess]) -> None:
    rt = start()
    status, _, body = rt.request("GET", "/unserialisable")
    assert status == 500
    assert json.loads(body)["errorType"] == contract.ERROR_MARSHAL


def test_timeout_is_a_504_and_the_instance_keeps_serving(start: Callable[..., RuntimeProcess]) -> None:
    rt = start(timeout="0.3", stuck_grace="60")
    status, _, body = rt.request("GET", "/slow?s=1.5")
    assert status == 504
    assert json.loads(body) == {"errorType": contract.ERROR_TIMEOUT,
                                "errorMessage": "Task timed out after 0.30 seconds"}
    assert rt.request("GET", "/after")[0] == 200
    assert "Task timed out" in rt.stderr()


def test_async_handler_is_cancelled_on_timeout(start: Callable[..., RuntimeProcess]) -> None:
    rt = start("main.async_slow", timeout="0.2")
    assert rt.request("GET", "/")[0] == 504
    assert wait_until(lambda: (rt.workdir / "cancelled").exists())


def test_requests_over_the_concurrency_limit_get_429(start: Callable[..., RuntimeProcess]) -> None:
    rt = start(concurrency="1")
    thread, result = in_thread(lambda: rt.request("GET", "/block?n=1"))
    assert wait_until(lambda: (rt.workdir / "started-1").exists())
    status, headers, body = rt.request("GET", "/block?n=2")
    assert status == 429
    assert json.loads(body)["errorType"] == contract.ERROR_TOO_MANY_REQUESTS
    assert headers[contract.HEADER_REJECTED.lower()] == contract.REJECTED_CONCURRENCY
    assert not (rt.workdir / "started-2").exists()
    (rt.workdir / "release").write_text("")
    thread.join(20)
    assert result[0][0] == 200


def test_stuck_handler_makes_the_instance_drain_and_exit_non_zero(start: Callable[..., RuntimeProcess]) -> None:
    rt = start(timeout="0.2", stuck_grace="0.3")
    assert rt.request("GET", "/block?n=1")[0] == 504
    assert rt.wait_exit() == contract.EXIT_STUCK
    assert any(line["msg"].startswith("handler stuck") for line in rt.log_lines())


# --- startup ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("source", "handler", "expected"), [
    ("def handler(event, context)\n    return 1\n", "main.handler", "SyntaxError"),
    ("import kfn_no_such_library\n", "main.handler", "No module named 'kfn_no_such_library'"),
    ("raise RuntimeError('boom at import')\n", "main.handler", "RuntimeError: boom at import"),
    ("def other(event, context): pass\n", "main.handler", "has no attribute 'handler'"),
    ("handler = 'not a function'\n", "main.handler", "is not callable"),
    ("", "absent.handler", "cannot import module 'absent'"),
], ids=["syntax-error", "missing-dependency", "raises", "missing-attribute", "not-callable", "missing-module"])
def test_broken_handler_fails_startup(start: Callable[..., RuntimeProcess], source: str, handler: str,
                                      expected: str) -> None:
    rt = start(handler, source=source, wait=False)
    assert rt.wait_ready_fd() is None
    assert rt.wait_exit() == contract.EXIT_LOAD_FAILED
    assert expected in rt.stderr()
    assert "Traceback (most recent call last)" in rt.stderr()


def test_invalid_configuration_exits_with_a_clear_message(start: Callable[..., RuntimeProcess]) -> None:
    rt = start(timeout="soon", wait=False)
    assert rt.wait_ready_fd() is None
    assert rt.wait_exit() == contract.EXIT_BAD_CONFIG
    assert "KFN_TIMEOUT must be a number (got 'soon')" in rt.stderr()


def gated_module(gate: Path) -> str:
    """A handler module whose import waits (at most 30 s) until `gate` exists."""
    return (f"import pathlib, time\n"
            f"for _ in range(3000):\n"
            f"    if pathlib.Path({str(gate)!r}).exists():\n"
            f"        break\n"
            f"    time.sleep(0.01)\n"
            f"def handler(event, context):\n"
            f"    return 'loaded'\n")


def test_ready_only_after_the_handler_is_loaded(start: Callable[..., RuntimeProcess], tmp_path: Path) -> None:
    gate = tmp_path / "go"
    rt = start("main.handler", source=gated_module(gate), ready_fd=False, port=free_port())
    assert wait_until(lambda: _answers(rt, contract.PATH_HEALTH) == 200)
    assert rt.get_json(contract.PATH_READY) == (503, {"status": "loading"})
    status, headers, _ = rt.request("GET", "/early")
    assert (status, headers[contract.HEADER_REJECTED.lower()]) == (503, contract.REJECTED_LOADING)
    gate.write_text("")
    assert wait_until(lambda: _answers(rt, contract.PATH_READY) == 200)
    assert rt.request("GET", "/now")[:3:2] == (200, b'"loaded"')


def test_sigterm_while_loading_exits_at_once(start: Callable[..., RuntimeProcess], tmp_path: Path) -> None:
    rt = start("main.handler", source=gated_module(tmp_path / "never"), ready_fd=False, port=free_port())
    assert wait_until(lambda: _answers(rt, contract.PATH_HEALTH) == 200)
    rt.signal(signal.SIGTERM)
    assert rt.wait_exit(timeout=10) == contract.EXIT_OK


def test_malformed_requests_get_an_error_and_the_runtime_keeps_serving(
        start: Callable[..., RuntimeProcess]) -> None:
    rt = start()
    for raw in (b"NONSENSE\r\n\r\n", b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: abc\r\n\r\n",
                b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"):
        with socket.create_connection(("127.0.0.1", rt.port), timeout=10) as s:
            s.sendall(raw)
            reply = s.recv(4096)
        assert reply.startswith(b"HTTP/1.") and b" 400 " in reply.split(b"\r\n", 1)[0]
    assert rt.request("GET", "/still-ok")[0] == 200


def test_http_1_0_request_is_answered_and_closed(start: Callable[..., RuntimeProcess]) -> None:
    rt = start()
    with socket.create_connection(("127.0.0.1", rt.port), timeout=10) as s:
        s.sendall(b"GET /old HTTP/1.0\r\n\r\n")
        reply = b""
        for _ in range(100):  # bounded: the runtime closes the connection after the response
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert json.loads(body) == {"path": "/old"}


def _answers(rt: RuntimeProcess, path: str) -> int | None:
    try:
        return rt.request("GET", path)[0]
    except OSError:
        return None


def test_port_zero_reports_the_chosen_port_on_the_ready_fd(start: Callable[..., RuntimeProcess]) -> None:
    rt = start()
    assert rt.port and rt.port > 0
    assert rt.get_json(contract.PATH_READY) == (200, {"status": "ready"})
    assert rt.get_json(contract.PATH_HEALTH) == (200, {"status": "ok"})
    assert any(line["msg"] == "ready" and line["port"] == rt.port for line in rt.log_lines())


# --- shutdown --------------------------------------------------------------------------------

def test_sigterm_drains_the_in_flight_request_and_exits_zero(start: Callable[..., RuntimeProcess]) -> None:
    rt = start()
    thread, result = in_thread(lambda: rt.request("GET", "/block?n=1"))
    assert wait_until(lambda: (rt.workdir / "started-1").exists())
    rt.signal(signal.SIGTERM)
    assert wait_until(lambda: _answers(rt, contract.PATH_READY) == 503)
    status, headers, body = rt.request("GET", "/new")
    assert status == 503
    assert headers["connection"] == "close"
    assert headers[contract.HEADER_REJECTED.lower()] == contract.REJECTED_DRAINING
    assert json.loads(body)["errorType"] == contract.ERROR_UNAVAILABLE
    (rt.workdir / "release").write_text("")
    thread.join(20)
    status, headers, body = result[0]
    assert (status, body) == (200, b"released")
    assert headers["connection"] == "close"
    assert rt.wait_exit() == contract.EXIT_OK


def _tgkill(pid: int, tid: int, signum: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(234, pid, tid, signum) != 0:  # SYS_tgkill on x86_64
        raise OSError(ctypes.get_errno(), "tgkill failed")


@pytest.mark.skipif(platform.machine() != "x86_64", reason="uses the x86_64 tgkill syscall number")
def test_sigterm_caught_by_another_thread_still_stops_the_runtime(start: Callable[..., RuntimeProcess]) -> None:
    # The kernel may hand a process-directed signal to any thread; aim it at a non-main thread
    # (the HTTP server's) to check the main thread still wakes up and drains.
    rt = start()
    threads = [int(t) for t in os.listdir(f"/proc/{rt.pid}/task") if int(t) != rt.pid]
    assert threads, "the runtime serves HTTP from a thread of its own"
    _tgkill(rt.pid, threads[0], signal.SIGTERM)
    assert rt.wait_exit(timeout=10) == contract.EXIT_OK


def test_sigint_stops_an_idle_runtime_with_exit_zero(start: Callable[..., RuntimeProcess]) -> None:
    rt = start()
    rt.signal(signal.SIGINT)
    assert rt.wait_exit() == contract.EXIT_OK


def test_drain_timeout_bounds_the_wait_for_in_flight_work(start: Callable[..., RuntimeProcess]) -> None:
    rt = start(drain_timeout="0.2")
    in_thread(lambda: _quietly(lambda: rt.request("GET", "/block?n=1")))
    assert wait_until(lambda: (rt.workdir / "started-1").exists())
    rt.signal(signal.SIGTERM)
    assert rt.wait_exit() == contract.EXIT_DRAIN_TIMEOUT


def _quietly(function: Callable[[], object]) -> object:
    try:
        return function()
    except OSError as e:
        return e


# --- observability ---------------------------------------------------------------------------

def test_one_json_log_line_per_invocation(start: Callable[..., RuntimeProcess]) -> None:
    rt = start("main.echo")
    _, headers, _ = rt.request("PUT", "/items/1?x=1")
    request_id = headers[contract.HEADER_REQUEST_ID.lower()]
    assert wait_until(lambda: any(line.get("requestId") == request_id for line in rt.log_lines()))
    line = next(line for line in rt.log_lines() if line.get("requestId") == request_id)
    assert {k: line[k] for k in ("level", "function", "method", "path", "status")} == {
        "level": "info", "function": "demo", "method": "PUT", "path": "/items/1", "status": 200}
    assert line["durationMs"] >= 0
    assert "time" in line


def test_failed_invocations_are_logged_as_errors(start: Callable[..., RuntimeProcess]) -> None:
    rt = start()
    _, headers, _ = rt.request("GET", "/fail")
    request_id = headers[contract.HEADER_REQUEST_ID.lower()]
    assert wait_until(lambda: any(line.get("requestId") == request_id for line in rt.log_lines()))
    line = next(line for line in rt.log_lines() if line.get("requestId") == request_id)
    assert (line["level"], line["status"], line["errorType"]) == ("error", 500, "ValueError")


def test_handler_logging_and_print_reach_stdout_with_the_request_id(start: Callable[..., RuntimeProcess]) -> None:
    rt = start("main.echo")
    _, headers, _ = rt.request("GET", "/logged")
    request_id = headers[contract.HEADER_REQUEST_ID.lower()]
    assert wait_until(lambda: "print from the handler" in rt.stdout())
    assert any(line.startswith("[INFO]") and request_id in line and "echoing /logged" in line
               for line in rt.stdout().splitlines())


def test_request_id_from_the_gateway_is_kept(start: Callable[..., RuntimeProcess]) -> None:
    rt = start("main.echo")
    _, headers, body = rt.request("GET", "/", headers={contract.HEADER_REQUEST_ID: "gw-123"})
    assert headers[contract.HEADER_REQUEST_ID.lower()] == "gw-123"
    assert json.loads(body)["requestId"] == "gw-123"


def test_metrics_count_invocations_errors_and_timeouts(start: Callable[..., RuntimeProcess]) -> None:
    rt = start(timeout="0.2", stuck_grace="60")
    rt.request("GET", "/ok")
    rt.request("GET", "/ok")
    rt.request("GET", "/fail")
    rt.request("GET", "/slow?s=0.6")
    status, headers, body = rt.request("GET", contract.PATH_METRICS)
    text = body.decode()
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    assert f'{contract.METRIC_INVOCATIONS}{{code="200"}} 2.0' in text
    assert f'{contract.METRIC_INVOCATIONS}{{code="500"}} 1.0' in text
    assert f'{contract.METRIC_INVOCATIONS}{{code="504"}} 1.0' in text
    assert f"{contract.METRIC_ERRORS} 1.0" in text
    assert f"{contract.METRIC_TIMEOUTS} 1.0" in text
    assert f"{contract.METRIC_DURATION}_count 4.0" in text
    assert f"{contract.METRIC_IN_FLIGHT} " in text


def test_oversized_body_is_a_413(start: Callable[..., RuntimeProcess]) -> None:
    rt = start(max_body_bytes="10")
    status, _, body = rt.request("POST", "/x", body=b"x" * 11)
    assert status == 413
    assert json.loads(body)["errorType"] == contract.ERROR_TOO_LARGE


# --- requirements ----------------------------------------------------------------------------

def build_wheel(directory: Path, name: str, module_source: str) -> Path:
    """A minimal pure-Python wheel, so pip installs it without any index."""
    wheel = directory / f"{name}-1.0-py3-none-any.whl"
    dist_info = f"{name}-1.0.dist-info"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(f"{name}.py", module_source)
        z.writestr(f"{dist_info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
        z.writestr(f"{dist_info}/WHEEL", "Wheel-Version: 1.0\nGenerator: kfn-test\nRoot-Is-Purelib: true\n"
                                         "Tag: py3-none-any\n")
        z.writestr(f"{dist_info}/RECORD", f"{name}.py,,\n{dist_info}/METADATA,,\n{dist_info}/WHEEL,,\n"
                                          f"{dist_info}/RECORD,,\n")
    return wheel


def install_requirements(requirements: str, deps: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KFN_")}
    env.update({"PYTHONPATH": str(RUNTIME_DIR), contract.ENV_REQUIREMENTS: requirements,
                contract.ENV_DEPS_DIR: str(deps), "PIP_NO_INDEX": "1"})
    return subprocess.run([sys.executable, "-m", contract.REQUIREMENTS_MODULE], env=env, capture_output=True,
                          text=True, timeout=120)


def test_requirements_are_installed_into_the_deps_dir_and_importable(
        start: Callable[..., RuntimeProcess], tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path, "kfn_demo_dep", "GREETING = 'from a dependency'\n")
    result = install_requirements(f"# deps\n{wheel}\n", tmp_path / "deps")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "deps" / "kfn_demo_dep.py").exists()
    rt = start("main.handler", source="import kfn_demo_dep\ndef handler(e, c):\n    return kfn_demo_dep.GREETING\n")
    assert rt.request("GET", "/")[2] == b'"from a dependency"'


def test_failing_requirements_install_exits_non_zero(tmp_path: Path) -> None:
    result = install_requirements(str(tmp_path / "missing-1.0-py3-none-any.whl"), tmp_path / "deps")
    assert result.returncode != 0
    assert "pip could not install the requirements" in result.stderr
