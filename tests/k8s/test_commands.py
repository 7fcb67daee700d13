"""`kfn operator` and `kfn gateway` as processes, configured by KUBECONFIG, against the emulated API."""
from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from kfn.core import naming
from tests.support import kube
from tests.support.ports import free_port
from tests.support.waiting import eventually

pytestmark = [pytest.mark.timeout(90)]

HELLO = {"apiVersion": naming.API_VERSION, "kind": naming.KIND, "metadata": {"name": "hello", "namespace": "default"},
         "spec": {"handler": "main.handler", "source": {"files": {"main.py": "def handler(e, c):\n    return 1\n"}}}}


@contextlib.asynccontextmanager
async def kfn(cluster: kube.Cluster, tmp_path: Path, *args: str, env: dict[str, str] | None = None,
              log_name: str | None = None) -> AsyncIterator[asyncio.subprocess.Process]:
    """`kfn ARGS` with KUBECONFIG pointing at the emulator (and `env`), its output in tmp_path/LOG_NAME.log
    (default: the command's name); SIGTERM on exit (SIGKILL if it hangs)."""
    with open(tmp_path / f"{log_name or args[0]}.log", "wb") as log:  # noqa: ASYNC230 - a local file
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kfn", *args, env={**kube.env_with_kubeconfig(cluster.kubeconfig), **(env or {})},
            stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT)
    try:
        yield process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 15)
            except TimeoutError:
                process.kill()
                await process.wait()


async def test_kfn_operator_reconciles_and_stops_cleanly_on_sigterm(cluster, tmp_path) -> None:
    async with kfn(cluster, tmp_path, "operator", "--standalone", "--runtime-image", "python3.12=reg.local/py:3.12",
                   "--autoscale-interval", "0.5") as process:
        async with cluster.post("/apis/kfn.dev/v1alpha1/namespaces/default/functions", json=HELLO) as r:
            assert r.status == 201
        dep = await eventually(lambda: cluster.object(kube.DEPLOYMENTS, "default", "hello"), timeout=30,
                               what="the Deployment")
        assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "reg.local/py:3.12"
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 20) == 0, (tmp_path / "operator.log").read_text()


async def test_of_two_kfn_operators_the_standby_answers_its_health_check_and_leads_once_the_leader_stops(
        cluster, tmp_path) -> None:
    ports = {"a": free_port(), "b": free_port()}

    def operator(name: str) -> contextlib.AbstractAsyncContextManager[asyncio.subprocess.Process]:
        return kfn(cluster, tmp_path, "operator", "--health-port", str(ports[name]), log_name=f"operator-{name}",
                   env={"POD_NAME": f"operator-{name}", "POD_NAMESPACE": "kfn-system"})

    def holder() -> str | None:
        return ((cluster.object(kube.LEASES, "kfn-system", "kfn-operator") or {}).get("spec") or {}).get(
            "holderIdentity")

    async def healthy(name: str) -> bool:
        async with aiohttp.ClientSession() as session:
            for _ in range(100):
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"http://127.0.0.1:{ports[name]}/healthz") as r:
                        if r.status == 200:
                            return True
                await asyncio.sleep(0.1)
        return False

    async with operator("a") as a:
        await eventually(lambda: holder() == "operator-a", timeout=30, what="operator-a to lead")
        async with operator("b") as b:
            async with cluster.post("/apis/kfn.dev/v1alpha1/namespaces/default/functions", json=HELLO) as r:
                assert r.status == 201
            await eventually(lambda: cluster.object(kube.DEPLOYMENTS, "default", "hello"), timeout=30,
                             what="the Deployment")
            # A standby runs no kopf, yet its liveness probe must pass.
            assert await healthy("b") and await healthy("a")
            assert holder() == "operator-a"
            a.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(a.wait(), 20) == 0, (tmp_path / "operator-a.log").read_text()
            # Handed back on the way out: taken at operator-b's next try, not after the 15 s Lease.
            await eventually(lambda: holder() == "operator-b", timeout=10, what="operator-b to take over")
            b.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(b.wait(), 20) == 0, (tmp_path / "operator-b.log").read_text()
    assert holder() is None


