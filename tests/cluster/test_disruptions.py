"""Steady load while something changes or breaks: no GET may fail.

A load generator sends GETs at a fixed rate through the gateway's NodePort from a pool of
keep-alive connections, as an HTTP client library would (without retries), and counts statuses
and connection errors while the test rolls new code, deletes a function pod or deletes one of
the two gateway replicas.
"""
from __future__ import annotations

import time

from tests.cluster import platform
from tests.cluster.platform import Release

RATE = 20  # requests per second

VERSIONED = """
def handler(event, context):
    return {{"version": {version}}}
"""


def versioned(name: str, version: int, **spec: object) -> dict:
    return platform.function(name, VERSIONED.format(version=version), **spec)


def test_code_change_rolls_out_without_failed_requests(release: Release, fn_ns: str, deployed: list[str]) -> None:
    name = "rollout"
    deployed.append(name)
    release.deploy(versioned(name, 1, scale={"minReplicas": 1, "maxReplicas": 1}), fn_ns)
    platform.wait_until(f"{name} ready", lambda: platform.ready_pods(fn_ns, f"kfn.dev/function={name}"), timeout=60)
    url = release.url(name, fn_ns)
    old_pods = {p["metadata"]["name"] for p in platform.function_pods(name, fn_ns)}

    with platform.SteadyLoad(url, rate=RATE) as load:
        time.sleep(2)
        started = time.monotonic()
        platform.apply(versioned(name, 2, scale={"minReplicas": 1, "maxReplicas": 1}), namespace=fn_ns)
        platform.wait_until("the new code to answer", lambda: platform.http_get(url).json() == {"version": 2},
                            timeout=60)
        platform.wait_until("the old pods to be gone", lambda: not old_pods & {
            p["metadata"]["name"] for p in platform.function_pods(name, fn_ns)}, timeout=60)
        rolled = time.monotonic() - started
        time.sleep(2)

    platform.record("rollout under 20 rps: failed requests", f"{load.report.failed} of {load.report.total}")
    platform.record("rollout under 20 rps: apply → old pods gone", rolled, "s")
    assert load.report.failed == 0, load.report.summary()
    assert {b"".join(body.split()) for body in load.report.bodies} <= {b'{"version":1}', b'{"version":2}'}
    assert platform.http_get(url).json() == {"version": 2}


def test_deleted_function_pod_fails_no_request(release: Release, fn_ns: str, deployed: list[str]) -> None:
    name = "podkill"
    deployed.append(name)
    release.deploy(versioned(name, 1, scale={"minReplicas": 2, "maxReplicas": 2}), fn_ns)
    selector = f"kfn.dev/function={name}"
    platform.wait_until(f"2 ready pods of {name}", lambda: len(platform.ready_pods(fn_ns, selector)) == 2, timeout=60)
    victim = platform.ready_pods(fn_ns, selector)[0]["metadata"]["name"]

    with platform.SteadyLoad(release.url(name, fn_ns), rate=RATE) as load:
        time.sleep(2)
        platform.kubectl("delete", "pod", victim, "--wait=false", namespace=fn_ns)
        platform.wait_until("a replacement pod", lambda: len(
            [p for p in platform.ready_pods(fn_ns, selector) if p["metadata"]["name"] != victim]) == 2, timeout=60)
        time.sleep(2)

    platform.record("function pod deleted under 20 rps: failed requests",
                    f"{load.report.failed} of {load.report.total}")
    assert load.report.failed == 0, load.report.summary()


def test_deleted_gateway_replica_fails_no_get(release: Release, fn_ns: str, deployed: list[str]) -> None:
    name = "gwkill"
    deployed.append(name)
    release.deploy(versioned(name, 1, scale={"minReplicas": 1, "maxReplicas": 1}), fn_ns)
    platform.wait_until(f"{name} ready", lambda: platform.ready_pods(fn_ns, f"kfn.dev/function={name}"), timeout=60)
    selector = release.selector("gateway")
    victim = platform.ready_pods(release.namespace, selector)[0]["metadata"]["name"]

    with platform.SteadyLoad(release.url(name, fn_ns), rate=RATE) as load:
        time.sleep(2)
        platform.kubectl("delete", "pod", victim, "--wait=false", namespace=release.namespace)
        platform.wait_until("a replacement gateway", lambda: len(
            [p for p in platform.ready_pods(release.namespace, selector) if p["metadata"]["name"] != victim]) == 2,
            timeout=60)
        time.sleep(2)

    platform.record("gateway replica deleted under 20 rps: failed requests",
                    f"{load.report.failed} of {load.report.total} "
                    f"({dict(load.report.errors) or 'no connection errors'})")
    assert load.report.failed == 0, load.report.summary()
