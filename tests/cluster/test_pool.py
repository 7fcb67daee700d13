"""Warm pools: a function at zero starts in a generic pool pod of its namespace, specialised on
demand; the pool refills; the faults of issue 17 (racing gateways, a pod killed mid-specialisation, a burst
of cold starts larger than the pool, the operator restarted with claims in flight, the archive store
unreachable at specialisation).

The cluster-wide release runs the chart's default pool (pool.size 1 per runtime and namespace).
Each test has a namespace of its own, so it knows its pool.
"""
from __future__ import annotations

import concurrent.futures
import statistics
import time
from collections.abc import Iterator

import pytest

from tests.cluster import platform
from tests.cluster.platform import Release

HELLO = """
def handler(event, context):
    return {"ok": True, "function": context.function_name}
"""
# Import takes a while: a claimed pod stays in its specialisation long enough to be hit.
SLOW_IMPORT = """
import time

time.sleep(3)


def handler(event, context):
    return {"ok": True, "function": context.function_name}
"""
POOL_SIZE = 1   # the chart's default


@pytest.fixture
def pool_ns(release: Release) -> Iterator[str]:
    """A namespace of the test's own; its Functions are deleted after it (their pods stop)."""
    ns = platform.create_namespace("pool")
    yield ns
    platform.kubectl("delete", "functions", "--all", "--wait=false", namespace=ns, check=False)


def _ready_pool(ns: str, size: int = POOL_SIZE) -> list[dict]:
    return platform.wait_until(f"the pool of {ns} ready ({size})", lambda: platform.idle_pool_ready(ns, size),
                               timeout=90)


def _serving_pod(name: str, ns: str) -> dict:
    (pod,) = platform.function_pods(name, ns)
    return pod


def test_a_function_at_zero_starts_in_a_pool_pod_and_the_pool_refills(release: Release, pool_ns: str) -> None:
    release.deploy(platform.function("pooled", HELLO, scale={"idleTimeout": "3s"}), pool_ns)
    (idle,) = _ready_pool(pool_ns)
    started = time.monotonic()
    answer = platform.http_get(release.url("pooled", pool_ns))
    platform.record("warm pool: request at zero → 200 (cluster tier)", time.monotonic() - started, "s")
    assert answer.status == 200, answer.text
    assert answer.json() == {"ok": True, "function": "pooled"}
    pod = _serving_pod("pooled", pool_ns)
    assert pod["metadata"]["name"] == idle["metadata"]["name"]
    assert pod["metadata"]["labels"][platform.LABEL_POOL_STATE] == "specialized"
    assert [o["kind"] for o in pod["metadata"].get("ownerReferences") or ()] == ["Function"]
    assert platform.deployment_replicas("pooled", pool_ns) == 0
    served = pod["metadata"]["name"]
    refilled = platform.wait_until("the pool refilled with another pod", lambda: [
        p for p in platform.idle_pool_ready(pool_ns, POOL_SIZE) or () if p["metadata"]["name"] != served], timeout=60)
    platform.record("warm pool: claim → the pool ready again", time.monotonic() - started, "s")
    assert refilled


def test_a_specialised_pod_is_deleted_at_scale_to_zero_never_returned(release: Release, pool_ns: str) -> None:
    release.deploy(platform.function("brief", HELLO, scale={"idleTimeout": "3s"}), pool_ns)
    _ready_pool(pool_ns)
    assert platform.http_get(release.url("brief", pool_ns)).status == 200
    served = _serving_pod("brief", pool_ns)["metadata"]["uid"]
    platform.wait_until("no instance of brief left", lambda: not platform.function_pods("brief", pool_ns), timeout=60)
    assert served not in {p["metadata"]["uid"] for p in platform.pool_pods(pool_ns)}
    assert platform.instances("brief", pool_ns) == 0


def test_a_function_a_pool_cannot_serve_takes_the_deployment_path(release: Release, pool_ns: str) -> None:
    resources = {"requests": {"cpu": "60m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}}
    release.deploy(platform.function("own-class", HELLO, resources=resources), pool_ns)
    release.deploy(platform.function("pool-keeper", HELLO), pool_ns)   # so the namespace has a pool
    _ready_pool(pool_ns)
    assert platform.http_get(release.url("own-class", pool_ns)).status == 200
    pod = _serving_pod("own-class", pool_ns)
    assert platform.LABEL_POOL_STATE not in pod["metadata"]["labels"]
    assert platform.deployment_replicas("own-class", pool_ns) == 1
    assert len(platform.idle_pool_ready(pool_ns, POOL_SIZE) or ()) == POOL_SIZE   # untouched


def test_two_gateways_racing_for_the_last_pool_pod_both_serve_and_no_pod_serves_two(
        release: Release, pool_ns: str) -> None:
    for name in ("racer-a", "racer-b"):
        release.deploy(platform.function(name, HELLO, scale={"idleTimeout": "30s"}), pool_ns)
    _ready_pool(pool_ns)
    gateways = release.gateway_pod_urls()
    assert len(gateways) >= 2, gateways
    path = {n: platform.function_path(n, pool_ns) for n in ("racer-a", "racer-b")}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda pair: platform.http_get(pair[0] + path[pair[1]]),
                                [(gateways[0], "racer-a"), (gateways[1], "racer-b")]))
    assert [a.status for a in answers] == [200, 200], [a.text for a in answers]
    assert [a.json()["function"] for a in answers] == ["racer-a", "racer-b"]
    specialised = platform.pool_pods(pool_ns, "specialized")
    served = {p["metadata"]["labels"][platform.LABEL_FUNCTION] for p in specialised}
    assert len(specialised) == len(served), [p["metadata"]["name"] for p in specialised]   # one function each
    for name in ("racer-a", "racer-b"):
        assert platform.instances(name, pool_ns) == 1, name


