"""Asynchronous invocations on a real cluster: the chart's NATS JetStream server, boto3's Invoke API
both ways, /async-function/, events kept across deleted gateways and a deleted NATS server,
schedules fired once per tick by two operator replicas, and a NATS subject trigger.

What a function ran is read from its pod's log: the recorder prints one line per invocation,
`DELIVERED <marker> <request id>`, the request id being the invocation id the gateway answered
with (x-amzn-RequestId, or /async-function/'s requestId). An event is lost when its id never
shows up; one that shows up twice was delivered twice (at least once allows it; it is counted).
"""
from __future__ import annotations

import asyncio
import collections
import datetime as dt
import json
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import nats
import nats.errors
import pytest
from botocore.config import Config

from tests.cluster import platform
from tests.cluster.platform import Release

RECORDER = """
import json
import time


def handler(event, context):
    if event.get("detail-type") == "Scheduled Event":
        print("TICK", event["id"], event["time"], context.aws_request_id, flush=True)
        return {"tick": event["id"]}
    # /async-function/ sends the API Gateway event of the HTTP request; boto3 and NATS the payload.
    payload = json.loads(event["body"]) if "requestContext" in event else event
    time.sleep(float(payload.get("sleep", 0)))
    print("DELIVERED", payload.get("marker"), context.aws_request_id, flush=True)
    return {"marker": payload.get("marker"), "requestId": context.aws_request_id}
"""
# One instance that stays (its log holds every delivery), four invocations at a time.
RECORDER_SPEC: dict[str, Any] = {"concurrency": 4, "timeout": "10s",
                                 "scale": {"minReplicas": 1, "maxReplicas": 1}}

_DELIVERED = re.compile(r"DELIVERED (\S+) (\S+)")
_TICK = re.compile(r"TICK (\S+) (\S+) (\S+)")


def deliveries(name: str, namespace: str) -> collections.Counter[str]:
    """How many times each request id was delivered to the function, from its pods' logs."""
    return collections.Counter(request_id for _, request_id in _DELIVERED.findall(platform.function_log(name,
                                                                                                          namespace)))


def wait_delivered(name: str, namespace: str, ids: set[str], *, timeout: float) -> collections.Counter[str]:
    """Wait until every id in `ids` was delivered; returns the counts (AssertionError naming how
    many are missing after `timeout`)."""
    seen: collections.Counter[str] = collections.Counter()

    def probe() -> bool:
        nonlocal seen
        seen = deliveries(name, namespace)
        return ids <= set(seen)

    try:
        platform.wait_until(f"{len(ids)} events delivered to {name}", probe, timeout=timeout, interval=1)
    except AssertionError:
        missing = ids - set(seen)
        raise AssertionError(f"{len(missing)} of {len(ids)} events never delivered (lost), e.g. "
                             f"{sorted(missing)[:5]}") from None
    return seen


def lambda_client(release: Release) -> Any:
    """boto3's Lambda client on the gateway's NodePort. The chart's gateway has keys (the admin
    key), so the Invoke API wants a request signed with one: the key's id as the access key id, the
    key as the secret (an unsigned or wrongly signed call is UnrecognizedClientException)."""
    return boto3.client("lambda", endpoint_url=release.gateway, region_name="us-east-1",
                        aws_access_key_id="admin", aws_secret_access_key=release.admin_key,
                        config=Config(retries={"total_max_attempts": 1}, read_timeout=30, connect_timeout=5))


