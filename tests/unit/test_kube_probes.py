"""Which function pods serve (kfn.kube.probes): the kubelet's word, or sooner the gateway's own
probe; what the kubelet said of a pod while it was a warm pool's says nothing of it as a function's."""
from __future__ import annotations

import asyncio
import dataclasses

from aiohttp import web

from kfn.core.functions import FunctionRef
from kfn.kube.pods import PodView
from kfn.kube.probes import READY_PATH, ReadinessProbes
from tests.support.ports import free_port
from tests.support.waiting import eventually

HELLO = FunctionRef("default", "hello")


async def _instance(port: int) -> web.AppRunner:
    """A runtime answering its readiness path 200 on 127.0.0.1:`port`."""
    async def ready(request: web.Request) -> web.Response:
        return web.json_response({"status": "ready"})

    app = web.Application()
    app.router.add_get(READY_PATH, ready)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


async def test_a_pool_pod_the_kubelet_found_ready_is_probed_once_it_is_a_functions_pod() -> None:
    port = free_port()
    runner = await _instance(port)
    pods: dict[tuple[str, str], PodView] = {}
    probes = ReadinessProbes(pods, {HELLO}, lambda refs: None, enabled=True, interval=0.01, timeout=5)
    probes.open()
    try:
        idle = PodView(namespace="default", name="kfn-pool-python3-12-abc", function=None, ip="127.0.0.1",
                       port=port, ready=True, terminating=False, problem=None)
        pods[idle.key] = idle
        probes.saw(idle)
        # Specialised and made the function's: the kubelet's last word (from its specialisation) is "not ready".
        promoted = dataclasses.replace(idle, function=HELLO, ready=False)
        pods[promoted.key] = promoted
        probes.saw(promoted)
        await eventually(lambda: probes.serving(promoted), what="the promoted pod probed ready", timeout=5)
    finally:
        for task in probes.running():
            task.cancel()
        await asyncio.gather(*probes.running(), return_exceptions=True)
        await probes.close()
        await runner.cleanup()
