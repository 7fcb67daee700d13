"""The operator's warm pools against a hostile tenant and an unlucky cluster, on an emulated API
server: a Deployment of the pool's name that is not kfn's, claim times from a wrong clock, a
Function being deleted, a scale patch that must match what the rest of kfn sends."""
from __future__ import annotations

import time

from kubernetes.aio import client

from kfn.core import naming, pool
from kfn_operator import builders
from tests.support import kube
from tests.support.functions import make_function
from tests.support.pools import PODS, POOL, Functions, pooled_pod, pools, post


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


async def claimed_pod(cluster: kube.Cluster, name: str, claimed_at: str) -> None:
    await pooled_pod(cluster, name, naming.POOL_CLAIMED, annotations={naming.ANNOTATION_CLAIMED_AT: claimed_at})


def writes_to(cluster: kube.Cluster, plural: str, name: str) -> list[str]:
    return [str(r.method) for r in cluster.served
            if r.method != "GET" and r.resource is not None and r.resource.plural == plural and r.name == name]


async def test_a_tenants_deployment_of_the_pools_name_is_never_written_to(api: client.ApiClient,
                                                                          cluster: kube.Cluster) -> None:
    tenants = {"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": POOL, "labels": {"app": "mine"}},
               "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "mine"}},
                        "template": {"metadata": {"labels": {"app": "mine"}},
                                     "spec": {"containers": [{"name": "c", "image": "mine:1"}]}}}}
    await post(cluster, "/apis/apps/v1/namespaces/a/deployments", tenants)
    before = cluster.object(kube.DEPLOYMENTS, "a", POOL)
    keeper = pools(api, Functions(make_function(namespace="a")))
    for _ in range(2):
        assert await keeper.reconcile() == 0
    assert cluster.object(kube.DEPLOYMENTS, "a", POOL) == before
    assert writes_to(cluster, "deployments", POOL) == []


async def test_a_tenants_pod_with_a_pool_state_label_is_not_reaped(api: client.ApiClient,
                                                                   cluster: kube.Cluster) -> None:
    await post(cluster, "/api/v1/namespaces/a/pods", {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "mine", "labels": {naming.LABEL_POOL_STATE: naming.POOL_CLAIMED,
                                                naming.LABEL_FUNCTION: "nobody"}},
        "spec": {"containers": [{"name": "c", "image": "mine:1"}]}})
    await pools(api, Functions()).reconcile()
    assert cluster.object(PODS, "a", "mine") is not None


async def test_a_claim_time_far_in_the_future_does_not_keep_a_pod_past_the_claim_deadline(
        api: client.ApiClient, cluster: kube.Cluster) -> None:
    clock = Clock()
    await claimed_pod(cluster, "skewed", f"{clock.now + 10 ** 9:.3f}")
    keeper = pools(api, Functions(make_function(namespace="a")), clock=clock)
    await keeper.reconcile()
    assert cluster.object(PODS, "a", "skewed") is not None
    clock.now += pool.CLAIM_DEADLINE_SECONDS + 1
    await keeper.reconcile()
    assert cluster.object(PODS, "a", "skewed") is None


async def test_a_claim_time_far_in_the_future_for_an_unknown_function_does_not_keep_a_pod(
        api: client.ApiClient, cluster: kube.Cluster) -> None:
    clock = Clock()
    await claimed_pod(cluster, "skewed", f"{clock.now + 10 ** 9:.3f}")
    keeper = pools(api, Functions(), clock=clock)
    await keeper.reconcile()
    clock.now += pool.CLAIM_DEADLINE_SECONDS + 1
    await keeper.reconcile()
    assert cluster.object(PODS, "a", "skewed") is None


async def test_a_claim_time_that_is_nan_is_deleted_as_no_claim_time(api: client.ApiClient,
                                                                    cluster: kube.Cluster) -> None:
    await claimed_pod(cluster, "nan", "nan")
    await pools(api, Functions(make_function(namespace="a"))).reconcile()
    assert cluster.object(PODS, "a", "nan") is None


async def test_a_function_being_deleted_wants_no_pool(api: client.ApiClient, cluster: kube.Cluster) -> None:
    deleting = make_function(namespace="a", metadata={"deletionTimestamp": "2026-01-01T00:00:00Z",
                                                      "finalizers": ["someone.example/keep"]})
    await pools(api, Functions(deleting)).reconcile()
    assert cluster.list_objects(kube.DEPLOYMENTS, "a") == []


async def test_a_served_pod_is_replaced_with_the_scale_patch_the_rest_of_kfn_sends(api: client.ApiClient,
                                                                                  cluster: kube.Cluster) -> None:
    fn = make_function(namespace="a")
    await post(cluster, "/apis/apps/v1/namespaces/a/deployments",
               builders.build_deployment(fn, images=builders.RuntimeImages(), region="us-east-1", replicas=0))
    await pooled_pod(cluster, "old", naming.POOL_SPECIALIZED, annotations={naming.ANNOTATION_SPECIALIZED_HASH: "0"})
    await pools(api, Functions(fn)).reconcile()
    (patch,) = [r.data for r in cluster.served if r.method == "PATCH" and r.subresource == "scale"]
    assert patch == [{"op": "replace", "path": "/spec/replicas", "value": 1}]
    assert (cluster.object(kube.DEPLOYMENTS, "a", "hello") or {})["spec"]["replicas"] == 1
