"""Replica counts of functions: what was last asked for, and asking for another.

A function's Deployment (managed by the operator) is scaled through its `scale` subresource: a
scale from zero is one request, and the Deployment controller does the rest.
"""
from __future__ import annotations

import logging

import aiohttp
from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from kfn.core.functions import FunctionRef
from kfn.kube.informer import describe
from kfn.kube.mirror import ClusterMirror

logger = logging.getLogger(__name__)


class Scaler:
    """Scales the Deployments of the functions `mirror` knows, and tells what they were asked for."""

    def __init__(self, api: client.ApiClient, mirror: ClusterMirror) -> None:
        self._apps = client.AppsV1Api(api)
        self._mirror = mirror

    def desired(self, ref: FunctionRef) -> int:
        """The Deployment's spec.replicas (or what `scale` asked for since), the function's
        minReplicas while it has no Deployment; 0 for an unknown function."""
        fn = self._mirror.functions.get(ref)
        if fn is None:
            return 0
        return self._mirror.replicas.get(ref, fn.spec.scale.minReplicas)

    async def scale(self, ref: FunctionRef, replicas: int, *, reason: str = "") -> None:
        """One JSON patch of the Deployment's scale subresource (skipped if already asked for).

        Failures are logged, not raised: the caller sees no new instance and times out. A function
        with no Deployment yet (its requirements are still being built: the operator creates it
        once they are) is not scaled, at debug level: the next decision asks again.
        """
        if ref not in self._mirror.functions:
            logger.warning("cannot scale unknown function %s", ref)
            return
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
