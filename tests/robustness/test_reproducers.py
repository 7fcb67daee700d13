"""The defects of issue 12, each as its reproducer against a real `kfn local`.

Each test asserts the behaviour wanted (never a duration): run against an older checkout
(`KFN_ROBUSTNESS_TARGET`, see harness.py) it shows the defect as a failure.
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from tests.robustness.harness import closed_by_server, connect, kfn, serving, status_of
from tests.support.localmode import HELLO, http, write_manifest
from tests.support.waiting import wait_until

MiB = 1024 * 1024

ECHO = """
    import json, os
    def handler(event, context):
        return {"statusCode": 200, "headers": {"Content-Type": "application/json"},
                "body": json.dumps({"sourceIp": event["requestContext"]["http"]["sourceIp"],
                                    "rawPath": event["rawPath"], "rawQueryString": event["rawQueryString"],
                                    "requestId": context.aws_request_id, "bodyLength": len(event.get("body") or ""),
                                    "headers": event["headers"]})}
"""

# Imports fail while the file FLAG exists; every import attempt adds a line to ATTEMPTS.
FLAKY = """
    import os
    with open(os.environ["ATTEMPTS"], "a") as f:
        f.write("attempt\\n")
    if os.path.exists(os.environ["FLAG"]):
        raise RuntimeError("the flag file is there")
    def handler(event, context):
        return "healed"
