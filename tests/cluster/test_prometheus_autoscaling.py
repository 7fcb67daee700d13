"""The autoscaler on a real Prometheus (operator.prometheusUrl): scaling on PromQL, and holding
when Prometheus has no evidence of idleness (the gateway's scrape target down).

A release of its own watching one namespace (two operators watching the same namespace would
fight, so this runs once the cluster-wide release is gone: order 2 in conftest.py), with Debian's
Prometheus 2.42 in its namespace scraping the gateways every second (tests/cluster/prometheus.py).
"""
from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.cluster import platform, prometheus
from tests.cluster.platform import Release

pytestmark = pytest.mark.last(order=2)

SLEEPY = """
import time


def handler(event, context):
    time.sleep(0.1)
    return {"ok": True}
"""

# Short windows keep the tier short: idle 5 s, and the PromQL window (30 s) sees the load stop.
SCALE = {"idleTimeout": "5s", "stableWindow": "6s", "maxReplicas": 4}
METRICS_PORT = 9091


@pytest.fixture(scope="module")
def promql() -> Iterator[tuple[Release, str]]:
    """A release whose autoscaler reads a real Prometheus; yields (release, functions' namespace)."""
    for other in platform.RELEASES:
        other.uninstall()
    functions, namespace = platform.create_namespace("fnp"), platform.create_namespace("kfnp")
    release = Release(f"kfn-p-{platform.RUN_ID}", namespace, {
        "watchNamespaces": [functions],
        "operator": {"metricsPort": METRICS_PORT},
        "async": {"nats": {"install": False}},
    })
    release.values["operator"]["prometheusUrl"] = prometheus.url(release)
    prometheus.install(release)
    platform.record("helm install --wait (operator.prometheusUrl, Prometheus 2.42)", release.install(), "s")
    yield release, functions
    release.uninstall()
    for name in (functions, namespace):
        platform.delete_namespace(name)


def autoscaler_metric(release: Release, name: str) -> float | None:
    """A sample of the operator's /metrics (metricsPort), read on the operator pod's IP."""
    (pod,) = platform.ready_pods(release.namespace, release.selector("operator"))
    text = platform.http_get(f"http://{pod['status']['podIP']}:{METRICS_PORT}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def operator_log(release: Release) -> str:
    return platform.kubectl("logs", f"deployment/{release.operator}", namespace=release.namespace,
                            check=False, timeout=30).stdout


def test_on_prometheus_a_loaded_function_scales_up_and_back_to_zero_without_failures(
        promql: tuple[Release, str]) -> None:
    release, ns = promql
    platform.wait_until("Prometheus scraping both gateways (up == 1)",
                        lambda: prometheus.gateway_targets_up(release) == ["1", "1"], timeout=60)
    name = "promql-load"
    release.deploy(platform.function(name, SLEEPY, concurrency=4, scale=SCALE), ns)
    assert platform.deployment_replicas(name, ns) == 0
    highest = 0
    with platform.Burst(release.url(name, ns), connections=12) as load:
        started = time.monotonic()
        deadline = started + 60
        while time.monotonic() < deadline and highest < 3:
            highest = max(highest, platform.instances(name, ns))
            time.sleep(0.25)
        time.sleep(3)  # a few more seconds at the top, through the autoscaler's next decisions
    stopped = time.monotonic()
    assert highest >= 3, f"12 callers on concurrency 4 never got 3 replicas in 60s (highest {highest})"
    assert load.report.failed == 0, load.report.summary()
    platform.wait_until(f"{name} back to 0 replicas once the load stopped",
                        lambda: platform.instances(name, ns) == 0, timeout=90)
    platform.record("PromQL source: 12 callers → highest replicas, failed requests",
                    f"{highest}, {load.report.failed} of {load.report.total}")
    platform.record("PromQL source: last request → 0 replicas (idleTimeout 5s, window 30s)",
                    time.monotonic() - stopped, "s")
    assert autoscaler_metric(release, "kfn_autoscaler_metrics_available") == 1


def test_with_the_gateway_scrape_target_down_a_loaded_function_is_held_not_scaled_to_zero(
        promql: tuple[Release, str]) -> None:
    release, ns = promql
    prometheus.break_scrape(release)
    platform.wait_until("Prometheus failing to scrape both gateways (up == 0)",
                        lambda: prometheus.gateway_targets_up(release) == ["0", "0"], timeout=60)
    name = "promql-held"
    release.deploy(platform.function(name, SLEEPY, concurrency=4, scale=SCALE), ns)
    pods_seen: set[str] = set()
    lowest = None
    with platform.Burst(release.url(name, ns), connections=12) as load:
        first = platform.wait_until(f"a ready pod of {name} (the gateway's cold start)",
                                    lambda: platform.ready_pods(
                                        ns, f"{platform.LABEL_FUNCTION}={name},{platform.LABEL_COMPONENT}=function"),
                                    timeout=60)
        held_since = time.monotonic()
        # Three idle timeouts and a stable window under load, with no metrics from any gateway.
        while time.monotonic() < held_since + 21:
            replicas = platform.instances(name, ns)
            lowest = replicas if lowest is None else min(lowest, replicas)
            pods_seen |= {p["metadata"]["uid"] for p in platform.function_pods(name, ns)}
            time.sleep(0.5)
    assert load.report.failed == 0, load.report.summary()
    assert lowest is not None and lowest >= 1, f"{name} was scaled to {lowest} while loaded"
    assert pods_seen == {first[0]["metadata"]["uid"]}, "the function's pod was replaced while loaded"
    log = operator_log(release)
    assert "metrics unavailable" in log and "holding every function" in log, log[-3000:]
    assert autoscaler_metric(release, "kfn_autoscaler_metrics_available") == 0
    fn = platform.get("function", name, namespace=ns) or {}
    assert "no evidence" in (fn.get("status") or {}).get("lastScaleReason", ""), fn.get("status")
    platform.record("PromQL source, gateway target down: replicas held under load, failed requests",
                    f"{lowest}, {load.report.failed} of {load.report.total}")
