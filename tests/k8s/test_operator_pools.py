"""Warm pools kept by the operator, against an emulated API server: a pool Deployment per runtime per
namespace with Functions it can serve, gone with them; pooled pods nobody will finish or use deleted,
a served one replaced by a replica of its function's Deployment."""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes.aio import client

from kfn.core import naming, pool
from kfn.core.instancespec import termination_grace_seconds
from kfn_operator import builders
from kfn_operator.config import OperatorConfig
from kfn_runtime import contract, specialize
from tests.support import kube
from tests.support.functions import function_manifest, make_function
from tests.support.kube import create_function
from tests.support.operator import running_operator
from tests.support.pools import PODS, POOL, POOL_KEY, Functions, pooled_pod, pools, post
from tests.support.waiting import eventually


def pool_deployments(cluster: kube.Cluster, namespace: str | None = None) -> list[dict[str, Any]]:
    return cluster.list_objects(kube.DEPLOYMENTS, namespace,
                                selector=f"{naming.LABEL_COMPONENT}={naming.COMPONENT_POOL}")


def deleted_pods(cluster: kube.Cluster) -> dict[str, str]:
    """Pod name → the grace period its DELETE asked for."""
    return {request.name: request.params.get("gracePeriodSeconds", "") for request in cluster.served
            if request.method == "DELETE" and request.resource is not None and request.resource.plural == "pods"
            and request.name}


@pytest.fixture
async def pooling(cluster: kube.Cluster) -> AsyncIterator[None]:
    config = OperatorConfig(standalone=True, autoscaler=False, pool_size=2, pool_key=POOL_KEY, pool_interval=0.1)
    async with running_operator(config):
        yield


async def test_a_function_gets_a_pool_of_its_runtime_in_its_namespace(cluster: kube.Cluster, pooling: None) -> None:
    await create_function(cluster, function_manifest(namespace="a"))
    (deployment,) = await eventually(lambda: pool_deployments(cluster, "a"), what="the pool Deployment")
    assert deployment["metadata"]["name"] == POOL
    assert deployment["spec"]["replicas"] == 2
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env[contract.ENV_POOL_KEY] == specialize.namespace_key(POOL_KEY, "a")
    assert pool_deployments(cluster, "default") == []


async def test_the_pool_goes_with_the_last_function_of_its_namespace(cluster: kube.Cluster, pooling: None) -> None:
    await create_function(cluster, function_manifest(namespace="a"))
    await eventually(lambda: pool_deployments(cluster, "a"), what="the pool Deployment")
    async with cluster.delete(f"/apis/{naming.GROUP}/{naming.VERSION}/namespaces/a/{naming.PLURAL}/hello") as r:
        assert r.status < 300, await r.text()
    await eventually(lambda: pool_deployments(cluster, "a") == [], what="the pool Deployment deleted")


async def test_a_function_no_pool_can_serve_gets_no_pool(api: client.ApiClient, cluster: kube.Cluster) -> None:
    await pools(api, Functions(make_function(namespace="a", image="registry.example/fn:1"))).reconcile()
    assert pool_deployments(cluster) == []


async def test_an_outdated_pool_deployment_is_brought_to_the_operators_spec(api: client.ApiClient,
                                                                            cluster: kube.Cluster) -> None:
    wanted = builders.build_pool_deployment("a", "python3.12", images=builders.RuntimeImages(), size=1,
                                            key=specialize.namespace_key(POOL_KEY, "a"))
    old = {**wanted, "metadata": {**wanted["metadata"], "annotations": {naming.ANNOTATION_SPEC_HASH: "old"}},
           "spec": {**wanted["spec"], "replicas": 4}}
    await post(cluster, "/apis/apps/v1/namespaces/a/deployments", old)
    await pools(api, Functions(make_function(namespace="a"))).reconcile()
    (deployment,) = pool_deployments(cluster, "a")
    assert builders.pool_hash(deployment) == builders.pool_hash(wanted)
    assert deployment["spec"]["replicas"] == 1


