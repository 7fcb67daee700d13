"""The RBAC rules cover every API call the operator and the gateway make, and no more than listed."""
from __future__ import annotations

from typing import Any

import yaml

from kfn.core import naming
from kfn.core.functions import FunctionRef
from kfn.kube import KubernetesBackend, SecretKeys, connect
from kfn.kube.peers import GatewayPeers
from kfn_operator import rbac
from kfn_operator.config import OperatorConfig
from tests.support import kube
from tests.support.operator import running_operator
from tests.support.waiting import eventually


def verb(request: Any) -> str:
    method = str(request.method.value if hasattr(request.method, "value") else request.method).upper()
    if method == "GET":
        if request.params.get("watch", "").lower() in ("true", "1"):
            return "watch"
        return "get" if request.name else "list"
    return {"POST": "create", "PATCH": "patch", "PUT": "update",
            "DELETE": "delete" if request.name else "deletecollection"}[method]


def calls(cluster: kube.Cluster) -> set[tuple[str, str, str]]:
    """(apiGroup, resource[/subresource], verb) of every resource request the components made."""
    out = set()
    for request in cluster.served:
        if request.headers.get("User-Agent", "").startswith("kmock/"):
            continue  # the test's own requests (through kmock's client)
        if request.resource is None or not request.resource.plural:
            continue  # discovery: allowed to every authenticated user
        resource = request.resource.plural + (f"/{request.subresource}" if request.subresource else "")
        out.add((request.resource.group, resource, verb(request)))
    return out


def allowed(rules: list[dict[str, Any]], call: tuple[str, str, str]) -> bool:
    group, resource, action = call
    return any(group in r["apiGroups"] and resource in r["resources"] and action in r["verbs"] for r in rules)


async def test_the_operator_needs_nothing_beyond_its_rules(cluster) -> None:
    config = OperatorConfig(standalone=False, autoscale_interval=0.2, lease_namespace="kfn-system",
                            lease_duration=3)
    async with running_operator(config):
        async with cluster.post("/apis/kfn.dev/v1alpha1/namespaces/default/functions", json={
            "apiVersion": naming.API_VERSION, "kind": naming.KIND,
            "metadata": {"name": "hello", "namespace": "default"},
            "spec": {"handler": "main.handler", "source": {"files": {"main.py": "x = 1\n"}},
                     "scale": {"minReplicas": 1}}}) as r:
            assert r.status == 201
        async with cluster.post("/apis/kfn.dev/v1alpha1/namespaces/default/functions", json={
            "apiVersion": naming.API_VERSION, "kind": naming.KIND, "metadata": {"name": "bad", "namespace": "default"},
            "spec": {"handler": "nodot", "source": {"files": {"main.py": "x = 1\n"}}}}) as r:
            assert r.status == 201
        await eventually(lambda: any(e.get("reason") == "InvalidSpec" for e in cluster.list_objects(kube.EVENTS)),
                         what="an event")
        await eventually(lambda: cluster.list_objects(kube.LEASES), what="the Lease")
        async with cluster.patch("/apis/kfn.dev/v1alpha1/namespaces/default/functions/hello",
                                 json={"spec": {"source": {"files": {"main.py": "x = 2\n"}}}},
                                 headers={"Content-Type": "application/merge-patch+json"}) as r:
            assert r.status == 200
        # The autoscaler (no gateway to scrape: it holds) and the status writer get to run.
        await eventually(lambda: ("coordination.k8s.io", "leases", "update") in calls(cluster), what="a renewal")
    made = calls(cluster)
    assert ("apps", "deployments", "create") in made
    assert ("", "events", "create") in made
    denied = sorted(c for c in made if not allowed(rbac.operator_rules(), c))
    assert denied == []


async def test_the_gateway_needs_nothing_beyond_its_rules(cluster) -> None:
    api = await connect()
    backend = KubernetesBackend(api)
    keys = SecretKeys(api, admin_namespace="kfn-system", sync_timeout=5)
    peers = GatewayPeers(api, namespace="kfn-system", service="kfn-gateway", on_change=lambda n: None,
                         own_pod="gw-1")
    try:
        await keys.start()
        peers.start()
        await eventually(lambda: peers.replicas is not None, what="the gateway replicas listed")
        async with cluster.post("/apis/kfn.dev/v1alpha1/namespaces/default/functions", json={
            "apiVersion": naming.API_VERSION, "kind": naming.KIND,
            "metadata": {"name": "hello", "namespace": "default"},
            "spec": {"handler": "main.handler", "source": {"files": {"main.py": "x = 1\n"}}}}) as r:
            assert r.status == 201
        labels = naming.function_labels("hello")
        async with cluster.post("/apis/apps/v1/namespaces/default/deployments", json={
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "hello", "labels": labels},
            "spec": {"replicas": 0, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": "f", "image": "x"}]}}},
        }) as r:
            assert r.status == 201
        await backend.start()
        await eventually(lambda: backend.function(FunctionRef("default", "hello")), what="the function")
        await backend.scale(FunctionRef("default", "hello"), 1)
        await eventually(lambda: ("discovery.k8s.io", "endpointslices", "watch") in calls(cluster),
                         what="the gateway replicas watched")
    finally:
        await peers.close()
        await keys.close()
        await backend.close()
        await api.close()
    made = calls(cluster)
    assert ("apps", "deployments/scale", "patch") in made
    assert ("", "secrets", "list") in made
    assert sorted(c for c in made if not allowed(rbac.gateway_rules() + rbac.gateway_release_rules(), c)) == []
    # Secrets only by name: RBAC's resourceNames allow a list or watch with that metadata.name only.
    selectors = {r.params.get("fieldSelector") for r in cluster.served
                 if r.resource is not None and r.resource.plural == "secrets"
                 and not r.headers.get("User-Agent", "").startswith("kmock/")}
    assert selectors == {"metadata.name=kfn-api-keys", "metadata.name=kfn-admin-keys"}


