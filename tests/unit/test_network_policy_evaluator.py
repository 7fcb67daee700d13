"""The NetworkPolicy evaluator the chart tests rely on (tests/support/network_policies.py) follows Kubernetes' rules."""
from __future__ import annotations

from typing import Any

from tests.support.network_policies import address, allowed, pod

WEB = pod("web", "a", {"app": "web"}, ip="10.0.0.1", ports={"http": 8080})
CLIENT = pod("client", "a", {"app": "client"}, ip="10.0.0.2")
OUTSIDER = pod("outsider", "b", {"app": "client"}, ip="10.0.1.2")


def policy(namespace: str, selector: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {"kind": "NetworkPolicy", "metadata": {"name": "p", "namespace": namespace},
            "spec": {"podSelector": selector, **spec}}


def test_a_pod_no_policy_selects_takes_and_sends_anything() -> None:
    assert allowed([policy("a", {"matchLabels": {"app": "other"}}, ingress=[])], CLIENT, WEB, 8080)


def test_a_selected_pod_takes_only_what_a_rule_allows() -> None:
    only_clients = policy("a", {"matchLabels": {"app": "web"}},
                          ingress=[{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]}])
    assert allowed([only_clients], CLIENT, WEB, 8080)
    assert not allowed([only_clients], OUTSIDER, WEB, 8080)   # a podSelector alone: the policy's namespace


def test_an_empty_rule_list_denies_and_a_rule_without_peers_allows_all() -> None:
    assert not allowed([policy("a", {}, ingress=[])], CLIENT, WEB, 8080)
    assert allowed([policy("a", {}, ingress=[{}])], OUTSIDER, WEB, 8080)


def test_named_ports_are_the_destinations_container_ports() -> None:
    named = policy("a", {}, ingress=[{"ports": [{"port": "http"}]}])
    assert allowed([named], CLIENT, WEB, 8080)
    assert not allowed([named], CLIENT, WEB, 8081)


def test_egress_and_ingress_must_both_allow() -> None:
    no_egress = policy("a", {"matchLabels": {"app": "client"}}, policyTypes=["Egress"], egress=[])
    assert not allowed([no_egress], CLIENT, WEB, 8080)
    assert allowed([no_egress], WEB, CLIENT, 8080)


def test_ip_blocks_take_their_exceptions_out() -> None:
    public = policy("a", {}, policyTypes=["Egress"],
                    egress=[{"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}]}])
    assert allowed([public], CLIENT, address("internet", "93.184.216.34"), 443)
    assert not allowed([public], CLIENT, address("internal", "10.1.2.3"), 443)


def test_a_namespace_selector_with_a_pod_selector_needs_both() -> None:
    both = policy("a", {}, ingress=[{"from": [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "b"}}, "podSelector": {"matchLabels": {"app": "client"}}}]}])
    assert allowed([both], OUTSIDER, WEB, 8080)
    assert not allowed([both], CLIENT, WEB, 8080)
    assert not allowed([both], pod("x", "b", {"app": "x"}, ip="10.0.1.3"), WEB, 8080)


def test_protocols_are_told_apart() -> None:
    udp = policy("a", {}, ingress=[{"ports": [{"protocol": "UDP", "port": 53}]}])
    assert allowed([udp], CLIENT, WEB, 53, protocol="UDP")
    assert not allowed([udp], CLIENT, WEB, 53, protocol="TCP")
