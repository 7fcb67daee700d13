"""A warm pool on the emulated API (tests/support/kube.py). Gateway side: an idle pool pod whose
instance is a small HTTP server on 127.0.0.1 that records specialisations, and gateways' backends
with a claimer (kfn.kube.pool). Operator side: the pool keeper (kfn_operator.pools) over Functions
the test sets, and pooled pods in namespace "a". Shared by the k8s tier's pool tests; the fixtures
are registered in tests/k8s/conftest.py."""
from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from kubernetes.aio import client

from kfn.core import naming, pool
from kfn.core.functions import Function, FunctionRef
from kfn.kube import Backoff, KubernetesBackend
from kfn.kube.pool import PoolClaimer
from kfn_operator import builders
from kfn_operator.config import OperatorConfig
from kfn_operator.pools import Pools
from kfn_runtime import contract
from tests.support import kube
from tests.support.functions import function_manifest
from tests.support.kube import DEPLOYMENTS, create_function, post
from tests.support.kube import deployment_manifest as deployment
from tests.support.ports import free_port
from tests.support.waiting import eventually

PODS = "v1/pods"
HELLO = FunctionRef("default", "hello")
POOL_KEY = b"k" * 32   # the platform's pool secret, which gateways sign with and the operator hands out
POD = "kfn-pool-python3-12-abcde"
POOL = pool.deployment_name("python3.12")


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


# -- operator side --------------------------------------------------------------------------------

class Functions:
    """The Functions an operator's backend would mirror, as the test sets them."""

    def __init__(self, *functions: Function) -> None:
        self.items = list(functions)

    def functions(self) -> list[Function]:
        return list(self.items)

    def function(self, ref: FunctionRef) -> Function | None:
        return next((fn for fn in self.items if fn.ref == ref), None)


def pools(api: client.ApiClient, functions: Functions, *, size: int = 1, key: bytes | None = POOL_KEY,
          interval: float = 5.0, clock: Callable[[], float] = time.time) -> Pools:
    """An operator's pool keeper over `functions`, its Functions already synced."""
    synced = asyncio.Event()
    synced.set()
    return Pools(api, OperatorConfig(pool_size=size, pool_key=key, pool_interval=interval), functions, synced=synced,
                 clock=clock)


async def pooled_pod(cluster: kube.Cluster, name: str, state: str, *, function: str = "hello",
                     annotations: dict[str, str] | None = None) -> None:
    """A pod of the python3.12 pool in namespace "a", in pool state `state`, for `function`."""
    labels = {naming.LABEL_MANAGED_BY: naming.MANAGED_BY, naming.LABEL_POOL: "python3.12",
              naming.LABEL_POOL_STATE: state, naming.LABEL_FUNCTION: function,
              naming.LABEL_COMPONENT: naming.COMPONENT_FUNCTION if state == naming.POOL_SPECIALIZED
              else naming.COMPONENT_POOL}
    await post(cluster, "/api/v1/namespaces/a/pods", {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels, "annotations": annotations or {}},
        "spec": {"containers": [{"name": builders.CONTAINER_NAME, "image": "x"}]}})
