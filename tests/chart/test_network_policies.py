"""The chart's NetworkPolicies, with the one the operator keeps in each function namespace, evaluated.

The real-cluster tier's network plugin does not enforce NetworkPolicies, so what they let through is
checked here: the chart is rendered, the pods' labels and ports are taken from the manifests that
make them (the chart's Deployments and StatefulSet, the operator's builders for function, pool and
build pods), the function namespaces' policy is built from the settings the chart gives the operator,
and `tests.support.network_policies.allowed` answers "may A reach B on port P" under standard
NetworkPolicy semantics.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kfn.core import naming
from kfn.core.functions import parse_function
from kfn_operator import builders
from kfn_operator.config import OperatorConfig
from tests.support.charts import NAMESPACE, ROOT, Manifest, find, render_chart
from tests.support.network_policies import Endpoint, address, allowed, pod

FUNCTION_NAMESPACE = "team-a"
CUSTOM_VALUES = ROOT / "tests" / "chart" / "values-custom.yaml"   # watchNamespaces: [team-a, team-b]


class Cluster:
    """The policies of one rendering of the chart and the pods it is about."""

    def __init__(self, objects: list[Manifest], *, function_namespaces: tuple[str, ...] = (FUNCTION_NAMESPACE,)):
        self.objects = objects
        operator_env = {e["name"]: e.get("value") for e in _container(objects, "Deployment", "kfn-operator")["env"]}
        self.config = OperatorConfig.build(standalone=True, env={k: v for k, v in operator_env.items() if v})
        self.policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
        if self.config.function_ingress is not None:
            self.policies += [builders.build_network_policy(ns, self.config.function_ingress)
                              for ns in function_namespaces]
        self.gateway = self._chart_pod("Deployment", "kfn-gateway", "10.88.0.10")
        self.operator = self._chart_pod("Deployment", "kfn-operator", "10.88.0.11")
        self.nats = self._chart_pod("StatefulSet", "kfn-nats", "10.88.0.12") if _has(objects, "StatefulSet") else None
        hello = parse_function(yaml.safe_load((ROOT / "examples" / "hello.yaml").read_text()) | {
            "metadata": {"name": "hello", "namespace": FUNCTION_NAMESPACE}})
        images = self.config.images
        function = builders.build_pod_template(hello, images=images, region="us-east-1")
        self.function = self._pod("function", FUNCTION_NAMESPACE, function, "10.88.1.5")
        pool = builders.build_pool_deployment(FUNCTION_NAMESPACE, "python3.12", images=images, size=1,
                                              key="k" * 32)["spec"]["template"]
        self.pool = self._pod("pool", FUNCTION_NAMESPACE, pool, "10.88.1.6")
        claimed = {**pool["metadata"]["labels"], naming.LABEL_COMPONENT: naming.COMPONENT_FUNCTION,
                   naming.LABEL_FUNCTION: "hello", naming.LABEL_POOL_STATE: naming.POOL_SPECIALIZED}
        self.specialized = pod("specialized", FUNCTION_NAMESPACE, claimed, ip="10.88.1.7",
                               ports=self.pool.ports)
        job = builders.build_job(hello, "deps-" + "0" * 64, images=images, pip=builders.PipSettings(),
                                 archive_url="http://kfn-gateway.kfn-system.svc:8080", token="t", timeout=600,
                                 resources={})["spec"]["template"]
        self.build = self._pod("build", FUNCTION_NAMESPACE, job, "10.88.1.8")
        self.stranger = pod("stranger", "other", {"app": "web"}, ip="10.88.2.2", ports={"http": 80})
        self.prometheus = pod("prometheus", "monitoring", {"app.kubernetes.io/name": "prometheus"}, ip="10.88.3.3")
        self.dns = pod("coredns", "kube-system", {"k8s-app": "kube-dns"}, ip="10.88.9.9", ports={"dns": 53})
        # The API server as pods reach it once the kubernetes Service is translated: the node's address.
        self.api_server = address("api-server", "172.18.0.2")
        self.internet = address("example.com", "93.184.216.34")
        self.metadata_service = address("cloud metadata", "169.254.169.254")
        self.internal_host = address("an internal service", "192.168.10.20")

    def _chart_pod(self, kind: str, name: str, ip: str) -> Endpoint:
        return self._pod(name, NAMESPACE, find(self.objects, kind, name)["spec"]["template"], ip)

    @staticmethod
    def _pod(name: str, namespace: str, template: Manifest, ip: str) -> Endpoint:
        ports = {p["name"]: p["containerPort"] for c in template["spec"]["containers"] for p in c.get("ports", ())
                 if "name" in p}
        return pod(name, namespace, template["metadata"]["labels"], ip=ip, ports=ports)

    def may(self, source: Endpoint, destination: Endpoint, port: int | str, protocol: str = "TCP") -> bool:
        number = destination.ports[port] if isinstance(port, str) else port
        return allowed(self.policies, source, destination, number, protocol=protocol)


def _container(objects: list[Manifest], kind: str, name: str) -> Manifest:
    (c,) = find(objects, kind, name)["spec"]["template"]["spec"]["containers"]
    return dict(c)


def _has(objects: list[Manifest], kind: str) -> bool:
    return any(o["kind"] == kind for o in objects)


@pytest.fixture(scope="module")
def cluster() -> Cluster:
    return Cluster(render_chart())


@pytest.fixture(scope="module")
def namespaced() -> Cluster:
    return Cluster(render_chart(files=(CUSTOM_VALUES,)), function_namespaces=("team-a", "team-b", "team-c"))


# --- NATS: the platform's only ---------------------------------------------------------------------

def test_the_gateway_may_reach_nats(cluster: Cluster) -> None:
    assert cluster.nats is not None
    assert cluster.may(cluster.gateway, cluster.nats, "client")


def test_the_operator_may_reach_nats(cluster: Cluster) -> None:
    assert cluster.nats is not None
    assert cluster.may(cluster.operator, cluster.nats, "client")


@pytest.mark.parametrize("who", ["function", "pool", "specialized", "build"])
def test_a_function_namespaces_pod_may_not_reach_nats(cluster: Cluster, who: str) -> None:
    assert cluster.nats is not None
    assert not cluster.may(getattr(cluster, who), cluster.nats, "client")


def test_a_pod_of_another_namespace_may_not_reach_nats(cluster: Cluster) -> None:
    assert cluster.nats is not None
    assert not cluster.may(cluster.stranger, cluster.nats, "client")
    assert not cluster.may(cluster.stranger, cluster.nats, "monitor")


def test_nats_sends_nothing(cluster: Cluster) -> None:
    assert cluster.nats is not None
    assert not cluster.may(cluster.nats, cluster.internet, 443)
    assert not cluster.may(cluster.nats, cluster.gateway, "http")


def test_extra_peers_of_the_values_may_reach_nats_and_function_pods(tmp_path: Path) -> None:
    extra = "[{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: other}}}]"
    c = Cluster(render_chart(f"networkPolicy: {{nats: {{extraFrom: {extra}}}, functions: {{extraFrom: {extra}}}}}",
                             tmp_path=tmp_path))
    assert c.nats is not None
    assert c.may(c.stranger, c.nats, "client")
    assert c.may(c.stranger, c.function, "http")
    assert not c.may(c.prometheus, c.nats, "client")


# --- function pods: reached by the gateway only ------------------------------------------------------

@pytest.mark.parametrize("who", ["function", "pool", "specialized"])
def test_the_gateway_may_reach_function_and_pool_pods_on_the_instance_port(cluster: Cluster, who: str) -> None:
    # Invocations, the /_/ready probe and a pool pod's /_/specialize all go to the instance's port.
    destination = getattr(cluster, who)
    assert destination.ports["http"] == naming.RUNTIME_PORT
    assert cluster.may(cluster.gateway, destination, "http")


@pytest.mark.parametrize("who", ["stranger", "prometheus", "operator"])
def test_a_pod_other_than_the_gateway_may_not_reach_a_function_pod(cluster: Cluster, who: str) -> None:
    assert not cluster.may(getattr(cluster, who), cluster.function, "http")
    assert not cluster.may(getattr(cluster, who), cluster.pool, "http")


def test_a_function_pod_may_not_reach_another_function_pod_directly(cluster: Cluster) -> None:
    assert not cluster.may(cluster.function, cluster.specialized, "http")


def test_function_pods_egress_is_left_to_their_namespace(cluster: Cluster) -> None:
    for policy in cluster.policies:
        if policy["metadata"]["namespace"] == FUNCTION_NAMESPACE:
            assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert cluster.may(cluster.function, cluster.internet, 443)
    assert cluster.may(cluster.function, cluster.stranger, "http")


# --- the gateway: its main port for everyone, its egress kept to what it needs ------------------------

@pytest.mark.parametrize("who", ["function", "specialized", "build", "operator", "prometheus", "stranger"])
def test_pods_may_reach_the_gateways_main_port(cluster: Cluster, who: str) -> None:
    # Instances fetch archives, build Jobs store them, the autoscaler and Prometheus scrape /metrics.
    assert cluster.may(getattr(cluster, who), cluster.gateway, "http")


def test_clients_outside_the_cluster_may_reach_the_gateway(cluster: Cluster) -> None:
    assert cluster.may(cluster.internet, cluster.gateway, "http")


@pytest.mark.parametrize("who", ["function", "operator", "stranger"])
def test_no_pod_may_reach_the_gateways_health_port(cluster: Cluster, who: str) -> None:
    assert not cluster.may(getattr(cluster, who), cluster.gateway, "health")


@pytest.mark.parametrize("component", ["gateway", "operator"])
def test_the_gateway_and_the_operator_reach_dns_and_the_api_server(cluster: Cluster, component: str) -> None:
    source = getattr(cluster, component)
    assert cluster.may(source, cluster.dns, 53, protocol="UDP")
    assert cluster.may(source, cluster.dns, 53, protocol="TCP")
    assert cluster.may(source, cluster.api_server, 6443)
    assert cluster.may(source, cluster.api_server, 443)


def test_the_operator_reaches_the_gateways_archive_store(cluster: Cluster) -> None:
    assert cluster.may(cluster.operator, cluster.gateway, "http")


def test_the_gateway_sends_callbacks_to_public_addresses(cluster: Cluster) -> None:
    assert cluster.may(cluster.gateway, cluster.internet, 443)
    assert cluster.may(cluster.gateway, cluster.internet, 80)


@pytest.mark.parametrize("where", ["internal_host", "metadata_service", "stranger", "build"])
def test_the_gateway_may_not_send_callbacks_to_internal_services(cluster: Cluster, where: str) -> None:
    assert not cluster.may(cluster.gateway, getattr(cluster, where), 80)


def test_api_server_addresses_of_the_values_narrow_the_gateways_rule(tmp_path: Path) -> None:
    c = Cluster(render_chart("networkPolicy: {apiServer: {cidrs: [172.18.0.2/32]}, gateway: {callbackCidrs: []}}",
                             tmp_path=tmp_path))
    assert c.may(c.gateway, c.api_server, 6443)
    assert not c.may(c.gateway, address("another node", "172.18.0.3"), 6443)
    assert not c.may(c.gateway, c.internet, 443)


def test_an_external_nats_url_opens_its_port_to_the_gateway(tmp_path: Path) -> None:
    c = Cluster(render_chart("async: {nats: {url: 'nats://nats.messaging.svc:4333'}}", tmp_path=tmp_path))
    nats = pod("nats", "messaging", {"app": "nats"}, ip="10.88.4.4")
    assert c.nats is None
    assert c.may(c.gateway, nats, 4333)
    assert not c.may(c.gateway, nats, 4222)


# --- namespaced installs, and none at all ---------------------------------------------------------------

def test_with_watch_namespaces_the_gateway_reaches_only_their_function_pods(namespaced: Cluster) -> None:
    labels = namespaced.function.labels
    inside = pod("b", "team-b", labels, ip="10.88.1.9", ports={"http": naming.RUNTIME_PORT})
    outside = pod("c", "team-c", labels, ip="10.88.1.10", ports={"http": naming.RUNTIME_PORT})
    assert namespaced.may(namespaced.gateway, inside, "http")
    assert not namespaced.may(namespaced.gateway, outside, "http")


def test_each_policy_selects_the_pods_of_the_component_it_is_named_for(cluster: Cluster) -> None:
    from tests.support.network_policies import selector_matches

    pods = {"kfn-gateway": cluster.gateway, "kfn-operator": cluster.operator, "kfn-nats": cluster.nats}
    for policy in (p for p in cluster.policies if p["metadata"]["namespace"] == NAMESPACE):
        selected = [name for name, p in pods.items()
                    if p is not None and selector_matches(policy["spec"]["podSelector"], p.labels)]
        assert selected == [policy["metadata"]["name"]]
    (functions,) = [p for p in cluster.policies if p["metadata"]["namespace"] == FUNCTION_NAMESPACE]
    chosen = [p.name for p in (cluster.function, cluster.pool, cluster.specialized, cluster.build)
              if selector_matches(functions["spec"]["podSelector"], p.labels)]
    assert chosen == ["function", "pool", "specialized"]


def test_policies_can_be_turned_off(tmp_path: Path) -> None:
    objects = render_chart("networkPolicy: {enabled: false}", tmp_path=tmp_path)
    assert not [o for o in objects if o["kind"] == "NetworkPolicy"]
    env = {e["name"] for e in _container(objects, "Deployment", "kfn-operator")["env"]}
    assert "KFN_NETWORK_POLICY" not in env
