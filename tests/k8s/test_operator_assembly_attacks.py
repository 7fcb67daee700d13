"""`kfn operator` as a hostile environment runs it, against the emulated API: an API server that
cannot be reached or that refuses pods, SIGTERM while starting, a standby becoming the leader.
Each process is stopped by its PID (SIGKILL after a bound) and every wait is bounded."""
from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kfn.core import naming
from tests.support import kube
from tests.support.commands import CommandProcess
from tests.support.ports import free_port
from tests.support.waiting import eventually

pytestmark = [pytest.mark.timeout(120)]

HELLO = {"apiVersion": naming.API_VERSION, "kind": naming.KIND, "metadata": {"name": "hello", "namespace": "default"},
         "spec": {"handler": "main.handler", "source": {"files": {"main.py": "def handler(e, c):\n    return 1\n"}}}}
PODS = "v1/pods"
IMAGE = ("--runtime-image", "python3.12=reg.local/py:3.12")


class Operator(CommandProcess):
    """A `kfn operator` process in a session of its own, its output in a log file."""


@contextlib.asynccontextmanager
async def kfn_operator(kubeconfig: Path, tmp_path: Path, *args: str, name: str = "operator",
                       env: dict[str, str] | None = None) -> AsyncIterator[Operator]:
    """`kfn operator ARGS` with KUBECONFIG; SIGKILLed (its group too) if it still runs on the way out."""
    log = tmp_path / f"{name}.log"
    child_env = {**kube.env_with_kubeconfig(kubeconfig), **(env or {})}
    with open(log, "wb") as out:  # noqa: ASYNC230 - a local file
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kfn", "operator", *args, env=child_env,
            stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT, start_new_session=True)
    try:
        yield Operator(process, log)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)


def unreachable_kubeconfig(tmp_path: Path) -> Path:
    """A kubeconfig naming an API server on a port nobody listens on."""
    return kube.write_kubeconfig(tmp_path / "unreachable-kubeconfig", f"http://127.0.0.1:{free_port()}")


# -- the API cannot be reached -------------------------------------------------------------------------

@pytest.mark.parametrize("mode", [("--standalone",), ()], ids=["standalone", "elected"])
async def test_sigterm_while_the_api_cannot_be_reached_ends_it_promptly_without_a_traceback(
        tmp_path: Path, mode: tuple[str, ...]) -> None:
    async with kfn_operator(unreachable_kubeconfig(tmp_path), tmp_path, *mode, *IMAGE,
                            env={"POD_NAME": "operator-a", "POD_NAMESPACE": "kfn-system"}) as operator:
        await asyncio.sleep(3)
        assert operator.process.returncode is None, operator.output()
        operator.signal()
        started = time.monotonic()
        code = await operator.wait(30)
        assert code is not None and time.monotonic() - started < 15, operator.output()
        assert code == 0, operator.output()
        assert "Traceback" not in operator.output(), operator.output()


# -- SIGTERM while starting ----------------------------------------------------------------------------

@pytest.mark.parametrize("after", [0.5, 1.0, 1.5, 2.0, 3.0])
async def test_sigterm_at_any_moment_of_the_start_ends_it_with_0_and_no_traceback(
        cluster: kube.Cluster, tmp_path: Path, after: float) -> None:
    assert cluster.kubeconfig is not None
    async with kfn_operator(cluster.kubeconfig, tmp_path, *IMAGE, "--health-port", str(free_port()),
                            env={"POD_NAME": "operator-a", "POD_NAMESPACE": "kfn-system"}) as operator:
        await asyncio.sleep(after)
        operator.signal()
        code = await operator.wait(30)
        assert code in (0, -signal.SIGTERM), operator.output()
        assert "Traceback" not in operator.output(), operator.output()


