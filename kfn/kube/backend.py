"""Functions on Kubernetes as the data path sees them: ready pods, replica counts, scaling.

`KubernetesBackend` implements `kfn.core.instances.InstanceBackend` from three informers per
watched namespace (or one each cluster-wide):

- Functions (`kfn.dev/v1alpha1`), parsed with `kfn.core.functions.parse_function`; an invalid one
  keeps its last valid definition (the operator reports the error in its status);
- Deployments managed by kfn: `desired()` is their spec.replicas; `scale()` patches the `scale`
  subresource (a scale from zero is one request; the Deployment controller does the rest);
- the functions' Pods: an instance is a pod's own IP, so requests go straight to pods. A pod is
  in rotation once the kubelet marks it Ready, or, sooner, once this backend's own probe of the
  runtime's readiness path answers (`probe_interval`, as Knative's activator probes pods): a cold
  start then waits for neither the kubelet's probe period nor the EndpointSlice controller. A
  pod leaves rotation the moment it is being deleted.

The gateway and the autoscaler share this class; only the gateway probes (`probe=True`).
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

import aiohttp
from kubernetes.aio import client, watch
from kubernetes.aio.client.exceptions import ApiException

from kfn.core import naming
from kfn.core.aiotasks import stop_tasks
from kfn.core.functions import Function, FunctionRef, InvalidFunction, parse_function
from kfn.core.instances import Instance, Listener, StartProblem
from kfn.kube.informer import DELETED, Backoff, Informer, describe
from kfn.kube.pods import PodView, view

logger = logging.getLogger(__name__)

# The runtime's readiness path; the kubelet's readinessProbe asks the same.
READY_PATH = "/_/ready"
FUNCTION_CONTAINER = "function"
# A follower of `kfn logs -f` that cannot keep up loses lines rather than slowing the gateway.
LOG_QUEUE_LINES = 1000


def _in(namespace: str | None) -> str:
    return f" in {namespace}" if namespace else ""


class KubernetesBackend:
    """Functions, their pods and replica counts as the Kubernetes API reports them.

    `api` belongs to the caller (one API client per process). `namespaces` empty means all.
    """

    def __init__(self, api: client.ApiClient, *, namespaces: Sequence[str] = (), backoff: Backoff | None = None,
                 failure_cooldown: float = 10.0, clock: Callable[[], float] = time.monotonic,
                 sync_timeout: float = 30.0, probe: bool = False, probe_interval: float = 0.01,
                 probe_timeout: float = 120.0) -> None:
        self._api = api
        self._namespaces = tuple(dict.fromkeys(namespaces))
        self._backoff = backoff or Backoff()
        self._failure_cooldown = failure_cooldown
        self._clock = clock
        self._sync_timeout = sync_timeout
        self._probe = probe
        self._probe_interval = probe_interval
        self._probe_timeout = probe_timeout
        self._custom = client.CustomObjectsApi(api)
        self._apps = client.AppsV1Api(api)
        self._core = client.CoreV1Api(api)

        self._functions: dict[FunctionRef, Function] = {}
        self._replicas: dict[FunctionRef, int] = {}
        self._pods: dict[tuple[str, str], PodView] = {}
        self._probed: set[tuple[str, str]] = set()          # pods this backend found ready itself
        self._kubelet_ready: set[tuple[str, str]] = set()   # pods the kubelet has marked ready once
        self._probes: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._failed: dict[tuple[FunctionRef, str], float] = {}  # (function, pod) → out of rotation until
        self._ready_cache: dict[FunctionRef, list[Instance]] = {}
        self._listeners: list[Listener] = []
        self._informers: list[Informer] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    # ---- lifecycle

    async def start(self) -> None:
        """Start the informers; returns once each has listed once (or raises TimeoutError after
        `sync_timeout`, the informers retrying in the background until `close`)."""
        if self._probe:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=1.0, connect=0.5),
                connector=aiohttp.TCPConnector(force_close=True, limit=0))
        for ns in self._namespaces or (None,):
            self._informers.append(Informer(
                f"functions{_in(ns)}", *self._function_lister(ns),
                on_replace=functools.partial(self._replace_functions, ns), on_event=self._function_event,
                backoff=self._backoff))
            self._informers.append(Informer(
                f"deployments{_in(ns)}", *self._lister(self._apps, "deployment", ns),
                label_selector=f"{naming.LABEL_MANAGED_BY}={naming.MANAGED_BY},{naming.LABEL_FUNCTION}",
                on_replace=functools.partial(self._replace_deployments, ns),
                on_event=self._deployment_event, backoff=self._backoff))
            self._informers.append(Informer(
                f"pods{_in(ns)}", *self._lister(self._core, "pod", ns),
                label_selector=f"{naming.LABEL_FUNCTION},{naming.LABEL_COMPONENT}=function",
                on_replace=functools.partial(self._replace_pods, ns), on_event=self._pod_event,
                backoff=self._backoff))
        self._tasks = [asyncio.create_task(i.run(), name=f"kfn-informer-{i.what}") for i in self._informers]
        await asyncio.wait_for(asyncio.gather(*(i.synced.wait() for i in self._informers)), self._sync_timeout)

    async def close(self) -> None:
        """Cancel the informers and probes and wait for them; the API client stays the caller's."""
        await stop_tasks([*self._tasks, *self._probes.values()], what="kubernetes backend")
        self._tasks.clear()
        self._probes.clear()
        self._informers.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def synced(self) -> bool:
        return bool(self._informers) and all(i.synced.is_set() for i in self._informers)

    def _function_lister(self, ns: str | None) -> tuple[Any, ...]:
        if ns is None:
            return (self._custom.list_cluster_custom_object, naming.GROUP, naming.VERSION, naming.PLURAL)
        return (self._custom.list_namespaced_custom_object, naming.GROUP, naming.VERSION, ns, naming.PLURAL)

    @staticmethod
    def _lister(api: Any, kind: str, ns: str | None) -> tuple[Any, ...]:
        if ns is None:
            return (getattr(api, f"list_{kind}_for_all_namespaces"),)
        return (getattr(api, f"list_namespaced_{kind}"), ns)

    # ---- functions

    def _replace_functions(self, ns: str | None, items: list[dict[str, Any]]) -> None:
        fresh = {fn.ref: fn for item in items if (fn := self._parse(item)) is not None}
        before = {ref: fn for ref, fn in self._functions.items() if ns is None or ref.namespace == ns}
        for ref in before:
            del self._functions[ref]
        self._functions.update(fresh)
        changed = {ref for ref in set(before) | set(fresh)
                   if ref not in before or ref not in fresh or before[ref].spec != fresh[ref].spec}
        self._probe_pods_of(set(fresh) - set(before))
        self._notify(changed)

    def _function_event(self, kind: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        ref = FunctionRef(meta.get("namespace") or naming.DEFAULT_NAMESPACE, meta.get("name") or "")
        if kind == DELETED:
            if self._functions.pop(ref, None) is not None:
                self._notify({ref})
            return
        fn = self._parse(obj)
        # An edit that makes a Function invalid is not rolled out by the operator either: the
        # running pods still serve the last valid definition, so keep routing to them.
        if fn is None:
            return
        previous = self._functions.get(ref)
        self._functions[ref] = fn
        if previous is None:
            self._probe_pods_of({ref})
        if previous is None or previous.spec != fn.spec:
            self._notify({ref})

    @staticmethod
    def _parse(item: dict[str, Any]) -> Function | None:
        try:
            return parse_function(item)
        except InvalidFunction as e:
            meta = item.get("metadata") or {}
            logger.warning("ignoring invalid Function %s/%s: %s", meta.get("namespace"), meta.get("name"), e)
            return None

    # ---- deployments

    @staticmethod
    def _deployment_ref(deployment: Any) -> FunctionRef | None:
        meta = deployment.metadata
        name = (meta.labels or {}).get(naming.LABEL_FUNCTION)
        return FunctionRef(meta.namespace or naming.DEFAULT_NAMESPACE, name) if name else None

    def _replace_deployments(self, ns: str | None, items: list[Any]) -> None:
        before = dict(self._replicas)
        self._replicas = {ref: n for ref, n in self._replicas.items() if ns is not None and ref.namespace != ns}
        for deployment in items:
            if (ref := self._deployment_ref(deployment)) is not None:
                self._replicas[ref] = int(deployment.spec.replicas or 0)
        self._notify({ref for ref in set(before) | set(self._replicas) if before.get(ref) != self._replicas.get(ref)})

    def _deployment_event(self, kind: str, deployment: Any) -> None:
        ref = self._deployment_ref(deployment)
        if ref is None:
            return
        before = self._replicas.get(ref)
        if kind == DELETED:
            self._replicas.pop(ref, None)
        else:
            self._replicas[ref] = int(deployment.spec.replicas or 0)
        if self._replicas.get(ref) != before:
            self._notify({ref})

    # ---- pods

    def _replace_pods(self, ns: str | None, items: list[Any]) -> None:
        changed: set[FunctionRef] = set()
        for key, pod in list(self._pods.items()):
            if ns is None or key[0] == ns:
                del self._pods[key]
                if pod.function is not None:
                    changed.add(pod.function)
        for item in items:
            pod = view(item)
            self._pods[pod.key] = pod
            if pod.ready or pod.terminating:
                self._probed.discard(pod.key)
            if pod.ready:
                self._kubelet_ready.add(pod.key)
            if pod.function is not None:
                changed.add(pod.function)
            self._maybe_probe(pod)
        self._forget_stale()
        self._notify(changed)

    def _pod_event(self, kind: str, item: Any) -> None:
        pod = view(item)
        old = self._pods.pop(pod.key, None)
        if kind == DELETED or pod.terminating or pod.ready:
            # Once the kubelet has a word on readiness it is the word: a pod it marks not ready
            # again (draining, overloaded) leaves rotation though this backend once probed it.
            self._probed.discard(pod.key)
        if pod.ready:
            self._kubelet_ready.add(pod.key)
        if kind != DELETED:
            self._pods[pod.key] = pod
            self._maybe_probe(pod)
        if old != pod or kind == DELETED:
            self._notify({ref for ref in (pod.function, old.function if old else None) if ref is not None})

    def _forget_stale(self) -> None:
        self._probed &= set(self._pods)
        self._kubelet_ready &= set(self._pods)

    def _probe_pods_of(self, refs: set[FunctionRef]) -> None:
        # Pods may be listed before their Function (informers start together).
        for pod in list(self._pods.values()):
            if pod.function in refs:
                self._maybe_probe(pod)

    def _routable(self, pod: PodView) -> bool:
        if pod.ip is None or pod.terminating:
            return False
        return pod.ready or pod.key in self._probed

    def _maybe_probe(self, pod: PodView) -> None:
        """Start probing a new pod's runtime if the kubelet has not called it ready yet."""
        if (not self._probe or self._session is None or pod.ip is None or pod.terminating or pod.ready
                or pod.key in self._kubelet_ready or pod.key in self._probed or pod.key in self._probes
                or pod.function not in self._functions):
            return
        task = asyncio.get_running_loop().create_task(self._probe_pod(pod), name=f"kfn-probe-{pod.name}")
        self._probes[pod.key] = task
        task.add_done_callback(lambda _: self._probes.pop(pod.key, None))

    async def _probe_pod(self, pod: PodView) -> None:
        """Asks the runtime whether it is ready, every `probe_interval` (slower after the first
        seconds), until it is, the kubelet says so first, the pod goes away, or `probe_timeout`."""
        assert self._session is not None and pod.ip is not None
        host = f"[{pod.ip}]" if ":" in pod.ip else pod.ip
        url = f"http://{host}:{pod.port}{READY_PATH}"
        started = time.monotonic()
        interval = self._probe_interval
        while time.monotonic() - started < self._probe_timeout:
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

    # ---- notifications

    def _notify(self, refs: Iterable[FunctionRef]) -> None:
        for ref in set(refs):
            self._ready_cache.pop(ref, None)
            for listener in list(self._listeners):
                try:
                    listener(ref)
                except Exception:
                    logger.exception("instance listener failed for %s", ref)

    # ---- InstanceBackend

    def function(self, ref: FunctionRef) -> Function | None:
        return self._functions.get(ref)

    def functions(self) -> list[Function]:
        return list(self._functions.values())

    def ready(self, ref: FunctionRef) -> list[Instance]:
        now = self._clock()
        expired = [key for key, until in self._failed.items() if key[0] == ref and until <= now]
        for key in expired:
            del self._failed[key]
            self._ready_cache.pop(ref, None)
        cached = self._ready_cache.get(ref)
        if cached is not None:
            return list(cached)
        fn = self._functions.get(ref)
        if fn is None:
            return []
        instances = [
            Instance(function=ref, id=pod.name, host=pod.ip, port=pod.port, capacity=fn.spec.concurrency)
            for pod in self._pods.values()
            if pod.function == ref and self._routable(pod) and (ref, pod.name) not in self._failed
            and pod.ip is not None
        ]
        instances.sort(key=lambda i: i.id)
        self._ready_cache[ref] = instances
        return list(instances)

    def desired(self, ref: FunctionRef) -> int:
        fn = self._functions.get(ref)
        if fn is None:
            return 0
        return self._replicas.get(ref, fn.spec.scale.minReplicas)

    def problem(self, ref: FunctionRef) -> StartProblem | None:
        """The first problem a pod of the function reports, while none of them serves."""
        if self.ready(ref):
            return None
        for pod in self._pods.values():
            if pod.function == ref and not pod.terminating and pod.problem:
                return pod.problem
        return None

    async def scale(self, ref: FunctionRef, replicas: int, *, reason: str = "") -> None:
        """One JSON patch of the Deployment's scale subresource (skipped if already asked for).

        Failures are logged, not raised: the caller sees no new instance and times out.
        """
        if ref not in self._functions:
            logger.warning("cannot scale unknown function %s", ref)
            return
        if self._replicas.get(ref) == replicas:
            return
        try:
            await self._apps.patch_namespaced_deployment_scale(
                ref.name, ref.namespace, [{"op": "replace", "path": "/spec/replicas", "value": replicas}])
        except (TimeoutError, ApiException, aiohttp.ClientError, OSError) as e:
            logger.error("scaling %s/%s to %d failed: %s", ref.namespace, ref.name, replicas, describe(e))
            return
        logger.info("scaled %s/%s to %d%s", ref.namespace, ref.name, replicas, f" ({reason})" if reason else "")
        self._replicas[ref] = replicas
        self._notify({ref})

    def report_failure(self, instance: Instance, *, error: str) -> None:
        logger.warning("instance %s of %s failed (%s): out of rotation for %.0fs",
                       instance.id, instance.function, error, self._failure_cooldown)
        self._failed[(instance.function, instance.id)] = self._clock() + self._failure_cooldown
        self._notify({instance.function})

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    @contextlib.asynccontextmanager
    async def logs(self, ref: FunctionRef, *, tail: int, follow: bool) -> AsyncIterator[AsyncIterator[str]]:
        """The function containers' output, each line prefixed with `[POD] `.

        Without `follow`: the last `tail` lines of each pod that runs now, pod by pod. With it:
        those, then new lines of every pod (pods started meanwhile included) until the caller
        leaves. Lines of a follower that cannot keep up are dropped.
        """
        queue: asyncio.Queue[str] = asyncio.Queue(maxsize=LOG_QUEUE_LINES)
        readers: dict[tuple[str, str], asyncio.Task[None]] = {}

        def pods() -> list[PodView]:
            return sorted((p for p in self._pods.values() if p.function == ref and p.ip is not None),
                          key=lambda p: p.name)

        async def read(pod: PodView, lines: int | None) -> None:
            prefix = f"[{pod.name}] "
            try:
                if not follow:
                    text = await self._core.read_namespaced_pod_log(
                        pod.name, pod.namespace, container=FUNCTION_CONTAINER, tail_lines=lines)
                    for line in str(text).splitlines():
                        await queue.put(prefix + line)
                    return
                stream = watch.Watch()  # type: ignore[no-untyped-call]
                async with stream.stream(  # type: ignore[no-untyped-call]
                        self._core.read_namespaced_pod_log, pod.name, pod.namespace,
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

            self._listeners.append(listener)
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
                self._listeners.remove(listener)

        try:
            yield lines()
        finally:
            await stop_tasks(readers.values(), what=f"logs of {ref}")
