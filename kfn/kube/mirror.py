"""Functions, their replica counts and their pods, mirrored from the cluster by informers.

`ClusterMirror` runs three informers per watched namespace (or one each cluster-wide) and keeps
what they report for the other parts of `kfn.kube.backend.KubernetesBackend` to read:

- `functions`: Functions (`kfn.dev/v1alpha1`), parsed with `kfn.core.functions.parse_function`;
  an invalid one keeps its last valid definition, on a watch event and on a relist alike (the
  operator reports the error in its status); `invalid` names those that exist with none (not
  served, but not deleted either: their queued async events stay);
- `replicas`: the spec.replicas of the Deployments kfn manages, by function, and `deployments`
  what the operator's status of a function follows of its Deployment (`DeploymentState`);
- `pods`: the functions' pods and the warm pools' (`kfn.kube.pods.PodView`), each shown to
  `probes` as it changes; only a function's own pods (not an idle or claimed pool pod) name it.

Listeners hear of every function whose definition, replica count or pods changed, or whose
failed build (`kfn.kube.builds`) began or ceased to keep it from starting; deployment listeners
(the operator's status writer) of every function whose `DeploymentState` changed, appeared or went,
and of every Function that appeared, went, or whose status changed (so that a status written from
an older view of the Deployment is seen and written again).
One informer per kind serves every part of a process: the operator has no watch of Deployments
besides this one.
"""
from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class DeploymentState:
    """What a function's status follows of its Deployment: the replicas asked for, those ready,
    and the conditions that say it cannot progress (`as_manifest` gives the same fields in a
    Deployment's own shape)."""

    replicas: int
    ready_replicas: int
    conditions: tuple[tuple[str, str, str, str], ...] = ()   # (type, status, reason, message)

    @classmethod
    def of(cls, deployment: Any) -> DeploymentState:
        """From a typed V1Deployment."""
        status = deployment.status
        conditions = tuple((c.type or "", c.status or "", c.reason or "", c.message or "")
                           for c in (status.conditions if status is not None else None) or ())
        return cls(replicas=int(deployment.spec.replicas or 0),
                   ready_replicas=int((status.ready_replicas if status is not None else 0) or 0),
                   conditions=conditions)

    def as_manifest(self) -> dict[str, Any]:
        return {"spec": {"replicas": self.replicas},
                "status": {"readyReplicas": self.ready_replicas,
                           "conditions": [{"type": t, "status": s, "reason": r, "message": m}
                                          for t, s, r, m in self.conditions]}}


