"""`kfn local` serving invocations: the answers a caller gets, good and bad."""
from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.localmode import HELLO, LocalMode, http, write_manifest
from tests.support.waiting import wait_until

BODY_LIMIT = 1024
QUEUE_LIMIT = 2
QUEUE_TIMEOUT = 3.0


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMode]:
    directory = tmp_path_factory.mktemp("functions")
    write_manifest(directory, "hello", HELLO)
    write_manifest(directory, "boom", """
        def handler(event, context):
            raise ValueError("the handler failed on purpose")
    """)
    write_manifest(directory, "sleepy", """
        import time
        def handler(event, context):
            time.sleep(5)
            return "too late"
    """, timeout="1s")
    write_manifest(directory, "crashy", """
        import os
        def handler(event, context):
            if event.get("body") == "crash":
                os._exit(1)
            return "alive"
    """)
    # One slot in total: a second request queues, a fourth is turned away.
    write_manifest(directory, "single", """
        import time
        def handler(event, context):
            time.sleep(float(event.get("body") or 0))
            return "done"
    """, concurrency=1, timeout="10s", scale={"maxReplicas": 1})
    server = LocalMode(directory, extra_args=[
        "--max-body-size", str(BODY_LIMIT), "--queue-limit", str(QUEUE_LIMIT), "--queue-timeout", f"{QUEUE_TIMEOUT}s"])
    try:
        yield server.start()
    finally:
        server.stop()


def test_a_function_answers_with_its_handlers_result(local: LocalMode) -> None:
    result = local.invoke("hello", body=b"kfn", headers={"Content-Type": "text/plain"})
    assert result.status == 200
    assert result.json() == {"hello": "kfn", "function": "hello"}


def test_the_first_request_to_a_function_at_zero_waits_for_an_instance(local: LocalMode) -> None:
    wait_until(lambda: local.ready("crashy") == 0, timeout=15, what="crashy at zero")
    result = local.invoke("crashy")
    assert result.status == 200
    assert result.body == b"alive"   # a string result is the body itself (payload 2.0)
    assert local.ready("crashy") == 1


def test_an_unknown_function_is_404_with_a_json_error(local: LocalMode) -> None:
    result = local.invoke("nope")
    assert result.status == 404
    assert "nope" in result.json()["error"]


def test_an_oversized_body_is_413(local: LocalMode) -> None:
    result = local.invoke("hello", body=b"x" * (BODY_LIMIT + 1))
    assert result.status == 413
    assert "error" in result.json()


def test_a_handler_exception_is_api_gateways_500_with_the_details_in_the_logs(local: LocalMode) -> None:
    result = local.invoke("boom")
    assert result.status == 500
    assert result.json() == {"message": "Internal Server Error"}
    assert result.headers["X-Amz-Function-Error"] == "Unhandled"
    assert result.headers["X-Kfn-Error-Type"] == "ValueError"
    logs = http("GET", f"{local.url}/system/logs/boom?tail=200").body.decode()
    assert "the handler failed on purpose" in logs


def test_a_handler_timeout_is_api_gateways_504(local: LocalMode) -> None:
    result = local.invoke("sleepy", timeout=20)
    assert result.status == 504
    assert result.json() == {"message": "Endpoint request timed out"}
    assert result.headers["X-Kfn-Error-Type"] == "Sandbox.Timedout"


def environment_pids(local: LocalMode, name: str) -> set[int]:
    return {env["pid"] for instance in local.instances(name)["instances"] for env in instance["environments"]}


def test_an_environment_crash_mid_invocation_is_a_runtime_exit_error_and_a_fresh_environment_serves_next(
        local: LocalMode) -> None:
    assert local.invoke("crashy").status == 200
    before = environment_pids(local, "crashy")
    result = local.invoke("crashy", body=b"crash", headers={"Content-Type": "text/plain"})
    assert result.status == 500
    assert result.headers["X-Kfn-Error-Type"] == "Runtime.ExitError"
    again = local.invoke("crashy")
    assert again.status == 200 and again.body == b"alive"
    assert environment_pids(local, "crashy") - before
    logs = http("GET", f"{local.url}/system/logs/crashy?tail=200").body.decode()
    assert "Runtime exited with error: exit status 1" in logs


def test_a_full_queue_is_429_with_retry_after_and_the_gateway_stays_healthy(local: LocalMode) -> None:
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(local.invoke, "single", body=b"0.5", headers={"Content-Type": "text/plain"})
                   for _ in range(8)]
        rejected = [f.result() for f in futures if f.result().status == 429]
        assert http("GET", local.url + "/healthz").status == 200
        results = [f.result() for f in futures]
    assert rejected, [r.status for r in results]
    assert all(r.headers.get("Retry-After") for r in rejected)
    assert {r.status for r in results} == {200, 429}


def test_a_request_that_waits_longer_than_the_queue_timeout_is_503_with_retry_after(local: LocalMode) -> None:
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        holder = pool.submit(local.invoke, "single", body=str(QUEUE_TIMEOUT + 2).encode(),
                             headers={"Content-Type": "text/plain"})
        wait_until(lambda: (local.function("single") or {}).get("inFlight") == 1, timeout=10, what="a held slot")
        waiter = local.invoke("single", body=b"0", headers={"Content-Type": "text/plain"})
        assert holder.result().status == 200
    assert waiter.status == 503
    assert waiter.headers.get("Retry-After")
    assert http("GET", local.url + "/healthz").status == 200


def test_a_path_and_query_below_the_function_reach_the_handler(tmp_path: Path) -> None:
    write_manifest(tmp_path, "echo", """
        def handler(event, context):
            http = event["requestContext"]["http"]
            return {"path": event["rawPath"], "query": event.get("rawQueryString"), "method": http["method"]}
    """)
    server = LocalMode(tmp_path)
    try:
        server.start()
        result = server.invoke("echo", path="/items/7?color=red", method="DELETE")
        assert result.status == 200
        assert result.json() == {"path": "/items/7", "query": "color=red", "method": "DELETE"}
    finally:
        server.stop()
