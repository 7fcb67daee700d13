"""The gateway's side of warm pools under stress on the emulated API: lagging informers, a claimer
closed mid-flight, refusing instances, many cold starts for one idle pod (kfn.kube.pool,
kfn.kube.scaling)."""
from __future__ import annotations

import asyncio
from typing import Any

from kfn.core import naming
from kfn.core.functions import FunctionRef
from tests.support.functions import function_manifest
from tests.support.kube import DEPLOYMENTS, create_function
from tests.support.pools import (
    HELLO,
    POD,
    PODS,
    deployment,
    labels,
    new_backend,
    pool_pod,
    post,
    replicas,
    sees_idle_pod,
    setup,
)
from tests.support.waiting import eventually


def stale_idle_view(backend: Any) -> Any:
    """The mirror's idle view of the pool pod, to put back as an informer that lags would show it."""
    return backend._mirror.pods[("default", POD)]


async def test_a_scale_to_zero_before_the_mirror_sees_the_claim_deletes_the_claimed_pod(cluster, backend,
                                                                                      instance) -> None:
    instance.answer.clear()
    await setup(cluster, instance)
    await sees_idle_pod(backend)
    idle = stale_idle_view(backend)
    await backend.scale(HELLO, 1)
    backend._mirror.pods[idle.key] = idle     # the informer has not shown the claim yet
    await backend.scale(HELLO, 0)
    await eventually(lambda: cluster.object(PODS, "default", POD) is None, what="the claimed pod deleted")
    instance.answer.set()
    await eventually(lambda: backend.desired(HELLO) == 0, what="nothing wanted")
    assert replicas(cluster) == 0


async def test_closing_the_claimer_mid_specialisation_deletes_the_pod_and_scales_the_deployment_instead(
        cluster, api, instance) -> None:
    instance.answer.clear()
    gateway = new_backend(api, "gateway-a")
    await gateway.start()
    try:
        await setup(cluster, instance)
        await sees_idle_pod(gateway)
        await gateway.scale(HELLO, 1)
        await eventually(lambda: instance.received, what="the specialisation under way")
    finally:
        await gateway.close()
        instance.answer.set()
    assert cluster.object(PODS, "default", POD) is None
    assert replicas(cluster) == 1


async def test_a_specialisation_failing_after_the_deployment_reached_max_replicas_does_not_exceed_them(
        cluster, backend, instance) -> None:
    instance.answer.clear()
    instance.status = 502
    await setup(cluster, instance, scale={"maxReplicas": 2})
    await sees_idle_pod(backend)
    await backend.scale(HELLO, 1)
    await eventually(lambda: instance.received, what="the specialisation under way")
    # An autoscaler that has not seen the claim yet scales the Deployment to the maximum meanwhile.
    async with cluster.patch("/apis/apps/v1/namespaces/default/deployments/hello",
                             json={"spec": {"replicas": 2}},
                             headers={"Content-Type": "application/merge-patch+json"}) as r:
        assert r.status == 200, await r.text()
    await eventually(lambda: backend._mirror.replicas.get(HELLO) == 2, what="the mirror seeing 2 replicas")
    instance.answer.set()
    # The claimer scales the Deployment (or decides not to) before it deletes the pod.
    await eventually(lambda: cluster.object(PODS, "default", POD) is None, what="the pod deleted")
    assert replicas(cluster) == 2


async def test_an_instance_refusing_the_specialisation_with_409_is_deleted_and_the_deployment_serves(
        cluster, backend, instance) -> None:
    instance.status = 409    # already specialised: a pod relabelled idle by hand
    await setup(cluster, instance)
    await sees_idle_pod(backend)
    await backend.scale(HELLO, 1)
    await eventually(lambda: cluster.object(PODS, "default", POD) is None, what="the pod deleted")
    await eventually(lambda: replicas(cluster) == 1, what="the Deployment scaled up")
    await eventually(lambda: backend.desired(HELLO) == 1, what="one instance wanted, the Deployment's")


