"""A function instance as a pod runs it: `python -m kfn_runtime`, configured by KFN_* variables,
spoken to over HTTP on 127.0.0.1 (the invoke endpoint, probes, metrics) and stopped by signals."""
from __future__ import annotations

import base64
import json
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kfn_runtime import contract
from tests.e2e.runtimes import RuntimeProcess, invoke, launch, pid_alive
from tests.support.ports import free_port
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.timeout(60)]

INVOKE = contract.PATH_INVOKE

# One handler; what it does is told by the event's "action". Coordination with the test goes
# through files in the code directory: "block" waits until the test creates `release`.
APP = '''
import json, logging, os, time
from pathlib import Path

HERE = Path(__file__).parent
log = logging.getLogger("app")


def wait_for(name, seconds):
    deadline = time.monotonic() + seconds
    while not (HERE / name).exists() and time.monotonic() < deadline:
        time.sleep(0.005)


def handler(event, context):
    action = event.get("action") if isinstance(event, dict) else None
    if action == "fail":
        raise ValueError("bad input: " + str(event.get("why")))
    if action == "print":
        print("printed", event["tag"])
        log.warning("logged %s", event["tag"])
        return "ok"
    if action == "sleep":
        time.sleep(event["seconds"])
        return "slept"
    if action == "block":
        (HERE / ("started-" + str(event["n"]))).write_text("")
        wait_for("release", event.get("hold", 10))
        return "released"
    if action == "context":
        cc = context.client_context
        return {"custom": cc.custom if cc else None, "requestId": context.aws_request_id,
                "function": context.function_name, "trace": os.environ.get("_X_AMZN_TRACE_ID"),
                "kfn": sorted(k for k in os.environ if k.startswith("KFN_")),
                "memory": os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")}
    return {"event": event, "requestId": context.aws_request_id}
'''


def gated_module(gate: Path) -> str:
    """A handler module whose import waits (at most 30 s) until `gate` exists."""
    return (f"import pathlib, time\n"
            f"for _ in range(3000):\n"
            f"    if pathlib.Path({str(gate)!r}).exists():\n"
            f"        break\n"
            f"    time.sleep(0.01)\n"
            f"def handler(event, context):\n"
            f"    return 'loaded'\n")


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    """One runtime shared by the tests that leave it as they found it."""
    runtime = launch(tmp_path_factory.mktemp("shared"), source=APP, concurrency=2, timeout=1, max_body_bytes=65536,
                     wait=False)
    try:
        runtime.wait_ready()
        yield runtime
    finally:
        runtime.stop()


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., RuntimeProcess]]:
    """Start a runtime of the test's own (see `launch`); always stopped afterwards."""
    started: list[RuntimeProcess] = []

    def start_(*, source: str = APP, wait: bool = True, **kwargs: Any) -> RuntimeProcess:
        workdir = tmp_path / f"rt{len(started)}"
        workdir.mkdir()
        runtime = launch(workdir, source=source, wait=False, **kwargs)
        started.append(runtime)
        if wait:
            runtime.wait_ready()
        return runtime

    try:
        yield start_
    finally:
        for runtime in started:
            runtime.stop()


def in_thread(function: Callable[[], object]) -> tuple[threading.Thread, list[Any]]:
    result: list[Any] = []

    def run() -> None:
        try:
            result.append(function())
        except OSError as e:   # the runtime may end the connection (a drain timeout)
            result.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def status_of(runtime: RuntimeProcess, path: str) -> int | None:
    try:
        return runtime.request("GET", path, timeout=2)[0]
    except OSError:
        return None


