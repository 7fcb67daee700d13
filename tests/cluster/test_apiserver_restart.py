"""The Kubernetes API server restarted while the gateway holds requests for a cold start.

The API server is stopped, requests for a function at zero instances arrive at both gateway
replicas (they hold them: the scale from zero cannot be written yet, and is asked again), and the
API server is started again the way realk8s starts it. Every held request must be answered 200:
the gateways' informers reconnect, the scale-up goes through, the pod starts and serves them.
The gateways hold requests up to their queue timeout (this tier's release: 120 s, so an API server
restart on a small test machine fits in it).
"""
from __future__ import annotations

import time

from tests.cluster import platform
from tests.cluster.platform import Release

HELD = 10
CODE = """
def handler(event, context):
    return {"served": True}
"""


def test_requests_held_for_a_cold_start_survive_an_api_server_restart(release: Release, fn_ns: str,
                                                                      deployed: list[str]) -> None:
    name = "apirestart"
    deployed.append(name)
    release.deploy(platform.function(name, CODE, scale={"minReplicas": 0, "idleTimeout": "10m"}), fn_ns)
    platform.wait_until(f"{name} at zero pods", lambda: not platform.function_pods(name, fn_ns), timeout=60)
    gateways = release.gateway_pod_urls()   # read now: kubectl needs the API server
    url = release.url(name, fn_ns)
    server = platform.ApiServer()
    command = server.command()

    started = time.monotonic()
    server.stop()
    try:
        answers = [platform.get_in_background(url, timeout=180) for _ in range(HELD)]
        platform.wait_until(f"the gateways to hold {HELD} requests", lambda: platform.queued(
            gateways, name, fn_ns) == HELD, timeout=30, interval=0.2)
    finally:
        server.start(command)
    server.wait_ready()
    outage = time.monotonic() - started
    results = [answer.result(timeout=200) for answer in answers]
    served = time.monotonic() - started

    failed = [(r.status, r.text[:200]) for r in results if r.status != 200]
    platform.record("API server restarted while requests waited for a cold start: failed requests",
                    f"{len(failed)} of {HELD}")
    platform.record("API server restart: stop → ready again", outage, "s")
    platform.record("API server restart: stop → every held request answered", served, "s")
    assert failed == []
    assert all(r.json() == {"served": True} for r in results)
