"""Replica counts of functions: what was last asked for, and asking for another.

A function's Deployment (managed by the operator) is scaled through its `scale` subresource: a
scale from zero is one request, and the Deployment controller does the rest. A function's
instances are also the warm pool's pods claimed for it (`kfn.kube.pool`): they count, a scale from
zero claims one first when a `PoolClaimer` is given, and a scale down deletes them first.
"""
from __future__ import annotations

import logging

import aiohttp
from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from kfn.core.functions import Function, FunctionRef
from kfn.core.instancespec import termination_grace_seconds
from kfn.kube.informer import describe
from kfn.kube.mirror import ClusterMirror
from kfn.kube.pods import PodView
from kfn.kube.pool import PoolClaimer

logger = logging.getLogger(__name__)


class Scaler:
    """Scales the Deployments of the functions `mirror` knows (and their pooled pods), and tells
    what they were asked for. With `claimer`, a scale from zero claims a pool pod first."""

    def __init__(self, api: client.ApiClient, mirror: ClusterMirror, claimer: PoolClaimer | None = None) -> None:
        self._apps = client.AppsV1Api(api)
        self._core = client.CoreV1Api(api)
        self._mirror = mirror
        self._claimer = claimer

    def desired(self, ref: FunctionRef) -> int:
        """The Deployment's spec.replicas (or what `scale` asked for since), the function's
        minReplicas while it has no Deployment, plus its pool pods (claimed or specialised, each
        counted once whether the mirror shows it yet or only this gateway's claimer knows it); 0 for
        an unknown function."""
        fn = self._mirror.functions.get(ref)
        if fn is None:
            return 0
        return self._mirror.replicas.get(ref, fn.spec.scale.minReplicas) + len(self._pooled_keys(ref))

    def _pooled_keys(self, ref: FunctionRef) -> set[tuple[str, str]]:
        keys = {pod.key for pod in self._mirror.pooled(ref)}
        if self._claimer is not None:
            keys |= self._claimer.in_flight(ref)
        return keys

    async def scale(self, ref: FunctionRef, replicas: int, *, reason: str = "") -> None:
        """Ask for `replicas` instances: from zero, a claimed pool pod first (with a claimer); the
        rest from the Deployment, by one JSON patch of its scale subresource (skipped if already
        asked for); below the pooled pods, the Deployment to 0 and the newest pooled pods deleted.

        Failures are logged, not raised: the caller sees no new instance and times out. A function
        with no Deployment yet (its requirements are still being built: the operator creates it
        once they are) is not scaled, at debug level: the next decision asks again.
        """
        fn = self._mirror.functions.get(ref)
        if fn is None:
            logger.warning("cannot scale unknown function %s", ref)
            return
        pooled = self._pooled_keys(ref)
        total = self.desired(ref)
        if replicas == total:
            return
        if total == 0 and replicas >= 1 and self._claimer is not None:
            if await self._claimer.claim(fn):
                await self._scale_deployment(ref, replicas - 1, reason=reason)
                self._mirror.notify({ref})
                return
        if replicas < len(pooled):
            await self._scale_deployment(ref, 0, reason=reason)
            await self._delete_pooled(fn, len(pooled) - replicas)
            return
        await self._scale_deployment(ref, replicas - len(pooled), reason=reason)

    async def _delete_pooled(self, fn: Function, count: int) -> None:
        """Delete the `count` newest pooled pods of `fn`: first those this gateway's claimer claimed
        that the mirror does not show as the function's yet, then the newest the mirror shows
        (failures are logged)."""
        shown = sorted(self._mirror.pooled(fn.ref), key=_created, reverse=True)
        unseen = sorted(self._claimer.in_flight(fn.ref) - {pod.key for pod in shown}) if self._claimer else []
        keys = [*unseen, *(pod.key for pod in shown)][:count]
        grace = termination_grace_seconds(fn)
        for namespace, name in keys:
            if self._claimer is not None:
                self._claimer.abandon((namespace, name))
            try:
                await self._core.delete_namespaced_pod(name, namespace, grace_period_seconds=grace)
            except (TimeoutError, ApiException, aiohttp.ClientError, OSError) as e:
                if not (isinstance(e, ApiException) and e.status == 404):
                    logger.error("deleting pooled pod %s/%s failed: %s", namespace, name, describe(e))
                continue
            logger.info("deleted pooled pod %s/%s of %s (scaled down)", namespace, name, fn.name)

    async def _scale_deployment(self, ref: FunctionRef, replicas: int, *, reason: str) -> None:
        """One JSON patch of the Deployment's scale subresource, unless it was asked for already."""
        if self._mirror.replicas.get(ref) == replicas:
            return
        try:
            await self._apps.patch_namespaced_deployment_scale(
                ref.name, ref.namespace, [{"op": "replace", "path": "/spec/replicas", "value": replicas}])
        except (TimeoutError, ApiException, aiohttp.ClientError, OSError) as e:
            if isinstance(e, ApiException) and e.status == 404:
                logger.debug("not scaling %s/%s to %d: it has no Deployment yet (not built yet)",
                             ref.namespace, ref.name, replicas)
            else:
                logger.error("scaling %s/%s to %d failed: %s", ref.namespace, ref.name, replicas, describe(e))
            return
        logger.info("scaled %s/%s to %d%s", ref.namespace, ref.name, replicas, f" ({reason})" if reason else "")
        self._mirror.replicas[ref] = replicas
        self._mirror.notify({ref})


def _created(pod: PodView) -> tuple[float, str]:
    """Newest first, by when it was claimed (its name breaks ties)."""
    claimed = pod.pooled.claimed_at if pod.pooled is not None else None
    return (claimed or 0.0, pod.name)
