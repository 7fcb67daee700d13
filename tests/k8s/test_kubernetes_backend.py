"""KubernetesBackend: the gateway's view of functions, ready pods and replica counts."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kfn_gateway.kubernetes import Backoff, KubernetesBackend
from kubernetes_asyncio import client

from kfn import naming
from kfn.instances import Instance
from tests.k8s import kube

pytestmark = pytest.mark.k8s

CODE = "def handler(event, context):\n    return 'hi'\n"


def function(name: str = "hello", namespace: str = "default", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"handler": "main.handler", "source": {"files": {"main.py": CODE}}, "concurrency": 7}
    body.update(spec)
    return {"apiVersion": naming.API_VERSION, "kind": naming.KIND,
            "metadata": {"name": name, "namespace": namespace}, "spec": body}


def endpoint_slice(function: str, pods: dict[str, tuple[str, dict[str, bool]]], *, name: str | None = None,
                   port: int = 8080) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name or f"{function}-abc12", "namespace": "default",
                     "labels": {**naming.function_labels(function), "kubernetes.io/service-name": function}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip], "conditions": conditions, "targetRef": {"kind": "Pod", "name": pod}}
                      for pod, (ip, conditions) in pods.items()],
    }


def deployment(name: str, replicas: int) -> dict[str, Any]:
    labels = naming.function_labels(name)
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": "default", "labels": labels},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": "function", "image": "x"}]}}}}


async def post(cluster: kube.Cluster, path: str, body: dict[str, Any]) -> None:
    async with cluster.post(path, json=body) as r:
        assert r.status == 201, await r.text()


async def add_function(cluster: kube.Cluster, body: dict[str, Any]) -> None:
    await post(cluster, f"/apis/kfn.dev/v1alpha1/namespaces/{body['metadata']['namespace']}/functions", body)


async def add_slice(cluster: kube.Cluster, body: dict[str, Any]) -> None:
    await post(cluster, "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices", body)


@pytest.fixture
async def backend(api: client.ApiClient) -> AsyncIterator[KubernetesBackend]:
    backend = KubernetesBackend(api, backoff=Backoff(initial=0.05, maximum=0.2), failure_cooldown=60)
    await backend.start()
    try:
        yield backend
    finally:
        await backend.close()


async def test_functions_are_known_by_name(cluster, backend) -> None:
    await add_function(cluster, function())
    fn = await kube.wait_for(lambda: backend.function("hello"), what="the function")
    assert fn.spec.concurrency == 7
    assert [f.name for f in backend.functions()] == ["hello"]
    assert backend.function("missing") is None


async def test_invalid_functions_are_ignored_with_a_log(cluster, backend, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="kfn_gateway.kubernetes")
    await add_function(cluster, function("broken", handler="nodot"))
    await add_function(cluster, function("good"))
    await kube.wait_for(lambda: backend.function("good"), what="the valid function")
    assert backend.function("broken") is None
    assert any("broken" in r.getMessage() and "spec.handler" in r.getMessage() for r in caplog.records)


async def test_ready_pods_become_instances_on_their_pod_ip(cluster, backend) -> None:
    await add_function(cluster, function())
    await add_slice(cluster, endpoint_slice("hello", {
        "hello-1": ("10.0.0.1", {"ready": True}),
        "hello-2": ("10.0.0.2", {"ready": False}),
        "hello-3": ("10.0.0.3", {"ready": True, "terminating": True}),
        "hello-4": ("10.0.0.4", {}),   # unset means ready
    }, port=8080))
    instances = await kube.wait_for(lambda: backend.ready("hello"), what="instances")
    assert instances == [
        Instance(function="hello", id="hello-1", host="10.0.0.1", port=8080, capacity=7),
        Instance(function="hello", id="hello-4", host="10.0.0.4", port=8080, capacity=7),
    ]


async def test_instances_of_several_slices_are_merged_and_follow_updates(cluster, backend) -> None:
    await add_function(cluster, function())
    await add_slice(cluster, endpoint_slice("hello", {"hello-1": ("10.0.0.1", {"ready": True})}, name="hello-a"))
    await add_slice(cluster, endpoint_slice("hello", {"hello-2": ("10.0.0.2", {"ready": True})}, name="hello-b"))
    await kube.wait_for(lambda: len(backend.ready("hello")) == 2, what="two instances")
    async with cluster.delete("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/hello-a") as r:
        assert r.status == 200
    await kube.wait_for(lambda: [i.id for i in backend.ready("hello")] == ["hello-2"], what="one instance left")


async def test_listeners_hear_about_new_instances(cluster, backend) -> None:
    heard: list[str] = []
    backend.add_listener(heard.append)
    await add_function(cluster, function())
    await add_slice(cluster, endpoint_slice("hello", {"hello-1": ("10.0.0.1", {"ready": True})}))
    await kube.wait_for(lambda: backend.ready("hello"), what="an instance")
    assert "hello" in heard


async def test_scale_patches_the_deployments_scale_subresource(cluster, backend) -> None:
    await add_function(cluster, function(scale={"minReplicas": 0}))
    await post(cluster, "/apis/apps/v1/namespaces/default/deployments", deployment("hello", 0))
    await kube.wait_for(lambda: backend.function("hello"), what="the function")
    assert backend.desired("hello") == 0

    await backend.scale("hello", 3, reason="test")
    assert cluster.object(kube.DEPLOYMENTS, "default", "hello")["spec"]["replicas"] == 3
    assert backend.desired("hello") == 3
    assert any(r.subresource == "scale" and r.method == "PATCH" for r in cluster.served)


async def test_desired_follows_the_deployment(cluster, backend) -> None:
    await add_function(cluster, function(scale={"minReplicas": 1}))
    await kube.wait_for(lambda: backend.function("hello"), what="the function")
    assert backend.desired("hello") == 1   # no Deployment yet: minReplicas
    await post(cluster, "/apis/apps/v1/namespaces/default/deployments", deployment("hello", 5))
    await kube.wait_for(lambda: backend.desired("hello") == 5, what="desired from the Deployment")


async def test_scaling_without_a_deployment_is_logged_not_raised(cluster, backend, caplog) -> None:
    await add_function(cluster, function())
    await kube.wait_for(lambda: backend.function("hello"), what="the function")
    await backend.scale("hello", 1)
    assert any("scaling default/hello to 1 failed" in r.getMessage() for r in caplog.records)


async def test_a_failed_instance_leaves_rotation_until_the_cooldown_ends(cluster, api) -> None:
    now = [100.0]
    backend = KubernetesBackend(api, failure_cooldown=10, clock=lambda: now[0])
    await backend.start()
    try:
        await add_function(cluster, function())
        await add_slice(cluster, endpoint_slice("hello", {"hello-1": ("10.0.0.1", {"ready": True}),
                                                           "hello-2": ("10.0.0.2", {"ready": True})}))
        first, second = await kube.wait_for(lambda: len(backend.ready("hello")) == 2 and backend.ready("hello"),
                                            what="two instances")
        backend.report_failure(first, error="connection refused")
        assert backend.ready("hello") == [second]
        now[0] += 9
        assert backend.ready("hello") == [second]
        now[0] += 1
        assert backend.ready("hello") == [first, second]
    finally:
        await backend.close()


async def test_a_failed_instance_returns_when_kubernetes_marks_it_ready_again(cluster, backend) -> None:
    await add_function(cluster, function())
    await add_slice(cluster, endpoint_slice("hello", {"hello-1": ("10.0.0.1", {"ready": True}),
                                                       "hello-2": ("10.0.0.2", {"ready": True})}))
    first, second = await kube.wait_for(lambda: len(backend.ready("hello")) == 2 and backend.ready("hello"),
                                        what="two instances")
    backend.report_failure(first, error="connection refused")
    path = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/hello-abc12"
    for ready in (False, True):
        body = endpoint_slice("hello", {"hello-1": ("10.0.0.1", {"ready": ready}),
                                        "hello-2": ("10.0.0.2", {"ready": True})})
        async with cluster.patch(path, json={"endpoints": body["endpoints"]},
                                 headers={"Content-Type": "application/merge-patch+json"}) as r:
            assert r.status == 200
        await kube.wait_for(lambda ready=ready: len(backend.ready("hello")) == (2 if ready else 1),
                            what=f"ready={ready}")
    assert backend.ready("hello") == [first, second]


async def test_api_errors_keep_the_known_state_and_the_watches_recover(cluster, backend) -> None:
    await add_function(cluster, function())
    await add_slice(cluster, endpoint_slice("hello", {"hello-1": ("10.0.0.1", {"ready": True})}))
    await kube.wait_for(lambda: backend.ready("hello"), what="an instance")

    # The API server goes away for a while: watches end with errors, relists fail.
    cluster.fail_requests(kube.FUNCTIONS, 8)
    cluster.fail_requests(kube.ENDPOINTSLICES, 8)
    await cluster.interrupt_watches(kube.FUNCTIONS)
    await cluster.interrupt_watches(kube.ENDPOINTSLICES)
    checks = 0
    for _ in range(200):
        if cluster.pending_failures(kube.FUNCTIONS) == 0 and cluster.pending_failures(kube.ENDPOINTSLICES) == 0:
            break
        assert backend.function("hello") is not None
        assert [i.id for i in backend.ready("hello")] == ["hello-1"]
        checks += 1
        await asyncio.sleep(0.02)
    assert checks > 0
    assert cluster.pending_failures(kube.FUNCTIONS) == 0

    # Changes made after the outage arrive.
    await add_function(cluster, function("second"))
    await kube.wait_for(lambda: backend.function("second"), what="the watch to resume")
    await add_slice(cluster, endpoint_slice("second", {"second-1": ("10.0.0.9", {"ready": True})}))
    await kube.wait_for(lambda: backend.ready("second"), what="the EndpointSlice watch to resume")


async def test_deleted_functions_disappear(cluster, backend) -> None:
    await add_function(cluster, function())
    await kube.wait_for(lambda: backend.function("hello"), what="the function")
    async with cluster.delete("/apis/kfn.dev/v1alpha1/namespaces/default/functions/hello") as r:
        assert r.status == 200
    await kube.wait_for(lambda: backend.function("hello") is None, what="the function gone")
    assert backend.ready("hello") == []


async def test_a_namespaced_backend_sees_only_its_namespaces(cluster, api) -> None:
    await add_function(cluster, function("mine", namespace="team-a"))
    await add_function(cluster, function("theirs", namespace="team-b"))
    backend = KubernetesBackend(api, namespaces=["team-a"])
    await backend.start()
    try:
        await kube.wait_for(lambda: backend.function("mine"), what="the function in team-a")
        assert backend.function("theirs") is None
    finally:
        await backend.close()


async def test_without_endpointslices_core_endpoints_are_used(cluster, api) -> None:
    del cluster.resources[kube.ENDPOINTSLICES]
    await add_function(cluster, function())
    await post(cluster, "/api/v1/namespaces/default/endpoints", {
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "hello", "namespace": "default", "labels": naming.function_labels("hello")},
        "subsets": [{"addresses": [{"ip": "10.0.0.1", "targetRef": {"kind": "Pod", "name": "hello-1"}}],
                     "notReadyAddresses": [{"ip": "10.0.0.2", "targetRef": {"kind": "Pod", "name": "hello-2"}}],
                     "ports": [{"name": "http", "port": 8080}]}],
    })
    backend = KubernetesBackend(api)
    await backend.start()
    try:
        instances = await kube.wait_for(lambda: backend.ready("hello"), what="an instance")
        assert instances == [Instance(function="hello", id="hello-1", host="10.0.0.1", port=8080, capacity=7)]
    finally:
        await backend.close()
