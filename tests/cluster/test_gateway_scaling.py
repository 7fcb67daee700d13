"""The gateway scaled while it delivers: 2,000 asynchronous invocations of a short function while
the gateway Deployment goes 2 → 3 → 1 replicas (`kubectl scale`), none lost.

Each replica takes its share of the function's async concurrency from the ready endpoints of its
own Service, as they come and go (its log says "async delivery shared by N gateway replicas"); a
replica scaled away releases what it still runs at its drain timeout to the others. What the
function ran is read from its pods' logs: one line `DELIVERED <invocation id>` per invocation, the
id being the X-Call-Id the test gave the event. An id that never shows up is lost (asserted
none); one that shows up twice was delivered twice (at least once allows it: counted and printed).
"""
from __future__ import annotations

import collections
import concurrent.futures
import http.client
import json
import re
import secrets
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from tests.cluster import platform
from tests.cluster.platform import Release

EVENTS = 2000
SINK = """
import time


def handler(event, context):
    time.sleep(0.2)
    print("DELIVERED", context.aws_request_id, flush=True)
    return {"ok": True}
"""
# Two instances that stay (their logs hold every delivery): 2 × 8 = an async concurrency of 16,
# shared 8 + 8, then 6 + 6 + 6, then 16 by one replica. 0.2 s each: 2,000 take 25 s at least, so
# events are queued and in flight when replicas go.
SINK_SPEC: dict[str, Any] = {"concurrency": 8, "scale": {"minReplicas": 2, "maxReplicas": 2}}
SUBMITTERS = 8            # POSTs at once
SUBMIT_ATTEMPTS = 5       # per event: a replica going away may drop a connection (the same id is stored once)
_DELIVERED = re.compile(r"DELIVERED (\S+)")
_SHARED = re.compile(r"async delivery shared by (\d+) gateway replicas")


def deliveries(name: str, namespace: str) -> collections.Counter[str]:
    return collections.Counter(_DELIVERED.findall(platform.function_log(name, namespace)))


def submit(release: Release, name: str, namespace: str, ids: Sequence[str]) -> collections.Counter[str]:
    """POST /async-function/ once per id (X-Call-Id: the id), SUBMITTERS at once, each retried on
    a dropped connection or a 5xx; returns the failures seen on the way (by kind). AssertionError
    if an id was never accepted."""
    path = "/async-function/" + platform.cli_name(name, namespace)
    failures: collections.Counter[str] = collections.Counter()

    def one(invocation_id: str) -> bool:
        for _ in range(SUBMIT_ATTEMPTS):
            try:
                answer = platform.request("POST", release.gateway + path, body=b'{"n": 1}', timeout=20, headers={
                    "Content-Type": "application/json", "X-Call-Id": invocation_id})
            except (OSError, http.client.HTTPException) as e:
                failures[type(e).__name__] += 1
                time.sleep(0.5)
                continue
            if answer.status == 202:
                return True
            failures[str(answer.status)] += 1
            time.sleep(0.5)
        return False

    with concurrent.futures.ThreadPoolExecutor(SUBMITTERS, thread_name_prefix="submit") as pool:
        accepted = dict(zip(ids, pool.map(one, ids), strict=True))
    refused = [i for i, ok in accepted.items() if not ok]
    assert not refused, f"{len(refused)} events never accepted (e.g. {refused[:3]}); failures {dict(failures)}"
    return failures


def gateway_pods(release: Release) -> list[dict[str, Any]]:
    return platform.pods(release.namespace, release.selector("gateway"))


def scale_gateways(release: Release, replicas: int) -> None:
    platform.kubectl("scale", "deployment", release.gateway_deployment, f"--replicas={replicas}",
                     namespace=release.namespace)


def exactly_ready(release: Release, replicas: int) -> bool:
    """`replicas` gateway pods, all ready, and none other (a terminating one included)."""
    ready = platform.ready_pods(release.namespace, release.selector("gateway"))
    return len(gateway_pods(release)) == replicas and len(ready) == replicas


