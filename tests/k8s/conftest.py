"""Fixtures for the k8s suite: an emulated API server (tests/k8s/kube.py) and the operator in a thread."""
from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from kubernetes.aio import client

from kfn.kube import connect
from kfn_operator.config import OperatorConfig
from kfn_operator.handlers import Controller
from kfn_operator.main import operate
from tests.k8s import kube


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


@contextlib.asynccontextmanager
async def running_operator(config: OperatorConfig, *, controller: Controller | None = None,
                           wait_ready: bool = True) -> AsyncIterator[None]:
    """`kfn operator` (kopf, in-process) in its own thread and event loop, stopped on exit.

    wait_ready: wait (up to 30 s) for kopf to run first; a replica meant to stand by never gets there."""
    stop, ready = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(operate(config, stop_flag=stop, ready_flag=ready, controller=controller))
        except BaseException as e:  # noqa: BLE001 - surfaced by the fixture, not lost in the thread
            errors.append(e)
            ready.set()

    thread = threading.Thread(target=run, name="kfn-operator", daemon=True)
    thread.start()
    try:
        if wait_ready:
            await asyncio.to_thread(ready.wait, 30)
        if errors:
            raise errors[0]
        yield
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 30)
    assert not thread.is_alive(), "the operator did not stop"
    if errors:
        raise errors[0]


@pytest.fixture
async def operator(cluster: kube.Cluster) -> AsyncIterator[None]:
    async with running_operator(OperatorConfig(standalone=True, autoscaler=False)):
        yield
