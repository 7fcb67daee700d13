"""The chart's watchNamespaces mode: namespaced Roles, one namespace served, the others ignored.

Two operators watching one namespace would fight over its Functions, so this runs once the
cluster-wide release is gone (order 2 in conftest.py; the fixture makes sure of it).
"""
from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.cluster import platform
from tests.cluster.platform import Release

pytestmark = pytest.mark.last(order=2)

CODE = """
def handler(event, context):
    return {"served": True}
"""


@pytest.fixture(scope="module")
def scoped() -> Iterator[tuple[Release, str, str]]:
    """A release watching ns-a only; yields (release, ns-a, ns-b)."""
    for other in platform.RELEASES:
        other.uninstall()
    watched, ignored = platform.create_namespace("ns-a"), platform.create_namespace("ns-b")
    release = Release(f"kfn-w-{platform.RUN_ID}", platform.create_namespace("kfnw"), {"watchNamespaces": [watched]})
    platform.record("helm install --wait (watchNamespaces: [ns-a])", release.install(), "s")
    yield release, watched, ignored
    release.uninstall()
    for namespace in (watched, ignored, release.namespace):
        platform.delete_namespace(namespace)


def test_namespaced_release_has_roles_and_no_cluster_roles(scoped: tuple[Release, str, str]) -> None:
    release, watched, _ = scoped
    selector = f"{platform.LABEL_INSTANCE}={release.name}"
    assert platform.items("clusterroles", selector=selector) == []
    assert platform.items("clusterrolebindings", selector=selector) == []
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]) for r in platform.items("roles", selector=selector)}
    assert {(watched, f"{release.name}-operator"), (watched, f"{release.name}-gateway")} <= roles


def test_namespaced_release_serves_the_watched_namespace(scoped: tuple[Release, str, str]) -> None:
    release, watched, _ = scoped
    release.deploy(platform.function("scoped-a", CODE), watched)
    answer = platform.http_get(release.url("scoped-a", watched))
    assert answer.status == 200, answer.text
    assert answer.json() == {"served": True}


def test_namespaced_release_ignores_other_namespaces(scoped: tuple[Release, str, str]) -> None:
    release, watched, ignored = scoped
    platform.apply(platform.function("scoped-b", CODE), namespace=ignored)
    # A Function in the watched namespace applied after it is handled: by then scoped-b would be too.
    release.deploy(platform.function("scoped-c", CODE), watched)
    time.sleep(1)
    fn = platform.get("function", "scoped-b", namespace=ignored)
    assert not fn.get("status"), fn.get("status")
    assert platform.get("deployment", "scoped-b", namespace=ignored) is None
    answer = platform.http_get(release.url("scoped-b", ignored))
    assert answer.status == 404, answer.text


def test_namespaced_release_logs_have_no_403(scoped: tuple[Release, str, str],
                                            collector: platform.LogCollector) -> None:
    release, _, _ = scoped
    collector.snapshot(release.namespace)
    assert list(collector.files(release.namespace)), "no logs collected"
    assert collector.forbidden(release.namespace) == {}