def post_async(release: Release, name: str, namespace: str, payload: dict[str, Any]) -> str:
    """POST /async-function/NAME.NAMESPACE; the request id of the 202."""
    answer = platform.request("POST", f"{release.gateway}/async-function/{platform.cli_name(name, namespace)}",
                              body=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    assert answer.status == 202, f"{answer.status} {answer.text}"
    request_id = answer.json()["requestId"]
    assert answer.headers["x-call-id"] == request_id
    return str(request_id)


def nats_pod(release: Release) -> dict[str, Any] | None:
    return platform.get("pod", f"{release.nats}-0", namespace=release.namespace)


def pod_ready(pod: dict[str, Any] | None) -> bool:
    if not pod or pod["metadata"].get("deletionTimestamp"):
        return False
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions") or ())


def monitor(release: Release, path: str) -> Any:
    """NATS's monitoring endpoint (port 8222) on the server pod's IP (the host reaches pod IPs)."""
    pod = nats_pod(release)
    assert pod is not None and pod["status"].get("podIP"), "no NATS pod with an IP"
    answer = platform.http_get(f"http://{pod['status']['podIP']}:8222{path}", timeout=5)
    assert answer.status == 200, f"{path}: {answer.status} {answer.text}"
    return answer.json()


def queued_in_jetstream(release: Release, name: str, namespace: str) -> int:
    """Events of a function JetStream holds: not yet handed out, or handed out and not yet acked."""
    jsz = monitor(release, "/jsz?consumers=true")
    total = 0
    for account in jsz.get("account_details") or ():
        for stream in account.get("stream_detail") or ():
            for consumer in stream.get("consumer_detail") or ():
                if consumer["name"] == f"async_{namespace}_{name}":
                    total += int(consumer.get("num_pending") or 0) + int(consumer.get("num_ack_pending") or 0)
    return total


def settled(release: Release, name: str, namespace: str) -> collections.Counter[str]:
    """Once JetStream holds nothing more of the function (every event acked, the redeliveries of
    those whose lease a dead gateway held included: they come after the lease, 30 s), the
    deliveries counted then."""
    platform.wait_until(f"JetStream to hold no event of {name}", lambda: queued_in_jetstream(
        release, name, namespace) == 0, timeout=120, interval=1)
    time.sleep(2)   # the last acked invocation's output reaches the pod's log
    return deliveries(name, namespace)


@pytest.fixture(scope="module")
def recorder(release: Release, fn_ns: str) -> Iterator[str]:
    name = "recorder"
    release.deploy(platform.function(name, RECORDER, **RECORDER_SPEC), fn_ns)
    platform.wait_until(f"an instance of {name}", lambda: platform.ready_pods(
        fn_ns, f"{platform.LABEL_FUNCTION}={name},{platform.LABEL_COMPONENT}=function"), timeout=60)
    yield name
    platform.kubectl("delete", "function", name, "--ignore-not-found", "--wait=false", namespace=fn_ns, check=False)


# -- the NATS server the chart runs ----------------------------------------------------------------

def test_nats_statefulset_is_ready_without_restarts_on_a_bound_volume(release: Release) -> None:
    sts = platform.get("statefulset", release.nats, namespace=release.namespace)
    assert sts is not None, "the chart ran no NATS StatefulSet"
    # The first test of the tier may run moments after the install: Ready is waited for, restarts are not allowed.
    platform.wait_until("the NATS StatefulSet ready", lambda: (platform.get(
        "statefulset", release.nats, namespace=release.namespace) or {}).get("status", {}).get("readyReplicas") == 1,
        timeout=120, interval=1)
    pod = nats_pod(release)
    assert pod is not None and pod_ready(pod)
    assert [s["restartCount"] for s in pod["status"]["containerStatuses"]] == [0]
    # Admitted under "restricted" (no label relaxes it), and running as the image's user.
    namespace = platform.get("namespace", release.namespace)
    assert namespace is not None
    assert not any(k.startswith("pod-security.kubernetes.io/") for k in namespace["metadata"].get("labels") or {})
    assert pod["spec"]["securityContext"]["runAsUser"] == 65532
    claim = platform.get("pvc", f"data-{release.nats}-0", namespace=release.namespace)
    assert claim is not None and claim["status"]["phase"] == "Bound", claim and claim["status"]
    ready_at = next(c["lastTransitionTime"] for c in pod["status"]["conditions"] if c["type"] == "Ready")
    seconds = (_time(ready_at) - _time(pod["metadata"]["creationTimestamp"]))
    platform.record("NATS pod created → Ready (1 s resolution)", f"{seconds:.0f}", "s")
    platform.record("NATS store", f"claim {claim['metadata']['name']} bound to {claim['spec']['volumeName']} "
                                  f"({claim['spec'].get('storageClassName')})")


def test_nats_runs_jetstream_in_the_volume_fsyncing_every_write(release: Release) -> None:
    assert monitor(release, "/healthz?js-enabled-only=true") == {"status": "ok"}
    varz = monitor(release, "/varz")
    assert varz["jetstream"]["config"]["store_dir"].startswith("/data")
    assert varz["jetstream"]["config"]["sync_always"] is True
    assert varz["max_payload"] == 8 * 1024 * 1024
    assert varz["server_name"] == f"{release.nats}-0"


# -- boto3 and /async-function/ ------------------------------------------------------------------------

def test_boto3_invoke_request_response_returns_the_functions_result(release: Release, fn_ns: str,
                                                                    recorder: str) -> None:
    marker = f"sync-{uuid.uuid4().hex[:8]}"
    response = lambda_client(release).invoke(FunctionName=platform.cli_name(recorder, fn_ns),
                                              Payload=json.dumps({"marker": marker}).encode())
    assert response["StatusCode"] == 200
    assert "FunctionError" not in response
    request_id = response["ResponseMetadata"]["RequestId"]
    assert json.loads(response["Payload"].read()) == {"marker": marker, "requestId": request_id}


def test_boto3_invoke_event_is_accepted_with_202_and_the_function_runs(release: Release, fn_ns: str,
                                                                       recorder: str) -> None:
    marker = f"event-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    response = lambda_client(release).invoke(FunctionName=platform.cli_name(recorder, fn_ns),
                                              InvocationType="Event", Payload=json.dumps({"marker": marker}).encode())
    assert response["StatusCode"] == 202
    assert response["Payload"].read() == b""
    request_id = response["ResponseMetadata"]["RequestId"]
    seen = wait_delivered(recorder, fn_ns, {request_id}, timeout=60)
    platform.record("boto3 Event → the function ran", time.monotonic() - started, "s")
    assert f"DELIVERED {marker} {request_id}" in platform.function_log(recorder, fn_ns)
    assert seen[request_id] == 1