"""


def _lines(path: Path) -> int:
    try:
        return len(path.read_text().splitlines())
    except FileNotFoundError:
        return 0


def _instances(local, name: str) -> list[tuple[str, str]]:
    return [(i["id"], i["state"]) for i in local.instances(name).get("instances", [])]


# -- 1. a temporary start failure heals while traffic continues --------------------------------------

def test_a_function_whose_starts_failed_serves_again_once_the_cause_is_gone_while_traffic_continues(
        tmp_path: Path) -> None:
    functions = tmp_path / "functions"
    functions.mkdir()
    flag, attempts = tmp_path / "broken", tmp_path / "attempts"
    flag.touch()
    write_manifest(functions, "flaky", FLAKY, env=[{"name": "FLAG", "value": str(flag)},
                                                  {"name": "ATTEMPTS", "value": str(attempts)}],
                   scale={"idleTimeout": "10m", "stableWindow": "10m"})
    with serving(functions, "--queue-timeout", "3s") as local:
        # More failed starts than the old backend allowed (5), with requests arriving throughout.
        statuses: list[int] = []
        deadline = time.monotonic() + 120
        while _lines(attempts) < 7 and time.monotonic() < deadline:
            statuses.append(local.invoke("flaky", timeout=30).status)
            time.sleep(0.2)
        assert _lines(attempts) >= 7, f"the backend stopped trying after {_lines(attempts)} starts"
        assert set(statuses) == {500}   # the init error is the function's (issue 15), as on Lambda
        flag.unlink()
        result = wait_until(lambda: (r := local.invoke("flaky", timeout=30)).status == 200 and r,
                            timeout=60, interval=0.2, what="the function to serve again")
        assert result.body == b"healed"


def test_a_caller_of_a_function_whose_init_fails_gets_its_error_at_once_and_none_of_its_output(tmp_path: Path) -> None:
    # Issue 12 answered with the reason (the traceback); issue 15: an init error is the function's
    # error, API Gateway's 500, and what the function printed is its owner's only.
    write_manifest(tmp_path, "broken", """
        print("the database password is hunter2", flush=True)
        raise RuntimeError("the database password is missing")
    """)
    with serving(tmp_path) as local:
        for _ in range(2):   # the first caller (who started it) and the next one alike
            result = local.invoke("broken", timeout=60)
            assert (result.status, result.json()) == (500, {"message": "Internal Server Error"})
            assert result.headers["X-Kfn-Error-Type"] == "RuntimeError"
            assert b"hunter2" not in result.body and "hunter2" not in str(dict(result.headers))


# -- 2. one body limit, applied once, without harming an instance ----------------------------------

def test_a_body_over_the_limit_is_413_and_no_instance_is_replaced(tmp_path: Path) -> None:
    write_manifest(tmp_path, "echo", ECHO, scale={"minReplicas": 1})
    with serving(tmp_path) as local:
        wait_until(lambda: local.ready("echo") == 1, timeout=30, what="echo's instance")
        before = _instances(local, "echo")
        for _ in range(3):
            result = local.invoke("echo", body=b"\0" * (7 * MiB),
                                  headers={"Content-Type": "application/octet-stream"}, timeout=60)
            assert result.status == 413
            assert "limit" in result.json()["error"]
        assert _instances(local, "echo") == before
        assert local.invoke("echo", body=b"fine").status == 200


def test_a_binary_body_just_under_the_limit_reaches_the_function(tmp_path: Path) -> None:
    write_manifest(tmp_path, "echo", ECHO)
    size = 6 * MiB - 1024
    with serving(tmp_path) as local:
        result = local.invoke("echo", body=b"\xff" * size, headers={"Content-Type": "application/octet-stream"},
                              timeout=60)
        assert result.status == 200
        assert result.json()["bodyLength"] == (size + 2) // 3 * 4   # base64 in the event


# -- 3. hostile manifests fail per file ---------------------------------------------------------------

DEEP = "[" * 1000
BIG_NUMBER = ("apiVersion: kfn.dev/v1alpha1\nkind: Function\nmetadata: {name: big}\n"
              "spec: {handler: main.handler, concurrency: " + "9" * 5000 + "}\n")


def test_kfn_local_serves_its_good_functions_beside_hostile_manifests(tmp_path: Path) -> None:
    write_manifest(tmp_path, "hello", HELLO)
    (tmp_path / "deep.yaml").write_text(DEEP)
    (tmp_path / "big.yaml").write_text(BIG_NUMBER)
    with serving(tmp_path) as local:
        assert local.invoke("hello").status == 200
        files = {Path(e["file"]).name for e in local.errors()["manifests"]}
        assert {"deep.yaml", "big.yaml"} <= files
        assert "Traceback" not in local.output()


def test_a_valid_edit_read_in_the_same_poll_as_a_hostile_file_is_applied(tmp_path: Path) -> None:
    write_manifest(tmp_path, "hello", 'def handler(event, context):\n    return "v1"\n')
    with serving(tmp_path) as local:
        assert local.invoke("hello").body == b"v1"
        (tmp_path / "deep.yaml").write_text(DEEP)
        write_manifest(tmp_path, "hello", 'def handler(event, context):\n    return "v2"\n')
        wait_until(lambda: local.invoke("hello").body == b"v2", timeout=30, interval=0.2, what="the edit")
        wait_until(lambda: any(Path(e["file"]).name == "deep.yaml" for e in local.errors()["manifests"]),
                   timeout=10, what="the hostile file reported")


def test_kfn_validate_reports_hostile_files_in_one_line_each_and_never_hangs(tmp_path: Path) -> None:
    import os
    (tmp_path / "deep.yaml").write_text(DEEP)
    (tmp_path / "big.yaml").write_text(BIG_NUMBER)
    os.mkfifo(tmp_path / "fifo.yaml")
    for file in (tmp_path / "deep.yaml", tmp_path / "big.yaml", tmp_path / "fifo.yaml", Path("/dev/zero")):
        result = kfn("validate", str(file), timeout=30)
        assert result.returncode == 1, (file, result.stderr[-500:])
        assert str(file) in result.stderr
        assert "Traceback" not in result.stderr


# -- 4. a handler cannot make the gateway run a request again ---------------------------------------------

def test_a_handler_answering_429_with_x_kfn_rejected_runs_once_and_its_answer_reaches_the_client(
        tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    write_manifest(tmp_path, "sly", """
        import os
        def handler(event, context):
            with open(os.environ["RUNS"], "a") as f:
                f.write("ran\\n")
            return {"statusCode": 429, "headers": {"X-Kfn-Rejected": "concurrency"}, "body": "the handler's own"}
    """, env=[{"name": "RUNS", "value": str(runs)}])
    with serving(tmp_path) as local:
        result = local.invoke("sly", body=b"order=1")
        assert (result.status, result.body) == (429, b"the handler's own")
        assert _lines(runs) == 1


def test_a_handler_answering_503_draining_keeps_its_instance_in_rotation(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    write_manifest(tmp_path, "sly", """
        import os
        def handler(event, context):
            with open(os.environ["RUNS"], "a") as f:
                f.write("ran\\n")
            return {"statusCode": 503, "headers": {"X-Kfn-Rejected": "draining"}, "body": "busy"}
    """, scale={"minReplicas": 1}, env=[{"name": "RUNS", "value": str(runs)}])
    with serving(tmp_path) as local:
        wait_until(lambda: local.ready("sly") == 1, timeout=30, what="sly's instance")
        before = _instances(local, "sly")
        for _ in range(3):
            # The handler's own answer each time: the one instance was never taken out of rotation.
            result = local.invoke("sly")
            assert (result.status, result.body) == (503, b"busy")
        assert _lines(runs) == 3
        assert _instances(local, "sly") == before


# -- 5. bounded time for heads, bodies and idle connections ----------------------------------------

def test_connections_that_send_headers_but_no_body_are_no_load_and_start_nothing(tmp_path: Path) -> None:
    write_manifest(tmp_path, "hello", HELLO, scale={"stableWindow": "2s", "maxReplicas": 10})
    with serving(tmp_path, "--body-timeout", "60s") as local:
        sockets = []
        try:
            for _ in range(40):
                sock = connect(local.port)
                sock.sendall(b"POST /function/hello HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
                sockets.append(sock)
            # Several autoscaler rounds (it decides every second) while the uploads stall.
            for _ in range(6):
                info = local.function("hello")
                assert info is not None
                assert (info["inFlight"], info["replicas"]) == (0, 0)
                time.sleep(0.5)
        finally:
            for sock in sockets:
                sock.close()


def test_a_client_that_never_finishes_its_request_head_is_answered_408_and_disconnected(tmp_path: Path) -> None:
    write_manifest(tmp_path, "hello", HELLO)
    with serving(tmp_path, "--header-timeout", "1s") as local:
        with connect(local.port) as sock:
            sock.sendall(b"GET /function/hello HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            closed, answer = closed_by_server(sock, deadline=30)
        assert closed
        assert status_of(answer) == 408


def test_a_client_that_trickles_its_head_is_disconnected_however_often_it_sends(tmp_path: Path) -> None:
    write_manifest(tmp_path, "hello", HELLO)
    with serving(tmp_path, "--header-timeout", "2s", "--idle-timeout", "1m") as local:
        with connect(local.port) as sock:
            sock.sendall(b"GET /function/hello HTTP/1.1\r\n")
            closed = False
            for i in range(60):   # a header line every half second, for up to 30 s
                try:
                    sock.sendall(f"X-Drip-{i}: {i}\r\n".encode())
                except (BrokenPipeError, ConnectionResetError):
                    closed = True
                    break
                time.sleep(0.5)
            if not closed:
                closed, _ = closed_by_server(sock, deadline=5)
        assert closed


def test_a_client_that_stalls_its_body_is_answered_408_and_disconnected(tmp_path: Path) -> None:
    write_manifest(tmp_path, "hello", HELLO)
    with serving(tmp_path, "--body-timeout", "1s") as local:
        with connect(local.port) as sock:
            sock.sendall(b"POST /function/hello HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly some")
            closed, answer = closed_by_server(sock, deadline=30)
        assert closed
        assert status_of(answer) == 408


def test_an_idle_connection_is_closed(tmp_path: Path) -> None:
    write_manifest(tmp_path, "hello", HELLO)
    with serving(tmp_path, "--idle-timeout", "1s") as local:
        with connect(local.port) as sock:
            closed, _ = closed_by_server(sock, deadline=30)
        assert closed


def test_idle_connections_up_to_the_open_file_limit_do_not_stop_a_cold_start(tmp_path: Path) -> None:
    import resource
    write_manifest(tmp_path, "hello", HELLO)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))   # kfn local inherits it
    try:
        local_cm = serving(tmp_path, "--idle-timeout", "2s")
        local = local_cm.__enter__()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    sockets = []
    try:
        for _ in range(400):   # more than kfn local may open: some are never accepted
            try:
                sockets.append(connect(local.port, timeout=2))
            except OSError:
                break
        result = wait_until(lambda: (r := _try_invoke(local)) is not None and r.status == 200 and r,
                            timeout=60, interval=0.5, what="a cold start while idle connections pile up")
        assert result.json()["hello"] == "world"
    finally:
        for sock in sockets:
            sock.close()
        local_cm.__exit__(None, None, None)


def _try_invoke(local):  # type: ignore[no-untyped-def]
    try:
        return local.invoke("hello", timeout=10)
    except OSError:
        return None


# -- 6. a slot is held until the runtime really finished ---------------------------------------------

SLOW = """
    import os, time
    def handler(event, context):
        if event["rawPath"] == "/slow":
            open(os.environ["STARTED"], "w").close()
            time.sleep(3)
        return "done"