async def test_twenty_cold_starts_with_one_idle_pod_claim_it_once_and_scale_the_other_deployments(
        cluster, backend, instance) -> None:
    names = [f"fn{i:02d}" for i in range(20)]
    for name in names:
        await create_function(cluster, function_manifest(name))
        await post(cluster, "/apis/apps/v1/namespaces/default/deployments", deployment(name, 0))
    await post(cluster, "/api/v1/namespaces/default/pods", pool_pod(instance.port))
    await sees_idle_pod(backend)
    refs = [FunctionRef("default", name) for name in names]
    await eventually(lambda: all(ref in backend._mirror.functions for ref in refs), what="all functions")
    await asyncio.gather(*(backend.scale(ref, 1) for ref in refs))
    await eventually(lambda: labels(cluster).get(naming.LABEL_POOL_STATE) == naming.POOL_SPECIALIZED,
                     what="the pod specialised")
    owner = labels(cluster)[naming.LABEL_FUNCTION]
    scaled = {name: int(cluster.object(DEPLOYMENTS, "default", name)["spec"]["replicas"]) for name in names}
    assert scaled == {name: 0 if name == owner else 1 for name in names}
    assert len(instance.received) == 1
    assert all(backend.desired(ref) == 1 for ref in refs)


async def test_a_pool_pod_of_another_namespace_is_never_claimed(cluster, backend, instance) -> None:
    await create_function(cluster, function_manifest())
    await post(cluster, "/apis/apps/v1/namespaces/default/deployments", deployment("hello", 0))
    other = pool_pod(instance.port)
    other["metadata"]["namespace"] = "tenant-b"
    await post(cluster, "/api/v1/namespaces/tenant-b/pods", other)
    await eventually(lambda: backend._mirror.idle_pool_pods("tenant-b", "python3.12"), what="tenant-b's pool pod")
    await backend.scale(HELLO, 1)
    assert replicas(cluster) == 1
    assert instance.received == []


async def test_a_pool_pod_of_another_runtime_is_never_claimed(cluster, backend, instance) -> None:
    await create_function(cluster, function_manifest(runtime="python3.11"))
    await post(cluster, "/apis/apps/v1/namespaces/default/deployments", deployment("hello", 0))
    await post(cluster, "/api/v1/namespaces/default/pods", pool_pod(instance.port))
    await sees_idle_pod(backend)
    await backend.scale(HELLO, 1)
    assert replicas(cluster) == 1
    assert instance.received == []


async def test_a_pool_pod_that_is_not_ready_is_never_claimed(cluster, backend, instance) -> None:
    await create_function(cluster, function_manifest())
    await post(cluster, "/apis/apps/v1/namespaces/default/deployments", deployment("hello", 0))
    pod = pool_pod(instance.port)
    pod["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
    await post(cluster, "/api/v1/namespaces/default/pods", pod)
    await eventually(lambda: ("default", POD) in backend._mirror.pods, what="the pod mirrored")
    await backend.scale(HELLO, 1)
    assert replicas(cluster) == 1
    assert labels(cluster)[naming.LABEL_POOL_STATE] == naming.POOL_IDLE


async def test_a_function_with_requirements_and_no_archive_store_takes_the_deployment_path(cluster, backend,
                                                                                          instance) -> None:
    await setup(cluster, instance, requirements=["six"])
    await sees_idle_pod(backend)
    await backend.scale(HELLO, 1)
    assert replicas(cluster) == 1
    assert labels(cluster)[naming.LABEL_POOL_STATE] == naming.POOL_IDLE
    assert instance.received == []


async def test_a_pod_deleted_by_someone_else_mid_specialisation_is_no_longer_wanted(cluster, backend,
                                                                                 instance) -> None:
    instance.answer.clear()
    await setup(cluster, instance)
    await sees_idle_pod(backend)
    await backend.scale(HELLO, 1)
    await eventually(lambda: instance.received, what="the specialisation under way")
    async with cluster.delete(f"/api/v1/namespaces/default/pods/{POD}") as r:
        assert r.status == 200, await r.text()
    instance.answer.set()
    await eventually(lambda: backend.desired(HELLO) == 0, what="nothing wanted: a cold start may ask again")
    assert backend._pool is not None and backend._pool.in_flight(HELLO) == set()