def test_async_function_path_answers_202_and_delivers(release: Release, fn_ns: str, recorder: str) -> None:
    marker = f"http-{uuid.uuid4().hex[:8]}"
    request_id = post_async(release, recorder, fn_ns, {"marker": marker})
    wait_delivered(recorder, fn_ns, {request_id}, timeout=60)
    assert f"DELIVERED {marker} {request_id}" in platform.function_log(recorder, fn_ns)


# -- faults: nothing accepted is lost ------------------------------------------------------------------

def test_events_survive_the_gateway_pods_deleted_mid_delivery(release: Release, fn_ns: str, recorder: str) -> None:
    count, before = 120, set(deliveries(recorder, fn_ns))
    # 0.5 s each, four at a time: about 15 s of delivery, so the gateways go in the middle of it.
    ids = {post_async(release, recorder, fn_ns, {"marker": f"gw-{i}", "sleep": 0.5}) for i in range(count)}
    assert len(ids) == count and not ids & before
    platform.wait_until("some events delivered", lambda: len(ids & set(deliveries(recorder, fn_ns))) >= 8,
                        timeout=60, interval=0.2)
    gateways = [p["metadata"]["name"] for p in platform.pods(release.namespace, release.selector("gateway"))]
    platform.kubectl("delete", "pod", *gateways, "--wait=false", namespace=release.namespace)
    delivered_then = len(ids & set(deliveries(recorder, fn_ns)))
    assert delivered_then < count, "every event was delivered before the gateways went: nothing was tested"

    seen = wait_delivered(recorder, fn_ns, ids, timeout=180)
    lost = len(ids - set(seen))
    seen = settled(release, recorder, fn_ns)
    twice = sum(seen[i] - 1 for i in ids)
    platform.record("gateway pods deleted mid-delivery: accepted / delivered before the delete / lost / "
                    "delivered twice", f"{count} / {delivered_then} / {lost} / {twice}")
    assert lost == 0
    platform.wait_until("two gateways ready again", lambda: len(
        platform.ready_pods(release.namespace, release.selector("gateway"))) == 2, timeout=60)
    assert not set(gateways) & {p["metadata"]["name"] for p in
                                platform.pods(release.namespace, release.selector("gateway"))}


