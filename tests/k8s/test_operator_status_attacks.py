"""Attacks on the operator's status path (the one Deployment informer → a work queue → the
Function's status) and on its create-first build of a new Function (issue 18): what a careless
operator, a hostile tenant or an unusual cluster does, against the emulated API server."""
from __future__ import annotations

from typing import Any

from kubernetes.aio import client

from kfn.core import naming
from kfn.core.functions import FunctionRef
from kfn.kube import KubernetesBackend
from kfn_operator.config import OperatorConfig
from tests.support import kube
from tests.support.functions import function_manifest
from tests.support.kube import create_function, deployment, deployment_manifest, function_status, post, ready_condition
from tests.support.operator import running_operator
from tests.support.waiting import eventually

FUNCTIONS_PATH = "/apis/kfn.dev/v1alpha1/namespaces/default/functions"
DEPLOYMENTS_PATH = "/apis/apps/v1/namespaces/default/deployments"
CONFIG = OperatorConfig(standalone=True, autoscaler=False, scheduler=False)
HELLO = FunctionRef("default", "hello")


async def patch(cluster: kube.Cluster, path: str, body: dict[str, Any]) -> None:
    async with cluster.patch(path, json=body, headers={"Content-Type": "application/merge-patch+json"}) as r:
        assert r.status == 200, await r.text()


async def delete(cluster: kube.Cluster, path: str) -> None:
    async with cluster.delete(path) as r:
        assert r.status == 200, await r.text()


async def make_ready(cluster: kube.Cluster, name: str = "hello", replicas: int = 1) -> None:
    """What the Deployment controller reports once the function's pods are ready."""
    await patch(cluster, f"{DEPLOYMENTS_PATH}/{name}/status",
                {"status": {"replicas": replicas, "readyReplicas": replicas, "availableReplicas": replicas}})


def requests(cluster: kube.Cluster, since: int, *, method: str, plural: str, name: str | None = None,
             subresource: str | None = None) -> list[Any]:
    return [r for r in cluster.served[since:]
            if str(r.method.value).upper() == method and r.resource is not None and r.resource.plural == plural
            and (name is None or r.name == name) and r.subresource == subresource]


def is_ready(cluster: kube.Cluster, name: str = "hello") -> bool:
    cond = ready_condition(cluster, name)
    return bool(cond and cond["reason"] == "Ready" and function_status(cluster, name).get("readyReplicas") == 1)


# ---- a Deployment deleted from under its Function


async def test_a_deployment_deleted_while_the_api_fails_once_is_still_recreated(cluster: kube.Cluster) -> None:
    async with running_operator(CONFIG):
        await create_function(cluster, function_manifest(scale={"minReplicas": 1}))
        first = await eventually(lambda: deployment(cluster), what="the Deployment")
        await eventually(lambda: ready_condition(cluster), what="the first status")
        await delete(cluster, f"{DEPLOYMENTS_PATH}/hello")
        # The next request for a Deployment, the restore's create, fails: the queue tries again.
        cluster.fail_requests(kube.DEPLOYMENTS, 1)
        await eventually(lambda: (d := deployment(cluster)) and d["metadata"]["uid"] != first["metadata"]["uid"],
                         what="a new Deployment")


async def test_a_deployment_deleted_while_the_api_fails_longer_than_a_few_retries_is_still_recreated(
        cluster: kube.Cluster) -> None:
    async with running_operator(CONFIG):
        await create_function(cluster, function_manifest(scale={"minReplicas": 1}))
        first = await eventually(lambda: deployment(cluster), what="the Deployment")
        await eventually(lambda: ready_condition(cluster), what="the first status")
        await delete(cluster, f"{DEPLOYMENTS_PATH}/hello")
        # An API server restarting: every attempt of the queue's first five fails. No other event
        # of this function follows, so nothing else would ask again.
        cluster.fail_requests(kube.DEPLOYMENTS, 5)
        await eventually(lambda: (d := deployment(cluster)) and d["metadata"]["uid"] != first["metadata"]["uid"],
                         what="a new Deployment", timeout=60)


