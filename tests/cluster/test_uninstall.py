"""helm uninstall of the cluster-wide release: nothing of the release is left but the CRD.

Runs after every test that uses the release (see the order in conftest.py).
"""
from __future__ import annotations

import time

import pytest

from tests.cluster import platform
from tests.cluster.platform import Release

NAMESPACED_KINDS = ("deployments", "replicasets", "pods", "services", "serviceaccounts", "configmaps", "secrets",
                    "leases", "poddisruptionbudgets", "roles", "rolebindings")
CLUSTER_KINDS = ("clusterroles", "clusterrolebindings")


@pytest.mark.last(order=1)
def test_uninstall_leaves_nothing_of_the_release_but_the_crd(release: Release, fn_ns: str) -> None:
    release.deploy(platform.function("kept", "def handler(event, context):\n    return {}\n"), fn_ns)
    seconds = release.uninstall()
    assert seconds is not None
    platform.record("helm uninstall --wait", seconds, "s")

    selector = f"{platform.LABEL_INSTANCE}={release.name}"
    # ConfigMaps the cluster puts in every namespace (kube-root-ca.crt, ...), as `default` shows.
    everywhere = {cm["metadata"]["name"] for cm in platform.items("configmaps", namespace="default")}

    # The Secrets the install hook generated are not the release's: they stay, for a reinstall
    # (charts/kfn/README.md, "Generated Secrets").
    generated = {o["metadata"]["name"] for o in platform.items(
        "secrets", namespace=release.namespace, selector=f"{selector},app.kubernetes.io/component=secrets")}

    def leftovers() -> dict[str, list[str]]:
        left = {}
        for kind in NAMESPACED_KINDS + CLUSTER_KINDS:
            names = [f"{o['metadata'].get('namespace', '')}/{o['metadata']['name']}"
                     for o in platform.items(kind, selector=selector)
                     if not (kind == "secrets" and o["metadata"]["name"] in generated)]
            if names:
                left[kind] = names
        # What the operator makes at run time carries no release label: Leases (the operator's,
        # autoscaler's and scheduler's, when not standalone), and Helm's own release Secrets.
        for kind in ("leases", "secrets", "configmaps"):
            names = [o["metadata"]["name"] for o in platform.items(kind, namespace=release.namespace)
                     if o["metadata"]["name"] not in everywhere and o["metadata"]["name"] not in generated]
            if names:
                left.setdefault(f"{kind} in {release.namespace}", names)
        return left

    # Pods may take their grace period to go; everything else goes at once.
    deadline = time.monotonic() + 60
    while (left := leftovers()) and time.monotonic() < deadline:
        time.sleep(1)
    assert left == {}, f"left 60s after helm uninstall: {left}"
    assert generated == {"kfn-admin-keys", f"{release.name}-archive-key", f"{release.name}-pool-key",
                         f"{release.name}-nats-auth"}
    assert {o["metadata"]["name"] for o in platform.items("secrets", namespace=release.namespace)
            if o["metadata"]["name"] in generated} == generated, "a generated Secret went with the release"
    assert platform.get("crd", platform.CRD_NAME) is not None, "the CRD went with the release"
    # The CRD keeps the Functions, and they keep what the operator made for them.
    assert platform.get("function", "kept", namespace=fn_ns) is not None, "the Function went with the release"
    assert platform.get("deployment", "kept", namespace=fn_ns) is not None