def test_events_survive_the_gateways_killed_mid_delivery(release: Release, fn_ns: str, recorder: str) -> None:
    """SIGKILL, not a graceful stop: the deliveries in progress end with their gateway, unacked."""
    count, before = 120, set(deliveries(recorder, fn_ns))
    ids = {post_async(release, recorder, fn_ns, {"marker": f"kill-{i}", "sleep": 0.5}) for i in range(count)}
    assert len(ids) == count and not ids & before
    platform.wait_until("some events delivered", lambda: len(ids & set(deliveries(recorder, fn_ns))) >= 8,
                        timeout=60, interval=0.2)
    gateways = platform.ready_pods(release.namespace, release.selector("gateway"))
    restarts = {p["metadata"]["name"]: p["status"]["containerStatuses"][0]["restartCount"] for p in gateways}
    for pod in gateways:
        platform.kill_container(pod, "gateway")
    delivered_then = len(ids & set(deliveries(recorder, fn_ns)))
    assert delivered_then < count, "every event was delivered before the gateways died: nothing was tested"

    seen = wait_delivered(recorder, fn_ns, ids, timeout=180)
    lost = len(ids - set(seen))
    seen = settled(release, recorder, fn_ns)
    twice = sum(seen[i] - 1 for i in ids)
    platform.record("gateways SIGKILLed mid-delivery: accepted / delivered before the kill / lost / "
                    "delivered twice", f"{count} / {delivered_then} / {lost} / {twice}")
    assert lost == 0

    def restarted() -> bool:
        pods = platform.ready_pods(release.namespace, release.selector("gateway"))
        return len(pods) == 2 and all(p["status"]["containerStatuses"][0]["restartCount"] > restarts.get(
            p["metadata"]["name"], -1) for p in pods)

    platform.wait_until("both gateways restarted and ready", restarted, timeout=60)


def test_events_stored_survive_the_nats_server_pod_deleted(release: Release, fn_ns: str, recorder: str) -> None:
    count = 60
    old = nats_pod(release)
    assert old is not None
    ids = {post_async(release, recorder, fn_ns, {"marker": f"nats-{i}", "sleep": 0.5}) for i in range(count)}
    stored = queued_in_jetstream(release, recorder, fn_ns)
    assert stored > 0, "JetStream held none of the events when its server went: nothing was tested"
    delivered_then = len(ids & set(deliveries(recorder, fn_ns)))

    started = time.monotonic()
    platform.kubectl("delete", "pod", old["metadata"]["name"], "--wait=false", namespace=release.namespace)
    platform.wait_until("a new NATS pod ready", lambda: (
        (pod := nats_pod(release)) is not None and pod["metadata"]["uid"] != old["metadata"]["uid"]
        and pod_ready(pod)), timeout=120, interval=0.2)
    back = time.monotonic() - started

    seen = wait_delivered(recorder, fn_ns, ids, timeout=180)
    lost = len(ids - set(seen))
    seen = settled(release, recorder, fn_ns)
    twice = sum(seen[i] - 1 for i in ids)
    platform.record("NATS pod deleted → its successor Ready (same claim)", back, "s")
    platform.record("NATS pod deleted: accepted / held in JetStream then / delivered before / lost / "
                    "delivered twice", f"{count} / {stored} / {delivered_then} / {lost} / {twice}")
    assert lost == 0
    new = nats_pod(release)
    assert new is not None
    (volume,) = [v for v in new["spec"]["volumes"] if v["name"] == "data"]
    assert volume["persistentVolumeClaim"]["claimName"] == f"data-{release.nats}-0"


# -- triggers --------------------------------------------------------------------------------------------