async def test_kfn_gateway_serves_the_functions_of_the_cluster_to_the_admin_key_of_its_secret(
        cluster, tmp_path) -> None:
    import base64

    admin_key = "admin-key-from-the-secret-0123"
    async with cluster.post("/apis/kfn.dev/v1alpha1/namespaces/default/functions", json=HELLO) as r:
        assert r.status == 201
    async with cluster.post("/api/v1/namespaces/kfn-system/secrets", json={
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "kfn-admin-keys", "namespace": "kfn-system"},
            "data": {"admin": base64.b64encode(admin_key.encode()).decode()}}) as r:
        assert r.status == 201
    port = free_port()
    async with kfn(cluster, tmp_path, "gateway", "--host", "127.0.0.1", "--port", str(port),
                   "--admin-namespace", "kfn-system") as process, aiohttp.ClientSession() as session:
        async def listed(headers: dict[str, str]) -> tuple[int, list[str] | None] | None:
            try:
                async with session.get(f"http://127.0.0.1:{port}{naming.SYSTEM_FUNCTIONS_PATH}",
                                       headers=headers) as r:
                    return r.status, ([f.get("name") for f in await r.json()] if r.status == 200 else None)
            except aiohttp.ClientConnectionError:
                return None

        answer = None
        for _ in range(150):
            answer = await listed({"Authorization": f"Bearer {admin_key}"})
            if (answer is not None and answer[0] == 200) or process.returncode is not None:
                break
            await asyncio.sleep(0.1)
        assert answer == (200, ["hello"]), (tmp_path / "gateway.log").read_text()
        assert await listed({}) == (401, None)
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 20) == 0, (tmp_path / "gateway.log").read_text()


async def test_kfn_gateway_with_no_system_auth_serves_the_system_paths_to_anyone(cluster, tmp_path) -> None:
    port = free_port()
    async with kfn(cluster, tmp_path, "gateway", "--host", "127.0.0.1", "--port", str(port),
                   "--no-system-auth") as process, aiohttp.ClientSession() as session:
        status = None
        for _ in range(150):
            try:
                async with session.get(f"http://127.0.0.1:{port}{naming.SYSTEM_FUNCTIONS_PATH}") as r:
                    status = r.status
                    break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.1)
        assert status == 200, (tmp_path / "gateway.log").read_text()
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 20) == 0


async def test_kfn_gateway_answers_its_liveness_port_with_every_connection_held_and_drains_it_on_sigterm(
        cluster, tmp_path) -> None:
    port, health_port = free_port(), free_port()

    async def get(to: int) -> tuple[int, bytes] | None:
        """(status, body) of GET /healthz on a connection of its own; None without an answer."""
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", to)
        except OSError:
            return None
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = await asyncio.wait_for(reader.read(-1), 5)
        except (OSError, TimeoutError):
            return None
        finally:
            writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        return (int(head.split(b" ", 2)[1]), body) if head else None

    async with kfn(cluster, tmp_path, "gateway", "--host", "127.0.0.1", "--port", str(port), "--health-port",
                   str(health_port), "--max-connections", "2", "--shutdown-delay", "60") as process:
        for _ in range(150):
            if process.returncode is not None or (await get(port) is not None and await get(health_port) is not None):
                break
            await asyncio.sleep(0.1)
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        try:
            for _ in range(100):   # until the gateway has accepted both
                if (refused := await get(port)) is not None and refused[0] == 503:
                    break
                await asyncio.sleep(0.05)
            assert refused is not None and refused[0] == 503, (tmp_path / "gateway.log").read_text()
            assert await get(health_port) == (200, b'{"status": "ok"}')
        finally:
            for _, writer in held:
                writer.close()
        process.send_signal(signal.SIGTERM)
        for _ in range(100):   # draining: the liveness port answers as the main port does
            if (draining := await get(health_port)) is not None and draining[0] == 503:
                break
            await asyncio.sleep(0.05)
        assert draining == (503, b'{"status": "draining"}')
        process.send_signal(signal.SIGTERM)   # a second signal skips the shutdown delay
        assert await asyncio.wait_for(process.wait(), 20) == 0, (tmp_path / "gateway.log").read_text()
    assert await get(health_port) is None


async def test_kfn_operator_rejects_a_malformed_runtime_image_flag(cluster, tmp_path) -> None:
    async with kfn(cluster, tmp_path, "operator", "--runtime-image", "python3.12") as process:
        assert await asyncio.wait_for(process.wait(), 20) == 2  # a usage error
    output = (tmp_path / "operator.log").read_text()
    assert "kfn operator: expected RUNTIME=IMAGE" in output
    assert "Traceback" not in output


@pytest.mark.parametrize("command", ["gateway", "operator"])
async def test_without_a_cluster_configuration_the_command_fails_with_one_line(command, tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("KUBERNETES_SERVICE_HOST",)}
    env["KUBECONFIG"] = str(tmp_path / "missing")
    env["HOME"] = str(tmp_path)
    returncode, _, err = await kube.run_command(sys.executable, "-m", "kfn", command, env=env)
    assert returncode == 1
    assert err == (f"kfn {command}: cannot configure the Kubernetes client: not in a pod "
                            f"(KUBERNETES_SERVICE_HOST is unset) and no kubeconfig at {tmp_path / 'missing'}\n")
