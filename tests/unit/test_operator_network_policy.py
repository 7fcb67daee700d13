"""The NetworkPolicy the operator keeps in each function namespace, and the setting it comes from."""
from __future__ import annotations

import json

import kubernetes_validate
import pytest

from kfn.core import naming
from kfn_operator import builders
from kfn_operator.config import ENV_NETWORK_POLICY, OperatorConfig
from tests.support.network_policies import allowed, pod
from tests.support.schemas import supported_versions

GATEWAY_LABELS = {"app.kubernetes.io/name": "kfn-gateway", "app.kubernetes.io/instance": "kfn"}
INGRESS = builders.FunctionIngress(gateway_namespace="kfn-system", gateway_labels=GATEWAY_LABELS)
POLICY = builders.build_network_policy("team-a", INGRESS)
FUNCTION = pod("fn", "team-a", {naming.LABEL_MANAGED_BY: naming.MANAGED_BY, naming.LABEL_FUNCTION: "hello",
                                naming.LABEL_COMPONENT: naming.COMPONENT_FUNCTION}, ip="10.0.1.1")


@pytest.mark.parametrize("version", supported_versions())
def test_the_policy_is_valid_kubernetes(version: str) -> None:
    kubernetes_validate.validate(POLICY, version, strict=True)


def test_the_gateways_pods_reach_function_pods_on_the_instance_port_only() -> None:
    gateway = pod("gw", "kfn-system", GATEWAY_LABELS, ip="10.0.0.1")
    assert allowed([POLICY], gateway, FUNCTION, naming.RUNTIME_PORT)
    assert not allowed([POLICY], gateway, FUNCTION, 9000)


def test_pods_with_the_gateways_labels_in_another_namespace_do_not() -> None:
    impostor = pod("gw", "team-a", GATEWAY_LABELS, ip="10.0.1.9")
    assert not allowed([POLICY], impostor, FUNCTION, naming.RUNTIME_PORT)


def test_the_policy_admits_only_and_restricts_no_egress() -> None:
    assert POLICY["spec"]["policyTypes"] == ["Ingress"]
    assert "egress" not in POLICY["spec"]


def test_extra_peers_are_admitted_too() -> None:
    extra = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    policy = builders.build_network_policy("team-a", builders.FunctionIngress(
        gateway_namespace="kfn-system", gateway_labels=GATEWAY_LABELS, extra_from=(extra,)))
    assert allowed([policy], pod("prom", "monitoring", {}, ip="10.0.2.2"), FUNCTION, naming.RUNTIME_PORT)


def test_the_operator_reads_who_reaches_function_pods_from_the_environment() -> None:
    text = json.dumps({"gatewayNamespace": "kfn-system", "gatewayLabels": GATEWAY_LABELS, "extraFrom": []})
    assert OperatorConfig.build(env={ENV_NETWORK_POLICY: text}).function_ingress == INGRESS


def test_without_the_setting_the_operator_makes_no_policies() -> None:
    assert OperatorConfig.build(env={}).function_ingress is None


@pytest.mark.parametrize(("text", "complaint"), [
    ("not json", "JSON object"),
    ('{"gatewayLabels": {"a": "b"}}', "gatewayNamespace"),
    ('{"gatewayNamespace": "kfn-system", "gatewayLabels": {}}', "gatewayLabels"),
    ('{"gatewayNamespace": "kfn-system", "gatewayLabels": {"a": "b"}, "extraFrom": ["x"]}', "extraFrom"),
])
def test_a_malformed_setting_is_refused_naming_the_field(text: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        OperatorConfig.build(env={ENV_NETWORK_POLICY: text})
