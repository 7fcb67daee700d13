"""Scale from zero through the gateway, back to zero when idle, and up to maxReplicas in a burst."""
from __future__ import annotations

import statistics
import time

from tests.cluster import platform
from tests.cluster.platform import Release

SLEEPY = """
import time


def handler(event, context):
    time.sleep(0.1)
    return {"ok": True}
"""

CYCLES = 3


def test_scales_from_zero_and_back_to_zero_repeatedly(release: Release, fn_ns: str, deployed: list[str]) -> None:
    name = "zero"
    deployed.append(name)
    release.deploy(platform.function(name, SLEEPY, scale={"idleTimeout": "3s", "maxReplicas": 2}), fn_ns)
    url = release.url(name, fn_ns)
    cold, to_zero = [], []
    for cycle in range(1, CYCLES + 1):
        assert platform.deployment_replicas(name, fn_ns) == 0
        started = time.monotonic()
        answer = platform.http_get(url)
        cold.append(time.monotonic() - started)
        assert answer.status == 200, f"cycle {cycle}: {answer.status} {answer.text}"
        assert answer.json() == {"ok": True}

        idle_since = time.monotonic()
        platform.wait_until(f"cycle {cycle}: {name} scaled to 0",
                            lambda: platform.instances(name, fn_ns) == 0, timeout=30)
        platform.wait_until(f"cycle {cycle}: no pod of {name} left",
                            lambda: not platform.function_pods(name, fn_ns), timeout=30)
        to_zero.append(time.monotonic() - idle_since)
    platform.record("cold start through the gateway (scale-from-zero test)",
                    " / ".join(f"{s:.2f}" for s in cold), "s")
    platform.record("last request → no pods left (idleTimeout 3s)", " / ".join(f"{s:.1f}" for s in to_zero), "s")


def test_burst_scales_up_to_max_replicas_without_errors(release: Release, fn_ns: str, deployed: list[str]) -> None:
    name = "burst"
    deployed.append(name)
    release.deploy(platform.function(name, SLEEPY, concurrency=4, scale={"maxReplicas": 5}), fn_ns)
    highest = 0
    with platform.Burst(release.url(name, fn_ns), connections=40) as burst:
        started = time.monotonic()
        deadline = started + 45
        reached = None
        while time.monotonic() < deadline:
            # Instances: the Deployment's and the one a cold start may have taken from the warm pool.
            highest = max(highest, platform.instances(name, fn_ns))
            selector = f"{platform.LABEL_FUNCTION}={name},{platform.LABEL_COMPONENT}=function"
            if len(platform.ready_pods(fn_ns, selector)) >= 5:
                reached = time.monotonic() - started
                break
            time.sleep(0.25)
        time.sleep(2)  # a little longer at the top, where the autoscaler must not go past the maximum
        highest = max(highest, platform.instances(name, fn_ns))
    report = burst.report
    bad = ", ".join(f"HTTP {s}: {n}" for s, n in sorted(report.statuses.items()) if s >= 300)
    platform.record("burst 40 connections: failed requests", f"{report.failed} of {report.total} ({bad or 'none'})")
    platform.record("burst 40 connections: time to 5 ready replicas", reached if reached else "never",
                    "s" if reached else "")
    platform.record("burst 40 connections: requests (p50 latency)",
                    f"{report.total} ({statistics.median(report.latencies) * 1000:.0f} ms)" if report.latencies
                    else "0")
    assert reached is not None, f"never 5 ready replicas in 45s (highest asked for: {highest}); {report.summary()}"
    assert highest == 5, f"the autoscaler asked for {highest} replicas (maxReplicas 5)"
    assert report.failed == 0, report.summary()
