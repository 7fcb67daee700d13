"""The real-cluster tier: fixtures and test order.

Run by `make test-cluster` (scripts/test-cluster), which starts the cluster, loads the images
`make images` built and sets KFN_TEST_CLUSTER=1 and KUBECONFIG; plain `pytest` never collects this
folder (tests/conftest.py).

One session installs the Function CRD once (with the first release: Helm installs crds/), one
cluster-wide release for most tests, and removes both at the end. Each run has its own
namespaces (`PREFIX-RUNID-XXXX`), deleted with --wait=false when the session ends.

Storage. Each release runs the chart's NATS server with a PersistentVolumeClaim. Where the cluster
has no default StorageClass (realk8s has no provisioner), the session makes one for the run with
`local` PersistentVolumes on directories of this machine (platform.local_storage), so the claims
bind for real, and removes them at the end.

Order. Most tests share the cluster-wide release and run in file order. Tests marked
`@pytest.mark.first` run before them (test_install.py: the release as installed, before any
test deletes a pod), and tests marked `@pytest.mark.last(order=N)` after them, by N then file order:
  1  test_uninstall.py          uninstalls the cluster-wide release and checks what is left;
  2  test_prometheus_autoscaling.py, test_watch_namespaces.py   a release watching one namespace each
                                (two operators watching the same namespace would fight, so only once
                                the cluster-wide one is gone);
  3  test_logs.py               no 403 in the logs of every operator and gateway of the session.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import platform

# Every test is bounded by its own waits; this is the backstop (it includes fixture setup, such
# as the first test's helm install).
TEST_TIMEOUT = 300
IMAGES = ("ghcr.io/kfn-dev/kfn:0.1.0", "ghcr.io/kfn-dev/runtime-python:3.11",
          "ghcr.io/kfn-dev/runtime-python:3.12", "ghcr.io/kfn-dev/runtime-python:3.13",
          "ghcr.io/kfn-dev/runtime-nodejs:20", "ghcr.io/kfn-dev/runtime-nodejs:22",
          "ghcr.io/kfn-dev/example-lambda-image:0.1.0",
          "ghcr.io/kfn-dev/nats:2.10",   # the chart's NATS server (async.nats)
          "ghcr.io/kfn-dev/prometheus:2.42")   # test_prometheus_autoscaling.py's Prometheus
# Local PersistentVolumes made for the run where the cluster has no default StorageClass: one per
# NATS server of a release (the cluster-wide one, watchNamespaces'), and spares.
VOLUMES = 4
# The wheel test_requirements.py installs in a pod, from an index this session serves.
INDEX_PACKAGES = ("six",)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "first: run before every unmarked test (see tests/cluster/conftest.py)")
    config.addinivalue_line("markers",
                            "last(order): run after every unmarked test, by order (see tests/cluster/conftest.py)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def order(item: pytest.Item) -> int:
        if item.get_closest_marker("first") is not None:
            return -1
        mark = item.get_closest_marker("last")
        if mark is None:
            return 0
        return int(mark.kwargs.get("order", mark.args[0] if mark.args else 1))

    items.sort(key=order)  # stable: file order within each group
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(TEST_TIMEOUT))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not platform.FIGURES:
        return
    terminalreporter.section("figures measured on the cluster")
    width = max(len(name) for name, _ in platform.FIGURES)
    for name, value in platform.FIGURES:
        terminalreporter.write_line(f"{name:<{width}}  {value}")
    if _artifacts is not None:
        (_artifacts / "figures.json").write_text(json.dumps(platform.FIGURES, indent=1))
        terminalreporter.write_line(f"(logs of every operator and gateway: {_artifacts / 'logs'})")


_artifacts: Path | None = None


@pytest.fixture(scope="session", autouse=True)
def cluster() -> Iterator[None]:
    """A reachable cluster without another kfn, the images loaded; cleans up the run at the end."""
    global _artifacts
    ready = platform.kubectl("get", "--raw", "/readyz", check=False)
    if ready.stdout.strip() != "ok":
        pytest.exit(f"the cluster is not ready (KUBECONFIG={os.environ.get('KUBECONFIG')}): {ready.stderr.strip()}",
                    returncode=1)
    if platform.get("crd", platform.CRD_NAME) is not None:
        pytest.exit(f"the cluster already has the {platform.CRD_NAME} CRD: another kfn is installed, or an "
                    "earlier run did not finish (see `helm list -A`). This tier installs and deletes the CRD, "
                    f"so it does not run next to it; remove it with `kubectl delete crd {platform.CRD_NAME}` "
                    "(which deletes every Function) after uninstalling the release.", returncode=1)
    def missing_images() -> list[str]:
        on_node = {name for node in platform.items("nodes") for image in node["status"].get("images") or ()
                   for name in image.get("names") or ()}
        return [image for image in IMAGES if not any(n == image or n.endswith("/" + image) for n in on_node)]

    # The kubelet reports images in the node's status some seconds after they were loaded.
    deadline = time.monotonic() + 60
    while (missing := missing_images()) and time.monotonic() < deadline:
        time.sleep(1)
    if missing:
        pytest.exit(f"images missing on the node: {', '.join(missing)} (scripts/test-cluster loads what "
                    "`make images` built)", returncode=1)

    _artifacts = Path(os.environ.get("KFN_CLUSTER_ARTIFACTS") or
                      platform.REPO / ".cache" / "cluster-tier" / f"run-{platform.RUN_ID}")
    collector = platform.LogCollector(_artifacts / "logs")
    collector.start()
    platform.COLLECTOR = collector
    volumes = contextlib.ExitStack()
    storage_class = volumes.enter_context(platform.local_storage(VOLUMES))
    if storage_class is not None:
        platform.record("storage for the NATS claims", f"{VOLUMES} local PersistentVolumes, default class "
                        f"{storage_class} (the cluster has no provisioner)")
    try:
        yield
    finally:
        for release in list(platform.RELEASES):
            try:
                release.uninstall()
            except AssertionError as e:
                print(f"cleanup: {e}")
        collector.stop()
        platform.delete_namespaces()
        # Deleting the CRD deletes every Function left, and their children with them.
        platform.delete_crd()
        volumes.close()   # after the namespaces: a volume goes once its claim has


@pytest.fixture(scope="session")
def collector() -> platform.LogCollector:
    assert platform.COLLECTOR is not None
    return platform.COLLECTOR


@pytest.fixture(scope="session")
def index_url() -> Iterator[str]:
    """A PEP 503 index on the node address with the wheels of INDEX_PACKAGES (pods have no internet)."""
    with platform.package_index(INDEX_PACKAGES) as url:
        yield url


@pytest.fixture(scope="session")
def release(index_url: str) -> platform.Release:
    """The cluster-wide release most tests use: its own namespace, a NodePort, the test index for pip.

    The first `helm install` of the run also installs the CRD from charts/kfn/crds.
    """
    namespace = platform.create_namespace("kfn")
    host = index_url.split("/")[2]
    release = platform.Release(f"kfn-{platform.RUN_ID}", namespace, {
        "functions": {"pip": {"indexUrl": index_url, "trustedHosts": [host.split(":")[0]]}},
        # Requests held for a cold start may wait out an API server restart (test_apiserver_restart.py).
        "gateway": {"queue": {"timeout": "120s"}},
    })
    seconds = release.install()
    platform.record("helm install --wait (CRD, operator, 2 gateways)", seconds, "s")
    platform.wait_until(f"CRD {platform.CRD_NAME} Established", lambda: any(
        c["type"] == "Established" and c["status"] == "True"
        for c in (platform.get("crd", platform.CRD_NAME) or {}).get("status", {}).get("conditions") or ()),
        timeout=30)
    return release


@pytest.fixture(scope="session")
def fn_ns() -> str:
    """The namespace shared by tests whose Functions do not interfere (unique names)."""
    return platform.create_namespace("fn")


@pytest.fixture
def deployed(release: platform.Release, fn_ns: str) -> Iterator[list[str]]:
    """Names of Functions a test deployed in fn_ns; deleted after the test so their pods stop."""
    names: list[str] = []
    yield names
    for name in names:
        platform.kubectl("delete", "function", name, "--ignore-not-found", "--wait=false", namespace=fn_ns,
                         check=False)