async def test_a_deployment_deleted_by_hand_is_recreated_exactly_once(cluster: kube.Cluster) -> None:
    async with running_operator(CONFIG):
        await create_function(cluster, function_manifest(scale={"minReplicas": 1}))
        first = await eventually(lambda: deployment(cluster), what="the Deployment")
        await eventually(lambda: ready_condition(cluster), what="the first status")
        start = len(cluster.served)
        await delete(cluster, f"{DEPLOYMENTS_PATH}/hello")
        again = await eventually(lambda: (d := deployment(cluster)) and d["metadata"]["uid"] != first["metadata"]["uid"]
                                 and d, what="a new Deployment")
        await make_ready(cluster)
        await eventually(lambda: is_ready(cluster), what="Ready again")
        creates = requests(cluster, start, method="POST", plural="deployments")
    assert len(creates) == 1, creates
    assert deployment(cluster)["metadata"]["uid"] == again["metadata"]["uid"]


async def test_a_deployment_deleted_with_its_function_is_not_recreated(cluster: kube.Cluster) -> None:
    async with running_operator(CONFIG):
        await create_function(cluster, function_manifest("gone", scale={"minReplicas": 1}))
        await create_function(cluster, function_manifest("marker"))
        await eventually(lambda: deployment(cluster, "gone") and ready_condition(cluster, "gone"), what="gone's status")
        start = len(cluster.served)
        await delete(cluster, f"{FUNCTIONS_PATH}/gone")
        # A later Deployment change of another function passes through the same queue after it.
        await eventually(lambda: ready_condition(cluster, "marker"), what="the marker's status")
        await make_ready(cluster, "marker", 0)
        await delete(cluster, f"{DEPLOYMENTS_PATH}/marker")
        await eventually(lambda: deployment(cluster, "marker"), what="the marker's Deployment back")
        assert deployment(cluster, "gone") is None
        # The marker's Deployment only.
        assert len(requests(cluster, start, method="POST", plural="deployments")) == 1


async def test_a_function_deleted_and_made_again_at_once_gets_one_deployment_the_new_one_owns(
        cluster: kube.Cluster) -> None:
    async with running_operator(CONFIG):
        await create_function(cluster, function_manifest(scale={"minReplicas": 1}))
        await eventually(lambda: deployment(cluster) and ready_condition(cluster), what="the first status")
        start = len(cluster.served)
        await delete(cluster, f"{FUNCTIONS_PATH}/hello")
        uid = (await create_function(cluster, function_manifest(scale={"minReplicas": 1})))["metadata"]["uid"]
        await eventually(lambda: (d := deployment(cluster)) and d["metadata"]["ownerReferences"][0]["uid"] == uid,
                         what="a Deployment of the new Function")
        await make_ready(cluster)
        await eventually(lambda: is_ready(cluster), what="the new Function Ready")
        assert [o["uid"] for o in deployment(cluster)["metadata"]["ownerReferences"]] == [uid]
        created = [r for r in requests(cluster, start, method="POST", plural="deployments")]
    assert len(created) == 1, created


async def test_a_copy_of_a_functions_deployment_under_another_name_is_not_taken_for_it(
        cluster: kube.Cluster, api: client.ApiClient) -> None:
    # A careless operator copies a function's Deployment (labels and all) to debug it: the
    # function's status, and the replicas the autoscaler and gateway read, still follow its own.
    backend = KubernetesBackend(api)
    await backend.start()
    try:
        await post(cluster, DEPLOYMENTS_PATH, deployment_manifest("hello", 1))
        copy = deployment_manifest("hello", 3)
        copy["metadata"]["name"] = "hello-copy"
        await post(cluster, DEPLOYMENTS_PATH, copy)
        await post(cluster, DEPLOYMENTS_PATH, deployment_manifest("marker", 0))
        await eventually(lambda: backend.deployment(FunctionRef("default", "marker")), what="the marker")
        assert (state := backend.deployment(HELLO)) is not None and state.replicas == 1
        await delete(cluster, f"{DEPLOYMENTS_PATH}/hello-copy")
        await delete(cluster, f"{DEPLOYMENTS_PATH}/marker")
        await eventually(lambda: backend.deployment(FunctionRef("default", "marker")) is None, what="the marker gone")
        assert (state := backend.deployment(HELLO)) is not None and state.replicas == 1
    finally:
        await backend.close()


