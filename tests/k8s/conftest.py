"""Fixtures for the k8s suite: an emulated API server (tests/support/kube.py) and the operator in a thread."""
from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from kubernetes.aio import client

from kfn.kube import connect
from kfn_operator.config import OperatorConfig
from tests.support import kube
from tests.support.operator import running_operator
from tests.support.pools import backend, instance

__all__ = ["backend", "instance"]   # warm pool fixtures (tests/support/pools.py)


@pytest.fixture
async def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[kube.Cluster]:
    async with kube.running_cluster(tmp_path) as (emulator, kubeconfig):
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        yield emulator


@pytest.fixture
async def api(cluster: kube.Cluster) -> AsyncIterator[client.ApiClient]:
    """A Kubernetes API client configured from the emulated cluster's kubeconfig."""
    api = await connect()
    try:
        yield api
    finally:
        await api.close()


@pytest.fixture
async def operator(cluster: kube.Cluster) -> AsyncIterator[None]:
    async with running_operator(OperatorConfig(standalone=True, autoscaler=False)):
        yield