async def test_two_sigterms_while_leading_end_it_with_0_and_hand_the_lease_back(
        cluster: kube.Cluster, tmp_path: Path) -> None:
    assert cluster.kubeconfig is not None
    async with kfn_operator(cluster.kubeconfig, tmp_path, *IMAGE,
                            env={"POD_NAME": "operator-a", "POD_NAMESPACE": "kfn-system"}) as operator:
        async with cluster.post("/apis/kfn.dev/v1alpha1/namespaces/default/functions", json=HELLO) as r:
            assert r.status == 201
        await eventually(lambda: kube.deployment(cluster), timeout=30, what="the Deployment")
        operator.signal()
        await asyncio.sleep(0.2)
        operator.signal()
        assert await operator.wait(30) == 0, operator.output()
        assert "Traceback" not in operator.output(), operator.output()
    lease = cluster.object(kube.LEASES, "kfn-system", "kfn-operator") or {}
    assert (lease.get("spec") or {}).get("holderIdentity") is None


# -- a part of the operator fails to start ------------------------------------------------------------

async def test_the_operator_reconciles_functions_while_the_api_refuses_to_list_pods(
        cluster: kube.Cluster, tmp_path: Path) -> None:
    """Pods are only the autoscaler's concern (ready counts): kopf's Functions and Deployments do
    not need them, so a pod list that fails (an API server restarting, RBAC being rolled out)
    must not keep the operator from reconciling."""
    assert cluster.kubeconfig is not None
    cluster.fail_requests(PODS, 100_000, status=500)
    async with kfn_operator(cluster.kubeconfig, tmp_path, "--standalone", *IMAGE,
                            "--autoscale-interval", "0.5") as operator:
        async with cluster.post("/apis/kfn.dev/v1alpha1/namespaces/default/functions", json=HELLO) as r:
            assert r.status == 201
        deadline = time.monotonic() + 45
        while kube.deployment(cluster) is None and time.monotonic() < deadline:
            if operator.process.returncode is not None:
                break
            await asyncio.sleep(0.2)
        assert operator.process.returncode is None, operator.output()
        assert kube.deployment(cluster) is not None, operator.output()
        operator.signal()
        assert await operator.wait(30) == 0, operator.output()


async def test_the_operator_keeps_running_when_the_pod_list_fails_for_longer_than_the_sync_timeout(
        cluster: kube.Cluster, tmp_path: Path) -> None:
    """Once the API answers pods again, the operator that started meanwhile is still there."""
    assert cluster.kubeconfig is not None
    cluster.fail_requests(PODS, 100_000, status=500)
    async with kfn_operator(cluster.kubeconfig, tmp_path, "--standalone", *IMAGE,
                            "--autoscale-interval", "0.5", "--sync-timeout", "1") as operator:
        code = await operator.wait(4)   # past the backend's sync timeout, three times
        assert "the cluster is not listed yet" in operator.output(), operator.output()
        assert code is None, operator.output()
        assert "Traceback" not in operator.output(), operator.output()
        operator.signal()
        assert await operator.wait(30) == 0, operator.output()


@pytest.mark.parametrize("mode", [("--standalone",), ()], ids=["standalone", "elected"])
async def test_a_health_port_in_use_is_one_line_and_a_non_zero_exit(
        cluster: kube.Cluster, tmp_path: Path, mode: tuple[str, ...]) -> None:
    assert cluster.kubeconfig is not None
    with socket.socket() as holder:
        holder.bind(("0.0.0.0", 0))
        holder.listen()
        port = holder.getsockname()[1]
        async with kfn_operator(cluster.kubeconfig, tmp_path, *mode, *IMAGE, "--health-port", str(port),
                                env={"POD_NAME": "operator-a", "POD_NAMESPACE": "kfn-system"}) as operator:
            code = await operator.wait(30)
            assert code is not None and code != 0, operator.output()
            assert "Traceback" not in operator.output(), operator.output()
            assert f"kfn operator: --health-port {port}" in operator.output(), operator.output()