def shares_told(release: Release) -> set[int]:
    """The replica counts the current gateway pods have logged sharing the async queue by, last each."""
    out = set()
    for pod in gateway_pods(release):
        log = platform.kubectl("logs", pod["metadata"]["name"], "-c", "gateway", namespace=release.namespace,
                               check=False, timeout=30).stdout
        counts = _SHARED.findall(log)
        if counts:
            out.add(int(counts[-1]))
    return out


@pytest.fixture
def sink(release: Release, fn_ns: str) -> Iterator[str]:
    name = "scaling-sink"
    release.deploy(platform.function(name, SINK, **SINK_SPEC), fn_ns)
    platform.wait_until(f"two instances of {name}", lambda: len(platform.ready_pods(
        fn_ns, f"{platform.LABEL_FUNCTION}={name},{platform.LABEL_COMPONENT}=function")) == 2, timeout=90)
    yield name
    platform.kubectl("delete", "function", name, "--ignore-not-found", "--wait=false", namespace=fn_ns, check=False)


@pytest.fixture
def two_gateways_after(release: Release) -> Iterator[None]:
    """The release's two gateways, as the rest of the tier expects them, at the end."""
    platform.wait_until("two gateways ready", lambda: exactly_ready(release, 2), timeout=90, interval=1)
    yield
    scale_gateways(release, 2)
    platform.wait_until("two gateways ready again", lambda: exactly_ready(release, 2), timeout=120, interval=1)


@pytest.mark.timeout(420)
def test_no_event_is_lost_while_the_gateways_scale_2_3_1(release: Release, fn_ns: str, sink: str,
                                                          two_gateways_after: None) -> None:
    tag = secrets.token_hex(3)
    ids = [f"scale-{tag}-{i:04d}" for i in range(EVENTS)]
    thirds = [ids[: EVENTS // 3], ids[EVENTS // 3: 2 * EVENTS // 3], ids[2 * EVENTS // 3:]]
    started = time.monotonic()
    failures: collections.Counter[str] = collections.Counter()

    failures += submit(release, sink, fn_ns, thirds[0])
    scale_gateways(release, 3)
    failures += submit(release, sink, fn_ns, thirds[1])
    platform.wait_until("three gateways ready", lambda: exactly_ready(release, 3), timeout=90, interval=1)
    # Each replica learns the count from its Service's endpoints (the new one counts itself at once).
    platform.wait_until("every gateway sharing the queue by 3", lambda: shares_told(release) == {3},
                        timeout=60, interval=1)

    failures += submit(release, sink, fn_ns, thirds[2])
    scale_gateways(release, 1)
    delivered_at_1 = len(set(ids) & set(deliveries(sink, fn_ns)))
    platform.wait_until("one gateway left", lambda: exactly_ready(release, 1), timeout=90, interval=1)
    platform.wait_until("the gateway left sharing the queue by 1", lambda: shares_told(release) == {1},
                        timeout=60, interval=1)

    seen: collections.Counter[str] = collections.Counter()

    def all_delivered() -> bool:
        nonlocal seen
        seen = deliveries(sink, fn_ns)
        return set(ids) <= set(seen)

    try:
        platform.wait_until(f"{EVENTS} events delivered", all_delivered, timeout=180, interval=1)
    except AssertionError:
        missing = set(ids) - set(seen)
        raise AssertionError(f"{len(missing)} of {EVENTS} events never delivered (lost), e.g. "
                             f"{sorted(missing)[:5]}") from None
    took = time.monotonic() - started
    # Redeliveries of released events come at once; give the last ones time to reach the logs.
    time.sleep(3)
    seen = deliveries(sink, fn_ns)
    duplicates = sum(seen[i] - 1 for i in ids)
    print(f"gateways scaled 2 → 3 → 1 during {EVENTS} async events: lost 0, delivered twice or more "
          f"{duplicates}, delivered before the scale-down {delivered_at_1}, submission retries "
          f"{json.dumps(dict(failures))}, {took:.0f} s")
    platform.record("gateways scaled 2 → 3 → 1 mid-delivery: accepted / lost / delivered twice",
                    f"{EVENTS} / 0 / {duplicates}")
    platform.record("gateways scaled 2 → 3 → 1: submit and deliver 2,000 events", took, "s")
    assert delivered_at_1 < EVENTS, "every event was delivered before the scale-down: nothing was tested"