def test_a_pool_pod_killed_while_it_specialises_loses_no_request(release: Release, pool_ns: str) -> None:
    release.deploy(platform.function("slow-init", SLOW_IMPORT, timeout="10s"), pool_ns)
    _ready_pool(pool_ns)
    waiting = platform.get_in_background(release.url("slow-init", pool_ns), timeout=90)
    (claimed,) = platform.wait_until("a claimed pool pod", lambda: platform.pool_pods(pool_ns, "claimed"),
                                     timeout=30, interval=0.05)
    platform.kubectl("delete", "pod", claimed["metadata"]["name"], "--grace-period=0", "--force", "--wait=false",
                     namespace=pool_ns)
    answer = waiting.result(timeout=100)
    assert answer.status == 200, answer.text
    assert answer.json()["function"] == "slow-init"
    serving = {p["metadata"]["uid"] for p in platform.function_pods("slow-init", pool_ns)}
    assert claimed["metadata"]["uid"] not in serving


def test_a_burst_of_20_functions_cold_starting_at_once_fails_none(release: Release, pool_ns: str) -> None:
    names = [f"burst-{i:02}" for i in range(20)]
    for name in names:
        platform.apply(platform.function(name, HELLO, scale={"idleTimeout": "20s"}), namespace=pool_ns)
    for name in names:
        platform.wait_ready(name, pool_ns, timeout=120)
        release.wait_known(name, pool_ns)
    _ready_pool(pool_ns)
    with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
        def call(name: str) -> tuple[int, float, str]:
            started = time.monotonic()
            answer = platform.http_get(release.url(name, pool_ns), timeout=120)
            return answer.status, time.monotonic() - started, answer.text
        results = list(pool.map(call, names))
    failed = [(n, s, t) for n, (s, _, t) in zip(names, results, strict=True) if s != 200]
    seconds = sorted(r[1] for r in results)
    from_pool = len(platform.pool_pods(pool_ns, "specialized"))
    platform.record("warm pool: 20 functions cold-starting at once: failed / from the pool / p50 / slowest",
                    f"{len(failed)} / {from_pool} / {statistics.median(seconds):.2f} s / {seconds[-1]:.2f} s")
    assert not failed, failed


def test_the_operator_restarted_with_claims_in_flight_leaves_no_pod_claimed_by_nobody(
        release: Release, pool_ns: str) -> None:
    names = ["claim-a", "claim-b"]
    for name in names:
        release.deploy(platform.function(name, SLOW_IMPORT, timeout="10s"), pool_ns)
    _ready_pool(pool_ns)
    waiting = [platform.get_in_background(release.url(name, pool_ns), timeout=90) for name in names]
    platform.wait_until("a claim in flight", lambda: platform.pool_pods(pool_ns, "claimed"), timeout=30, interval=0.05)
    (operator,) = platform.pods(release.namespace, release.selector("operator"))
    platform.kubectl("delete", "pod", operator["metadata"]["name"], "--wait=false", namespace=release.namespace)
    answers = [w.result(timeout=100) for w in waiting]
    assert [a.status for a in answers] == [200, 200], [a.text for a in answers]
    platform.wait_until("no pod left claimed", lambda: not platform.pool_pods(pool_ns, "claimed"), timeout=60)
    for name in names:
        assert platform.instances(name, pool_ns) >= 1, name
    specialised = platform.pool_pods(pool_ns, "specialized")
    assert len({p["metadata"]["labels"][platform.LABEL_FUNCTION] for p in specialised}) == len(specialised)
    platform.wait_until("an operator ready again", lambda: platform.ready_pods(release.namespace,
                                                                               release.selector("operator")),
                        timeout=60)
    _ready_pool(pool_ns)


USES_SIX = """
import six


def handler(event, context):
    return {"six": six.__version__, "function": context.function_name}
"""


def test_with_the_archive_store_unreachable_at_specialisation_the_request_waits_and_is_served_once_it_is_back(
        release: Release, pool_ns: str) -> None:
    release.deploy(platform.function("pooled-six", USES_SIX, requirements=["six"]), pool_ns, timeout=120)
    _ready_pool(pool_ns)
    nats_ready = lambda: (platform.get("statefulset", release.nats, namespace=release.namespace)  # noqa: E731
                          or {}).get("status", {}).get("readyReplicas") == 1
    platform.kubectl("scale", "statefulset", release.nats, "--replicas=0", namespace=release.namespace)
    try:
        platform.wait_until("no NATS pod", lambda: not platform.get("pod", f"{release.nats}-0",
                                                                    namespace=release.namespace), timeout=60)
        waiting = platform.get_in_background(release.url("pooled-six", pool_ns), timeout=110)
        platform.wait_until("a pool pod claimed while the store is down", lambda: platform.pool_pods(
            pool_ns, "claimed"), timeout=30, interval=0.05)
        time.sleep(1)   # its instance is fetching from a store that does not answer
    finally:
        platform.kubectl("scale", "statefulset", release.nats, "--replicas=1", namespace=release.namespace)
    platform.wait_until("NATS ready again", nats_ready, timeout=90)
    answer = waiting.result(timeout=120)
    assert answer.status == 200, answer.text
    assert answer.json()["function"] == "pooled-six" and "six" in answer.json()
    platform.wait_until("no pod left claimed", lambda: not platform.pool_pods(pool_ns, "claimed"), timeout=60)