# ---- statuses written by others


async def test_a_status_overwritten_with_an_older_one_is_written_again(cluster: kube.Cluster) -> None:
    # What kopf's reconcile patch does when the Deployment became ready between the reconcile's
    # read and the patch landing (a busy API server): a status older than the Deployment.
    async with running_operator(CONFIG):
        await create_function(cluster, function_manifest(scale={"minReplicas": 1}))
        await eventually(lambda: ready_condition(cluster), what="the first status")
        await make_ready(cluster)
        await eventually(lambda: is_ready(cluster), what="Ready")
        stale = dict(ready_condition(cluster), status="False", reason="Deploying", message="0 of 1 replicas ready")
        await patch(cluster, f"{FUNCTIONS_PATH}/hello/status",
                    {"status": {"readyReplicas": 0, "conditions": [stale]}})
        await eventually(lambda: is_ready(cluster), what="Ready written again")


async def test_an_invalid_spec_stays_reported_while_the_old_deployment_changes(cluster: kube.Cluster) -> None:
    async with running_operator(CONFIG):
        await create_function(cluster, function_manifest(scale={"minReplicas": 1}))
        await eventually(lambda: ready_condition(cluster), what="the first status")
        await patch(cluster, f"{FUNCTIONS_PATH}/hello", {"spec": {"handler": "nodot"}})
        await eventually(lambda: (c := ready_condition(cluster)) and c["reason"] == "InvalidSpec", what="InvalidSpec")
        start = len(cluster.served)
        await make_ready(cluster)
        # The status path meets a newer Function than its mirror's (409) and reads it.
        await eventually(lambda: requests(cluster, start, method="GET", plural=naming.PLURAL, name="hello"),
                         what="the status path to read the Function")
        assert ready_condition(cluster)["reason"] == "InvalidSpec"


async def test_a_restarted_operator_writes_no_unchanged_status(cluster: kube.Cluster) -> None:
    names = ["one", "two", "three"]
    async with running_operator(CONFIG):
        for name in names:
            await create_function(cluster, function_manifest(name, scale={"minReplicas": 1}))
        await eventually(lambda: all(ready_condition(cluster, n) for n in names), what="the statuses")
        for name in names:
            await make_ready(cluster, name)
        await eventually(lambda: all(is_ready(cluster, n) for n in names), what="all Ready")
    before = {n: cluster.object(kube.FUNCTIONS, "default", n) for n in ("two", "three")}
    start = len(cluster.served)
    async with running_operator(CONFIG):
        # A Deployment deleted after the restart is recreated by the same queue, after the relist.
        await eventually(lambda: requests(cluster, start, method="GET", plural="deployments"), what="a relist")
        await delete(cluster, f"{DEPLOYMENTS_PATH}/one")
        await eventually(lambda: deployment(cluster, "one"), what="one's Deployment back")
        after = {n: cluster.object(kube.FUNCTIONS, "default", n) for n in ("two", "three")}
        writes = [(r.name, r.data) for r in requests(cluster, start, method="PATCH", plural=naming.PLURAL,
                                                     subresource="status") if r.name in ("two", "three")]
    # kopf's resume handler may send what is there already (no change, no event); nothing else.
    assert {n: f["metadata"]["resourceVersion"] for n, f in after.items()} == \
        {n: f["metadata"]["resourceVersion"] for n, f in before.items()}, writes


# ---- create-first