def raw_exchange(port: int, data: bytes) -> bytes:
    """Send raw bytes on a new connection; everything the server answers until it closes (bounded)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        reply = b""
        for _ in range(100):
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            reply += chunk
    return reply


# --- the invoke endpoint -----------------------------------------------------------------------

def test_invoke_returns_the_functions_result(rt: RuntimeProcess) -> None:
    status, headers, body = invoke(rt, {"order": 7, "items": ["a", "b"]})
    assert (status, headers["content-type"]) == (200, "application/json")
    result = json.loads(body)
    assert result["event"] == {"order": 7, "items": ["a", "b"]}
    assert headers[contract.HEADER_REQUEST_ID.lower()] == result["requestId"]
    assert headers[contract.HEADER_EXECUTED_VERSION.lower()] == "$LATEST"
    assert contract.HEADER_FUNCTION_ERROR.lower() not in headers


def test_request_id_from_the_caller_is_the_invocations(rt: RuntimeProcess) -> None:
    status, headers, body = invoke(rt, {}, headers={contract.HEADER_REQUEST_ID: "gw-123"})
    assert (status, json.loads(body)["requestId"], headers[contract.HEADER_REQUEST_ID.lower()]) == (
        200, "gw-123", "gw-123")


def test_unusable_request_id_from_the_caller_is_replaced(rt: RuntimeProcess) -> None:
    _, headers, body = invoke(rt, {}, headers={contract.HEADER_REQUEST_ID: "has spaces; and=more"})
    request_id = json.loads(body)["requestId"]
    assert request_id == headers[contract.HEADER_REQUEST_ID.lower()]
    assert " " not in request_id and len(request_id) == 36


def test_function_error_is_a_200_flagged_in_headers(rt: RuntimeProcess) -> None:
    status, headers, body = invoke(rt, {"action": "fail", "why": 42})
    assert status == 200
    assert headers[contract.HEADER_FUNCTION_ERROR.lower()] == "Unhandled"
    assert headers[contract.HEADER_ERROR_TYPE.lower()] == "ValueError"
    error = json.loads(body)
    assert (error["errorType"], error["errorMessage"]) == ("ValueError", "bad input: 42")
    assert error["requestId"] == headers[contract.HEADER_REQUEST_ID.lower()]


def test_timeout_is_a_function_error_of_type_sandbox_timedout(rt: RuntimeProcess) -> None:
    status, headers, body = invoke(rt, {"action": "sleep", "seconds": 30})
    assert (status, headers[contract.HEADER_ERROR_TYPE.lower()]) == (200, "Sandbox.Timedout")
    assert json.loads(body)["errorMessage"].endswith("Task timed out after 1.00 seconds")
    assert invoke(rt, {"after": "timeout"})[0] == 200


def test_log_tail_is_returned_base64_when_asked(rt: RuntimeProcess) -> None:
    _, headers, _ = invoke(rt, {"action": "print", "tag": "tail-1"}, headers={contract.HEADER_LOG_TYPE: "Tail"})
    tail = base64.b64decode(headers[contract.HEADER_LOG_RESULT.lower()]).decode()
    assert "printed tail-1" in tail
    assert "[WARNING]" in tail and "logged tail-1" in tail


def test_no_log_tail_unless_asked(rt: RuntimeProcess) -> None:
    _, headers, _ = invoke(rt, {"action": "print", "tag": "no-tail"})
    assert contract.HEADER_LOG_RESULT.lower() not in headers


def test_environment_output_reaches_the_pods_stdout(rt: RuntimeProcess) -> None:
    invoke(rt, {"action": "print", "tag": "to-stdout"})
    wait_until(lambda: "printed to-stdout" in rt.stdout(), what="the handler's print on stdout")


def test_client_context_reaches_the_handler(rt: RuntimeProcess) -> None:
    encoded = base64.b64encode(json.dumps({"custom": {"tenant": "acme"}}).encode()).decode()
    status, _, body = invoke(rt, {"action": "context"}, headers={contract.HEADER_CLIENT_CONTEXT: encoded})
    assert (status, json.loads(body)["custom"]) == (200, {"tenant": "acme"})


def test_client_context_is_carried_whatever_whitespace_its_json_holds(rt: RuntimeProcess) -> None:
    # JSON allows CR LF between tokens; it must not end the Runtime API header the context rides in.
    encoded = base64.b64encode(b'{"custom": {"tenant": "acme"},\r\n\r\n"env": {}}').decode()
    status, _, body = invoke(rt, {"action": "context"}, headers={contract.HEADER_CLIENT_CONTEXT: encoded})
    assert (status, json.loads(body)["custom"]) == (200, {"tenant": "acme"})


@pytest.mark.parametrize("text", ["not base64!", base64.b64encode(b"not json").decode(),
                                  base64.b64encode(b"[1, 2]").decode()],
                         ids=["not-base64", "not-json", "not-an-object"])
def test_client_context_that_is_not_base64_json_object_is_a_400(rt: RuntimeProcess, text: str) -> None:
    status, _, body = invoke(rt, {"action": "context"}, headers={contract.HEADER_CLIENT_CONTEXT: text})
    assert status == 400
    assert json.loads(body)["errorType"] == "InvalidRequestContentException"


def test_trace_id_reaches_the_handlers_environment(rt: RuntimeProcess) -> None:
    _, _, body = invoke(rt, {"action": "context"}, headers={contract.HEADER_TRACE_ID: "Root=1-65a1-b2c3;Sampled=1"})
    assert json.loads(body)["trace"] == "Root=1-65a1-b2c3;Sampled=1"


def test_handler_sees_lambdas_names_from_the_platforms_settings(rt: RuntimeProcess) -> None:
    result = json.loads(invoke(rt, {"action": "context"})[2])
    assert (result["function"], result["memory"]) == ("demo", str(contract.DEFAULT_MEMORY_MB))


def test_handler_sees_none_of_the_platforms_variables(rt: RuntimeProcess) -> None:
    assert json.loads(invoke(rt, {"action": "context"})[2])["kfn"] == []


def test_chunked_event_is_read(rt: RuntimeProcess) -> None:
    connection = rt.connection()
    try:
        connection.request("POST", INVOKE, body=iter([b'{"chunked"', b": true}"]), encode_chunked=True)
        response = connection.getresponse()
        assert (response.status, json.loads(response.read())["event"]) == (200, {"chunked": True})
    finally:
        connection.close()


def test_event_over_the_body_limit_is_a_413(rt: RuntimeProcess) -> None:
    status = raw_exchange(rt.port or 0, b"POST " + INVOKE.encode() + b" HTTP/1.1\r\nContent-Length: 65537\r\n\r\n")
    assert b" 413 " in status.split(b"\r\n", 1)[0]


def test_one_keep_alive_connection_serves_many_invocations(rt: RuntimeProcess) -> None:
    connection = rt.connection()
    try:
        for i in range(20):
            status, headers, body = invoke(rt, {"i": i}, connection=connection)
            assert (status, json.loads(body)["event"]) == (200, {"i": i})
            assert "connection" not in headers
    finally:
        connection.close()


# --- HTTP edges -----------------------------------------------------------------------------

@pytest.mark.parametrize(("method", "path", "status", "allow"), [
    ("GET", INVOKE, 405, "POST"),
    ("PUT", INVOKE, 405, "POST"),
    ("POST", contract.PATH_HEALTH, 405, "GET, HEAD"),
    ("DELETE", contract.PATH_METRICS, 405, "GET, HEAD"),
    ("GET", "/", 404, None),
    ("POST", "/2015-03-31/functions/other/invocations", 404, None),
], ids=["get-invoke", "put-invoke", "post-health", "delete-metrics", "root", "other-function"])
def test_wrong_method_is_a_405_and_unknown_path_a_404(rt: RuntimeProcess, method: str, path: str, status: int,
                                                      allow: str | None) -> None:
    got, headers, body = rt.request(method, path, body=b"{}" if method in ("POST", "PUT") else None)
    assert got == status
    assert headers.get("allow") == allow
    assert "errorType" in json.loads(body)


@pytest.mark.parametrize("raw", [
    b"NONSENSE\r\n\r\n",
    b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: abc\r\n\r\n",
    b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"GET /_/health HTTP/1.1\r\nX-Amzn-Trace-Id: a\nInjected: b\r\n\r\n",
], ids=["request-line", "content-length", "chunk-size", "bare-lf"])
def test_malformed_http_is_a_400_and_the_server_keeps_serving(rt: RuntimeProcess, raw: bytes) -> None:
    reply = raw_exchange(rt.port or 0, raw)
    head = reply.split(b"\r\n\r\n", 1)[0]
    assert head.startswith(b"HTTP/1.1 400 ")
    assert b"\r\nConnection: close" in head
    assert invoke(rt, {"still": "serving"})[0] == 200


def test_client_expecting_100_continue_is_told_to_go_on(rt: RuntimeProcess) -> None:
    # curl asks so for bodies over 1 MB, and would wait a second for it before sending the body.
    body = b'{"expect": "continue"}'
    with socket.create_connection(("127.0.0.1", rt.port or 0), timeout=5) as s:
        s.sendall(b"POST " + INVOKE.encode() + b" HTTP/1.1\r\nContent-Length: %d\r\n"
                  b"Expect: 100-continue\r\n\r\n" % len(body))
        assert s.recv(1024) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(body)
        reply = b""
        for _ in range(100):
            reply += s.recv(65536)
            if b'"continue"' in reply:
                break
    assert reply.startswith(b"HTTP/1.1 200 ")
    assert json.loads(reply.partition(b"\r\n\r\n")[2])["event"] == {"expect": "continue"}


def test_http_1_0_request_is_answered_and_closed(rt: RuntimeProcess) -> None:
    reply = raw_exchange(rt.port or 0, b"POST " + INVOKE.encode() + b" HTTP/1.0\r\nContent-Length: 9\r\n\r\n"
                                                                    b'{"v": 10}')
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert json.loads(body)["event"] == {"v": 10}


def test_probe_answered_to_head_has_no_body(rt: RuntimeProcess) -> None:
    # A HEAD answer with a body would be read as the start of the next answer on that connection.
    # (http.client hides it: it drops what it buffered past a HEAD answer, so raw bytes here.)
    reply = raw_exchange(rt.port or 0, b"HEAD /_/health HTTP/1.1\r\n\r\nGET /_/health HTTP/1.1\r\n"
                                       b"Connection: close\r\n\r\n")
    head, _, rest = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"\r\nContent-Length: 16" in head   # what a GET would get, as HTTP says
    assert rest.startswith(b"HTTP/1.1 200 ")
    assert rest.endswith(b'\r\n\r\n{"status": "ok"}')


# --- probes and the ready line ----------------------------------------------------------------

def test_ready_line_reports_the_port_chosen_for_port_zero(rt: RuntimeProcess) -> None:
    [ready] = [line for line in rt.log_lines() if line.get("msg") == "ready"]
    assert rt.port is not None and rt.port > 0
    assert ready["port"] == rt.port
    assert (ready["function"], ready["runtime"]) == ("demo", "python3." + ready["runtime"].split(".")[1])
    assert ready["startupMs"] >= 0


def test_health_and_ready_probes_answer_200_when_ready(rt: RuntimeProcess) -> None:
    assert rt.request("GET", contract.PATH_HEALTH)[::2] == (200, b'{"status": "ok"}')
    status, _, body = rt.request("GET", contract.PATH_READY)
    assert (status, json.loads(body)) == (200, {"status": "ready"})


def test_ready_answers_503_while_loading_and_200_once_loaded(start: Callable[..., RuntimeProcess],
                                                             tmp_path: Path) -> None:
    gate, port = tmp_path / "go", free_port()
    rt = start(source=gated_module(gate), port=port, wait=False)
    rt.port = port
    wait_until(lambda: status_of(rt, contract.PATH_HEALTH) == 200, what="the runtime listening")
    status, _, body = rt.request("GET", contract.PATH_READY)
    assert (status, json.loads(body)) == (503, {"status": "loading"})
    status, headers, _ = invoke(rt, {})
    assert (status, headers[contract.HEADER_REJECTED.lower()]) == (503, contract.REJECTED_LOADING)
    gate.write_text("")
    wait_until(lambda: status_of(rt, contract.PATH_READY) == 200, what="ready")
    assert invoke(rt, {})[::2] == (200, b'"loaded"')


def test_metrics_count_invocations_by_outcome(start: Callable[..., RuntimeProcess]) -> None:
    rt = start(timeout=0.5)
    invoke(rt, {"action": "sleep", "seconds": 30})   # kills its environment; the next one gets a new one
    invoke(rt, {})
    invoke(rt, {})
    invoke(rt, {"action": "fail"})
    status, headers, body = rt.request("GET", contract.PATH_METRICS)
    text = body.decode()
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    assert f'{contract.METRIC_INVOCATIONS}{{outcome="ok"}} 2.0' in text
    assert f'{contract.METRIC_INVOCATIONS}{{outcome="error"}} 1.0' in text
    assert f'{contract.METRIC_INVOCATIONS}{{outcome="timeout"}} 1.0' in text
    assert f"{contract.METRIC_DURATION}_count 4.0" in text
    assert f"{contract.METRIC_IN_FLIGHT} 0.0" in text
    assert f"{contract.METRIC_CONCURRENCY_LIMIT} {float(contract.DEFAULT_CONCURRENCY)}" in text
    assert f"{contract.METRIC_ENVIRONMENTS} 1.0" in text


# --- concurrency ------------------------------------------------------------------------------

def test_an_invocation_waits_for_a_busy_environment_within_the_queue_limit(
        start: Callable[..., RuntimeProcess]) -> None:
    rt = start(concurrency=1)   # the queue limit defaults to the concurrency: one may wait
    code = rt.workdir / "code"
    first, first_result = in_thread(lambda: invoke(rt, {"action": "block", "n": 1}))
    wait_until(lambda: (code / "started-1").exists(), what="the first invocation running")
    second, second_result = in_thread(lambda: invoke(rt, {"action": "block", "n": 2}))
    time.sleep(0.2)
    assert not (code / "started-2").exists()
    (code / "release").write_text("")
    first.join(20)
    second.join(20)
    assert [r[0][0] for r in (first_result, second_result)] == [200, 200]
    assert (code / "started-2").exists()


def test_invocation_beyond_the_concurrency_and_queue_is_a_429_without_running(
        start: Callable[..., RuntimeProcess]) -> None:
    rt = start(concurrency=1, queue_limit=0)
    code = rt.workdir / "code"
    thread, result = in_thread(lambda: invoke(rt, {"action": "block", "n": 1}))
    wait_until(lambda: (code / "started-1").exists(), what="the first invocation running")
    status, headers, body = invoke(rt, {"action": "block", "n": 2})
    assert status == 429
    assert headers[contract.HEADER_REJECTED.lower()] == contract.REJECTED_CONCURRENCY
    assert json.loads(body)["errorType"] == "TooManyRequestsException"
    assert "connection" not in headers   # a rejection for capacity keeps the connection
    assert not (code / "started-2").exists()
    (code / "release").write_text("")
    thread.join(20)
    assert result[0][::2] == (200, b'"released"')


# --- shutdown ---------------------------------------------------------------------------------

def test_sigterm_drains_the_in_flight_invocation_and_exits_zero(start: Callable[..., RuntimeProcess]) -> None:
    rt = start(concurrency=1)
    code = rt.workdir / "code"
    thread, result = in_thread(lambda: invoke(rt, {"action": "block", "n": 1}))
    wait_until(lambda: (code / "started-1").exists(), what="the invocation running")
    rt.signal(signal.SIGTERM)
    wait_until(lambda: status_of(rt, contract.PATH_READY) == 503, what="not ready while draining")
    status, headers, body = invoke(rt, {"action": "block", "n": 2})
    assert (status, headers[contract.HEADER_REJECTED.lower()]) == (503, contract.REJECTED_DRAINING)
    assert headers["connection"] == "close"
    assert json.loads(body)["errorType"] == "ServiceUnavailableException"
    (code / "release").write_text("")
    thread.join(20)
    status, headers, body = result[0]
    assert (status, body) == (200, b'"released"')
    assert headers.get("connection") == "close"   # the server closes it: it says so
    assert rt.wait_exit() == contract.EXIT_OK
    assert [line["exitCode"] for line in rt.log_lines() if line.get("msg") == "stopped"] == [0]


def test_drain_timeout_stops_everything_and_exits_four(start: Callable[..., RuntimeProcess]) -> None:
    rt = start(concurrency=1, drain_timeout=0.3)
    code = rt.workdir / "code"
    in_thread(lambda: invoke(rt, {"action": "block", "n": 1, "hold": 30}))
    wait_until(lambda: (code / "started-1").exists(), what="the invocation running")
    rt.signal(signal.SIGTERM)   # also notes every process the runtime started
    started = time.monotonic()
    assert rt.wait_exit() == contract.EXIT_DRAIN_TIMEOUT
    assert time.monotonic() - started < 5
    assert not rt.processes.kill_all()   # the stuck environment and the zygote are gone too


def test_sigint_stops_an_idle_runtime_with_exit_zero(start: Callable[..., RuntimeProcess]) -> None:
    rt = start()
    rt.signal(signal.SIGINT)
    assert rt.wait_exit() == contract.EXIT_OK
    assert not rt.processes.kill_all()


def test_sigterm_while_loading_exits_at_once(start: Callable[..., RuntimeProcess], tmp_path: Path) -> None:
    port = free_port()
    rt = start(source=gated_module(tmp_path / "never"), port=port, wait=False)
    rt.port = port
    wait_until(lambda: status_of(rt, contract.PATH_HEALTH) == 200, what="the runtime listening")
    rt.signal(signal.SIGTERM)
    assert rt.wait_exit(timeout=10) == contract.EXIT_OK
    assert not rt.processes.kill_all()


# --- failing to start -------------------------------------------------------------------------

def test_init_failure_exits_one_with_the_error_on_stderr(start: Callable[..., RuntimeProcess]) -> None:
    rt = start(source="raise RuntimeError('boom at import')\n", wait=False)
    assert rt.wait_exit() == contract.EXIT_LOAD_FAILED
    stderr = rt.stderr()
    assert "kfn-runtime: cannot initialise main.handler" in stderr
    error = json.loads(stderr.strip().splitlines()[-1])
    assert "boom at import" in error["errorMessage"]
    assert "Traceback (most recent call last)" in rt.stdout()   # the zygote's, through the host's log
    assert not any(line.get("msg") == "ready" for line in rt.log_lines())


def test_missing_code_directory_exits_one_naming_the_directory(start: Callable[..., RuntimeProcess],
                                                               tmp_path: Path) -> None:
    missing = tmp_path / "no-such-code"
    rt = start(code_dir=str(missing), wait=False)
    assert rt.wait_exit() == contract.EXIT_LOAD_FAILED
    assert str(missing) in rt.stderr()


def test_missing_handler_module_exits_one(start: Callable[..., RuntimeProcess]) -> None:
    rt = start(handler="absent.handler", wait=False)
    assert rt.wait_exit() == contract.EXIT_LOAD_FAILED
    assert "Runtime.ImportModuleError" in rt.stderr()


@pytest.mark.parametrize(("settings", "message"), [
    ({"timeout": "soon"}, "KFN_TIMEOUT must be a number (got 'soon')"),
    ({"concurrency": "0"}, "KFN_CONCURRENCY must be >= 1 (got '0')"),
    ({"handler": "nodot"}, "KFN_HANDLER must be module.function"),
    ({"command": "not json"}, "KFN_COMMAND must be a JSON list"),
], ids=["timeout", "concurrency", "handler", "command"])
def test_bad_config_exits_two_naming_the_variable(start: Callable[..., RuntimeProcess], settings: dict[str, str],
                                                   message: str) -> None:
    settings = dict(settings)
    rt = start(handler=settings.pop("handler", "main.handler"), wait=False, **settings)
    assert rt.wait_exit() == contract.EXIT_BAD_CONFIG
    assert f"kfn-runtime: {message}" in rt.stderr()
    assert rt.stdout() == ""


def test_busy_port_exits_one(start: Callable[..., RuntimeProcess]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        rt = start(port=taken.getsockname()[1], wait=False)
        assert rt.wait_exit() == contract.EXIT_LOAD_FAILED
    assert "cannot listen on 127.0.0.1" in rt.stderr()


def test_zygote_and_idle_environments_end_with_a_killed_runtime(start: Callable[..., RuntimeProcess]) -> None:
    # SIGKILL leaves the runtime no time to stop anything: its zygote and idle environments must
    # notice their host is gone (their sockets close) and end on their own.
    rt = start()
    invoke(rt, {})
    rt.track()
    others = [pid for pid in rt.processes.pids() if pid != rt.pid]
    assert len(others) >= 2   # the zygote and an environment
    rt.process.kill()
    rt.wait_exit()
    wait_until(lambda: not any(pid_alive(pid) for pid in others), what="the zygote and environment gone")
