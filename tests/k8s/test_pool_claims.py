"""The gateway's side of warm pools on the emulated API: a scale from zero claims an idle pool pod,
specialises it and makes it one of the function's pods (kfn.kube.pool, kfn.kube.scaling)."""
from __future__ import annotations

import asyncio
import json

from kfn.core import naming
from kfn.core.functions import FunctionRef
from kfn_runtime import contract, specialize
from tests.support.functions import function_manifest
from tests.support.kube import DEPLOYMENTS, create_function
from tests.support.pools import (
    HELLO,
    POD,
    PODS,
    POOL_KEY,
    deployment,
    labels,
    new_backend,
    pool_pod,
    post,
    replicas,
    sees_idle_pod,
    setup,
    specialized,
)
from tests.support.waiting import eventually


async def test_a_scale_from_zero_claims_the_idle_pool_pod_and_makes_it_the_functions(cluster, backend,
                                                                                    instance) -> None:
    await setup(cluster, instance)
    await sees_idle_pod(backend)
    await backend.scale(HELLO, 1)
    await eventually(lambda: specialized(cluster), what="the pod specialised")
    assert labels(cluster)[naming.LABEL_COMPONENT] == naming.COMPONENT_FUNCTION
    assert labels(cluster)[naming.LABEL_FUNCTION] == "hello"
    assert replicas(cluster) == 0


async def test_the_specialisation_is_signed_for_the_claimed_pods_uid(cluster, backend, instance) -> None:
    await setup(cluster, instance)
    await sees_idle_pod(backend)
    await backend.scale(HELLO, 1)
    await eventually(lambda: instance.received, what="the specialisation")
    headers, body = instance.received[0]
    uid = cluster.object(PODS, "default", POD)["metadata"]["uid"]
    key = specialize.namespace_key(POOL_KEY, "default")
    assert specialize.signature_matches(key, uid, body, headers[contract.HEADER_SIGNATURE])
    assert json.loads(body)["env"][contract.ENV_FUNCTION_NAME] == "hello"


async def test_a_specialised_pod_becomes_an_instance(cluster, backend, instance) -> None:
    await setup(cluster, instance)
    await sees_idle_pod(backend)
    await backend.scale(HELLO, 1)
    ready = await eventually(lambda: backend.ready(HELLO), what="an instance")
    assert [(i.id, i.host, i.port) for i in ready] == [(POD, "127.0.0.1", instance.port)]


async def test_a_claimed_pool_pod_counts_in_the_desired_replicas(cluster, backend, instance) -> None:
    await setup(cluster, instance)
    await sees_idle_pod(backend)
    await backend.scale(HELLO, 1)
    assert backend.desired(HELLO) == 1
    await eventually(lambda: specialized(cluster), what="the pod specialised")
    await eventually(lambda: backend._mirror.pooled(HELLO), what="the mirror seeing it")
    assert backend.desired(HELLO) == 1


async def test_a_second_instance_comes_from_the_deployment(cluster, backend, instance) -> None:
    await setup(cluster, instance)
    await sees_idle_pod(backend)
    await backend.scale(HELLO, 1)
    await eventually(lambda: specialized(cluster), what="the pod specialised")
    await backend.scale(HELLO, 2)
    assert replicas(cluster) == 1
    assert backend.desired(HELLO) == 2


async def test_two_gateways_starting_one_function_from_zero_at_once_give_it_one_instance(
        cluster, api, backend, instance) -> None:
    other = new_backend(api, "gateway-b")
    await other.start()
    try:
        await setup(cluster, instance)
        await sees_idle_pod(backend)
        await sees_idle_pod(other)
        await asyncio.gather(backend.scale(HELLO, 1), other.scale(HELLO, 1))
        await eventually(lambda: specialized(cluster), what="the pod specialised")
        assert len(instance.received) == 1
        claimed_by = cluster.object(PODS, "default", POD)["metadata"]["annotations"][naming.ANNOTATION_CLAIMED_BY]
        assert claimed_by in ("gateway-a", "gateway-b")
        assert replicas(cluster) == 0   # the loser found the pod claimed for the same function
    finally:
        await other.close()


async def test_of_two_functions_racing_for_one_idle_pod_the_other_takes_the_deployment_path(
        cluster, api, backend, instance) -> None:
    other = new_backend(api, "gateway-b")
    await other.start()
    try:
        await setup(cluster, instance)
        await create_function(cluster, function_manifest("second"))
        await post(cluster, "/apis/apps/v1/namespaces/default/deployments", deployment("second", 0))
        await sees_idle_pod(backend)
        await sees_idle_pod(other)
        await eventually(lambda: other.function(FunctionRef("default", "second")), what="gateway-b knows second")
        await asyncio.gather(backend.scale(HELLO, 1), other.scale(FunctionRef("default", "second"), 1))
        await eventually(lambda: specialized(cluster), what="the pod specialised")
        winner = labels(cluster)[naming.LABEL_FUNCTION]
        loser = "second" if winner == "hello" else "hello"
        assert int(cluster.object(DEPLOYMENTS, "default", loser)["spec"]["replicas"]) == 1
        assert int(cluster.object(DEPLOYMENTS, "default", winner)["spec"]["replicas"]) == 0
    finally:
        await other.close()


