"""The gateway's side of warm pools on the emulated API: a scale from zero claims an idle pool pod,
specialises it and makes it one of the function's pods (kfn.kube.pool, kfn.kube.scaling)."""
from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from kubernetes.aio import client

from kfn.core import naming
from kfn.core.functions import FunctionRef
from kfn.kube import Backoff, KubernetesBackend
from kfn.kube.pool import PoolClaimer
from kfn_runtime import contract, specialize
from tests.support import kube
from tests.support.functions import function_manifest
from tests.support.kube import DEPLOYMENTS, create_function
from tests.support.ports import free_port
from tests.support.waiting import eventually

PODS = "v1/pods"
HELLO = FunctionRef("default", "hello")
POOL_KEY = b"k" * 32
POD = "kfn-pool-python3-12-abcde"


@dataclass
class PoolInstance:
    """A pool instance's HTTP side: answers /_/ready, and /_/specialize with `status`, keeping what it got."""

    port: int
    status: int = 200
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    answer: asyncio.Event = field(default_factory=asyncio.Event)   # cleared: holds its answer

    def __post_init__(self) -> None:
        self.answer.set()

    async def specialize(self, request: web.Request) -> web.Response:
        self.received.append((dict(request.headers), await request.read()))
        async with asyncio.timeout(30):
            await self.answer.wait()
        return web.json_response({"status": "ready"} if self.status == 200 else {"errorType": "Runtime.Failed"},
                                 status=self.status)

    async def ready(self, request: web.Request) -> web.Response:
        return web.json_response({"status": contract.STATUS_POOL})


@pytest.fixture
async def instance() -> AsyncIterator[PoolInstance]:
    found = PoolInstance(port=free_port())
    app = web.Application()
    app.router.add_post(contract.PATH_SPECIALIZE, found.specialize)
    app.router.add_get(contract.PATH_READY, found.ready)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", found.port).start()
    try:
        yield found
    finally:
        await runner.cleanup()


def pool_pod(port: int, name: str = POD) -> dict[str, Any]:
    labels = {naming.LABEL_COMPONENT: naming.COMPONENT_POOL, naming.LABEL_POOL: "python3.12",
              naming.LABEL_POOL_STATE: naming.POOL_IDLE, naming.LABEL_MANAGED_BY: naming.MANAGED_BY}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": labels},
            "spec": {"containers": [{"name": "function", "image": "x",
                                     "ports": [{"name": "http", "containerPort": port}]}]},
            "status": {"phase": "Running", "podIP": "127.0.0.1",
                       "conditions": [{"type": "Ready", "status": "True"}]}}


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


async def setup(cluster: kube.Cluster, instance: PoolInstance, **spec: Any) -> None:
    """The function `hello` at zero replicas and one idle pool pod in front of `instance`."""
    await create_function(cluster, function_manifest(**spec))
    await post(cluster, "/apis/apps/v1/namespaces/default/deployments", deployment("hello", 0))
    await post(cluster, "/api/v1/namespaces/default/pods", pool_pod(instance.port))


def new_backend(api: client.ApiClient, name: str) -> KubernetesBackend:
    claimer = functools.partial(PoolClaimer, api, secret=POOL_KEY, region="us-east-1", claimed_by=name,
                                archive_url=None, archive_secret=None, specialize_timeout=10)
    return KubernetesBackend(api, backoff=Backoff(initial=0.05, maximum=0.2), pool=claimer)


@pytest.fixture
async def backend(api: client.ApiClient) -> AsyncIterator[KubernetesBackend]:
    backend = new_backend(api, "gateway-a")
    await backend.start()
    try:
        yield backend
    finally:
        await backend.close()


async def sees_idle_pod(backend: KubernetesBackend) -> None:
    await eventually(lambda: backend._mirror.idle_pool_pods("default", "python3.12"), what="the idle pool pod")


def labels(cluster: kube.Cluster, name: str = POD) -> dict[str, str]:
    return ((cluster.object(PODS, "default", name) or {}).get("metadata") or {}).get("labels") or {}


def replicas(cluster: kube.Cluster) -> int:
    return int((cluster.object(DEPLOYMENTS, "default", "hello") or {})["spec"]["replicas"])


def specialized(cluster: kube.Cluster) -> bool:
    return labels(cluster).get(naming.LABEL_POOL_STATE) == naming.POOL_SPECIALIZED


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


async def test_of_two_gateways_racing_for_one_idle_pod_one_claims_it_and_the_other_scales_the_deployment(
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
        assert replicas(cluster) == 1
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
