"""The operator against an emulated API server: Functions in, children and status out."""
from __future__ import annotations

import asyncio
from typing import Any

import jsonschema

from kfn.core import crd, naming
from tests.support import kube
from tests.support.functions import function_manifest
from tests.support.kube import create_function, deployment, function_status, ready_condition
from tests.support.waiting import eventually

FUNCTIONS_PATH = "/apis/kfn.dev/v1alpha1/namespaces/default/functions"
CODE = "def handler(event, context):\n    return 'hi'\n"


async def patch(cluster: kube.Cluster, path: str, body: dict[str, Any]) -> None:
    async with cluster.patch(path, json=body, headers={"Content-Type": "application/merge-patch+json"}) as r:
        assert r.status == 200, await r.text()


def code_configmaps(cluster: kube.Cluster, name: str = "hello") -> list[str]:
    return sorted(cm["metadata"]["name"] for cm in cluster.list_objects(
        kube.CONFIGMAPS, "default", selector=f"{naming.LABEL_FUNCTION}={name},{naming.LABEL_COMPONENT}=code"))


async def test_a_new_function_gets_a_configmap_and_deployment_it_owns_and_no_service(cluster, operator) -> None:
    created = await create_function(cluster, function_manifest())
    uid = created["metadata"]["uid"]
    await eventually(lambda: ready_condition(cluster), what="the status")
    children = [deployment(cluster), *(cluster.object(kube.CONFIGMAPS, "default", n) for n in code_configmaps(cluster))]
    assert len(children) == 2
    assert cluster.object(kube.SERVICES, "default", "hello") is None
    for child in children:
        (owner,) = child["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == ("Function", "hello", uid, True)
        assert child["metadata"]["labels"][naming.LABEL_FUNCTION] == "hello"


async def test_the_deployment_starts_at_min_replicas(cluster, operator) -> None:
    await create_function(cluster, function_manifest(scale={"minReplicas": 2, "maxReplicas": 4}))
    dep = await eventually(lambda: deployment(cluster), what="the Deployment")
    assert dep["spec"]["replicas"] == 2


async def test_status_reports_url_replicas_and_readiness(cluster, operator) -> None:
    await create_function(cluster, function_manifest(scale={"minReplicas": 1}))
    await eventually(lambda: function_status(cluster).get("observedGeneration") == 1, what="the reconciled status")
    cond = ready_condition(cluster)
    assert (cond["status"], cond["reason"]) == ("False", "Deploying")
    assert cond["lastTransitionTime"]
    status = function_status(cluster)
    assert status["url"] == "/function/hello"
    assert status["observedGeneration"] == 1
    assert (status["replicas"], status["readyReplicas"]) == (1, 0)

    # What the Deployment controller reports flows into the Function's status.
    await patch(cluster, "/apis/apps/v1/namespaces/default/deployments/hello/status",
                {"status": {"replicas": 1, "readyReplicas": 1, "availableReplicas": 1}})
    cond = await eventually(lambda: (c := ready_condition(cluster)) and c["status"] == "True" and c,
                            what="Ready=True")
    assert cond["reason"] == "Ready"
    assert function_status(cluster)["readyReplicas"] == 1


async def test_a_function_scaled_to_zero_is_ready(cluster, operator) -> None:
    await create_function(cluster, function_manifest())
    cond = await eventually(lambda: ready_condition(cluster), what="a Ready condition")
    assert (cond["status"], cond["reason"]) == ("True", "ScaledToZero")


async def test_a_code_change_makes_a_new_configmap_and_rolls_the_pod_template(cluster, operator) -> None:
    await create_function(cluster, function_manifest())
    old = await eventually(lambda: deployment(cluster), what="the Deployment")
    (old_cm,) = code_configmaps(cluster)

    await patch(cluster, f"{FUNCTIONS_PATH}/hello", {"spec": {"source": {"files": {"main.py": CODE + "# v2\n"}}}})
    def code_hash(d: dict[str, Any]) -> str:
        return d["spec"]["template"]["metadata"]["annotations"][naming.ANNOTATION_CODE_HASH]

    new = await eventually(lambda: (d := deployment(cluster)) and code_hash(d) != code_hash(old) and d,
                           what="a new pod template")
    (volume,) = [v for v in new["spec"]["template"]["spec"]["volumes"] if v["name"] == "code"]
    assert volume["configMap"]["name"] != old_cm
    assert volume["configMap"]["name"] in code_configmaps(cluster)
    assert cluster.object(kube.CONFIGMAPS, "default", volume["configMap"]["name"])["data"]["main.py"].endswith("# v2\n")
    await eventually(lambda: function_status(cluster).get("observedGeneration") == 2, what="observedGeneration 2")


async def test_old_code_configmaps_are_garbage_collected(cluster, operator) -> None:
    await create_function(cluster, function_manifest())
    await eventually(lambda: code_configmaps(cluster), what="the first ConfigMap")
    for version in range(2, 5):
        await patch(cluster, f"{FUNCTIONS_PATH}/hello",
                    {"spec": {"source": {"files": {"main.py": CODE + f"# v{version}\n"}}}})
        await eventually(lambda version=version: function_status(cluster).get("observedGeneration") == version,
                         what=f"generation {version}")
    # The current code and the one before it (pods of the previous ReplicaSet may still start).
    names = code_configmaps(cluster)
    assert len(names) == 2
    current = next(v for v in deployment(cluster)["spec"]["template"]["spec"]["volumes"] if v["name"] == "code")
    assert current["configMap"]["name"] in names


async def test_a_spec_change_keeps_the_replicas_the_autoscaler_set(cluster, operator) -> None:
    await create_function(cluster, function_manifest())
    await eventually(lambda: deployment(cluster), what="the Deployment")
    await patch(cluster, "/apis/apps/v1/namespaces/default/deployments/hello/scale", {"spec": {"replicas": 4}})

    await patch(cluster, f"{FUNCTIONS_PATH}/hello", {"spec": {"timeout": "10s", "scale": {"minReplicas": 1}}})
    dep = await eventually(
        lambda: (d := deployment(cluster)) and d["metadata"]["annotations"][naming.ANNOTATION_SPEC_HASH]
        != "" and function_status(cluster).get("observedGeneration") == 2 and d, what="the update")
    env = {e["name"]: e["value"] for e in dep["spec"]["template"]["spec"]["containers"][0]["env"] if "value" in e}
    assert env["KFN_TIMEOUT"] == "10"
    assert dep["spec"]["replicas"] == 4


async def test_an_invalid_spec_is_reported_once_and_the_operator_keeps_working(cluster, operator) -> None:
    await create_function(cluster, function_manifest("broken", handler="not-a-handler",
                                                     scale={"minReplicas": 3, "maxReplicas": 1}))
    cond = await eventually(lambda: ready_condition(cluster, "broken"), what="the InvalidSpec condition")
    assert (cond["status"], cond["reason"]) == ("False", "InvalidSpec")
    assert "spec.handler: must be module.function" in cond["message"]
    assert "spec.scale.maxReplicas" in cond["message"]
    events = await eventually(lambda: [e for e in cluster.list_objects(kube.EVENTS, "default")
                                          if e.get("reason") == "InvalidSpec"], what="an InvalidSpec event")
    assert events[0]["involvedObject"]["name"] == "broken"
    assert events[0]["type"] == "Warning"
    assert deployment(cluster, "broken") is None

    # A permanent error: no retries while the spec stays the same.
    writes = len([r for r in cluster.served if r.name == "broken" and r.method != "GET"])
    await asyncio.sleep(2)
    assert len([r for r in cluster.served if r.name == "broken" and r.method != "GET"]) == writes

    await create_function(cluster, function_manifest("next"))
    await eventually(lambda: deployment(cluster, "next"), what="the next function's Deployment")

    # Fixing the spec recovers the function.
    await patch(cluster, f"{FUNCTIONS_PATH}/broken",
                {"spec": {"handler": "main.handler", "scale": {"minReplicas": 0, "maxReplicas": 1}}})
    await eventually(lambda: deployment(cluster, "broken"), what="the fixed function's Deployment")
    await eventually(lambda: (c := ready_condition(cluster, "broken")) and c["reason"] != "InvalidSpec",
                     what="the condition to clear")


async def test_deleting_a_function_deletes_its_children(cluster, operator) -> None:
    await create_function(cluster, function_manifest())
    await eventually(lambda: deployment(cluster), what="the Deployment")
    async with cluster.delete(f"{FUNCTIONS_PATH}/hello") as r:
        assert r.status == 200, await r.text()
    await eventually(lambda: cluster.object(kube.FUNCTIONS, "default", "hello") is None, what="the Function gone")
    assert deployment(cluster) is None
    assert code_configmaps(cluster) == []


async def test_functions_from_a_configmap_mount_it(cluster, operator) -> None:
    await create_function(cluster, function_manifest(source={"configMap": {"name": "shared-code"}}))
    dep = await eventually(lambda: deployment(cluster), what="the Deployment")
    assert {"name": "code", "configMap": {"name": "shared-code"}} in dep["spec"]["template"]["spec"]["volumes"]
    assert code_configmaps(cluster) == []


async def test_a_deployment_deleted_by_hand_is_recreated(cluster, operator) -> None:
    await create_function(cluster, function_manifest(scale={"minReplicas": 1}))
    first = await eventually(lambda: deployment(cluster), what="the Deployment")
    async with cluster.delete("/apis/apps/v1/namespaces/default/deployments/hello") as r:
        assert r.status == 200
    again = await eventually(lambda: (d := deployment(cluster)) and d["metadata"]["uid"] != first["metadata"]["uid"]
                             and d, what="a new Deployment")
    assert again["spec"]["replicas"] == 1
    assert again["metadata"]["ownerReferences"] == first["metadata"]["ownerReferences"]


async def test_the_status_written_matches_the_crds_status_schema(cluster, operator) -> None:
    await create_function(cluster, function_manifest(scale={"minReplicas": 1}))
    await create_function(cluster, function_manifest("broken", handler="nodot"))
    await eventually(lambda: ready_condition(cluster) and ready_condition(cluster, "broken"), what="both statuses")
    schema = crd.crd_manifest()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    for name in ("hello", "broken"):
        jsonschema.validate(function_status(cluster, name), schema, format_checker=jsonschema.FormatChecker())


async def test_a_failing_deployment_is_reported_in_status_and_as_an_event(cluster, operator) -> None:
    await create_function(cluster, function_manifest(scale={"minReplicas": 1}))
    await eventually(lambda: function_status(cluster).get("observedGeneration") == 1, what="the reconciled status")
    await patch(cluster, "/apis/apps/v1/namespaces/default/deployments/hello/status", {"status": {
        "replicas": 1, "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                                       "message": 'ReplicaSet "hello-5d4f" has timed out progressing.'}]}})
    cond = await eventually(lambda: (c := ready_condition(cluster)) and c["reason"] == "DeploymentFailed" and c,
                            what="DeploymentFailed")
    assert cond["status"] == "False"
    assert "timed out progressing" in cond["message"]
    events = await eventually(lambda: [e for e in cluster.list_objects(kube.EVENTS, "default")
                                          if e.get("reason") == "DeploymentFailed"], what="an event")
    assert events[0]["involvedObject"]["kind"] == "Function"


async def test_large_inline_code_does_not_bloat_the_functions_annotations(cluster, operator) -> None:
    big = "DATA = " + repr("x" * 400_000) + "\n" + CODE
    await create_function(cluster, function_manifest(source={"files": {"main.py": big}}))
    await eventually(lambda: function_status(cluster).get("observedGeneration") == 1, what="the reconciled status")
    annotations = cluster.object(kube.FUNCTIONS, "default", "hello")["metadata"].get("annotations") or {}
    # The API server rejects objects whose annotations exceed 256 KiB in total.
    assert sum(len(k) + len(v) for k, v in annotations.items()) < 4096

    await patch(cluster, f"{FUNCTIONS_PATH}/hello", {"spec": {"source": {"files": {"main.py": big + "# v2\n"}}}})
    await eventually(lambda: function_status(cluster).get("observedGeneration") == 2, what="the change handled")