async def test_a_failed_specialisation_deletes_the_pod_and_scales_the_deployment_instead(cluster, backend,
                                                                                       instance) -> None:
    instance.status = 502
    await setup(cluster, instance)
    await sees_idle_pod(backend)
    await backend.scale(HELLO, 1)
    await eventually(lambda: cluster.object(PODS, "default", POD) is None, what="the pod deleted")
    await eventually(lambda: replicas(cluster) == 1, what="the Deployment scaled up")
    await eventually(lambda: backend.desired(HELLO) == 1, what="one instance wanted, the Deployment's")


async def test_a_function_with_env_from_a_secret_never_claims(cluster, backend, instance) -> None:
    secret_ref = {"secretKeyRef": {"name": "db", "key": "password"}}
    await setup(cluster, instance, env=[{"name": "PASSWORD", "valueFrom": secret_ref}])
    await sees_idle_pod(backend)
    await backend.scale(HELLO, 1)
    assert replicas(cluster) == 1
    assert labels(cluster)[naming.LABEL_POOL_STATE] == naming.POOL_IDLE
    assert instance.received == []


async def test_scaling_to_zero_deletes_the_specialised_pod(cluster, backend, instance) -> None:
    await setup(cluster, instance)
    await sees_idle_pod(backend)
    await backend.scale(HELLO, 1)
    await eventually(lambda: specialized(cluster), what="the pod specialised")
    await eventually(lambda: backend._mirror.pooled(HELLO), what="the mirror seeing it")
    await backend.scale(HELLO, 0)
    await eventually(lambda: cluster.object(PODS, "default", POD) is None, what="the pod deleted")
    assert replicas(cluster) == 0


async def test_scaling_to_zero_while_a_pod_is_specialised_deletes_it_and_asks_for_nothing_instead(
        cluster, backend, instance) -> None:
    instance.answer.clear()
    await setup(cluster, instance)
    await sees_idle_pod(backend)
    await backend.scale(HELLO, 1)
    await eventually(lambda: instance.received, what="the specialisation under way")
    await eventually(lambda: backend._mirror.pooled(HELLO), what="the mirror seeing the claim")
    await backend.scale(HELLO, 0)
    await eventually(lambda: cluster.object(PODS, "default", POD) is None, what="the pod deleted")
    await eventually(lambda: backend.desired(HELLO) == 0, what="nothing wanted")
    instance.answer.set()
    assert replicas(cluster) == 0


async def test_an_idle_pool_pod_is_no_instance_of_anything(cluster, backend, instance) -> None:
    await setup(cluster, instance)
    await sees_idle_pod(backend)
    assert backend.ready(HELLO) == []
    assert backend.desired(HELLO) == 0
    assert backend.problem(HELLO) is None
    assert all(pod.function is None for pod in backend._mirror.pods.values())


async def test_two_gateways_starting_one_function_with_two_idle_pods_claim_the_same_one(
        cluster, api, backend, instance) -> None:
    other = new_backend(api, "gateway-b")
    await other.start()
    try:
        for round_ in range(4):   # with a random choice of pod, each round would pick two pods half the time
            name = f"fn{round_}"
            await create_function(cluster, function_manifest(name))
            await post(cluster, "/apis/apps/v1/namespaces/default/deployments", deployment(name, 0))
            pods = [f"kfn-pool-python3-12-r{round_}{side}" for side in "ab"]
            for pod in pods:
                await post(cluster, "/api/v1/namespaces/default/pods", pool_pod(instance.port, pod))
            ref = FunctionRef("default", name)
            for gateway in (backend, other):
                await eventually(lambda gateway=gateway, ref=ref: len(gateway._mirror.idle_pool_pods(
                    "default", "python3.12")) == 2 and gateway.function(ref), what="two idle pods seen")
            await asyncio.gather(backend.scale(ref, 1), other.scale(ref, 1))
            await eventually(lambda pods=pods: any(labels(cluster, p).get(naming.LABEL_POOL_STATE)
                                                   == naming.POOL_SPECIALIZED for p in pods), what="one specialised")
            states = sorted(labels(cluster, p)[naming.LABEL_POOL_STATE] for p in pods)
            assert states == [naming.POOL_IDLE, naming.POOL_SPECIALIZED], (round_, states)
            assert int(cluster.object(DEPLOYMENTS, "default", name)["spec"]["replicas"]) == 0
            for pod in pods:   # out of the next round's way
                async with cluster.delete(f"/api/v1/namespaces/default/pods/{pod}") as r:
                    assert r.status == 200, await r.text()
    finally:
        await other.close()
