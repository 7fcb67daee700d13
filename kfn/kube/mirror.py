"""Functions, their replica counts and their pods, mirrored from the cluster by informers.

`ClusterMirror` runs three informers per watched namespace (or one each cluster-wide) and keeps
what they report for the other parts of `kfn.kube.backend.KubernetesBackend` to read:

- `functions`: Functions (`kfn.dev/v1alpha1`), parsed with `kfn.core.functions.parse_function`;
  an invalid one keeps its last valid definition (the operator reports the error in its status);
- `replicas`: the spec.replicas of the Deployments kfn manages, by function;
- `pods`: the functions' pods and the warm pools' (`kfn.kube.pods.PodView`), each shown to
  `probes` as it changes; only a function's own pods (not an idle or claimed pool pod) name it.

Listeners hear of every function whose definition, replica count or pods changed, or whose
failed build (`kfn.kube.builds`) began or ceased to keep it from starting.
"""
from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from kubernetes.aio import client

from kfn.core import naming
from kfn.core.aiotasks import stop_tasks
from kfn.core.functions import Function, FunctionRef, InvalidFunction, parse_function
from kfn.core.instances import Listener
from kfn.kube.builds import build_problem
from kfn.kube.informer import DELETED, Backoff, Informer
from kfn.kube.pods import PodView, view
from kfn.kube.probes import ReadinessProbes

logger = logging.getLogger(__name__)

# The pods mirrored: the functions' and the warm pools' (`kfn.core.pool`), whose pods become a
# function's by a change of this label.
POD_SELECTOR = f"{naming.LABEL_COMPONENT} in ({naming.COMPONENT_FUNCTION},{naming.COMPONENT_POOL})"


class ClusterMirror:
    """The Functions, managed Deployments and function Pods of `namespaces` (empty: all).

    `functions` and `pods` are updated in place (`probes` reads them); `replicas` is replaced on
    each relist, so read it through the mirror. `probe` enables `probes` (`ReadinessProbes`).
    """

    def __init__(self, api: client.ApiClient, *, namespaces: Sequence[str], backoff: Backoff,
                 sync_timeout: float, probe: bool, probe_interval: float, probe_timeout: float) -> None:
        self._namespaces = tuple(dict.fromkeys(namespaces))
        self._backoff = backoff
        self._sync_timeout = sync_timeout
        self._custom = client.CustomObjectsApi(api)
        self._apps = client.AppsV1Api(api)
        self._core = client.CoreV1Api(api)
        self.functions: dict[FunctionRef, Function] = {}
        self.replicas: dict[FunctionRef, int] = {}
        self.pods: dict[tuple[str, str], PodView] = {}
        self.probes = ReadinessProbes(self.pods, self.functions, self.notify, enabled=probe,
                                      interval=probe_interval, timeout=probe_timeout)
        self._listeners: list[Listener] = []
        self._informers: list[Informer] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Start the informers (the first call; a later one only waits for them again); returns once
        each has listed once, or raises TimeoutError after `sync_timeout`, the informers retrying
        in the background until `close`."""
        if not self._informers:
            self._open()
        async with asyncio.timeout(self._sync_timeout):
            for informer in self._informers:
                await informer.synced.wait()

    def _open(self) -> None:
        """Start an informer for each kind in each namespace, in background tasks."""
        self.probes.open()
        for ns in self._namespaces or (None,):
            self._informers.append(Informer(
                f"functions{_in(ns)}", *_function_lister(self._custom, ns),
                on_replace=functools.partial(self._replace_functions, ns), on_event=self._function_event,
                backoff=self._backoff))
            self._informers.append(Informer(
                f"deployments{_in(ns)}", *_lister(self._apps, "deployment", ns),
                label_selector=f"{naming.LABEL_MANAGED_BY}={naming.MANAGED_BY},{naming.LABEL_FUNCTION}",
                on_replace=functools.partial(self._replace_deployments, ns),
                on_event=self._deployment_event, backoff=self._backoff))
            self._informers.append(Informer(
                f"pods{_in(ns)}", *_lister(self._core, "pod", ns),
                label_selector=POD_SELECTOR,
                on_replace=functools.partial(self._replace_pods, ns), on_event=self._pod_event,
                backoff=self._backoff))
        self._tasks = [asyncio.create_task(i.run(), name=f"kfn-informer-{i.what}") for i in self._informers]

    async def close(self) -> None:
        """Cancel the informers and probes and wait for them; the API client stays the caller's."""
        await stop_tasks([*self._tasks, *self.probes.running()], what="kubernetes backend")
        self._tasks.clear()
        self._informers.clear()
        await self.probes.close()

    def add_listener(self, listener: Listener) -> None:
        """Call `listener(ref)` after any change to a function, its replica count or its pods."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        self._listeners.remove(listener)

    def notify(self, refs: Iterable[FunctionRef]) -> None:
        """Tell every listener about each function of `refs`; a listener that raises is logged."""
        for ref in set(refs):
            for listener in list(self._listeners):
                try:
                    listener(ref)
                except Exception:
                    logger.exception("instance listener failed for %s", ref)

    # ---- functions

    def _replace_functions(self, ns: str | None, items: list[dict[str, Any]]) -> None:
        fresh = {fn.ref: fn for item in items if (fn := _parse(item)) is not None}
        before = {ref: fn for ref, fn in self.functions.items() if ns is None or ref.namespace == ns}
        for ref in before:
            del self.functions[ref]
        self.functions.update(fresh)
        changed = {ref for ref in set(before) | set(fresh)
                   if ref not in before or ref not in fresh or _changed(before[ref], fresh[ref])}
        self.probes.probe_pods_of(set(fresh) - set(before))
        self.notify(changed)

    def _function_event(self, kind: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        ref = FunctionRef(meta.get("namespace") or naming.DEFAULT_NAMESPACE, meta.get("name") or "")
        if kind == DELETED:
            if self.functions.pop(ref, None) is not None:
                self.notify({ref})
            return
        fn = _parse(obj)
        # An edit that makes a Function invalid is not rolled out by the operator either: the
        # running pods still serve the last valid definition, so keep routing to them.
        if fn is None:
            return
        previous = self.functions.get(ref)
        self.functions[ref] = fn
        if previous is None:
            self.probes.probe_pods_of({ref})
        if previous is None or _changed(previous, fn):
            self.notify({ref})

    # ---- deployments

    def _replace_deployments(self, ns: str | None, items: list[Any]) -> None:
        before = dict(self.replicas)
        self.replicas = {ref: n for ref, n in self.replicas.items() if ns is not None and ref.namespace != ns}
        for deployment in items:
            if (ref := _deployment_ref(deployment)) is not None:
                self.replicas[ref] = int(deployment.spec.replicas or 0)
        self.notify({ref for ref in set(before) | set(self.replicas) if before.get(ref) != self.replicas.get(ref)})

    def _deployment_event(self, kind: str, deployment: Any) -> None:
        ref = _deployment_ref(deployment)
        if ref is None:
            return
        before = self.replicas.get(ref)
        if kind == DELETED:
            self.replicas.pop(ref, None)
        else:
            self.replicas[ref] = int(deployment.spec.replicas or 0)
        if self.replicas.get(ref) != before:
            self.notify({ref})

    # ---- pods

    def _replace_pods(self, ns: str | None, items: list[Any]) -> None:
        changed: set[FunctionRef] = set()
        for key, pod in list(self.pods.items()):
            if ns is None or key[0] == ns:
                del self.pods[key]
                changed.update(_functions_of(pod))
        for item in items:
            pod = view(item)
            self.pods[pod.key] = pod
            self.probes.saw(pod)
            changed.update(_functions_of(pod))
        self.probes.forget_gone()
        self.notify(changed)

    def _pod_event(self, kind: str, item: Any) -> None:
        pod = view(item)
        old = self.pods.pop(pod.key, None)
        if kind != DELETED:
            self.pods[pod.key] = pod
        self.probes.saw(pod, deleted=kind == DELETED)
        if old != pod or kind == DELETED:
            self.notify({*_functions_of(pod), *(_functions_of(old) if old else ())})

    # ---- pool pods (kfn.core.pool)

    def pooled(self, ref: FunctionRef) -> list[PodView]:
        """The pool pods claimed for or specialised as the function, not being deleted, oldest
        name first."""
        return sorted((pod for pod in self.pods.values()
                       if pod.pooled is not None and pod.pooled.function == ref and not pod.terminating
                       and pod.pooled.state in (naming.POOL_CLAIMED, naming.POOL_SPECIALIZED)),
                      key=lambda pod: pod.name)

    def idle_pool_pods(self, namespace: str, runtime: str) -> list[PodView]:
        """The idle pool pods of `runtime` in `namespace` that could be claimed now: with an
        address, ready by the kubelet's word, not being deleted."""
        return [pod for pod in self.pods.values()
                if pod.pooled is not None and pod.namespace == namespace and pod.pooled.runtime == runtime
                and pod.pooled.state == naming.POOL_IDLE and pod.ip is not None and pod.ready
                and not pod.terminating]


