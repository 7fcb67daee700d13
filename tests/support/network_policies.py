"""A small evaluator of Kubernetes NetworkPolicies: may endpoint A open a connection to B on a port?

Standard NetworkPolicy semantics (networking.k8s.io/v1), as the plugins that enforce them apply them:
- a pod is isolated for ingress (egress) when at least one policy of its namespace selects it
  (`spec.podSelector`) with that direction in its `policyTypes` (default: Ingress, plus Egress when
  the policy has egress rules); an isolated pod takes (sends) only what some rule of one of those
  policies allows, the union of them all; a pod no policy selects is not isolated;
- a connection needs both: the source's egress and the destination's ingress;
- a rule without `from`/`to` allows every peer, without `ports` every port; a peer is a
  podSelector (pods of the policy's own namespace), a namespaceSelector (every pod of the
  namespaces it selects), both (those pods of those namespaces) or an ipBlock (addresses in the
  CIDR, less its `except`); a port is a number or a named container port of the destination, with
  an optional `endPort`, and a protocol (TCP when left out);
- endpoints that are not pods (the API server, a host on the internet) have an address only: no
  policy selects them, and only ipBlocks match them. Pods have an address too, which ipBlocks
  match (most plugins do so for pod addresses as well).

The kubelet's probes, which come from the node, are outside this model (the plugins let them
through).
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

Manifest = Mapping[str, Any]


@dataclass(frozen=True)
class Endpoint:
    """A pod (namespace and labels set) or an address outside the pods (namespace None)."""

    name: str
    ip: str
    namespace: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    namespace_labels: Mapping[str, str] = field(default_factory=dict)
    ports: Mapping[str, int] = field(default_factory=dict)   # named container ports

    @property
    def is_pod(self) -> bool:
        return self.namespace is not None


def pod(name: str, namespace: str, labels: Mapping[str, str], *, ip: str,
        ports: Mapping[str, int] | None = None) -> Endpoint:
    """A pod, its namespace labelled with its own name as Kubernetes labels every namespace."""
    return Endpoint(name=name, ip=ip, namespace=namespace, labels=dict(labels),
                    namespace_labels={"kubernetes.io/metadata.name": namespace}, ports=dict(ports or {}))


def address(name: str, ip: str) -> Endpoint:
    """Something that is not a pod: the API server, a node, a host on the internet."""
    return Endpoint(name=name, ip=ip)


def selector_matches(selector: Manifest | None, labels: Mapping[str, str]) -> bool:
    """A LabelSelector (matchLabels and matchExpressions: In, NotIn, Exists, DoesNotExist);
    the empty selector matches everything. ValueError for an operator Kubernetes does not know."""
    selector = selector or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or ():
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        if operator == "In":
            ok = key in labels and labels[key] in values
        elif operator == "NotIn":
            ok = key not in labels or labels[key] not in values
        elif operator == "Exists":
            ok = key in labels
        elif operator == "DoesNotExist":
            ok = key not in labels
        else:
            raise ValueError(f"unknown selector operator {operator!r}")
        if not ok:
            return False
    return True


def _types(policy: Manifest) -> list[str]:
    spec = policy["spec"]
    if "policyTypes" in spec:
        return list(spec["policyTypes"])
    return ["Ingress", "Egress"] if spec.get("egress") else ["Ingress"]


def _selects(policy: Manifest, endpoint: Endpoint) -> bool:
    return (endpoint.is_pod and policy["metadata"]["namespace"] == endpoint.namespace
            and selector_matches(policy["spec"].get("podSelector"), endpoint.labels))


def _peer_matches(peer: Manifest, policy_namespace: str, other: Endpoint) -> bool:
    if "ipBlock" in peer:
        block = peer["ipBlock"]
        ip = ipaddress.ip_address(other.ip)
        network = ipaddress.ip_network(block["cidr"], strict=False)
        if ip.version != network.version or ip not in network:
            return False
        return not any(ip.version == ipaddress.ip_network(e, strict=False).version
                       and ip in ipaddress.ip_network(e, strict=False) for e in block.get("except") or ())
    if not other.is_pod:
        return False
    if "namespaceSelector" in peer:
        if not selector_matches(peer["namespaceSelector"], other.namespace_labels):
            return False
    elif other.namespace != policy_namespace:
        return False
    return "podSelector" not in peer or selector_matches(peer["podSelector"], other.labels)


def _port_matches(rule_port: Manifest, destination: Endpoint, port: int, protocol: str) -> bool:
    if rule_port.get("protocol", "TCP") != protocol:
        return False
    wanted = rule_port.get("port")
    if wanted is None:
        return True
    if isinstance(wanted, str):
        if not destination.is_pod:
            return False   # a named port means the destination pod's container port of that name
        return destination.ports.get(wanted) == port
    return int(wanted) <= port <= int(rule_port.get("endPort", wanted))


def _rule_allows(rule: Manifest, peers_key: str, policy_namespace: str, other: Endpoint, destination: Endpoint,
                 port: int, protocol: str) -> bool:
    peers = rule.get(peers_key)
    if peers is not None and not peers:
        # An empty list is the same as none given: every peer.
        peers = None
    if peers is not None and not any(_peer_matches(p, policy_namespace, other) for p in peers):
        return False
    ports = rule.get("ports")
    return not ports or any(_port_matches(p, destination, port, protocol) for p in ports)


def _direction_allows(policies: Iterable[Manifest], *, subject: Endpoint, other: Endpoint, destination: Endpoint,
                      port: int, protocol: str, direction: str) -> bool:
    rules_key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    isolating = [p for p in policies if _selects(p, subject) and direction in _types(p)]
    if not isolating:
        return True
    return any(_rule_allows(rule, peers_key, p["metadata"]["namespace"], other, destination, port, protocol)
               for p in isolating for rule in (p["spec"].get(rules_key) or ()))


def allowed(policies: Iterable[Manifest], source: Endpoint, destination: Endpoint, port: int, *,
            protocol: str = "TCP") -> bool:
    """Whether `source` may open a connection to `destination` on `port` under `policies`."""
    policies = [p for p in policies if p.get("kind") == "NetworkPolicy"]
    return (_direction_allows(policies, subject=source, other=destination, destination=destination, port=port,
                              protocol=protocol, direction="Egress")
            and _direction_allows(policies, subject=destination, other=source, destination=destination, port=port,
                                  protocol=protocol, direction="Ingress"))
