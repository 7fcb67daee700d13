"""The operator's autoscaler: one leader per cluster, gateways found through their EndpointSlices."""
from __future__ import annotations

import socket

import aiohttp

from kfn.core import naming
from kfn.kube import KubernetesBackend
from kfn_operator.config import OperatorConfig
from kfn_operator.lease import OperatorAutoscaler
from tests.support import kube
from tests.support.waiting import eventually


def config(identity: str, **kwargs: object) -> OperatorConfig:
    return OperatorConfig(identity=identity, lease_duration=3, lease_namespace="kfn-system",
                          autoscale_interval=0.2, **kwargs)  # type: ignore[arg-type]


async def test_only_the_lease_holder_runs_the_autoscaler(cluster, api) -> None:
    first = OperatorAutoscaler(api, config("operator-a"), KubernetesBackend(api))
    second = OperatorAutoscaler(api, config("operator-b"), KubernetesBackend(api))
    await first.start()
    try:
        await eventually(lambda: first.leading.is_set(), what="the first replica to lead")
        await second.start()
        lease = cluster.object(kube.LEASES, "kfn-system", "kfn-autoscaler")
        assert lease["spec"]["holderIdentity"] == "operator-a"
        await eventually(lambda: len([r for r in cluster.served if r.resource is not None
                                         and r.resource.plural == "leases" and r.method == "GET"]) > 4,
                         what="both replicas to poll the Lease")
        assert not second.leading.is_set()

        # The leader goes away without releasing: the other replica takes over once the Lease expires.
        await first.close()
        await eventually(lambda: second.leading.is_set(), timeout=15, what="the second replica to take over")
        assert cluster.object(kube.LEASES, "kfn-system", "kfn-autoscaler")["spec"]["holderIdentity"] == "operator-b"
    finally:
        await first.close()
        await second.close()


async def test_a_standalone_operator_leads_without_a_lease(cluster, api) -> None:
    scaler = OperatorAutoscaler(api, config("solo", standalone=True), KubernetesBackend(api))
    await scaler.start()
    try:
        await eventually(lambda: scaler.leading.is_set(), what="the autoscaler to run")
        assert cluster.list_objects(kube.LEASES) == []
    finally:
        await scaler.close()


async def test_gateways_are_found_through_their_ready_endpoints(cluster, api) -> None:
    async with cluster.post("/apis/discovery.k8s.io/v1/namespaces/kfn-system/endpointslices", json={
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kfn-gateway-x1", "namespace": "kfn-system",
                     "labels": {"app.kubernetes.io/name": "kfn-gateway"}},
        "addressType": "IPv4",
        "ports": [{"name": "admin", "port": 9000}, {"name": "http", "port": 8080}],
        "endpoints": [{"addresses": ["10.1.0.1"], "conditions": {"ready": True}},
                      {"addresses": ["10.1.0.2"], "conditions": {"ready": False}},
                      {"addresses": ["10.1.0.3"]}],
    }) as r:
        assert r.status == 201
    async with cluster.post("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices", json={
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "unrelated", "namespace": "default", "labels": {"app": "other"}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": 80}],
        "endpoints": [{"addresses": ["10.9.9.9"]}],
    }) as r:
        assert r.status == 201
    scaler = OperatorAutoscaler(api, config("solo", standalone=True), KubernetesBackend(api))
    assert await scaler.gateway_urls() == ["http://10.1.0.1:8080/metrics", "http://10.1.0.3:8080/metrics"]


async def test_the_autoscalers_metrics_are_served(cluster, api) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    scaler = OperatorAutoscaler(api, config("solo", standalone=True, metrics_port=port), KubernetesBackend(api))
    await scaler.start()
    try:
        async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/metrics") as r:
            assert r.status == 200
            text = await r.text()
        assert f"# TYPE {naming.METRIC_AUTOSCALER_DESIRED} gauge" in text
        assert f"# TYPE {naming.METRIC_AUTOSCALER_DECISIONS} counter" in text
    finally:
        await scaler.close()


async def test_gateways_are_looked_up_in_the_operators_namespace(cluster, api) -> None:
    for namespace in ("kfn-system", "team-a"):
        async with cluster.post(f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices", json={
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "kfn-gateway-x1", "namespace": namespace,
                         "labels": {"app.kubernetes.io/name": "kfn-gateway"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
            "endpoints": [{"addresses": ["10.1.0.1" if namespace == "kfn-system" else "10.2.0.1"]}],
        }) as r:
            assert r.status == 201
    scaler = OperatorAutoscaler(api, config("solo", standalone=True, namespaces=("team-a",),
                                            gateway_namespace="kfn-system"), KubernetesBackend(api))
    assert await scaler.gateway_urls() == ["http://10.1.0.1:8080/metrics"]