async def test_a_pool_size_of_zero_keeps_no_pool_and_deletes_those_there(api: client.ApiClient,
                                                                         cluster: kube.Cluster) -> None:
    fn = make_function(namespace="a")
    await pools(api, Functions(fn)).reconcile()
    assert pool_deployments(cluster, "a")
    assert await pools(api, Functions(fn), size=0).reconcile() == 0
    assert pool_deployments(cluster) == []


async def test_without_a_pool_key_pools_are_off(api: client.ApiClient, cluster: kube.Cluster) -> None:
    fn = make_function(namespace="a")
    await pools(api, Functions(fn)).reconcile()
    await pools(api, Functions(fn), key=None).reconcile()
    assert pool_deployments(cluster) == []


async def test_a_pod_claimed_long_ago_and_never_specialised_is_deleted(api: client.ApiClient,
                                                                       cluster: kube.Cluster) -> None:
    fn = make_function(namespace="a")
    claimed_at = time.time() - pool.CLAIM_DEADLINE_SECONDS - 60
    await pooled_pod(cluster, "stuck", naming.POOL_CLAIMED,
                     annotations={naming.ANNOTATION_CLAIMED_AT: f"{claimed_at:.3f}"})
    await pooled_pod(cluster, "fresh", naming.POOL_CLAIMED,
                     annotations={naming.ANNOTATION_CLAIMED_AT: f"{time.time():.3f}"})
    await pools(api, Functions(fn)).reconcile()
    assert cluster.object(PODS, "a", "stuck") is None
    assert cluster.object(PODS, "a", "fresh") is not None
    assert deleted_pods(cluster) == {"stuck": str(termination_grace_seconds(fn))}


async def test_a_specialised_pod_of_an_older_spec_is_replaced_by_a_replica_then_deleted(api: client.ApiClient,
                                                                                        cluster: kube.Cluster) -> None:
    fn = make_function(namespace="a")
    await post(cluster, "/apis/apps/v1/namespaces/a/deployments",
               builders.build_deployment(fn, images=builders.RuntimeImages(), region="us-east-1", replicas=1))
    await pooled_pod(cluster, "old", naming.POOL_SPECIALIZED, annotations={naming.ANNOTATION_SPECIALIZED_HASH: "0"})
    current = pool.specialized_hash(fn, None)
    await pooled_pod(cluster, "new", naming.POOL_SPECIALIZED, annotations={naming.ANNOTATION_SPECIALIZED_HASH: current})
    await pools(api, Functions(fn)).reconcile()
    assert (cluster.object(kube.DEPLOYMENTS, "a", "hello") or {})["spec"]["replicas"] == 2
    assert cluster.object(PODS, "a", "old") is None
    assert cluster.object(PODS, "a", "new") is not None


async def test_a_pod_whose_function_is_gone_is_deleted_with_its_own_grace_period(api: client.ApiClient,
                                                                                 cluster: kube.Cluster) -> None:
    await pooled_pod(cluster, "orphan", naming.POOL_SPECIALIZED, annotations={naming.ANNOTATION_SPECIALIZED_HASH: "0"})
    await pools(api, Functions()).reconcile()
    assert cluster.object(PODS, "a", "orphan") is None
    assert deleted_pods(cluster) == {"orphan": ""}


async def test_a_pod_claimed_moments_ago_for_a_function_not_seen_yet_is_kept(api: client.ApiClient,
                                                                              cluster: kube.Cluster) -> None:
    await pooled_pod(cluster, "just-claimed", naming.POOL_CLAIMED, function="new",
                     annotations={naming.ANNOTATION_CLAIMED_AT: f"{time.time():.3f}"})
    await pools(api, Functions()).reconcile()
    assert cluster.object(PODS, "a", "just-claimed") is not None


async def test_a_failing_api_is_logged_and_tried_again_at_the_next_pass(api: client.ApiClient, cluster: kube.Cluster,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="kfn_operator.pools")
    cluster.fail_requests(kube.DEPLOYMENTS, 1)
    task = asyncio.create_task(pools(api, Functions(make_function(namespace="a")), interval=0.05).run())
    try:
        await eventually(lambda: pool_deployments(cluster, "a"), what="the pool Deployment, at a later pass")
    finally:
        task.cancel()
        await asyncio.wait({task})
    assert "could not keep the warm pools" in caplog.text