@pytest.mark.timeout(480)
def test_a_schedule_fires_each_tick_once_with_two_operator_replicas(release: Release, fn_ns: str,
                                                                   deployed: list[str]) -> None:
    """rate(1 minute), kfn's (and EventBridge's) finest: two ticks, the scheduler's leader deleted
    between them; each tick's id is delivered exactly once."""
    platform.record("helm upgrade --wait: operator.replicas 2", release.upgrade({"operator": {"replicas": 2}}), "s")
    try:
        operators = platform.ready_pods(release.namespace, release.selector("operator"))
        assert len(operators) == 2
        name = "ticker"
        deployed.append(name)
        release.deploy(platform.function(name, RECORDER, triggers=[{"schedule": "rate(1 minute)"}],
                                         scale={"minReplicas": 1, "maxReplicas": 1}), fn_ns)

        def ticks() -> collections.Counter[str]:
            return collections.Counter(tick for tick, _, _ in _TICK.findall(platform.function_log(name, fn_ns)))

        first = platform.wait_until("the first tick", lambda: list(ticks()), timeout=100, interval=1)
        leader = scheduler_leader(release)
        assert leader in {p["metadata"]["name"] for p in operators}, leader
        platform.kubectl("delete", "pod", leader, "--wait=false", namespace=release.namespace)

        platform.wait_until("the second tick", lambda: len(ticks()) >= 2, timeout=100, interval=1)
        time.sleep(5)   # a tick fired twice would be delivered by now
        counted = ticks()
        lines = _TICK.findall(platform.function_log(name, fn_ns))
        times = sorted(t for _, t, _ in lines)
        new_leader = scheduler_leader(release)
        platform.record("schedule rate(1 minute), 2 operators, leader deleted after tick 1: ticks / "
                        "invocations / duplicates", f"{len(counted)} / {sum(counted.values())} / "
                        f"{sum(n - 1 for n in counted.values())} (ticks at {', '.join(times)}; "
                        f"leader {leader} → {new_leader})")
        assert set(first) <= set(counted)
        # The invocation id is the tick's: a tick fired twice would be stored once.
        assert all(tick == request_id for tick, _, request_id in lines), lines
        assert all(n == 1 for n in counted.values()), counted
        assert len(set(times)) == len(times)
        assert new_leader != leader
    finally:
        platform.record("helm upgrade --wait: operator.replicas 1", release.back_to_one_operator(), "s")


def scheduler_leader(release: Release) -> str:
    lease = platform.get("lease", "kfn-scheduler", namespace=release.namespace)
    assert lease is not None, "no kfn-scheduler Lease"
    return str(lease["spec"]["holderIdentity"])


def test_a_nats_subject_trigger_runs_the_function_once_per_message(release: Release, fn_ns: str,
                                                                   deployed: list[str]) -> None:
    name, subject = "orders", f"orders.created.{platform.RUN_ID}"
    deployed.append(name)
    release.deploy(platform.function(name, RECORDER, triggers=[{"nats": {"subject": subject}}],
                                     scale={"minReplicas": 1, "maxReplicas": 1}), fn_ns)
    count = 30
    with platform.port_forward(f"service/{release.nats}", 4222, namespace=release.namespace) as port:
        # Publishers log in as the platform user: the chart's NATS refuses clients without credentials.
        ids = asyncio.run(publish_requests(release.nats_url("127.0.0.1", port), subject, count))
    assert len(ids) == count
    seen = wait_delivered(name, fn_ns, set(ids.values()), timeout=120)
    markers = collections.Counter(m for m, _ in _DELIVERED.findall(platform.function_log(name, fn_ns)))
    platform.record("NATS subject trigger: messages acknowledged / delivered / duplicates",
                    f"{count} / {len(set(ids.values()) & set(seen))} / {sum(seen[i] - 1 for i in ids.values())}")
    assert all(seen[i] == 1 for i in ids.values()), seen
    assert all(markers[m] == 1 for m in ids), markers


async def publish_requests(url: str, subject: str, count: int) -> dict[str, str]:
    """Publish `count` messages as requests (each answered {"invocationId": ID} once its event is
    stored); returns marker → invocation id. Until the gateways subscribed, requests find no
    responder: a probe is repeated (bounded) until one is answered, and counted like the others."""
    nc = await nats.connect(url, max_reconnect_attempts=3, connect_timeout=5)
    ids: dict[str, str] = {}
    try:
        deadline = time.monotonic() + 60
        while not ids:
            marker = f"probe-{uuid.uuid4().hex[:6]}"
            try:
                reply = await nc.request(subject, json.dumps({"marker": marker}).encode(), timeout=5)
                ids[marker] = json.loads(reply.data)["invocationId"]
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                if time.monotonic() > deadline:
                    raise AssertionError(f"no gateway answered on {subject} within 60s") from None
                await asyncio.sleep(0.5)
        for i in range(count - 1):
            marker = f"msg-{i}"
            reply = await nc.request(subject, json.dumps({"marker": marker}).encode(), timeout=10)
            assert not reply.headers or "Nats-Service-Error" not in reply.headers, reply.headers
            ids[marker] = json.loads(reply.data)["invocationId"]
    finally:
        await nc.close()
    return ids


def _time(stamp: str) -> float:
    """Seconds since the epoch of an RFC 3339 timestamp as the API server writes it (…Z)."""
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
