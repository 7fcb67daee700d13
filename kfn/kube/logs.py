"""The output of a function's containers, and of its builds' Jobs, read from the Kubernetes API
(`kfn logs`, `kfn logs --build`)."""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
from kubernetes.aio import client, watch
from kubernetes.aio.client.exceptions import ApiException

from kfn.core.aiotasks import stop_tasks
from kfn.core.functions import FunctionRef
from kfn.core.instances import NoBuild
from kfn.kube.builds import build_job
from kfn.kube.informer import describe
from kfn.kube.mirror import ClusterMirror
from kfn.kube.pods import PodView

logger = logging.getLogger(__name__)

FUNCTION_CONTAINER = "function"
# A follower of `kfn logs -f` that cannot keep up loses lines rather than slowing the gateway.
LOG_QUEUE_LINES = 1000
# How often a follower of a build looks for its Job's pods (their start, their end).
BUILD_POLL_INTERVAL = 1.0
# The label Kubernetes puts on a Job's pods: the Job's name.
LABEL_JOB_NAME = "job-name"
_ENDED_PHASES = frozenset({"Succeeded", "Failed"})


async def _read(core: client.CoreV1Api, namespace: str, pod: str, container: str | None, *, lines: int | None,
                follow: bool, emit: Callable[[str], None]) -> None:
    """Each line of a pod's container log to `emit`, prefixed with `[POD] `: the last `lines` (all
    with None) and, with `follow`, new ones until the container ends or the task is cancelled. A
    log that cannot be read is skipped (logged unless its container has not started or it is gone)."""
    prefix = f"[{pod}] "
    try:
        if not follow:
            text = await core.read_namespaced_pod_log(pod, namespace, container=container, tail_lines=lines)
            for line in str(text).splitlines():
                emit(prefix + line)
            return
        stream = watch.Watch()  # type: ignore[no-untyped-call]
        async with stream.stream(  # type: ignore[no-untyped-call]
                core.read_namespaced_pod_log, pod, namespace,
                container=container, follow=True, tail_lines=lines) as chunks:
            async for line in chunks:
                emit(prefix + str(line).rstrip("\n"))
    except ApiException as e:
        if e.status not in (400, 404):  # 400: the container has not started yet
            logger.warning("reading the logs of %s/%s failed: %s", namespace, pod, describe(e))


def _dropping(queue: asyncio.Queue[str]) -> Callable[[str], None]:
    """Put a line in `queue`, or drop it when the queue is full (a follower that cannot keep up)."""
    def put(line: str) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            queue.put_nowait(line)
    return put


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

    def start_readers(lines: int | None) -> None:
        for pod in pods():
            if pod.key not in readers:
                readers[pod.key] = asyncio.get_running_loop().create_task(_read(
                    core, pod.namespace, pod.name, FUNCTION_CONTAINER, lines=lines, follow=True,
                    emit=_dropping(queue)))

    async def lines() -> AsyncIterator[str]:
        if not follow:
            for pod in pods():
                got: list[str] = []
                await _read(core, pod.namespace, pod.name, FUNCTION_CONTAINER, lines=tail, follow=False,
                            emit=got.append)
                for line in got:
                    yield line
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


@contextlib.asynccontextmanager
async def build_logs(api: client.ApiClient, mirror: ClusterMirror, ref: FunctionRef, *, tail: int,
                     follow: bool) -> AsyncIterator[AsyncIterator[str]]:
    """The output of the latest build of a function `mirror` knows: the pods of the Job its status
    names (`status.build.job`, `kfn.kube.builds`), each line prefixed with `[POD] `. Raises
    `NoBuild` on entering when the function (unknown to `mirror`) has had no build.

    Without `follow`: the last `tail` lines of each of the Job's pods, pod by pod (none once the
    Job is gone). With it: those, then new lines (pods started meanwhile included, looked for every
    BUILD_POLL_INTERVAL) until every pod has ended and its log is read, or the caller leaves. Lines
    of a follower that cannot keep up are dropped; a pod list or log that cannot be read is skipped
    and logged.
    """
    function = mirror.functions.get(ref)
    job = build_job(function) if function is not None else None
    if job is None:
        raise NoBuild(f"{ref.name} has no build")
    core = client.CoreV1Api(api)
    namespace = ref.namespace
    queue: asyncio.Queue[str] = asyncio.Queue(maxsize=LOG_QUEUE_LINES)
    readers: dict[str, asyncio.Task[None]] = {}

    async def pods() -> list[Any]:
        try:
            found = await core.list_namespaced_pod(namespace, label_selector=f"{LABEL_JOB_NAME}={job}")
        except (TimeoutError, ApiException, aiohttp.ClientError, OSError) as e:
            logger.warning("listing the pods of build Job %s/%s failed: %s", namespace, job, describe(e))
            return []
        return sorted(found.items or (), key=lambda pod: pod.metadata.name)

    def phase(pod: Any) -> str | None:
        return pod.status.phase if pod.status is not None else None

    async def lines() -> AsyncIterator[str]:
        if not follow:
            for pod in await pods():
                got: list[str] = []
                await _read(core, namespace, pod.metadata.name, _container(pod), lines=tail, follow=False,
                            emit=got.append)
                for line in got:
                    yield line
            return
        loop = asyncio.get_running_loop()
        while True:
            listed = await pods()
            for pod in listed:
                if pod.metadata.name not in readers and phase(pod) not in (None, "Pending"):
                    readers[pod.metadata.name] = loop.create_task(_read(
                        core, namespace, pod.metadata.name, _container(pod), lines=tail, follow=True,
                        emit=_dropping(queue)))
            ended = bool(listed) and all(phase(pod) in _ENDED_PHASES and pod.metadata.name in readers
                                         and readers[pod.metadata.name].done() for pod in listed)
            if ended:
                while not queue.empty():
                    yield queue.get_nowait()
                return
            deadline = loop.time() + BUILD_POLL_INTERVAL
            while (left := deadline - loop.time()) > 0:
                try:
                    async with asyncio.timeout(left):
                        line = await queue.get()
                except TimeoutError:
                    break
                yield line

    try:
        yield lines()
    finally:
        await stop_tasks(readers.values(), what=f"logs of the build of {ref}")


def _container(pod: Any) -> str | None:
    """The build pod's (first) container: a build Job runs one."""
    containers = (pod.spec.containers if pod.spec is not None else None) or ()
    return containers[0].name if containers else None
