"""The output of a function's containers, read from the Kubernetes API (`kfn logs`)."""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from kubernetes.aio import client, watch
from kubernetes.aio.client.exceptions import ApiException

from kfn.core.aiotasks import stop_tasks
from kfn.core.functions import FunctionRef
from kfn.kube.informer import describe
from kfn.kube.mirror import ClusterMirror
from kfn.kube.pods import PodView

logger = logging.getLogger(__name__)

FUNCTION_CONTAINER = "function"
# A follower of `kfn logs -f` that cannot keep up loses lines rather than slowing the gateway.
LOG_QUEUE_LINES = 1000


@contextlib.asynccontextmanager
async def function_logs(api: client.ApiClient, mirror: ClusterMirror, ref: FunctionRef, *, tail: int,
                        follow: bool) -> AsyncIterator[AsyncIterator[str]]:
    """The function containers' output, each line prefixed with `[POD] `, of the pods `mirror` knows.

    Without `follow`: the last `tail` lines of each pod that runs now, pod by pod. With it:
    those, then new lines of every pod (pods started meanwhile included) until the caller
    leaves. Lines of a follower that cannot keep up are dropped. A pod whose log cannot be read
    is skipped (logged unless its container has not started or it is gone).
    """
    core = client.CoreV1Api(api)
    queue: asyncio.Queue[str] = asyncio.Queue(maxsize=LOG_QUEUE_LINES)
    readers: dict[tuple[str, str], asyncio.Task[None]] = {}

    def pods() -> list[PodView]:
        return sorted((p for p in mirror.pods.values() if p.function == ref and p.ip is not None),
                      key=lambda p: p.name)

    async def read(pod: PodView, lines: int | None) -> None:
        prefix = f"[{pod.name}] "
        try:
            if not follow:
                text = await core.read_namespaced_pod_log(
                    pod.name, pod.namespace, container=FUNCTION_CONTAINER, tail_lines=lines)
                for line in str(text).splitlines():
                    await queue.put(prefix + line)
                return
            stream = watch.Watch()  # type: ignore[no-untyped-call]
            async with stream.stream(  # type: ignore[no-untyped-call]
                    core.read_namespaced_pod_log, pod.name, pod.namespace,
                    container=FUNCTION_CONTAINER, follow=True, tail_lines=lines) as chunks:
                async for line in chunks:
                    with contextlib.suppress(asyncio.QueueFull):
                        queue.put_nowait(prefix + str(line).rstrip("\n"))
        except ApiException as e:
            if e.status not in (400, 404):  # 400: the container has not started yet
                logger.warning("reading the logs of %s/%s failed: %s", pod.namespace, pod.name, describe(e))

    def start_readers(lines: int | None) -> None:
        for pod in pods():
            if pod.key not in readers:
                readers[pod.key] = asyncio.get_running_loop().create_task(read(pod, lines))

    async def lines() -> AsyncIterator[str]:
        if not follow:
            for pod in pods():
                await read(pod, tail)
                while not queue.empty():
                    yield queue.get_nowait()
            return
        changed = asyncio.Event()

        def listener(changed_ref: FunctionRef) -> None:
            if changed_ref == ref:
                changed.set()

        mirror.add_listener(listener)
        try:
            start_readers(tail)
            while True:
                getter = asyncio.ensure_future(queue.get())
                waiter = asyncio.ensure_future(changed.wait())
                done, _ = await asyncio.wait({getter, waiter}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                if getter in done:
                    yield getter.result()
                else:
                    getter.cancel()
                if changed.is_set():
                    changed.clear()
                    start_readers(None)  # a pod started meanwhile: all it has said
        finally:
            mirror.remove_listener(listener)

    try:
        yield lines()
    finally:
        await stop_tasks(readers.values(), what=f"logs of {ref}")