async def test_a_new_function_adopts_a_deployment_an_older_function_of_its_name_left(cluster: kube.Cluster) -> None:
    async with running_operator(CONFIG):
        await create_function(cluster, function_manifest(scale={"minReplicas": 1}))
        old = await eventually(lambda: deployment(cluster), what="the Deployment")
        await eventually(lambda: ready_condition(cluster), what="the first status")
    # The Function is deleted and made again while the garbage collector has not yet taken the
    # Deployment of the old one (here: put back as it was, owned by the old uid).
    await delete(cluster, f"{FUNCTIONS_PATH}/hello")
    await eventually(lambda: deployment(cluster) is None, what="the old Deployment gone")
    left = {k: v for k, v in old.items() if k != "status"}
    left["metadata"] = {k: v for k, v in old["metadata"].items() if k not in ("uid", "resourceVersion")}
    await post(cluster, DEPLOYMENTS_PATH, left)
    async with running_operator(CONFIG):
        created = await create_function(cluster, function_manifest(scale={"minReplicas": 1}))
        uid = created["metadata"]["uid"]
        await eventually(lambda: ready_condition(cluster) and function_status(cluster).get("observedGeneration"),
                         what="the status")
        owners = await eventually(lambda: [o["uid"] for o in deployment(cluster)["metadata"]["ownerReferences"]
                                           if o["uid"] == uid], what="the new Function to own the Deployment")
    assert owners == [uid]


# ---- old Services


def service(name: str, *, owner: dict[str, Any] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "default",
                            "labels": {naming.LABEL_MANAGED_BY: naming.MANAGED_BY,
                                       naming.LABEL_COMPONENT: naming.COMPONENT_FUNCTION,
                                       naming.LABEL_FUNCTION: name}}
    if owner is not None:
        meta["ownerReferences"] = [{"uid": "00000000-0000-0000-0000-000000000001", "controller": True,
                                    "name": name, **owner}]
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta,
            "spec": {"ports": [{"name": "http", "port": 8080}]}}


async def test_only_services_a_function_of_kfn_owns_are_deleted_at_start(cluster: kube.Cluster) -> None:
    await post(cluster, "/api/v1/namespaces/default/services",
               service("old", owner={"apiVersion": "kfn.dev/v1alpha1", "kind": "Function"}))
    await post(cluster, "/api/v1/namespaces/default/services", service("users"))
    # A copy of an old Service under another name (a user keeping a Service in front of the
    # function's pods after the upgrade): still owned by the Function, but not one kfn made.
    copied = service("old", owner={"apiVersion": "kfn.dev/v1alpha1", "kind": "Function"})
    copied["metadata"]["name"] = "old-public"
    await post(cluster, "/api/v1/namespaces/default/services", copied)
    await post(cluster, "/api/v1/namespaces/default/services",
               service("other", owner={"apiVersion": "example.com/v1", "kind": "Function"}))
    async with running_operator(CONFIG):
        await eventually(lambda: cluster.object(kube.SERVICES, "default", "old") is None, what="the old Service gone")
    assert cluster.object(kube.SERVICES, "default", "users") is not None
    assert cluster.object(kube.SERVICES, "default", "other") is not None
    assert cluster.object(kube.SERVICES, "default", "old-public") is not None


# ---- a namespaced operator


async def test_an_operator_of_named_namespaces_writes_the_status_of_their_functions(cluster: kube.Cluster) -> None:
    async with running_operator(OperatorConfig(standalone=True, autoscaler=False, scheduler=False,
                                               namespaces=("team",))):
        await create_function(cluster, function_manifest(namespace="team", scale={"minReplicas": 1}))
        await eventually(lambda: cluster.object(kube.DEPLOYMENTS, "team", "hello"), what="the Deployment")
        await patch(cluster, "/apis/apps/v1/namespaces/team/deployments/hello/status",
                    {"status": {"replicas": 1, "readyReplicas": 1, "availableReplicas": 1}})

        def team_ready() -> bool:
            fn = cluster.object(kube.FUNCTIONS, "team", "hello") or {}
            return any(c["type"] == "Ready" and c["reason"] == "Ready"
                       for c in (fn.get("status") or {}).get("conditions") or ())
        await eventually(team_ready, what="Ready in team")
