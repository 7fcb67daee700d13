"""Which function pods serve: the kubelet's word, or sooner, the backend's own probe of the runtime.

A pod is in rotation once the kubelet marks it Ready, or, sooner, once a probe of the runtime's
readiness path answers (`interval`, as Knative's activator probes pods): a cold start then waits
for neither the kubelet's probe period nor the EndpointSlice controller. A pod leaves rotation
the moment it is being deleted. Only the gateway probes; without probes the kubelet alone decides.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Container, Iterable, Mapping

import aiohttp

from kfn.core.functions import FunctionRef
from kfn.kube.pods import PodView

logger = logging.getLogger(__name__)

# The runtime's readiness path; the kubelet's readinessProbe asks the same.
READY_PATH = "/_/ready"


class ReadinessProbes:
    """Probes of new pods of known functions, and what the kubelet and the probes found.

    `pods` and `functions` are the mirrored pods and functions (read, never written); `notify`
    tells the backend's listeners that a function's instances changed (a probe answered).
    """

    def __init__(self, pods: Mapping[tuple[str, str], PodView], functions: Container[FunctionRef],
                 notify: Callable[[Iterable[FunctionRef]], None], *, enabled: bool, interval: float,
                 timeout: float) -> None:
        self._pods = pods
        self._functions = functions
        self._notify = notify
        self._enabled = enabled
        self._interval = interval
        self._timeout = timeout
        self._probed: set[tuple[str, str]] = set()          # pods a probe found ready
        self._kubelet_ready: set[tuple[str, str]] = set()   # pods the kubelet has marked ready once
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._session: aiohttp.ClientSession | None = None

    def open(self) -> None:
        """Make the probes' HTTP session, if probing is enabled (before the first pod is seen)."""
        if self._enabled:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=1.0, connect=0.5),
                connector=aiohttp.TCPConnector(force_close=True, limit=0))

    def running(self) -> list[asyncio.Task[None]]:
        """The probes running now, for the caller to stop (before `close`)."""
        return list(self._tasks.values())

    async def close(self) -> None:
        """Forget the probes (the caller stopped them: `running`) and close the HTTP session."""
        self._tasks.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def serving(self, pod: PodView) -> bool:
        """Whether `pod` may take requests: it has an address, is not being deleted, and the
        kubelet or a probe found it ready."""
        if pod.ip is None or pod.terminating:
            return False
        return pod.ready or pod.key in self._probed

    def saw(self, pod: PodView, *, deleted: bool = False) -> None:
        """Take in the latest state of a pod (listed, changed or `deleted`); probe it if it is new."""
        if pod.function is None:
            # A warm pool's pod: what the kubelet says of it now says nothing of it once it is a
            # function's (specialised, it is probed like a new pod).
            self._probed.discard(pod.key)
            self._kubelet_ready.discard(pod.key)
            return
        if deleted or pod.terminating or pod.ready:
            # Once the kubelet has a word on readiness it is the word: a pod it marks not ready
            # again (draining, overloaded) leaves rotation though a probe once found it ready.
            self._probed.discard(pod.key)
        if pod.ready:
            self._kubelet_ready.add(pod.key)
        if not deleted:
            self._maybe_probe(pod)

    def forget_gone(self) -> None:
        """Forget what was found of pods that are no longer mirrored (after a relist)."""
        self._probed &= set(self._pods)
        self._kubelet_ready &= set(self._pods)

    def probe_pods_of(self, refs: set[FunctionRef]) -> None:
        """Probe the pods of functions just learnt of: pods may be listed before their Function
        (the informers start together)."""
        for pod in list(self._pods.values()):
            if pod.function in refs:
                self._maybe_probe(pod)

    def _maybe_probe(self, pod: PodView) -> None:
        """Start probing a new pod's runtime if the kubelet has not called it ready yet."""
        if (not self._enabled or self._session is None or pod.ip is None or pod.terminating or pod.ready
                or pod.key in self._kubelet_ready or pod.key in self._probed or pod.key in self._tasks
                or pod.function not in self._functions):
            return
        task = asyncio.get_running_loop().create_task(self._probe(pod), name=f"kfn-probe-{pod.name}")
        self._tasks[pod.key] = task
        task.add_done_callback(lambda _: self._tasks.pop(pod.key, None))

    async def _probe(self, pod: PodView) -> None:
        """Asks the runtime whether it is ready, every `interval` (slower after the first
        seconds), until it is, the kubelet says so first, the pod goes away, or `timeout`. A
        request that fails or times out counts as not ready yet."""
        assert self._session is not None and pod.ip is not None
        host = f"[{pod.ip}]" if ":" in pod.ip else pod.ip
        url = f"http://{host}:{pod.port}{READY_PATH}"
        started = time.monotonic()
        interval = self._interval
        while time.monotonic() - started < self._timeout:
            current = self._pods.get(pod.key)
            if current is None or current.terminating or current.ready or current.ip != pod.ip:
                return
            try:
                async with self._session.get(url) as response:
                    if response.status == 200:
                        self._probed.add(pod.key)
                        logger.debug("pod %s/%s answered its readiness probe after %.0f ms", pod.namespace,
                                     pod.name, (time.monotonic() - started) * 1000)
                        if pod.function is not None:
                            self._notify({pod.function})
                        return
            except (aiohttp.ClientError, OSError, TimeoutError):
                pass
            await asyncio.sleep(interval)
            if time.monotonic() - started > 2.0:
                interval = min(0.25, interval * 2)
