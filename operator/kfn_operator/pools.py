"""Warm pools, the operator's side: keep one pool Deployment per runtime per namespace that needs
it, and delete the pooled pods nobody will finish or use.

`Pools.run` runs in the leader only (started by `handlers.Controller.start`), one pass every
`config.pool_interval` seconds, each bounded in time (`PASS_TIMEOUT`) and in pods deleted
(`MAX_REAPS_PER_PASS`):

- collect: the pool Deployments and the pods that came from a pool (`naming.LABEL_POOL_STATE`
  set), listed through the API (per watched namespace, or cluster-wide), and the Functions the
  operator's `KubernetesBackend` mirrors;
- decide (pure): `kfn.core.pool.wanted_pools` against the Deployments there (`plan_pools`: create,
  patch when the spec hash or the size differs, delete), and `kfn.core.pool.reap` of the pods
  against each Function's `specialized_hash` (a pod claimed moments ago for a Function not seen
  yet is left for a later pass);
- actuate: write the Deployments; delete each reaped pod with its function's grace period, after
  asking its function's Deployment for one more replica when the pod served (`Reap.replace`: at
  most once per pod for the life of the process, so a delete that fails never scales twice).

API errors are logged and the next pass tries again; nothing here ends the loop but cancellation.
Pools are off when `config.pool_size` is 0 or there is no pool key: `run` then deletes the pool
Deployments it finds, until none is left, and ends (pods already taken from a pool are function
pods by then, deleted when their function scales down).
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from kfn.core import naming, pool
from kfn.core.functions import Function, FunctionRef
from kfn.core.instancespec import Archive, termination_grace_seconds
from kfn.kube.resources import manifest, namespace_terminating, pointer, set_ops, typed
from kfn_operator import builders
from kfn_operator.builds import ArchiveStore
from kfn_operator.config import OperatorConfig
from kfn_runtime import specialize

logger = logging.getLogger(__name__)

Manifest = dict[str, Any]

# A pass that takes longer is abandoned (logged); the next one starts over from a fresh listing.
PASS_TIMEOUT = 60.0
# Pooled pods deleted per pass at most: more wait for the next pass.
MAX_REAPS_PER_PASS = 50
# A pod claimed this recently for a Function the operator does not know yet is left for a later
# pass: the claiming gateway may have seen the Function before the operator's informer did.
FRESH_CLAIM_SECONDS = 10.0
# The label selectors of what the loop lists.
POOL_DEPLOYMENTS = f"{naming.LABEL_MANAGED_BY}={naming.MANAGED_BY},{naming.LABEL_COMPONENT}={naming.COMPONENT_POOL}"
# Pods of kfn's only: a tenant's pod that carries a pool-state label is none of the reaper's business.
POOLED_PODS = f"{naming.LABEL_MANAGED_BY}={naming.MANAGED_BY},{naming.LABEL_POOL_STATE}"
_STATES = frozenset({naming.POOL_IDLE, naming.POOL_CLAIMED, naming.POOL_SPECIALIZED})
_API_ERRORS = (ApiException, aiohttp.ClientError, OSError, TimeoutError)


# ---- decide (pure)

@dataclass(frozen=True)
class PoolPlan:
    """What to write to bring the pool Deployments to what is wanted."""

    create: list[Manifest] = field(default_factory=list)
    patch: list[tuple[Manifest, Manifest]] = field(default_factory=list)   # (existing, wanted)
    delete: list[tuple[str, str]] = field(default_factory=list)            # (namespace, name)


def plan_pools(wanted: Iterable[Manifest], existing: Iterable[Manifest]) -> PoolPlan:
    """Create the `wanted` pool Deployments that are missing, patch those whose spec hash or
    replicas differ from what is wanted, delete the `existing` ones nobody wants."""
    have = {_key(d): d for d in existing}
    want = {_key(d): d for d in wanted}
    plan = PoolPlan()
    for key, deployment in sorted(want.items()):
        current = have.get(key)
        if current is None:
            plan.create.append(deployment)
        elif (builders.pool_hash(current) != builders.pool_hash(deployment)
              or (current.get("spec") or {}).get("replicas") != deployment["spec"]["replicas"]):
            plan.patch.append((current, deployment))
    plan.delete.extend(sorted(key for key in have if key not in want))
    return plan


def _key(deployment: Mapping[str, Any]) -> tuple[str, str]:
    meta = deployment.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def pooled_pod(pod: client.V1Pod) -> pool.PooledPod | None:
    """A pod that came from a pool as `kfn.core.pool.reap` sees it; None for a pod whose labels
    say no pool state kfn knows (nothing to decide about it)."""
    meta = pod.metadata
    if meta is None or not meta.name or not meta.namespace:
        return None
    labels = meta.labels or {}
    annotations = meta.annotations or {}
    state = labels.get(naming.LABEL_POOL_STATE)
    if state not in _STATES:
        return None
    name = labels.get(naming.LABEL_FUNCTION)
    status = pod.status
    containers = (status.container_statuses if status is not None else None) or ()
    restarts = next((c.restart_count or 0 for c in containers if c.name == builders.CONTAINER_NAME), 0)
    phase = status.phase if status is not None else None
    return pool.PooledPod(
        namespace=meta.namespace,
        name=meta.name,
        state=state,
        runtime=labels.get(naming.LABEL_POOL, ""),
        function=FunctionRef(meta.namespace, name) if name else None,
        claimed_at=_seconds(annotations.get(naming.ANNOTATION_CLAIMED_AT)),
        specialized_hash=annotations.get(naming.ANNOTATION_SPECIALIZED_HASH),
        restarts=restarts,
        terminating=meta.deletion_timestamp is not None or phase in ("Succeeded", "Failed"),
    )


def _seconds(value: str | None) -> float | None:
    """A claim time in unix seconds; None when it is not a finite number (nan or inf would keep a
    claimed pod from ever being old enough to delete)."""
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and math.isfinite(seconds) else None


def _not_after(pod: pool.PooledPod, first_seen: float) -> pool.PooledPod:
    """`pod` with its claim time no later than when this operator first saw it: a claim time in
    the future (a gateway's clock ahead, a hand-written annotation) delays its deletion by the
    claim deadline from then at most, never indefinitely."""
    if pod.claimed_at is None or pod.claimed_at <= first_seen:
        return pod
    return dataclasses.replace(pod, claimed_at=first_seen)


def _claimed_for_unseen(pod: pool.PooledPod, expected: Mapping[FunctionRef, str], now: float) -> bool:
    """Whether `pod` was claimed moments ago for a Function not known here (yet)."""
    return (pod.function is not None and pod.function not in expected and pod.claimed_at is not None
            and now - pod.claimed_at < FRESH_CLAIM_SECONDS)


def stored_archive(fn: Function, store: ArchiveStore | None) -> Archive | None:
    """The archive a pod of `fn` fetches: the one its status.build names once stored (None
    without an archive store, without requirements, or while it is not stored)."""
    if store is None or not fn.spec.requirements:
        return None
    build = (fn.status or {}).get("build")
    if not isinstance(build, dict) or build.get("state") != naming.BUILD_STORED:
        return None
    key, digest = build.get("key"), build.get("digest")
    if not isinstance(key, str) or not key or not isinstance(digest, str) or not digest:
        return None
    return store.archive(fn.namespace, key, digest)


def expected_hashes(functions: Iterable[Function], store: ArchiveStore | None) -> dict[FunctionRef, str]:
    """Each Function → what a pod specialised as it now runs (`kfn.core.pool.specialized_hash`)."""
    return {fn.ref: pool.specialized_hash(fn, stored_archive(fn, store)) for fn in functions}


# ---- collect and actuate

class FunctionSource(Protocol):
    """Where the Functions come from: the operator's `KubernetesBackend`, listing them itself."""

    def functions(self) -> list[Function]: ...

    def function(self, ref: FunctionRef) -> Function | None: ...


class Pools:
    """The warm pools of one operator (the leader): its API client, its backend's Functions."""

    def __init__(self, api: client.ApiClient, config: OperatorConfig, backend: FunctionSource | None, *,
                 synced: asyncio.Event, store: ArchiveStore | None = None,
                 clock: Callable[[], float] = time.time, pass_timeout: float = PASS_TIMEOUT,
                 max_reaps: int = MAX_REAPS_PER_PASS) -> None:
        self._api = api
        self._config = config
        self._backend = backend
        self._synced = synced
        self._store = store
        self._clock = clock
        self._pass_timeout = pass_timeout
        self._max_reaps = max_reaps
        self._replaced: set[tuple[str, str]] = set()   # pods whose Deployment was given a replica for them
        self._first_seen: dict[tuple[str, str], float] = {}   # pooled pod → when a pass first listed it

    async def run(self) -> None:
        """Keep the pools every `config.pool_interval` seconds until cancelled. A pass that fails or
        takes longer than the pass timeout is logged, and the next one tries again. With pools off,
        delete the pool Deployments there are (as often as needed) and return."""
        if not self._config.pools:
            why = "--pool-size is 0" if self._config.pool_size <= 0 else "no pool key (--pool-key-file)"
            logger.info("warm pools are off: %s", why)
        else:
            await self._synced.wait()   # no Function known is not no Function: every pooled pod would go
        while True:
            try:
                async with asyncio.timeout(self._pass_timeout):
                    left = await self.reconcile()
                if not self._config.pools and left == 0:
                    return
            except asyncio.CancelledError:
                raise
            except TimeoutError:
                logger.warning("a pass over the warm pools took more than %gs: abandoned", self._pass_timeout)
            except Exception as e:  # noqa: BLE001 - the next pass tries again
                logger.warning("could not keep the warm pools: %s", _describe(e))
            await asyncio.sleep(self._config.pool_interval)

    async def reconcile(self) -> int:
        """One pass: collect, decide, actuate. Returns how many writes failed (logged); listing
        errors propagate."""
        deployments = await self._list_deployments()
        functions = self._backend.functions() if self._backend is not None and self._config.pools else []
        # A Function being deleted (its namespace going, a finalizer holding it) wants no pool: a
        # create into a namespace being deleted is refused (403 NamespaceTerminating) pass after pass.
        staying = [fn for fn in functions if not (fn.metadata.model_extra or {}).get("deletionTimestamp")]
        wanted = [self._build(namespace, runtime, size) for (namespace, runtime), size in pool.wanted_pools(
            staying, size=self._config.pool_size if self._config.pools else 0,
            runtimes=self._config.images.images).items()]
        failed = await self._write(plan_pools(wanted, deployments))
        if not self._config.pools:
            return failed
        pods = [p for p in map(pooled_pod, await self._list_pods()) if p is not None]
        present = {(p.namespace, p.name) for p in pods}
        self._replaced &= present
        expected, now = expected_hashes(functions, self._store), self._clock()
        self._first_seen = {key: self._first_seen.get(key, now) for key in present}
        pods = [_not_after(p, self._first_seen[(p.namespace, p.name)]) for p in pods]
        pods = [p for p in pods if not _claimed_for_unseen(p, expected, now)]
        reaps = pool.reap(pods, expected, now=now)
        for reaped in reaps[:self._max_reaps]:
            failed += not await self._reap(reaped)
        if len(reaps) > self._max_reaps:
            logger.info("%d more pooled pods to delete at the next pass", len(reaps) - self._max_reaps)
        return failed

    def _build(self, namespace: str, runtime: str, size: int) -> Manifest:
        assert self._config.pool_key is not None
        return builders.build_pool_deployment(namespace, runtime, images=self._config.images, size=size,
                                              key=specialize.namespace_key(self._config.pool_key, namespace))

    async def _list_deployments(self) -> list[Manifest]:
        apps = client.AppsV1Api(self._api)
        if self._config.namespaces:
            listings = [await apps.list_namespaced_deployment(ns, label_selector=POOL_DEPLOYMENTS)
                        for ns in self._config.namespaces]
        else:
            listings = [await apps.list_deployment_for_all_namespaces(label_selector=POOL_DEPLOYMENTS)]
        return [manifest(d) for listing in listings for d in listing.items or ()]

    async def _list_pods(self) -> list[client.V1Pod]:
        core = client.CoreV1Api(self._api)
        if self._config.namespaces:
            listings = [await core.list_namespaced_pod(ns, label_selector=POOLED_PODS)
                        for ns in self._config.namespaces]
        else:
            listings = [await core.list_pod_for_all_namespaces(label_selector=POOLED_PODS)]
        return [p for listing in listings for p in listing.items or ()]

    async def _write(self, plan: PoolPlan) -> int:
        """Create, patch and delete pool Deployments; returns how many writes failed (each logged)."""
        apps = client.AppsV1Api(self._api)
        failed = 0
        for deployment in plan.create:
            namespace, name = _key(deployment)
            try:
                await apps.create_namespaced_deployment(namespace, typed(client.V1Deployment, deployment))
                logger.info("created warm pool %s/%s (%d)", namespace, name, deployment["spec"]["replicas"])
            except _API_ERRORS as e:
                if isinstance(e, ApiException) and (e.status == 409 or namespace_terminating(e)):
                    continue   # there already (the next pass patches it), or its namespace is going
                failed += 1
                logger.warning("could not create warm pool %s/%s: %s", namespace, name, _describe(e))
        for current, wanted in plan.patch:
            namespace, name = _key(wanted)
            meta = current.get("metadata") or {}
            # Everything but the selector (immutable, and the same by construction).
            ops = set_ops({
                pointer("metadata", "labels"): {**(meta.get("labels") or {}), **wanted["metadata"]["labels"]},
                pointer("metadata", "annotations"): {**(meta.get("annotations") or {}),
                                                     **wanted["metadata"]["annotations"]},
                **{pointer("spec", key): value for key, value in wanted["spec"].items() if key != "selector"},
            }, resource_version=meta.get("resourceVersion"))
            try:
                await apps.patch_namespaced_deployment(name, namespace, ops)
                logger.info("updated warm pool %s/%s", namespace, name)
            except _API_ERRORS as e:
                failed += 1
                logger.warning("could not update warm pool %s/%s: %s", namespace, name, _describe(e))
        for namespace, name in plan.delete:
            try:
                await apps.delete_namespaced_deployment(name, namespace)
                logger.info("deleted warm pool %s/%s", namespace, name)
            except _API_ERRORS as e:
                if isinstance(e, ApiException) and e.status == 404:
                    continue
                failed += 1
                logger.warning("could not delete warm pool %s/%s: %s", namespace, name, _describe(e))
        return failed

    async def _reap(self, reaped: pool.Reap) -> bool:
        """Delete one pooled pod (its function's Deployment given a replica first when `replace`);
        False if a write failed (logged)."""
        where = f"{reaped.namespace}/{reaped.name}"
        fn = self._backend.function(reaped.function) if self._backend is not None and reaped.function else None
        key = (reaped.namespace, reaped.name)
        if reaped.replace and reaped.function is not None and key not in self._replaced:
            try:
                await self._add_replica(reaped.function)
            except _API_ERRORS as e:
                logger.warning("could not add a replica to %s before deleting pooled pod %s: %s",
                               reaped.function, where, _describe(e))
                return False
            self._replaced.add(key)
        grace = termination_grace_seconds(fn) if fn is not None else None
        try:
            await client.CoreV1Api(self._api).delete_namespaced_pod(reaped.name, reaped.namespace,
                                                                    grace_period_seconds=grace)
        except _API_ERRORS as e:
            if isinstance(e, ApiException) and e.status == 404:
                return True
            logger.warning("could not delete pooled pod %s (%s): %s", where, reaped.reason, _describe(e))
            return False
        logger.info("deleted pooled pod %s: %s", where, reaped.reason)
        return True

    async def _add_replica(self, ref: FunctionRef) -> None:
        """Ask the function's Deployment for one replica more than its spec says (none: nothing to do)."""
        apps = client.AppsV1Api(self._api)
        try:
            scale = await apps.read_namespaced_deployment_scale(ref.name, ref.namespace)
        except ApiException as e:
            if e.status == 404:
                return
            raise
        current = (scale.spec.replicas if scale.spec is not None else None) or 0
        # Conditional on the count read, so a concurrent scale is not added to blindly. A Scale at 0
        # omits the field (autoscaling/v1 replicas is omitempty), which a test could not match: then
        # unconditional. `replace` as everywhere in kfn (kfn.kube.scaling): the API server's JSON
        # patch replaces a member that is absent too.
        test = [{"op": "test", "path": "/spec/replicas", "value": current}] if current else []
        await apps.patch_namespaced_deployment_scale(ref.name, ref.namespace, [
            *test, {"op": "replace", "path": "/spec/replicas", "value": current + 1}])
        logger.info("scaled %s/%s to %d (a pooled pod it had is replaced)", ref.namespace, ref.name, current + 1)


def _describe(e: BaseException) -> str:
    if isinstance(e, ApiException):
        return f"{e.status} {e.reason}"
    return str(e) or type(e).__name__
