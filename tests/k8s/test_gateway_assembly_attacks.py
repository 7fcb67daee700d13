"""`kfn gateway` as a careless operator and a hostile environment run it, against the emulated API:
a port in use, an API server that cannot be reached, SIGTERM while starting, NATS down at start or
dying mid-run, an async event accepted just before SIGTERM. Each process is stopped by its PID
(SIGKILL after a bound, its group too) and every wait is bounded."""
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

import aiohttp
import nats
import pytest

from kfn.core import naming
from kfn.events import jetstream_layout
from tests.support import kube
from tests.support.commands import CommandProcess
from tests.support.nats import NatsServer
from tests.support.ports import free_port

pytestmark = [pytest.mark.timeout(120)]

HELLO = {"apiVersion": naming.API_VERSION, "kind": naming.KIND, "metadata": {"name": "hello", "namespace": "default"},
         "spec": {"handler": "main.handler", "source": {"files": {"main.py": "def handler(e, c):\n    return 1\n"}}}}


class Gateway(CommandProcess):
    """A `kfn gateway` process in a session of its own, its output in a log file."""

    def __init__(self, process: asyncio.subprocess.Process, log: Path, port: int) -> None:
        super().__init__(process, log)
        self.url = f"http://127.0.0.1:{port}"

    async def serving(self, timeout: float = 30.0) -> bool:
        """Whether GET /healthz answers 200 within `timeout` (False at once if it exited)."""
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline and self.process.returncode is None:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(self.url + "/healthz", timeout=aiohttp.ClientTimeout(total=1)) as r:
                        if r.status == 200:
                            return True
                await asyncio.sleep(0.1)
        return False


@contextlib.asynccontextmanager
async def kfn_gateway(kubeconfig: Path, tmp_path: Path, *args: str, port: int | None = None,
                      name: str = "gateway") -> AsyncIterator[Gateway]:
    """`kfn gateway --host 127.0.0.1 --port PORT ARGS` with KUBECONFIG; SIGKILLed (its group too)
    if it still runs on the way out."""
    port = port if port is not None else free_port()
    log = tmp_path / f"{name}.log"
    env = {k: v for k, v in kube.env_with_kubeconfig(kubeconfig).items() if not k.startswith("KFN_")}
    with open(log, "wb") as out:  # noqa: ASYNC230 - a local file
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kfn", "gateway", "--host", "127.0.0.1", "--port", str(port), *args, env=env,
            stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True)
    try:
        yield Gateway(process, log, port)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)


def unreachable_kubeconfig(tmp_path: Path) -> Path:
    """A kubeconfig naming an API server on a port nobody listens on."""
    return kube.write_kubeconfig(tmp_path / "unreachable-kubeconfig", f"http://127.0.0.1:{free_port()}")


# -- a part that cannot start --------------------------------------------------------------------------

async def test_a_port_in_use_is_one_line_and_exit_1_without_a_traceback(cluster: kube.Cluster, tmp_path: Path) -> None:
    assert cluster.kubeconfig is not None
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        async with kfn_gateway(cluster.kubeconfig, tmp_path, port=holder.getsockname()[1]) as gateway:
            assert await gateway.wait(60) == 1, gateway.output()
            assert "Traceback" not in gateway.output(), gateway.output()
            assert f"kfn gateway: --port {holder.getsockname()[1]}:" in gateway.output(), gateway.output()


async def test_a_health_port_in_use_is_one_line_and_exit_1(cluster: kube.Cluster, tmp_path: Path) -> None:
    assert cluster.kubeconfig is not None
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        health = holder.getsockname()[1]
        async with kfn_gateway(cluster.kubeconfig, tmp_path, "--health-port", str(health)) as gateway:
            assert await gateway.wait(60) == 1, gateway.output()
            assert f"kfn gateway: --health-port {health}:" in gateway.output()
            assert "Traceback" not in gateway.output(), gateway.output()


async def test_an_invalid_keys_file_is_exit_2_without_a_traceback(cluster: kube.Cluster, tmp_path: Path) -> None:
    assert cluster.kubeconfig is not None
    keys = tmp_path / "keys.yaml"
    keys.write_text("keys: [\n")
    async with kfn_gateway(cluster.kubeconfig, tmp_path, "--keys", str(keys)) as gateway:
        assert await gateway.wait(60) == 2, gateway.output()
        assert "kfn gateway: --keys:" in gateway.output() and "Traceback" not in gateway.output()


