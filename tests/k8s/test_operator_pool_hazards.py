"""The operator's warm pools against a hostile tenant and an unlucky cluster, on an emulated API
server: a Deployment of the pool's name that is not kfn's, claim times from a wrong clock, a
Function being deleted, a scale patch that must match what the rest of kfn sends."""
from __future__ import annotations

import asyncio
import time
from typing import Any

from kubernetes.aio import client

from kfn.core import naming, pool
from kfn.core.functions import Function, FunctionRef
from kfn_operator import builders
from kfn_operator.config import OperatorConfig
from kfn_operator.pools import Pools
from tests.support import kube
from tests.support.functions import make_function

POOL_KEY = b"p" * 32
POOL = pool.deployment_name("python3.12")
PODS = "v1/pods"


class Functions:
    """The Functions an operator's backend would mirror, as the test sets them."""

    def __init__(self, *functions: Function) -> None:
        self.items = list(functions)

    def functions(self) -> list[Function]:
        return list(self.items)

    def function(self, ref: FunctionRef) -> Function | None:
        return next((fn for fn in self.items if fn.ref == ref), None)


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def pools(api: client.ApiClient, functions: Functions, *, clock: Clock | None = None) -> Pools:
    synced = asyncio.Event()
    synced.set()
    return Pools(api, OperatorConfig(pool_size=1, pool_key=POOL_KEY, pool_interval=5.0), functions, synced=synced,
                 clock=clock or time.time)


async def create(cluster: kube.Cluster, path: str, body: dict[str, Any]) -> None:
    async with cluster.post(path, json=body) as r:
        assert r.status == 201, await r.text()


async def claimed_pod(cluster: kube.Cluster, name: str, claimed_at: str) -> None:
    labels = {naming.LABEL_MANAGED_BY: naming.MANAGED_BY, naming.LABEL_POOL: "python3.12",
              naming.LABEL_POOL_STATE: naming.POOL_CLAIMED, naming.LABEL_FUNCTION: "hello",
              naming.LABEL_COMPONENT: naming.COMPONENT_POOL}
    await create(cluster, "/api/v1/namespaces/a/pods", {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels, "annotations": {naming.ANNOTATION_CLAIMED_AT: claimed_at}},
        "spec": {"containers": [{"name": builders.CONTAINER_NAME, "image": "x"}]}})


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
    await create(cluster, "/apis/apps/v1/namespaces/a/deployments", tenants)
    before = cluster.object(kube.DEPLOYMENTS, "a", POOL)
    keeper = pools(api, Functions(make_function(namespace="a")))
    for _ in range(2):
        assert await keeper.reconcile() == 0
    assert cluster.object(kube.DEPLOYMENTS, "a", POOL) == before
    assert writes_to(cluster, "deployments", POOL) == []


async def test_a_tenants_pod_with_a_pool_state_label_is_not_reaped(api: client.ApiClient,
                                                                   cluster: kube.Cluster) -> None:
    await create(cluster, "/api/v1/namespaces/a/pods", {
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
    await create(cluster, "/apis/apps/v1/namespaces/a/deployments",
                 builders.build_deployment(fn, images=builders.RuntimeImages(), region="us-east-1", replicas=0))
    labels = {naming.LABEL_MANAGED_BY: naming.MANAGED_BY, naming.LABEL_POOL: "python3.12",
              naming.LABEL_POOL_STATE: naming.POOL_SPECIALIZED, naming.LABEL_FUNCTION: "hello",
              naming.LABEL_COMPONENT: naming.COMPONENT_FUNCTION}
    await create(cluster, "/api/v1/namespaces/a/pods", {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "old", "labels": labels, "annotations": {naming.ANNOTATION_SPECIALIZED_HASH: "0"}},
        "spec": {"containers": [{"name": builders.CONTAINER_NAME, "image": "x"}]}})
    await pools(api, Functions(fn)).reconcile()
    (patch,) = [r.data for r in cluster.served if r.method == "PATCH" and r.subresource == "scale"]
    assert patch == [{"op": "replace", "path": "/spec/replicas", "value": 1}]
    assert (cluster.object(kube.DEPLOYMENTS, "a", "hello") or {})["spec"]["replicas"] == 1
