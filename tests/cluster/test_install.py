"""helm install: the operator and the gateway run under Pod Security "restricted"."""
from __future__ import annotations

import pytest

from tests.cluster import platform
from tests.cluster.platform import Release

pytestmark = pytest.mark.first


def test_operator_and_gateways_are_ready_without_restarts(release: Release) -> None:
    namespace = platform.get("namespace", release.namespace)
    assert namespace is not None
    # No label relaxes the cluster's default: "restricted" is enforced here as everywhere.
    assert not any(k.startswith("pod-security.kubernetes.io/") for k in namespace["metadata"].get("labels") or {})
    for component, replicas in (("operator", 1), ("gateway", 2)):
        pods = platform.pods(release.namespace, release.selector(component))
        assert len(pods) == replicas, [p["metadata"]["name"] for p in pods]
        for pod in pods:
            statuses = pod["status"]["containerStatuses"]
            assert all(s["ready"] for s in statuses), (pod["metadata"]["name"], statuses)
            assert [s["restartCount"] for s in statuses] == [0] * len(statuses), (pod["metadata"]["name"], statuses)


def test_the_gateway_answers_on_its_node_port(release: Release) -> None:
    answer = platform.http_get(release.gateway + "/healthz", timeout=5)
    assert answer.status == 200, answer.text
    assert platform.http_get(release.gateway + "/system/functions", timeout=5,
                             headers=release.system_headers()).status == 200


def test_the_system_paths_need_the_admin_key_the_chart_generated(release: Release) -> None:
    refused = platform.http_get(release.gateway + "/system/functions", timeout=5)
    assert refused.status == 401, refused.text
    assert refused.json() == {"message": "Unauthorized"}
    wrong = platform.http_get(release.gateway + "/system/functions", timeout=5,
                              headers={"Authorization": "Bearer not-the-admin-key-0123456789"})
    assert wrong.status == 401
    assert len(release.admin_key) >= 16