DeploymentListener = Callable[[FunctionRef], None]


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
        # Functions that exist but never were valid here: not served, yet not deleted either.
        self.invalid: set[FunctionRef] = set()
        self.replicas: dict[FunctionRef, int] = {}
        self.deployments: dict[FunctionRef, DeploymentState] = {}
        self.pods: dict[tuple[str, str], PodView] = {}
        self.probes = ReadinessProbes(self.pods, self.functions, self.notify, enabled=probe,
                                      interval=probe_interval, timeout=probe_timeout)
        self._listeners: list[Listener] = []
        self._deployment_listeners: list[DeploymentListener] = []
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

    def add_deployment_listener(self, listener: DeploymentListener) -> None:
        """Call `listener(ref)` after the `DeploymentState` of a function's Deployment changed,
        appeared or went (gone: `deployments` has no entry for it), and after the function's
        Function appeared, went or had its status changed."""
        self._deployment_listeners.append(listener)

    def _deployments_changed(self, refs: Iterable[FunctionRef]) -> None:
        for ref in set(refs):
            for listener in list(self._deployment_listeners):
                try:
                    listener(ref)
                except Exception:
                    logger.exception("deployment listener failed for %s", ref)

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
        before = {ref: fn for ref, fn in self.functions.items() if ns is None or ref.namespace == ns}
        fresh: dict[FunctionRef, Function] = {}
        self.invalid = {ref for ref in self.invalid if ns is not None and ref.namespace != ns}
        for item in items:
            ref = _ref_of(item)
            if (fn := _parse(item)) is not None:
                fresh[fn.ref] = fn
            elif ref in before:   # as on a watch event: the last valid definition keeps serving
                fresh[ref] = before[ref]
            else:
                self.invalid.add(ref)
        for ref in before:
            del self.functions[ref]
        self.functions.update(fresh)
        changed = {ref for ref in set(before) | set(fresh)
                   if ref not in before or ref not in fresh or _changed(before[ref], fresh[ref])}
        self.probes.probe_pods_of(set(fresh) - set(before))
        self.notify(changed)
        self._deployments_changed({ref for ref in set(before) | set(fresh)
                                   if ref not in before or ref not in fresh or before[ref].status != fresh[ref].status})

    def _function_event(self, kind: str, obj: dict[str, Any]) -> None:
        ref = _ref_of(obj)
        if kind == DELETED:
            self.invalid.discard(ref)
            if self.functions.pop(ref, None) is not None:
                self.notify({ref})
                self._deployments_changed({ref})
            return
        fn = _parse(obj)
        # An edit that makes a Function invalid is not rolled out by the operator either: the
        # running pods still serve the last valid definition, so keep routing to them.
        if fn is None:
            if ref not in self.functions:
                self.invalid.add(ref)
            return
        self.invalid.discard(ref)
        previous = self.functions.get(ref)
        self.functions[ref] = fn
        if previous is None:
            self.probes.probe_pods_of({ref})
        if previous is None or _changed(previous, fn):
            self.notify({ref})
        if previous is None or previous.status != fn.status:
            # A status written by someone else (kopf's patch of a reconcile that read the
            # Deployment before it changed, a hand): the status writer compares it again.
            self._deployments_changed({ref})

    # ---- deployments

    def _replace_deployments(self, ns: str | None, items: list[Any]) -> None:
        before = dict(self.replicas)
        states = dict(self.deployments)
        self.replicas = {ref: n for ref, n in self.replicas.items() if ns is not None and ref.namespace != ns}
        self.deployments = {ref: d for ref, d in self.deployments.items() if ns is not None and ref.namespace != ns}
        for deployment in items:
            if (ref := _deployment_ref(deployment)) is not None:
                self.replicas[ref] = int(deployment.spec.replicas or 0)
                self.deployments[ref] = DeploymentState.of(deployment)
        self.notify({ref for ref in set(before) | set(self.replicas) if before.get(ref) != self.replicas.get(ref)})
        self._deployments_changed({ref for ref in set(states) | set(self.deployments)
                                   if states.get(ref) != self.deployments.get(ref)})

    def _deployment_event(self, kind: str, deployment: Any) -> None:
        ref = _deployment_ref(deployment)
        if ref is None:
            return
        before = self.replicas.get(ref)
        state = self.deployments.get(ref)
        if kind == DELETED:
            self.replicas.pop(ref, None)
            self.deployments.pop(ref, None)
        else:
            self.replicas[ref] = int(deployment.spec.replicas or 0)
            self.deployments[ref] = DeploymentState.of(deployment)
        if self.replicas.get(ref) != before:
            self.notify({ref})
        if self.deployments.get(ref) != state or kind == DELETED:
            self._deployments_changed({ref})

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
    meta = item.get("metadata")
    if isinstance(meta, dict) and "managedFields" in meta:
        # Server-side apply's field owners: kept by no part of kfn, and with a thousand Functions
        # in every process that mirrors them, often the larger part of a Function's metadata.
        item = {**item, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}
    try:
        return parse_function(item)
    except InvalidFunction as e:
        meta = item.get("metadata") or {}
        logger.warning("ignoring invalid Function %s/%s: %s", meta.get("namespace"), meta.get("name"), e)
        return None


def _ref_of(item: dict[str, Any]) -> FunctionRef:
    meta = item.get("metadata") or {}
    return FunctionRef(meta.get("namespace") or naming.DEFAULT_NAMESPACE, meta.get("name") or "")


def _changed(before: Function, after: Function) -> bool:
    """Whether listeners must hear of a new version of a function: its spec changed, or whether its
    build keeps it from starting (a status the operator wrote: `kfn.kube.builds`)."""
    return before.spec != after.spec or build_problem(before) != build_problem(after)


def _deployment_ref(deployment: Any) -> FunctionRef | None:
    meta = deployment.metadata
    name = (meta.labels or {}).get(naming.LABEL_FUNCTION)
    if not name or meta.name != name:
        # A function's Deployment is named after it; another carrying its labels (a copy made by
        # hand) would otherwise stand for it, and its deletion pass for the function's own.
        return None
    return FunctionRef(meta.namespace or naming.DEFAULT_NAMESPACE, name)
