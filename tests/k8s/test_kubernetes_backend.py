"""KubernetesBackend: the gateway's view of functions, their pods and replica counts."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from kubernetes.aio import client

from kfn.core import naming
from kfn.core.functions import FunctionRef
from kfn.core.instances import Instance, NoBuild, StartReason
from kfn.kube import Backoff, KubernetesBackend
from kfn_gateway.routing import StartFailed
from kfn_gateway.server import Gateway
from tests.support import kube
from tests.support.functions import function_manifest
from tests.support.kube import create_function, post
from tests.support.kube import deployment_manifest as deployment
from tests.support.waiting import eventually

PODS = "v1/pods"
HELLO = FunctionRef("default", "hello")


def pod(function: str, name: str, ip: str | None, *, ready: bool = True, terminating: bool = False,
        namespace: str = "default", port: int = 8080, waiting: str | None = None) -> dict[str, Any]:
    labels = {**naming.function_labels(function), naming.LABEL_COMPONENT: "function"}
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels}
    if terminating:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    status: dict[str, Any] = {"phase": "Running", "conditions": [{"type": "Ready", "status": str(ready)}]}
    if ip is not None:
        status["podIP"] = ip
    if waiting is not None:
        status["containerStatuses"] = [{
            "name": "function", "ready": False, "restartCount": 3, "image": "x", "imageID": "",
            "state": {"waiting": {"reason": waiting, "message": "back-off 40s restarting failed container"}},
            "lastState": {"terminated": {"exitCode": 1, "message": "ImportError: no module named nope"}}}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"containers": [{"name": "function", "image": "x",
                                     "ports": [{"name": "http", "containerPort": port}]}]},
            "status": status}




async def add_pod(cluster: kube.Cluster, body: dict[str, Any]) -> None:
    await post(cluster, f"/api/v1/namespaces/{body['metadata']['namespace']}/pods", body)


async def update_pod(cluster: kube.Cluster, body: dict[str, Any]) -> None:
    """What the kubelet and the API server would write: the status subresource, then metadata (a
    deletionTimestamp ends the emulated pod, which has no finalizer to keep it)."""
    path = f"/api/v1/namespaces/{body['metadata']['namespace']}/pods/{body['metadata']['name']}"
    for url, patch in ((path + "/status", {"status": body["status"]}), (path, {"metadata": body["metadata"]})):
        async with cluster.patch(url, json=patch, headers={"Content-Type": "application/merge-patch+json"}) as r:
            assert r.status == 200, await r.text()


@pytest.fixture
async def backend(api: client.ApiClient) -> AsyncIterator[KubernetesBackend]:
    backend = KubernetesBackend(api, backoff=Backoff(initial=0.05, maximum=0.2), failure_cooldown=60)
    await backend.start()
    try:
        yield backend
    finally:
        await backend.close()


async def test_functions_are_known_by_namespace_and_name(cluster, backend) -> None:
    await create_function(cluster, function_manifest(concurrency=7))
    fn = await eventually(lambda: backend.function(HELLO), what="the function")
    assert fn.spec.concurrency == 7
    assert [f.ref for f in backend.functions()] == [HELLO]
    assert backend.function(FunctionRef("default", "missing")) is None


async def test_functions_of_the_same_name_in_two_namespaces_are_two_functions(cluster, backend) -> None:
    await create_function(cluster, function_manifest("hello", namespace="team-a", concurrency=3))
    await create_function(cluster, function_manifest("hello", namespace="team-b", concurrency=4))
    a = await eventually(lambda: backend.function(FunctionRef("team-a", "hello")), what="team-a's hello")
    b = await eventually(lambda: backend.function(FunctionRef("team-b", "hello")), what="team-b's hello")
    assert (a.spec.concurrency, b.spec.concurrency) == (3, 4)


async def test_invalid_functions_are_ignored_with_a_log(cluster, backend, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="kfn.kube.mirror")
    await create_function(cluster, function_manifest("broken", handler="nodot", concurrency=7))
    await create_function(cluster, function_manifest("good", concurrency=7))
    await eventually(lambda: backend.function(FunctionRef("default", "good")), what="the valid function")
    assert backend.function(FunctionRef("default", "broken")) is None
    assert any("broken" in r.getMessage() and "spec.handler" in r.getMessage() for r in caplog.records)


async def test_ready_pods_become_instances_on_their_pod_ip(cluster, backend) -> None:
    await create_function(cluster, function_manifest(concurrency=7))
    await add_pod(cluster, pod("hello", "hello-1", "10.0.0.1"))
    await add_pod(cluster, pod("hello", "hello-2", "10.0.0.2", ready=False))
    await add_pod(cluster, pod("hello", "hello-3", "10.0.0.3"))
    await update_pod(cluster, pod("hello", "hello-3", "10.0.0.3", terminating=True))  # created, then deleted
    await add_pod(cluster, pod("hello", "hello-4", None))
    await add_pod(cluster, pod("hello", "hello-5", "10.0.0.5", port=9000))
    await eventually(lambda: [i.id for i in backend.ready(HELLO)] == ["hello-1", "hello-5"], what="instances")
    assert backend.ready(HELLO) == [
        Instance(function=HELLO, id="hello-1", host="10.0.0.1", port=8080, capacity=7),
        Instance(function=HELLO, id="hello-5", host="10.0.0.5", port=9000, capacity=7),
    ]


async def test_a_pod_leaves_rotation_as_soon_as_it_is_being_deleted(cluster, backend) -> None:
    await create_function(cluster, function_manifest(concurrency=7))
    await add_pod(cluster, pod("hello", "hello-1", "10.0.0.1"))
    await eventually(lambda: backend.ready(HELLO), what="an instance")
    await update_pod(cluster, pod("hello", "hello-1", "10.0.0.1", terminating=True))
    await eventually(lambda: backend.ready(HELLO) == [], what="the pod out of rotation")


async def test_listeners_hear_about_new_instances(cluster, backend) -> None:
    heard: list[FunctionRef] = []
    backend.add_listener(heard.append)
    await create_function(cluster, function_manifest(concurrency=7))
    await add_pod(cluster, pod("hello", "hello-1", "10.0.0.1"))
    await eventually(lambda: backend.ready(HELLO), what="an instance")
    assert HELLO in heard


async def test_a_new_pod_answering_its_readiness_path_is_routed_before_the_kubelet_says_ready(
        cluster, api) -> None:
    async def ready(_: web.Request) -> web.Response:
        return web.json_response({"status": "ready"})

    app = web.Application()
    app.router.add_get("/_/ready", ready)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    backend = KubernetesBackend(api, probe=True, probe_interval=0.01)
    await backend.start()
    try:
        await create_function(cluster, function_manifest(concurrency=7))
        await add_pod(cluster, pod("hello", "hello-1", "127.0.0.1", ready=False, port=port))
        instances = await eventually(lambda: backend.ready(HELLO), what="the probed pod")
        assert instances == [Instance(function=HELLO, id="hello-1", host="127.0.0.1", port=port, capacity=7)]
    finally:
        await backend.close()
        await runner.cleanup()


async def test_a_pod_the_kubelet_marks_not_ready_again_leaves_rotation(cluster, backend) -> None:
    await create_function(cluster, function_manifest(concurrency=7))
    await add_pod(cluster, pod("hello", "hello-1", "10.0.0.1"))
    await eventually(lambda: backend.ready(HELLO), what="an instance")
    await update_pod(cluster, pod("hello", "hello-1", "10.0.0.1", ready=False))
    await eventually(lambda: backend.ready(HELLO) == [], what="the pod out of rotation")


async def test_a_pod_that_cannot_start_is_the_functions_problem(cluster, backend) -> None:
    await create_function(cluster, function_manifest(concurrency=7))
    await add_pod(cluster, pod("hello", "hello-1", "10.0.0.1", ready=False, waiting="CrashLoopBackOff"))
    problem = await eventually(lambda: backend.problem(HELLO), what="the problem")
    # The pod's words are its owner's; a termination message that is no runtime's report (the
    # output's end) says nothing of the function for sure: the platform's reason for callers.
    assert problem.reason == StartReason.PLATFORM and problem.init_error is None
    assert "CrashLoopBackOff" in problem.detail and "exited with code 1" in problem.detail
    assert "no module named nope" in problem.detail


async def test_scale_patches_the_deployments_scale_subresource(cluster, backend) -> None:
    await create_function(cluster, function_manifest(scale={"minReplicas": 0}, concurrency=7))
    await post(cluster, "/apis/apps/v1/namespaces/default/deployments", deployment("hello", 0))
    await eventually(lambda: backend.function(HELLO), what="the function")
    assert backend.desired(HELLO) == 0

    await backend.scale(HELLO, 3, reason="test")
    assert cluster.object(kube.DEPLOYMENTS, "default", "hello")["spec"]["replicas"] == 3
    assert backend.desired(HELLO) == 3
    assert any(r.subresource == "scale" and r.method == "PATCH" for r in cluster.served)


async def test_desired_follows_the_deployment(cluster, backend) -> None:
    await create_function(cluster, function_manifest(scale={"minReplicas": 1}, concurrency=7))
    await eventually(lambda: backend.function(HELLO), what="the function")
    assert backend.desired(HELLO) == 1   # no Deployment yet: minReplicas
    await post(cluster, "/apis/apps/v1/namespaces/default/deployments", deployment("hello", 5))
    await eventually(lambda: backend.desired(HELLO) == 5, what="desired from the Deployment")


async def test_scaling_without_a_deployment_is_logged_not_raised(cluster, backend, caplog) -> None:
    # No Deployment yet: the operator creates it once the requirements are built. Not an error; the
    # next decision asks again.
    caplog.set_level(logging.DEBUG, logger="kfn.kube.scaling")
    await create_function(cluster, function_manifest(concurrency=7))
    await eventually(lambda: backend.function(HELLO), what="the function")
    await backend.scale(HELLO, 1)
    await backend.scale(HELLO, 1)
    assert [r.levelno for r in caplog.records if "default/hello" in r.getMessage()] == [logging.DEBUG] * 2
    assert any("not built yet" in r.getMessage() for r in caplog.records)
    assert backend.desired(HELLO) == 0   # nothing recorded (minReplicas): the next decision asks again
    await post(cluster, "/apis/apps/v1/namespaces/default/deployments", deployment("hello", 0))
    await eventually(lambda: backend.desired(HELLO) == 0, what="the Deployment")
    await backend.scale(HELLO, 2)
    assert cluster.object(kube.DEPLOYMENTS, "default", "hello")["spec"]["replicas"] == 2


async def set_build(cluster: kube.Cluster, state: str, *, reason: str, message: str = "",
                    generation: int = 1) -> None:
    """What the operator writes of a build: status.build and the Ready condition."""
    build = {"key": "deps-" + "0" * 32, "job": "kfn-build-000000000000", "state": state,
             **({"message": message} if message else {})}
    ready = {"type": "Ready", "status": "False", "reason": reason, "message": message or "building",
             "observedGeneration": generation, "lastTransitionTime": "2026-01-01T00:00:00Z"}
    async with cluster.patch("/apis/kfn.dev/v1alpha1/namespaces/default/functions/hello/status",
                             json={"status": {"build": build, "conditions": [ready]}},
                             headers={"Content-Type": "application/merge-patch+json"}) as r:
        assert r.status == 200, await r.text()


async def test_a_failed_build_is_the_functions_problem_and_its_listeners_hear_of_it(cluster, backend) -> None:
    await create_function(cluster, function_manifest(concurrency=7, requirements=["nope==0"]))
    await eventually(lambda: backend.function(HELLO), what="the function")
    await set_build(cluster, "Building", reason="Building")
    await eventually(lambda: (backend.function(HELLO).status or {}).get("build"), what="the build's status")
    assert backend.problem(HELLO) is None   # building: requests wait, as for any cold start
    heard: list[FunctionRef] = []
    backend.add_listener(heard.append)

    await set_build(cluster, "Failed", reason="BuildFailed", message="ERROR: No matching distribution for nope==0")
    problem = await eventually(lambda: backend.problem(HELLO), what="the problem")
    assert problem.reason == StartReason.REQUIREMENTS and problem.init_error is None
    assert problem.detail == "ERROR: No matching distribution for nope==0"
    assert HELLO in heard


async def test_a_failed_build_of_an_older_spec_is_no_problem(cluster, backend) -> None:
    await create_function(cluster, function_manifest(concurrency=7, requirements=["nope==0"]))
    await set_build(cluster, "Failed", reason="BuildFailed", message="no such package", generation=0)
    await eventually(lambda: backend.function(HELLO) and backend.function(HELLO).status, what="the status")
    assert backend.problem(HELLO) is None   # the spec changed since: its build is on its way


async def test_a_request_waiting_for_a_build_is_answered_as_soon_as_it_fails(cluster, backend) -> None:
    await create_function(cluster, function_manifest(concurrency=7, requirements=["nope==0"],
                                                     scale={"minReplicas": 0}))
    await set_build(cluster, "Building", reason="Building")
    await eventually(lambda: backend.function(HELLO) and backend.function(HELLO).status, what="the status")
    gateway = Gateway(backend)
    await gateway.start()
    try:
        route = gateway.dispatcher.route(HELLO)
        waiting = asyncio.create_task(route.acquire(timeout=60))
        await eventually(lambda: route.queued == 1, what="the request held")
        await set_build(cluster, "Failed", reason="BuildFailed", message="no such package")
        with pytest.raises(StartFailed) as failed:
            await asyncio.wait_for(waiting, 10)
        assert failed.value.problem.reason == StartReason.REQUIREMENTS
        assert "no such package" not in str(failed.value)   # the installer's words are the owner's
    finally:
        await gateway.close()


async def test_a_functions_build_logs_without_a_build_is_no_build(cluster, backend) -> None:
    await create_function(cluster, function_manifest(concurrency=7))
    await eventually(lambda: backend.function(HELLO), what="the function")
    for ref in (HELLO, FunctionRef("default", "missing")):
        with pytest.raises(NoBuild):
            async with backend.logs(ref, tail=10, follow=False, build=True):
                pass


async def test_a_failed_instance_leaves_rotation_until_the_cooldown_ends(cluster, api) -> None:
    now = [100.0]
    backend = KubernetesBackend(api, failure_cooldown=10, clock=lambda: now[0])
    await backend.start()
    try:
        await create_function(cluster, function_manifest(concurrency=7))
        await add_pod(cluster, pod("hello", "hello-1", "10.0.0.1"))
        await add_pod(cluster, pod("hello", "hello-2", "10.0.0.2"))
        first, second = await eventually(lambda: len(backend.ready(HELLO)) == 2 and backend.ready(HELLO),
                                         what="two instances")
        backend.report_failure(first, error="connection refused")
        assert backend.ready(HELLO) == [second]
        now[0] += 9
        assert backend.ready(HELLO) == [second]
        now[0] += 1
        assert backend.ready(HELLO) == [first, second]
    finally:
        await backend.close()


async def test_api_errors_keep_the_known_state_and_the_watches_recover(cluster, backend) -> None:
    await create_function(cluster, function_manifest(concurrency=7))
    await add_pod(cluster, pod("hello", "hello-1", "10.0.0.1"))
    await eventually(lambda: backend.ready(HELLO), what="an instance")

    # The API server goes away for a while: watches end with errors, relists fail.
    cluster.fail_requests(kube.FUNCTIONS, 8)
    cluster.fail_requests(PODS, 8)
    await cluster.interrupt_watches(kube.FUNCTIONS)
    await cluster.interrupt_watches(PODS)
    checks = 0
    for _ in range(200):
        if cluster.pending_failures(kube.FUNCTIONS) == 0 and cluster.pending_failures(PODS) == 0:
            break
        assert backend.function(HELLO) is not None
        assert [i.id for i in backend.ready(HELLO)] == ["hello-1"]
        checks += 1
        await asyncio.sleep(0.02)
    assert checks > 0
    assert cluster.pending_failures(kube.FUNCTIONS) == 0

    # Changes made after the outage arrive.
    second = FunctionRef("default", "second")
    await create_function(cluster, function_manifest("second", concurrency=7))
    await eventually(lambda: backend.function(second), what="the watch to resume")
    await add_pod(cluster, pod("second", "second-1", "10.0.0.9"))
    await eventually(lambda: backend.ready(second), what="the pod watch to resume")


async def test_deleted_functions_disappear(cluster, backend) -> None:
    await create_function(cluster, function_manifest(concurrency=7))
    await eventually(lambda: backend.function(HELLO), what="the function")
    async with cluster.delete("/apis/kfn.dev/v1alpha1/namespaces/default/functions/hello") as r:
        assert r.status == 200
    await eventually(lambda: backend.function(HELLO) is None, what="the function gone")
    assert backend.ready(HELLO) == []


async def test_a_namespaced_backend_sees_only_its_namespaces(cluster, api) -> None:
    await create_function(cluster, function_manifest("mine", namespace="team-a", concurrency=7))
    await create_function(cluster, function_manifest("theirs", namespace="team-b", concurrency=7))
    backend = KubernetesBackend(api, namespaces=["team-a"])
    await backend.start()
    try:
        await eventually(lambda: backend.function(FunctionRef("team-a", "mine")), what="the function in team-a")
        assert backend.function(FunctionRef("team-b", "theirs")) is None
    finally:
        await backend.close()
