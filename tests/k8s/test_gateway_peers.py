"""The gateway's live replicas, followed through its Service's EndpointSlices on the emulated API
server (`kfn.kube.peers.GatewayPeers`): what each replica divides its async concurrency by."""
from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes.aio import client

from kfn.kube import Backoff
from kfn.kube.peers import GatewayPeers
from tests.support import kube
from tests.support.waiting import eventually

NAMESPACE, SERVICE = "kfn-system", "kfn-gateway"
SLICES = f"/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices"


def endpoint_slice(name: str, pods: dict[str, bool], *, service: str = SERVICE) -> dict[str, Any]:
    """An EndpointSlice of `service` with an endpoint per pod (name → ready)."""
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
            "endpoints": [{"addresses": [f"10.1.0.{i + 1}"], "conditions": {"ready": ready},
                           "targetRef": {"kind": "Pod", "name": pod, "namespace": NAMESPACE}}
                          for i, (pod, ready) in enumerate(pods.items())]}


def watching(cluster: kube.Cluster) -> bool:
    """The follower's watch has reached the emulator (events before it are not replayed)."""
    return any(r.resource is not None and r.resource.plural == "endpointslices"
               and r.params.get("watch", "").lower() in ("true", "1") for r in cluster.served)


class Counts:
    """What `on_change` was told, in order."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def __call__(self, replicas: int) -> None:
        self.seen.append(replicas)

    @property
    def last(self) -> int | None:
        return self.seen[-1] if self.seen else None


@pytest.fixture
async def following(api: client.ApiClient) -> AsyncIterator[tuple[GatewayPeers, Counts]]:
    counts = Counts()
    peers = GatewayPeers(api, namespace=NAMESPACE, service=SERVICE, on_change=counts, own_pod="gw-1",
                         backoff=Backoff(initial=0.05, maximum=0.2))
    try:
        yield peers, counts
    finally:
        await peers.close()


async def test_the_ready_endpoints_of_the_gateway_service_are_the_replicas(
        cluster: kube.Cluster, following: tuple[GatewayPeers, Counts]) -> None:
    await kube.post(cluster, SLICES, endpoint_slice("kfn-gateway-a", {"gw-1": True, "gw-2": True, "gw-3": False}))
    peers, counts = following
    peers.start()
    await eventually(lambda: counts.last == 2, what="two ready replicas")


async def test_a_replica_added_later_is_counted(cluster: kube.Cluster,
                                                following: tuple[GatewayPeers, Counts]) -> None:
    await kube.post(cluster, SLICES, endpoint_slice("kfn-gateway-a", {"gw-1": True, "gw-2": True}))
    peers, counts = following
    peers.start()
    await eventually(lambda: counts.last == 2 and watching(cluster), what="two replicas, watched")
    await kube.post(cluster, SLICES, endpoint_slice("kfn-gateway-b", {"gw-3": True}))
    await eventually(lambda: counts.last == 3, what="the third replica")


async def test_replicas_going_away_are_no_longer_counted(cluster: kube.Cluster,
                                                         following: tuple[GatewayPeers, Counts]) -> None:
    await kube.post(cluster, SLICES, endpoint_slice("kfn-gateway-a", {"gw-1": True, "gw-2": True}))
    await kube.post(cluster, SLICES, endpoint_slice("kfn-gateway-b", {"gw-3": True}))
    peers, counts = following
    peers.start()
    await eventually(lambda: counts.last == 3 and watching(cluster), what="three replicas, watched")
    async with cluster.delete(f"{SLICES}/kfn-gateway-b") as r:
        assert r.status < 300
    await eventually(lambda: counts.last == 2, what="two replicas left")


async def test_another_services_endpoints_are_not_replicas(cluster: kube.Cluster,
                                                           following: tuple[GatewayPeers, Counts]) -> None:
    await kube.post(cluster, SLICES, endpoint_slice("other-a", {"x-1": True, "x-2": True}, service="other"))
    await kube.post(cluster, SLICES, endpoint_slice("kfn-gateway-a", {"gw-1": True}))
    peers, counts = following
    peers.start()
    await eventually(lambda: counts.last == 1, what="the one gateway replica")
    assert counts.seen == [1]


async def test_a_follower_refused_the_slices_stops_and_tells_no_count(
        cluster: kube.Cluster, following: tuple[GatewayPeers, Counts]) -> None:
    await kube.post(cluster, SLICES, endpoint_slice("kfn-gateway-a", {"gw-1": True, "gw-2": True}))
    cluster.fail_requests("endpointslices.v1.discovery.k8s.io", 1, status=403)
    peers, counts = following
    peers.start()
    # A follower that kept trying would list the slices on its next attempt and report 2.
    await eventually(lambda: not peers.running, what="the follower to give up")
    assert (counts.seen, peers.replicas) == ([], None)