def test_the_gateway_cannot_write_anything_but_the_scale_subresource_and_pods() -> None:
    writes = {v for r in rbac.gateway_rules() for v in r["verbs"]} - {"get", "list", "watch"}
    assert writes == {"patch", "delete"}
    # Pods: a warm pool's pod is claimed and made a function's by patches, and deleted on scale-down.
    assert [r["resources"] for r in rbac.gateway_rules() if "patch" in r["verbs"]] == [["deployments/scale"],
                                                                                       ["pods"]]
    assert [r["resources"] for r in rbac.gateway_rules() if "delete" in r["verbs"]] == [["pods"]]


def test_no_rule_grants_wildcards_or_secrets_beyond_the_key_secrets_by_name() -> None:
    for rule in rbac.operator_rules() + rbac.gateway_rules() + rbac.gateway_release_rules():
        assert "*" not in rule["apiGroups"] + rule["resources"] + rule["verbs"]
        if "secrets" in rule["resources"]:
            assert rule["resources"] == ["secrets"]
            assert rule["resourceNames"] in (["kfn-api-keys"], ["kfn-admin-keys"])
            assert set(rule["verbs"]) <= {"get", "list", "watch"}
    assert not any("secrets" in rule["resources"] for rule in rbac.operator_rules())


def test_the_rendered_yaml_holds_cluster_roles_or_namespaced_roles() -> None:
    cluster_wide = list(yaml.safe_load_all(rbac.render_rbac_yaml(namespaced=False)))
    assert [(o["kind"], o["metadata"]["name"]) for o in cluster_wide] == [
        ("ClusterRole", "kfn-operator"), ("ClusterRole", "kfn-gateway"), ("Role", "kfn-gateway")]
    assert cluster_wide[2]["rules"] == rbac.gateway_release_rules()
    assert cluster_wide[0]["rules"] == rbac.operator_rules()

    namespaced = list(yaml.safe_load_all(rbac.render_rbac_yaml(namespaced=True, namespace="team-a")))
    assert all("secrets" not in r["resources"] or r["resourceNames"] == ["kfn-api-keys"]
               for o in namespaced for r in o["rules"])
    assert [(o["kind"], o["metadata"]["name"], o["metadata"]["namespace"]) for o in namespaced] == [
        ("Role", "kfn-operator", "team-a"), ("Role", "kfn-gateway", "team-a")]
    resources = {res for o in namespaced for r in o["rules"] for res in r["resources"]}
    assert not resources & {"customresourcedefinitions", "clusterkopfpeerings", "namespaces"}


async def test_a_namespaced_operator_stays_inside_its_namespaced_role(cluster) -> None:
    config = OperatorConfig(namespaces=("team-a",), lease_namespace="team-a", lease_duration=3,
                            autoscale_interval=0.2)
    async with running_operator(config):
        for namespace in ("team-b", "team-a"):
            async with cluster.post(f"/apis/kfn.dev/v1alpha1/namespaces/{namespace}/functions", json={
                "apiVersion": naming.API_VERSION, "kind": naming.KIND,
                "metadata": {"name": "hello", "namespace": namespace},
                "spec": {"handler": "main.handler", "source": {"files": {"main.py": "x = 1\n"}}}}) as r:
                assert r.status == 201
        await eventually(lambda: cluster.object(kube.DEPLOYMENTS, "team-a", "hello"), what="team-a's Deployment")
        await eventually(lambda: ("coordination.k8s.io", "leases", "update") in calls(cluster), what="a renewal")
        assert cluster.object(kube.DEPLOYMENTS, "team-b", "hello") is None
    (role,) = [o for o in rbac.rbac_objects(namespaced=True, namespace="team-a")
               if o["metadata"]["name"] == "kfn-operator"]
    outside = [(r.method, str(r.url.path)) for r in cluster.served
               if r.resource is not None and r.resource.plural and r.namespace != "team-a"
               and not r.headers.get("User-Agent", "").startswith("kmock/")]
    assert outside == []
    assert sorted(c for c in calls(cluster) if not allowed(role["rules"], c)) == []