async def test_an_api_server_that_cannot_be_reached_is_one_line_and_a_non_zero_exit(tmp_path: Path) -> None:
    async with kfn_gateway(unreachable_kubeconfig(tmp_path), tmp_path, "--sync-timeout", "2") as gateway:
        code = await gateway.wait(30)
        assert code is not None and code != 0, gateway.output()
        assert "Traceback" not in gateway.output(), gateway.output()
        assert "kfn gateway: " in gateway.output() and "within 2s" in gateway.output(), gateway.output()


# -- signals during startup ----------------------------------------------------------------------------

async def test_sigterm_while_the_api_cannot_be_reached_ends_it_promptly(tmp_path: Path) -> None:
    async with kfn_gateway(unreachable_kubeconfig(tmp_path), tmp_path, "--shutdown-delay", "1") as gateway:
        await asyncio.sleep(3)
        assert gateway.process.returncode is None, gateway.output()
        gateway.signal()
        started = time.monotonic()
        code = await gateway.wait(45)
        assert code is not None and time.monotonic() - started < 10, (time.monotonic() - started, gateway.output())
        assert "Traceback" not in gateway.output(), gateway.output()


@pytest.mark.parametrize("after", [0.5, 1.0, 1.5, 2.0])
async def test_sigterm_at_any_moment_of_startup_ends_it_without_a_traceback(
        cluster: kube.Cluster, tmp_path: Path, after: float) -> None:
    assert cluster.kubeconfig is not None
    async with kfn_gateway(cluster.kubeconfig, tmp_path, "--shutdown-delay", "1",
                           "--health-port", str(free_port())) as gateway:
        await asyncio.sleep(after)
        gateway.signal()
        assert await gateway.wait(30) in (0, -signal.SIGTERM), gateway.output()
        assert "Traceback" not in gateway.output(), gateway.output()


# -- NATS ----------------------------------------------------------------------------------------------

async def test_nats_down_at_start_is_reported_and_the_gateway_serves_and_stops(
        cluster: kube.Cluster, tmp_path: Path) -> None:
    assert cluster.kubeconfig is not None
    async with kfn_gateway(cluster.kubeconfig, tmp_path, "--nats-url", f"nats://127.0.0.1:{free_port()}",
                           "--shutdown-delay", "1") as gateway:
        assert await gateway.serving(), gateway.output()
        await asyncio.sleep(8)   # past the first attempt and NATS_RETRY
        assert "NATS" in gateway.output(), gateway.output()   # the operator learns why async requests are 503
        gateway.signal()
        assert await gateway.wait(30) == 0, gateway.output()
        assert "Traceback" not in gateway.output(), gateway.output()


async def test_an_async_event_accepted_just_before_sigterm_stays_in_jetstream(
        cluster: kube.Cluster, tmp_path: Path, nats_server: NatsServer) -> None:
    assert cluster.kubeconfig is not None
    await kube.create_function(cluster, HELLO)
    async with kfn_gateway(cluster.kubeconfig, tmp_path, "--nats-url", nats_server.url,
                           "--shutdown-delay", "1") as gateway:
        assert await gateway.serving(), gateway.output()
        status = None
        async with aiohttp.ClientSession() as session:
            for _ in range(100):   # until the store is open and the function known
                async with session.post(gateway.url + "/async-function/hello", data=b"kept") as r:
                    status = r.status
                if status == 202:
                    break
                await asyncio.sleep(0.1)
        assert status == 202, gateway.output()
        gateway.signal()
        assert await gateway.wait(60) == 0, gateway.output()
        assert "Traceback" not in gateway.output(), gateway.output()
    client = await nats.connect(nats_server.url)
    try:
        info = await client.jetstream().stream_info(jetstream_layout.STREAM)
        assert info.state.messages >= 1
    finally:
        await client.close()


async def test_nats_dying_mid_run_neither_stops_the_gateway_nor_hangs_its_shutdown(
        cluster: kube.Cluster, tmp_path: Path, nats_server: NatsServer) -> None:
    assert cluster.kubeconfig is not None
    async with kfn_gateway(cluster.kubeconfig, tmp_path, "--nats-url", nats_server.url,
                           "--shutdown-delay", "1") as gateway:
        assert await gateway.serving(), gateway.output()
        await asyncio.sleep(2)   # connected, delivery and triggers started
        nats_server.kill()
        await asyncio.sleep(2)
        assert await gateway.serving(5), gateway.output()
        gateway.signal()
        started = time.monotonic()
        assert await gateway.wait(45) == 0, gateway.output()
        assert time.monotonic() - started < 20, gateway.output()
        assert "Traceback" not in gateway.output(), gateway.output()
