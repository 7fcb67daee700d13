"""What the operator asks of the API server per Function: the fewest calls a batch of a thousand
Functions can be built with (issue 18), counted on the emulator's record of every request."""
from __future__ import annotations

import logging
from typing import Any

from kfn.core import naming
from kfn_operator.config import OperatorConfig
from kfn_operator.handlers import Controller
from tests.support import kube
from tests.support.functions import function_manifest
from tests.support.kube import create_function, deployment, ready_condition
from tests.support.operator import running_operator
from tests.support.waiting import eventually


def calls(cluster: kube.Cluster, since: int = 0) -> list[tuple[str, str, str | None, str | None]]:
    """(method, plural, name, subresource) of every request in the default namespace after the first
    `since`, but watches and lists (of whole kinds, the same whatever the number of Functions)."""
    return [(str(r.method.value).upper(), r.resource.plural, r.name, r.subresource)
            for r in cluster.served[since:]
            if r.resource is not None and r.resource.plural and r.namespace == "default"
            and (r.name is not None or str(r.method.value).upper() == "POST")]


async def test_a_new_function_is_built_with_a_configmap_a_deployment_and_one_status_write_and_no_reads(
        cluster: kube.Cluster) -> None:
    async with running_operator(OperatorConfig(standalone=True, autoscaler=False, scheduler=False)):
        start = len(cluster.served)
        await create_function(cluster, function_manifest())
        await eventually(lambda: ready_condition(cluster), what="the Ready condition")
        made = calls(cluster, start)
    by_kind = sorted((method, plural) for method, plural, name, _ in made if plural != "functions")
    # No GET of a Deployment that cannot exist yet, no list of old code, no Service.
    assert by_kind == [("POST", "configmaps"), ("POST", "deployments")], made
    assert not [c for c in made if c[1] == "services"]


async def test_a_deployment_becoming_ready_writes_the_status_without_reading_the_function(
        cluster: kube.Cluster) -> None:
    async with running_operator(OperatorConfig(standalone=True, autoscaler=False, scheduler=False)):
        await create_function(cluster, function_manifest(scale={"minReplicas": 1}))
        await eventually(lambda: deployment(cluster), what="the Deployment")
        await eventually(lambda: ready_condition(cluster), what="the first status")
        start = len(cluster.served)
        async with cluster.patch("/apis/apps/v1/namespaces/default/deployments/hello/status",
                                 json={"status": {"replicas": 1, "readyReplicas": 1, "availableReplicas": 1}},
                                 headers={"Content-Type": "application/merge-patch+json"}) as r:
            assert r.status == 200, await r.text()
        await eventually(lambda: (c := ready_condition(cluster)) and c["reason"] == "Ready", what="Ready")
        made = calls(cluster, start)
    function_calls = [(method, sub) for method, plural, _, sub in made if plural == naming.PLURAL]
    assert function_calls == [("PATCH", "status")], made


async def test_reconciling_a_function_whose_status_is_up_to_date_writes_no_status(cluster: kube.Cluster, api) -> None:
    """What kopf does for every Function when the operator starts (resume): nothing to write."""
    async with running_operator(OperatorConfig(standalone=True, autoscaler=False, scheduler=False)):
        await create_function(cluster, function_manifest())
        await eventually(lambda: (cluster.object(kube.FUNCTIONS, "default", "hello") or {}).get(
            "status", {}).get("observedGeneration") == 1, what="the reconciled status")
    body = cluster.object(kube.FUNCTIONS, "default", "hello")
    assert body is not None
    patch: dict[str, Any] = {}
    await Controller(OperatorConfig(standalone=True, autoscaler=False, scheduler=False), api=api).reconcile(
        body, patch, logging.getLogger("test"))   # type: ignore[arg-type]  # a dict serves as kopf.Patch
    assert "status" not in patch, patch
