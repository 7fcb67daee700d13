"""A Lambda container image's environments: `contract.LAUNCHER` (POSIX sh, in the image's container)
started by an instance host's `ExternalSpawner` through FIFOs in a shared directory.

Here both run on this machine, as the two containers of a pod would; the image's entrypoint is a
small custom runtime speaking the Runtime API with urllib (any runtime interface client would do).
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kfn_runtime import contract
from kfn_runtime.environments import ExternalSpawner
from kfn_runtime.execution import HostConfig, Invocation
from kfn_runtime.host import InstanceHost
from tests.support.waiting import eventually

BOOTSTRAP = textwrap.dedent('''
    import json, os, time, urllib.request
    api = os.environ["AWS_LAMBDA_RUNTIME_API"]
    base = f"http://{api}/2018-06-01/runtime/invocation"
    count = 0
    print("bootstrap", os.getpid(), "started", flush=True)
    while True:
        with urllib.request.urlopen(base + "/next") as answer:
            request_id = answer.headers["Lambda-Runtime-Aws-Request-Id"]
            event = json.loads(answer.read())
        count += 1
        time.sleep(event.get("sleep", 0))
        body = json.dumps({"count": count, "pid": os.getpid(), "stream": os.environ["AWS_LAMBDA_LOG_STREAM_NAME"],
                           "name": os.environ.get("AWS_LAMBDA_FUNCTION_NAME")}).encode()
        urllib.request.urlopen(urllib.request.Request(f"{base}/{request_id}/response", data=body, method="POST"))
''')


class Pod:
    """An instance host and the launcher, wired like the two containers of an image function's pod."""

    def __init__(self, tmp_path: Path, *, slots: int, timeout: float = 5.0) -> None:
        self.dir = tmp_path / "environments"
        (tmp_path / "bootstrap.py").write_text(BOOTSTRAP)
        self.lines: list[str] = []
        self.host = InstanceHost(HostConfig(function_name="orders", timeout=timeout, concurrency=slots,
                                            memory_mb=128, region="us-east-1"),
                                 ExternalSpawner(str(self.dir), slots=slots),
                                 log=lambda env, line: self.lines.append(f"{env} {line}"))
        self.launcher = subprocess.Popen(
            ["sh", "-c", contract.LAUNCHER, "kfn-environments", str(self.dir), str(slots),
             sys.executable, str(tmp_path / "bootstrap.py")],
            env={"PATH": os.environ["PATH"], "AWS_LAMBDA_FUNCTION_NAME": "orders"}, start_new_session=True)

    async def invoke(self, event: dict[str, Any], *, timeout: float = 5.0) -> Invocation:
        return await self.host.invoke(Invocation(json.dumps(event).encode(), timeout=timeout))

    def stop(self) -> None:
        if self.launcher.poll() is None:
            os.killpg(self.launcher.pid, signal.SIGKILL)
            self.launcher.wait(timeout=10)


@pytest.fixture
async def pod(tmp_path: Path) -> AsyncIterator[Pod]:
    pod = Pod(tmp_path, slots=2, timeout=1.0)
    try:
        await pod.host.start(timeout=20)
        yield pod
    finally:
        await pod.host.close()
        pod.stop()


def result(invocation: Invocation) -> dict[str, Any]:
    assert invocation.function_error is None, invocation.result
    return json.loads(invocation.result)  # type: ignore[no-any-return]


async def test_the_images_entrypoint_serves_invocations_with_the_containers_environment(pod: Pod) -> None:
    first, second = result(await pod.invoke({})), result(await pod.invoke({}))
    assert (first["count"], second["count"]) == (1, 2)
    assert first["pid"] == second["pid"]
    assert first["name"] == "orders"
    assert "/[$LATEST]" in first["stream"]


async def test_parallel_invocations_get_environments_of_their_own(pod: Pod) -> None:
    both = await asyncio.gather(pod.invoke({"sleep": 0.3}), pod.invoke({"sleep": 0.3}))
    assert len({result(i)["pid"] for i in both}) == 2


async def test_an_environment_that_times_out_is_killed_and_its_slot_serves_again(pod: Pod) -> None:
    before = result(await pod.invoke({}))["pid"]
    timed_out = await pod.invoke({"sleep": 5})
    assert timed_out.error_type == "Sandbox.Timedout"
    await eventually(lambda: not os.path.exists(f"/proc/{before}"))
    after = [result(await pod.invoke({}))["pid"] for _ in range(3)]
    assert before not in after


async def test_what_an_environment_prints_reaches_the_instances_log(pod: Pod) -> None:
    pid = result(await pod.invoke({}))["pid"]
    await eventually(lambda: any(f"bootstrap {pid} started" in line for line in pod.lines))


async def test_the_launcher_ignores_sigterm_and_ends_when_the_instance_says_stop(tmp_path: Path) -> None:
    pod = Pod(tmp_path, slots=1)
    try:
        await pod.host.start(timeout=20)
        slow = asyncio.ensure_future(pod.invoke({"sleep": 0.5}))
        await asyncio.sleep(0.1)
        os.kill(pod.launcher.pid, signal.SIGTERM)     # what the kubelet sends the container
        assert result(await slow)["count"] == 1       # the invocation in flight finishes
        assert pod.launcher.poll() is None
        await pod.host.close()
        await eventually(lambda: pod.launcher.poll() is not None)
    finally:
        await pod.host.close()
        pod.stop()