def _functions_of(pod: PodView) -> set[FunctionRef]:
    """The functions a change of `pod` concerns: the one it serves, the one it was claimed for."""
    return {ref for ref in (pod.function, pod.pooled.function if pod.pooled else None) if ref is not None}


def _in(namespace: str | None) -> str:
    return f" in {namespace}" if namespace else ""


def _function_lister(custom: client.CustomObjectsApi, ns: str | None) -> tuple[Any, ...]:
    if ns is None:
        return (custom.list_cluster_custom_object, naming.GROUP, naming.VERSION, naming.PLURAL)
    return (custom.list_namespaced_custom_object, naming.GROUP, naming.VERSION, ns, naming.PLURAL)


def _lister(api: Any, kind: str, ns: str | None) -> tuple[Any, ...]:
    if ns is None:
        return (getattr(api, f"list_{kind}_for_all_namespaces"),)
    return (getattr(api, f"list_namespaced_{kind}"), ns)


def _parse(item: dict[str, Any]) -> Function | None:
    try:
        return parse_function(item)
    except InvalidFunction as e:
        meta = item.get("metadata") or {}
        logger.warning("ignoring invalid Function %s/%s: %s", meta.get("namespace"), meta.get("name"), e)
        return None


def _changed(before: Function, after: Function) -> bool:
    """Whether listeners must hear of a new version of a function: its spec changed, or whether its
    build keeps it from starting (a status the operator wrote: `kfn.kube.builds`)."""
    return before.spec != after.spec or build_problem(before) != build_problem(after)


def _deployment_ref(deployment: Any) -> FunctionRef | None:
    meta = deployment.metadata
    name = (meta.labels or {}).get(naming.LABEL_FUNCTION)
    return FunctionRef(meta.namespace or naming.DEFAULT_NAMESPACE, name) if name else None
