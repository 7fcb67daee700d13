"""What the operator and the gateway may do in the cluster, as data.

The Helm chart renders these rules (the chart's tests compare it with `render_rbac_yaml`), so the
permissions are written once, next to the code that needs them. Each rule says why it exists.
"""
from __future__ import annotations

from typing import Any

import yaml

from kfn.core import naming
from kfn.core.keys import ADMIN_SECRET_NAME, SECRET_NAME

Rule = dict[str, Any]

READ = ["get", "list", "watch"]


def operator_rules() -> list[Rule]:
    """The operator (kopf handlers, the autoscaler and the scheduler, each elected with a Lease)."""
    return [
        # Functions: watched by kopf; kopf patches its annotations (progress, last-handled).
        {"apiGroups": [naming.GROUP], "resources": [naming.PLURAL], "verbs": [*READ, "patch"]},
        # Status: conditions, replicas, the autoscaler's decision.
        {"apiGroups": [naming.GROUP], "resources": [f"{naming.PLURAL}/status"], "verbs": ["get", "patch"]},
        # Children. No "update": changes are merge patches. "delete" for old code ConfigMaps and
        # for warm pools no namespace needs any more (kfn_operator.pools).
        {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": [*READ, "create", "patch", "delete"]},
        # Scaling; and a replica more for a served pool pod that is replaced (kfn_operator.pools).
        {"apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["get", "patch"]},
        # A function has no Service; those earlier versions made are deleted at start (handlers).
        {"apiGroups": [""], "resources": ["services"], "verbs": ["list", "delete"]},
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": [*READ, "create", "patch", "delete"]},
        # Build Jobs installing requirements once (kfn_operator.builds): started, watched, and deleted
        # to build again an archive the store lost. Their pods say why a build failed (below).
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": [*READ, "create", "delete"]},
        # Ready instances per function (the autoscaler counts pods, as the gateway routes to them);
        # pooled pods nobody will finish or use are deleted (kfn_operator.pools).
        {"apiGroups": [""], "resources": ["pods"], "verbs": [*READ, "delete"]},
        # The NetworkPolicy kfn-functions of each function namespace (kfn_operator.network_policies).
        {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": ["create", "patch"]},
        # The gateway replicas the autoscaler scrapes for load.
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": READ},
        # Failures are reported as Events (kopf posts through the core API; newer clients use events.k8s.io).
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
        {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
        # One acting replica, autoscaler and scheduler among operator replicas (kfn-operator,
        # kfn-autoscaler, kfn-scheduler). kopf's peering is never used: no kopf.dev objects.
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update", "patch"]},
        # kopf: resource discovery.
        {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": READ},
    ]


def gateway_rules() -> list[Rule]:
    """The gateway's Kubernetes backend: read functions and their pods, scale from zero, logs."""
    return [
        {"apiGroups": [naming.GROUP], "resources": [naming.PLURAL], "verbs": READ},
        {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": READ},
        {"apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["get", "patch"]},
        # Pods are the instances (their IPs, readiness, why they fail); `kfn logs` reads their output.
        # A warm pool's pod is claimed and made a function's by patches of its labels, and a pod
        # taken from a pool is deleted when its function scales down (kfn.kube.pool).
        {"apiGroups": [""], "resources": ["pods"], "verbs": [*READ, "patch", "delete"]},
        {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
        # API keys of each namespace: this one Secret only (listed and watched by metadata.name).
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [SECRET_NAME], "verbs": READ},
    ]


def gateway_release_rules() -> list[Rule]:
    """The gateway in its own namespace: the admin keys of /system/* (that one Secret only), and
    the EndpointSlices of its own Service (kfn.kube.peers: the live replicas sharing async delivery;
    without them, `--replicas`)."""
    return [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": [ADMIN_SECRET_NAME], "verbs": READ},
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": READ}]


# Only a cluster-wide operator needs these: with --namespace, kopf's cluster scanning is off, so
# a namespaced install is Roles only.
_CLUSTER_SCOPED = {("apiextensions.k8s.io", "customresourcedefinitions")}


def _is_cluster_scoped(rule: Rule) -> bool:
    return all((group, resource) in _CLUSTER_SCOPED for group in rule["apiGroups"] for resource in rule["resources"])


def _role(kind: str, name: str, rules: list[Rule], *, namespace: str | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "labels": {naming.LABEL_MANAGED_BY: naming.MANAGED_BY}}
    if namespace is not None:
        metadata["namespace"] = namespace
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": metadata, "rules": rules}


def rbac_objects(*, namespaced: bool, namespace: str = "kfn-system", prefix: str = "kfn",
                 release_namespace: str | None = None) -> list[dict[str, Any]]:
    """ClusterRoles plus the gateway's Role in its own namespace `namespace` (cluster-wide
    install), or Roles in `namespace` (namespaced install: bind one per namespace the operator
    and gateway watch; the gateway's in `release_namespace` also reads the admin keys)."""
    out: list[dict[str, Any]] = []
    for component, rules in (("operator", operator_rules()), ("gateway", gateway_rules())):
        name = f"{prefix}-{component}"
        if namespaced:
            rules = [r for r in rules if not _is_cluster_scoped(r)]
            if component == "gateway" and namespace == release_namespace:
                rules = rules + gateway_release_rules()
            out.append(_role("Role", name, rules, namespace=namespace))
        else:
            out.append(_role("ClusterRole", name, rules))
    if not namespaced:
        out.append(_role("Role", f"{prefix}-gateway", gateway_release_rules(), namespace=namespace))
    return out


def render_rbac_yaml(*, namespaced: bool, namespace: str = "kfn-system", prefix: str = "kfn") -> str:
    """The rules as a multi-document YAML stream (without bindings: the chart owns those)."""
    return yaml.safe_dump_all(rbac_objects(namespaced=namespaced, namespace=namespace, prefix=prefix),
                              sort_keys=False)
