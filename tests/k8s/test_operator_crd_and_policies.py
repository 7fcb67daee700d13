"""At start the operator checks the installed CRD against its own; it keeps each function namespace's NetworkPolicy."""
from __future__ import annotations

import copy
from typing import Any

from kubernetes.aio import client

from kfn.core import crd, naming
from kfn_operator import builders, installed_crd
from kfn_operator.config import OperatorConfig
from tests.support import kube
from tests.support.functions import function_manifest
from tests.support.kube import create_function, post
from tests.support.operator import running_operator
from tests.support.waiting import eventually

CRDS = "apiextensions.k8s.io/v1/customresourcedefinitions"
POLICIES = "networking.k8s.io/v1/networkpolicies"
INGRESS = builders.FunctionIngress(gateway_namespace="kfn-system",
                                   gateway_labels={"app.kubernetes.io/name": "kfn-gateway"})


async def install_crd(cluster: kube.Cluster, *, revision: int | None) -> None:
    manifest: dict[str, Any] = copy.deepcopy(crd.crd_manifest())
    if revision is None:
        del manifest["metadata"]["annotations"]
    else:
        manifest["metadata"]["annotations"][crd.ANNOTATION_REVISION] = str(revision)
    await post(cluster, "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", manifest)


def crd_events(cluster: kube.Cluster, namespace: str = "kfn-system") -> list[dict[str, Any]]:
    return [e for e in cluster.list_objects(kube.EVENTS, namespace)
            if (e.get("involvedObject") or {}).get("kind") == "CustomResourceDefinition"]


async def test_an_older_installed_crd_is_reported_in_a_warning_event(cluster: kube.Cluster,
                                                                     api: client.ApiClient) -> None:
    await install_crd(cluster, revision=crd.REVISION - 1)
    problem = await installed_crd.check(api, event_namespace="kfn-system")
    assert problem is not None and "older" in problem
    (event,) = crd_events(cluster)
    assert (event["type"], event["reason"]) == ("Warning", installed_crd.REASON_OUTDATED)
    assert event["involvedObject"]["name"] == naming.CRD_NAME
    assert "kubectl apply --server-side -f charts/kfn/crds/" in event["message"]


async def test_a_crd_from_before_revisions_is_reported_as_older(cluster: kube.Cluster, api: client.ApiClient) -> None:
    await install_crd(cluster, revision=None)
    problem = await installed_crd.check(api, event_namespace="kfn-system")
    assert problem is not None and "predates" in problem


async def test_this_builds_crd_is_not_reported(cluster: kube.Cluster, api: client.ApiClient) -> None:
    await install_crd(cluster, revision=crd.REVISION)
    assert await installed_crd.check(api, event_namespace="kfn-system") is None
    assert crd_events(cluster) == []


async def test_a_crd_that_cannot_be_read_ends_the_check_quietly(cluster: kube.Cluster, api: client.ApiClient) -> None:
    # None installed here (404); a namespaced operator's 403 ends the same way.
    assert await installed_crd.check(api, event_namespace="kfn-system") is None
    assert crd_events(cluster) == []


async def test_the_operator_checks_the_crd_when_it_starts(cluster: kube.Cluster) -> None:
    await install_crd(cluster, revision=crd.REVISION - 1)
    config = OperatorConfig(standalone=True, autoscaler=False, lease_namespace="kfn-system")
    async with running_operator(config):
        await eventually(lambda: crd_events(cluster), what="the operator's Event about the older CRD")


async def test_the_operator_gives_a_function_namespace_its_network_policy(cluster: kube.Cluster) -> None:
    async with running_operator(OperatorConfig(standalone=True, autoscaler=False, function_ingress=INGRESS)):
        await create_function(cluster, function_manifest())
        policy = await eventually(lambda: cluster.object(POLICIES, "default", builders.NETWORK_POLICY_NAME),
                                  what="the NetworkPolicy")
        assert policy is not None
        assert policy["spec"] == builders.build_network_policy("default", INGRESS)["spec"]


async def test_a_changed_network_policy_is_put_back_when_the_operator_starts(cluster: kube.Cluster) -> None:
    stale = builders.build_network_policy("default", builders.FunctionIngress(
        gateway_namespace="elsewhere", gateway_labels={"app": "old"}))
    await post(cluster, "/apis/networking.k8s.io/v1/namespaces/default/networkpolicies", stale)
    async with running_operator(OperatorConfig(standalone=True, autoscaler=False, function_ingress=INGRESS)):
        await create_function(cluster, function_manifest())
        wanted = builders.build_network_policy("default", INGRESS)["spec"]
        await eventually(lambda: (cluster.object(POLICIES, "default", builders.NETWORK_POLICY_NAME) or {}).get(
            "spec") == wanted, what="the NetworkPolicy's spec put back")


async def test_without_the_setting_no_network_policy_is_made(cluster: kube.Cluster) -> None:
    async with running_operator(OperatorConfig(standalone=True, autoscaler=False)):
        await create_function(cluster, function_manifest())
        await eventually(lambda: cluster.object(kube.DEPLOYMENTS, "default", "hello"), what="the Deployment")
        assert cluster.list_objects(POLICIES, "default") == []


async def test_a_namespaced_operator_does_not_read_the_crd(cluster: kube.Cluster) -> None:
    await install_crd(cluster, revision=crd.REVISION - 1)
    config = OperatorConfig(standalone=True, autoscaler=False, namespaces=("team-a",), lease_namespace="team-a")
    async with running_operator(config):
        await create_function(cluster, function_manifest(namespace="team-a"))
        await eventually(lambda: cluster.object(kube.DEPLOYMENTS, "team-a", "hello"), what="the Deployment")
    assert not [r for r in cluster.served if r.resource is not None and r.resource.plural == "customresourcedefinitions"
                and r.method == "GET"]