"""


def test_after_a_client_gives_up_the_next_request_waits_for_the_busy_instance_instead_of_429(tmp_path: Path) -> None:
    started = tmp_path / "started"
    functions = tmp_path / "functions"
    functions.mkdir()
    write_manifest(functions, "slow", SLOW, concurrency=1, scale={"maxReplicas": 1, "minReplicas": 1},
                   env=[{"name": "STARTED", "value": str(started)}])
    with serving(functions) as local:
        wait_until(lambda: local.ready("slow") == 1, timeout=30, what="slow's instance")
        with connect(local.port) as sock:
            sock.sendall(b"GET /function/slow/slow HTTP/1.1\r\nHost: x\r\n\r\n")
            wait_until(started.exists, timeout=30, what="the slow invocation to start")
        # The client gave up; the instance is still busy with its invocation.
        result = local.invoke("slow", timeout=60)
        assert (result.status, result.body) == (200, b"done")


def test_after_a_handler_times_out_the_next_request_is_served(tmp_path: Path) -> None:
    started = tmp_path / "started"
    write_manifest(tmp_path, "slow", SLOW, concurrency=1, timeout="1s", scale={"maxReplicas": 1},
                   env=[{"name": "STARTED", "value": str(started)}])
    with serving(tmp_path) as local:
        assert local.invoke("slow", path="/slow", timeout=60).status == 504
        result = local.invoke("slow", timeout=60)
        assert (result.status, result.body) == (200, b"done")


# -- 7. handler output cannot grow the gateway -------------------------------------------------------------

def test_a_handler_printing_huge_lines_grows_neither_kfn_local_nor_its_logs_without_bound(tmp_path: Path) -> None:
    write_manifest(tmp_path, "loud", """
        def handler(event, context):
            print("x" * 10_000_000)
            return "printed"
    """, scale={"minReplicas": 1})
    with serving(tmp_path) as local:
        wait_until(lambda: local.ready("loud") == 1, timeout=30, what="loud's instance")
        assert local.invoke("loud").status == 200
        before = local.rss_kib()
        for _ in range(12):
            assert local.invoke("loud", timeout=60).status == 200
        grown_mib = (local.rss_kib() - before) / 1024
        logs = http("GET", f"{local.url}/system/logs/loud?tail=2000", timeout=30)
        assert logs.status == 200
        assert len(logs.body) < 8 * MiB
        assert grown_mib < 64


# -- 8. clients cannot choose sourceIp or request ids ---------------------------------------------------------

def test_x_forwarded_for_and_x_kfn_request_id_from_a_client_are_not_believed(tmp_path: Path) -> None:
    write_manifest(tmp_path, "echo", ECHO)
    with serving(tmp_path) as local:
        result = local.invoke("echo", headers={"X-Forwarded-For": "203.0.113.7", "X-Kfn-Request-Id": "forged-id"})
        seen = result.json()
        assert seen["sourceIp"] == "127.0.0.1"
        assert seen["requestId"] != "forged-id"
        assert result.headers.get("X-Kfn-Request-Id") != "forged-id"
        assert "x-kfn-request-id" not in seen["headers"]


# -- ready only once every function is known ---------------------------------------------------------

def test_once_kfn_local_answers_health_checks_it_knows_all_of_300_functions(tmp_path: Path) -> None:
    for i in range(300):
        write_manifest(tmp_path, f"fn-{i:03d}", HELLO)
    with serving(tmp_path) as local:
        assert len(local.functions()) == 300
        assert local.invoke("fn-299").status == 200


# -- also reported: the gateway's own answers and what a client can reach ------------------------------------

def test_a_refused_expect_100_continue_body_gets_413_before_any_100_continue(tmp_path: Path) -> None:
    write_manifest(tmp_path, "echo", ECHO)
    with serving(tmp_path) as local:
        with connect(local.port) as sock:
            sock.sendall(b"POST /function/echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                         b"Content-Length: %d\r\n\r\n" % (7 * MiB))
            answer = sock.recv(65536)
        assert status_of(answer) == 413


def test_an_absolute_form_request_target_gives_the_handler_its_path_and_query(tmp_path: Path) -> None:
    write_manifest(tmp_path, "echo", ECHO)
    with serving(tmp_path) as local:
        with connect(local.port) as sock:
            sock.sendall(b"GET http://example.com/function/echo/a/b?x=1 HTTP/1.1\r\nHost: example.com\r\n"
                         b"Connection: close\r\n\r\n")
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert status_of(answer) == 200
        seen = json.loads(answer.split(b"\r\n\r\n", 1)[1])
        assert (seen["rawPath"], seen["rawQueryString"]) == ("/a/b", "x=1")


def test_the_runtimes_own_endpoints_are_not_reachable_through_the_gateway(tmp_path: Path) -> None:
    write_manifest(tmp_path, "echo", ECHO)
    with serving(tmp_path) as local:
        for path in ("/_/health", "/_/ready", "/_/metrics", "/2015-03-31/functions/function/invocations"):
            result = local.invoke("echo", path=path)
            assert result.status == 200
            assert result.json()["rawPath"] == path   # the function's own path, answered by the function


def test_malformed_requests_are_400_json_and_leave_no_traceback_in_the_log(tmp_path: Path) -> None:
    write_manifest(tmp_path, "hello", HELLO)
    garbage = [b"GARBAGE\r\n\r\n", b"GET /function/hello HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
               b"GET /function/hello HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
               b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"]
    with serving(tmp_path) as local:
        for request in garbage:
            with connect(local.port) as sock:
                sock.sendall(request)
                closed, answer = closed_by_server(sock, deadline=20)
            assert status_of(answer) == 400, answer[:200]
            assert answer.split(b"\r\n\r\n", 1)[1].startswith(b"{")
        assert local.invoke("hello").status == 200
        assert "Traceback" not in local.output()


def test_requests_held_by_a_stopped_client_do_not_block_other_clients(tmp_path: Path) -> None:
    write_manifest(tmp_path, "hello", HELLO)
    with serving(tmp_path, "--header-timeout", "2s") as local:
        sockets = [connect(local.port) for _ in range(50)]
        try:
            for sock in sockets:
                sock.sendall(b"GET /function/hel")
            answers: list[int] = []
            threads = [threading.Thread(target=lambda: answers.append(local.invoke("hello").status))
                       for _ in range(10)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=60)
            assert answers == [200] * 10
        finally:
            for sock in sockets:
                sock.close()
