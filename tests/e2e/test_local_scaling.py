"""`kfn local` scaling: up under a burst, down as load falls, to zero when idle, without losing requests."""
from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Iterator

import pytest

from tests.support.localmode import HELLO, HttpResult, LocalMode, ReplicaWatcher, write_manifest
from tests.support.waiting import wait_until

SLOW = """
    import time
    def handler(event, context):
        time.sleep(float(event.get("body") or 0.3))
        return "ok"
"""


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMode]:
    directory = tmp_path_factory.mktemp("functions")
    write_manifest(directory, "idle", HELLO)
    write_manifest(directory, "burst", SLOW, concurrency=2, scale={"maxReplicas": 8})
    write_manifest(directory, "steady", SLOW, concurrency=2, scale={"maxReplicas": 6})
    server = LocalMode(directory)
    try:
        yield server.start()
    finally:
        server.stop()


def _post(local: LocalMode, name: str, seconds: float) -> HttpResult:
    return local.invoke(name, body=str(seconds).encode(), headers={"Content-Type": "text/plain"}, timeout=60)


def test_an_idle_function_scales_to_zero_and_the_next_request_starts_it_again(local: LocalMode) -> None:
    assert local.invoke("idle").status == 200
    assert local.ready("idle") == 1
    wait_until(lambda: local.ready("idle") == 0 and local.function("idle")["replicas"] == 0,  # type: ignore[index]
               timeout=20, what="idle to scale to zero")
    wait_until(lambda: local.instances("idle")["instances"] == [], timeout=10, what="its instance to exit")
    result = local.invoke("idle")
    assert result.status == 200
    assert result.json()["function"] == "idle"


def test_a_burst_scales_a_function_above_one_instance_and_back_down(local: LocalMode) -> None:
    with ReplicaWatcher(local, "burst") as watcher, concurrent.futures.ThreadPoolExecutor(max_workers=40) as pool:
        results = list(pool.map(lambda _: _post(local, "burst", 0.5), range(80)))
    assert [r.status for r in results] == [200] * 80
    assert watcher.peak > 1
    wait_until(lambda: local.ready("burst") == 0, timeout=30, what="burst to scale back to zero")


def test_no_request_fails_while_instances_scale_down_under_steady_load(local: LocalMode) -> None:
    # Scale up with a burst, then keep a light load on while the autoscaler removes instances.
    with concurrent.futures.ThreadPoolExecutor(max_workers=30) as pool:
        burst = list(pool.map(lambda _: _post(local, "steady", 0.5), range(60)))
    assert {r.status for r in burst} == {200}
    peak = local.ready("steady")
    assert peak > 1

    stop = threading.Event()
    statuses: list[int] = []

    def client() -> None:
        while not stop.is_set():
            statuses.append(_post(local, "steady", 0.1).status)

    threads = [threading.Thread(target=client) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: local.ready("steady") < peak, timeout=30, what="steady to scale down under load")
        time.sleep(1.0)  # and a little longer, so drained instances finish their requests
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert statuses and set(statuses) == {200}, statuses
