"""Across the whole tier, the API server never refused the operator or the gateway (RBAC)."""
from __future__ import annotations

import pytest

from tests.cluster import platform


@pytest.mark.last(order=3)
def test_no_403_in_any_operator_or_gateway_log(collector: platform.LogCollector) -> None:
    collector.poll()
    for release in platform.RELEASES:
        if release.installed:
            collector.snapshot(release.namespace)
    files = list(collector.files())
    assert files, "no logs collected"
    # Neither a missing permission nor a create in a namespace being deleted (NamespaceTerminating:
    # an operator that resumes a Function whose namespace is going away builds nothing there).
    terminating = sum(len(v) for v in collector.forbidden().values()) - sum(
        len(v) for v in collector.forbidden(rbac_only=True).values())
    platform.record("operator/gateway log files checked for 403", len(files))
    platform.record("403 NamespaceTerminating records (children recreated in deleted namespaces)", terminating)
    assert collector.forbidden(rbac_only=True) == {}
    assert terminating == 0, collector.forbidden()
