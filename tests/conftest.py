"""Test tiers are chosen by folder: a new test file lands in its tier without a marker.

    tests/unit/      fast, in-process, no subprocesses or sockets beyond 127.0.0.1 loopback
    tests/e2e/       real processes (kfn local, runtimes) speaking HTTP on 127.0.0.1
    tests/k8s/       the operator and the Kubernetes backend against an emulated API (kmock)
    tests/chart/     the Helm chart rendered and checked offline
    tests/robustness/ faults, overload and hostile input: hypothesis properties, and issue 12's
                     reproducers against a real kfn local (KFN_ROBUSTNESS_TARGET runs them
                     against another checkout, to show how it behaved)
    tests/cluster/   a real Kubernetes cluster (scripts/test-cluster sets KFN_TEST_CLUSTER=1)

Each folder's tests get the marker of its tier (`-m unit`, `-m e2e`, ...). The cluster tier is
not even collected unless asked for: it needs the images built and a cluster up.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.nats import NatsServer

TIERS = {"unit": "unit", "e2e": "e2e", "k8s": "k8s", "chart": "chart", "cluster": "cluster",
         "robustness": "robustness"}
HERE = Path(__file__).parent

collect_ignore = [] if os.environ.get("KFN_TEST_CLUSTER") == "1" else ["cluster"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        try:
            folder = Path(str(item.fspath)).relative_to(HERE).parts[0]
        except ValueError:
            continue
        tier = TIERS.get(folder)
        if tier is not None:
            item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A JetStream nats-server of the test's own, stopped (by its PID) after it."""
    server = NatsServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()
