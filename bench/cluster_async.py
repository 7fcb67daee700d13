"""Asynchronous invocations on a real cluster: events accepted per second through the gateway's
NodePort, and deliveries per second to a no-op function, with the chart's NATS JetStream server
(one replica, `sync_interval: always`, on a volume).

    make bench-cluster            (scripts/test-cluster --bench: starts the cluster, loads the images)
    python bench/cluster_async.py [--events 2000] [--clients 16]     (KUBECONFIG set, images loaded)

Installs its own release of charts/kfn (two gateways, NodePort) in a namespace of its own, on a
local PersistentVolume where the cluster has no default StorageClass (as the cluster tier does),
and deploys a no-op Python function held at two instances (no cold start in the figures). Then,
each way of sending an event in turn:

- `--clients` threads, each on its own keep-alive connection, send `--events` events in all
  (POST /async-function/NAME, or the Invoke API with X-Amz-Invocation-Type: Event and the admin
  key) and count the 202s: **accepted/s** is the 202s over the time from the first request to the
  last answer (each 202 means JetStream fsync'd the event);
- meanwhile the gateways deliver; the function's JetStream consumer is read on NATS's monitoring
  port until it holds nothing (every event acked after the function ran): **delivered/s** is the
  events over the time from the first request to then, and the tail is what was still queued
  after the last 202.

Synchronous invocations of the same function with the same clients are measured first, as the
ceiling a delivery cannot beat. Prints a table; nothing is asserted. Removes the release, its
namespaces, the volumes and the CRD at the end.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.cluster import platform  # noqa: E402 - the tier's helpers: kubectl, helm, waits

NAME = "noop"
NOOP = """
def handler(event, context):
    return None
"""
PAYLOAD = json.dumps({"order": 12345, "items": ["a", "b", "c"]}).encode()


def send(base: str, path: str, headers: dict[str, str], *, events: int, clients: int,
         expect: int) -> tuple[float, float, dict[int, int]]:
    """`events` POSTs of PAYLOAD to `path` from `clients` threads on keep-alive connections.

    Returns (monotonic start, monotonic end, {status: count}).
    """
    host, port = base.removeprefix("http://").split(":")
    counts: dict[int, int] = {}
    lock = threading.Lock()
    remaining = [events]

    def work() -> None:
        conn: http.client.HTTPConnection | None = None
        while True:
            with lock:
                if remaining[0] == 0:
                    break
                remaining[0] -= 1
            status = 0
            try:
                conn = conn or http.client.HTTPConnection(host, int(port), timeout=60)
                conn.request("POST", path, body=PAYLOAD, headers={"Content-Type": "application/json", **headers})
                response = conn.getresponse()
                response.read()
                status = response.status
                if response.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException):
                if conn is not None:
                    conn.close()
                conn = None
            with lock:
                counts[status] = counts.get(status, 0) + 1
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=work, name=f"client-{i}", daemon=True) for i in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    ended = time.monotonic()
    if counts.get(expect, 0) != events:
        print(f"  ({path}: answers {counts}, expected {events}× {expect})", flush=True)
    return started, ended, counts


def queued(release: platform.Release, namespace: str) -> int:
    """Events of the function JetStream still holds (pending or handed out, not yet acked)."""
    pod = platform.get("pod", f"{release.nats}-0", namespace=release.namespace)
    assert pod is not None
    answer = platform.http_get(f"http://{pod['status']['podIP']}:8222/jsz?consumers=true", timeout=5)
    total = 0
    for account in answer.json().get("account_details") or ():
        for stream in account.get("stream_detail") or ():
            for consumer in stream.get("consumer_detail") or ():
                if consumer["name"] == f"async_{namespace}_{NAME}":
                    total += int(consumer.get("num_pending") or 0) + int(consumer.get("num_ack_pending") or 0)
    return total


def drained_at(release: platform.Release, namespace: str, *, timeout: float = 600) -> float:
    """Poll the consumer every 50 ms until it holds nothing; the monotonic time it did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if queued(release, namespace) == 0:
                return time.monotonic()
        except (OSError, http.client.HTTPException, ValueError, KeyError):
            pass
        time.sleep(0.05)
    raise TimeoutError(f"events still queued after {timeout:g}s")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    if platform.another_kfn("bench"):
        return 1
    rows: list[tuple[str, str, str, str]] = []
    with platform.local_storage(1):
        release = platform.Release(f"kfn-abench-{platform.RUN_ID}", platform.create_namespace("kfn-abench"), {})
        try:
            started = time.monotonic()
            release.install()
            namespace = platform.create_namespace("abench")
            release.deploy(platform.function(NAME, NOOP, concurrency=20,
                                             scale={"minReplicas": 2, "maxReplicas": 2}), namespace)
            platform.wait_until("two instances", lambda: len(platform.ready_pods(
                namespace, f"{platform.LABEL_FUNCTION}={NAME},{platform.LABEL_COMPONENT}=function")) == 2, timeout=60)
            print(f"release installed and {NAME} deployed (2 instances) in {time.monotonic() - started:.1f}s",
                  flush=True)
            fn = platform.cli_name(NAME, namespace)
            base = release.gateway

            t0, t1, counts = send(base, f"/function/{fn}", {}, events=args.events, clients=args.clients, expect=200)
            rows.append(("sync: POST /function/ (the ceiling)", f"{counts.get(200, 0) / (t1 - t0):,.0f} (200s)",
                         "", ""))
            for label, path, headers in (
                    ("async: POST /async-function/", f"/async-function/{fn}", {}),
                    # The chart's gateway has keys: the Invoke API wants one (a bearer key costs less
                    # per request than the SigV4 signature boto3 would make).
                    ("async: Invoke API, InvocationType Event", f"/2015-03-31/functions/{fn}/invocations",
                     {"X-Amz-Invocation-Type": "Event", "Authorization": f"Bearer {release.admin_key}"})):
                t0, t1, counts = send(base, path, headers, events=args.events, clients=args.clients, expect=202)
                done = drained_at(release, namespace)
                accepted = counts.get(202, 0)
                rows.append((label, f"{accepted / (t1 - t0):,.0f}", f"{accepted / (done - t0):,.0f}",
                             f"{max(0.0, done - t1):.1f} s"))
                print(f"  {label}: {accepted} accepted in {t1 - t0:.1f}s, all delivered after {done - t0:.1f}s",
                      flush=True)
        finally:
            release.uninstall()
            platform.delete_namespaces()
            platform.delete_crd()
    report(rows, args.events, args.clients)
    return 0


def report(rows: list[tuple[str, str, str, str]], events: int, clients: int) -> None:
    version: dict[str, Any] = json.loads(platform.kubectl("version", "-o", "json").stdout)
    server = version.get("serverVersion", {}).get("gitVersion", "?")
    print(f"\nasync invocations on a real cluster: Kubernetes {server}, {os.cpu_count()} CPUs, {events} events of "
          f"{len(PAYLOAD)} bytes from {clients} keep-alive clients through the NodePort; 2 gateways, NATS "
          "JetStream (1 replica, sync_interval: always, local volume), a no-op Python function on 2 instances\n")
    print("| how | accepted/s (202) | delivered/s, end to end | queued after the last 202 |")
    print("|---|---:|---:|---:|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    sys.exit(main())
