"""Claiming a warm pool's idle pod for a function and specialising it (`kfn.core.pool`), the
gateway's part of a scale from zero.

A claim is one JSON merge patch of the pod's labels with its resourceVersion as precondition: of
two gateways claiming one pod, one gets 409 and tries another pod. A claimed pod is specialised in
the background by one signed POST (`kfn_runtime.specialize`), then promoted into one of the
function's pods. When that fails, the pod is deleted and the function's Deployment is scaled one
up instead, so requests waiting for an instance get one the other way.
"""
from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from kfn.core import naming, pool
from kfn.core.aiotasks import stop_tasks
from kfn.core.functions import Function, FunctionRef
from kfn.core.instancespec import Archive, archive_url, termination_grace_seconds
from kfn.kube.builds import stored_build
from kfn.kube.informer import describe
from kfn.kube.mirror import ClusterMirror
from kfn.kube.pods import PodView
from kfn_runtime import archive as archives
from kfn_runtime import contract, specialize

logger = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
# Idle pods tried per claim: past this many lost races, the Deployment serves the function.
DEFAULT_CLAIM_ATTEMPTS = 5
# How long a specialisation (the instance fetching requirements and initialising the function) may take:
# well within the claim deadline after which the operator reaps a claimed pod (kfn.core.pool).
DEFAULT_SPECIALIZE_TIMEOUT = 60.0
# How long closing the claimer may spend undoing the claims it leaves unfinished (deleting their pods,
# scaling the Deployments instead).
DEFAULT_UNDO_TIMEOUT = 5.0
# Characters of an instance's refusal kept in the log.
_ANSWER_LIMIT = 300


@dataclass
class _Claim:
    fn: Function
    pod: PodView
    specialized: bool = False   # the instance accepted the specialisation
    promoted: bool = False

    @property
    def function(self) -> FunctionRef:
        return self.fn.ref


class PoolClaimer:
    """Claims idle pool pods of the namespaces `mirror` watches and specialises them.

    `secret` is the platform's pool key (`specialize.namespace_key` derives each namespace's);
    `archive_url` and `archive_secret` (the archive store as pods reach it, and its signing key)
    let functions with requirements be served from a pool once their build is stored."""

    def __init__(self, api: client.ApiClient, mirror: ClusterMirror, *, secret: bytes, region: str,
                 claimed_by: str, archive_url: str | None, archive_secret: bytes | None,
                 specialize_timeout: float = DEFAULT_SPECIALIZE_TIMEOUT,
                 claim_attempts: int = DEFAULT_CLAIM_ATTEMPTS, undo_timeout: float = DEFAULT_UNDO_TIMEOUT,
                 clock: Callable[[], float] = time.time) -> None:
        if len(secret) < specialize.MIN_KEY_BYTES:
            raise ValueError(f"the pool key must have at least {specialize.MIN_KEY_BYTES} bytes")
        self._core = client.CoreV1Api(api)
        self._apps = client.AppsV1Api(api)
        self._mirror = mirror
        self._secret = secret
        self._region = region
        self._claimed_by = claimed_by
        self._archive_url = archive_url.rstrip("/") if archive_url else None
        self._archive_secret = archive_secret
        self._specialize_timeout = specialize_timeout
        self._claim_attempts = claim_attempts
        self._undo_timeout = undo_timeout
        self._clock = clock
        self._claims: dict[tuple[str, str], _Claim] = {}
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._session: aiohttp.ClientSession | None = None

    def in_flight(self, ref: FunctionRef) -> set[tuple[str, str]]:
        """The pods this claimer claimed for the function that the mirror may not show as the
        function's yet (a claim or a promotion not yet seen)."""
        out = set()
        for key, claim in list(self._claims.items()):
            if claim.function != ref:
                continue
            if claim.promoted and self._seen_promoted(key, ref):
                del self._claims[key]
                continue
            out.add(key)
        return out

    def _seen_promoted(self, key: tuple[str, str], ref: FunctionRef) -> bool:
        pod = self._mirror.pods.get(key)
        return pod is None or pod.terminating or pod.function == ref or (
            pod.pooled is not None and pod.pooled.function == ref)

    def abandon(self, key: tuple[str, str]) -> None:
        """Stop specialising pod `key` (the caller deletes it: a scale down) and forget its claim;
        no Deployment replica is asked for in its place."""
        self._claims.pop(key, None)
        task = self._tasks.get(key)
        if task is not None:
            task.cancel()   # it leaves `_tasks` when done (`_done`)

    def archive(self, fn: Function) -> Archive | None:
        """The archive of the function's requirements its current spec was built into, or None
        (no stored build of this spec, or no archive store configured)."""
        if not self._archive_url or not self._archive_secret:
            return None
        stored = stored_build(fn)
        if stored is None:
            return None
        key, digest = stored
        return Archive(archive_url(self._archive_url, fn.namespace, key),
                       archives.token(self._archive_secret, archives.VERB_GET, fn.namespace, key), digest)

    async def claim(self, fn: Function) -> bool:
        """Claim an idle pool pod for `fn` and start specialising it in the background; True if one
        was claimed (or, its claim refused, another gateway had claimed the pod for `fn` first: that pod
        is the instance asked for). Returns after at most `claim_attempts` patches. False (the Deployment serves
        the function) when a pool cannot serve it, its requirements have no stored archive, no idle
        pod is left, or the API fails (logged)."""
        why = pool.ineligible(fn)
        if why is not None:
            logger.debug("not claiming a pool pod for %s/%s: %s", fn.namespace, fn.name, why)
            return False
        archive: Archive | None = None
        if fn.spec.requirements:
            archive = self.archive(fn)
            if archive is None:
                logger.debug("not claiming a pool pod for %s/%s: no stored archive of its requirements",
                             fn.namespace, fn.name)
                return False
        candidates = [pod for pod in self._mirror.idle_pool_pods(fn.namespace, fn.spec.runtime)
                      if pod.key not in self._claims and pod.resource_version and pod.uid]
        # Rendezvous order: gateways starting the same function try the same pod first (the loser
        # finds it claimed for that function: one instance, not two), other functions other pods.
        candidates.sort(key=lambda pod: hashlib.sha256(f"{fn.namespace}/{fn.name}/{pod.name}".encode()).digest())
        for pod in candidates[:self._claim_attempts]:
            assert pod.resource_version is not None
            patch = pool.claim_patch(fn, resource_version=pod.resource_version, claimed_by=self._claimed_by,
                                     now=self._clock())
            try:
                await self._patch(pod, patch)
            except ApiException as e:
                if e.status in (404, 409):
                    logger.debug("pool pod %s/%s was taken first (HTTP %s)", pod.namespace, pod.name, e.status)
                    if e.status == 409 and await self._claimed_for(pod, fn):
                        # Another gateway's scale from zero of the same function got there first: that
                        # pod is its instance, and a second one (from the Deployment) is not asked for.
                        logger.info("pool pod %s/%s was claimed for %s by another gateway", pod.namespace,
                                    pod.name, fn.name)
                        return True
                    continue
                logger.warning("claiming pool pod %s/%s for %s failed: %s", pod.namespace, pod.name, fn.name,
                               describe(e))
                return False
            except (TimeoutError, aiohttp.ClientError, OSError) as e:
                logger.warning("claiming pool pod %s/%s for %s failed: %s", pod.namespace, pod.name, fn.name,
                               describe(e))
                return False
            logger.info("claimed pool pod %s/%s for %s", pod.namespace, pod.name, fn.name)
            self._claims[pod.key] = _Claim(fn, pod)
            task = asyncio.get_running_loop().create_task(self._specialize(fn, pod, archive),
                                                          name=f"kfn-specialize-{pod.name}")
            self._tasks[pod.key] = task
            task.add_done_callback(functools.partial(self._done, pod.key))
            return True
        return False

    async def _claimed_for(self, pod: PodView, fn: Function) -> bool:
        """Whether `pod`, which someone else claimed first, was claimed for `fn` (read from the API;
        False when it cannot be read)."""
        try:
            current = await self._core.read_namespaced_pod(pod.name, pod.namespace)
        except (TimeoutError, ApiException, aiohttp.ClientError, OSError):
            return False
        meta = current.metadata
        labels = (meta.labels or {}) if meta is not None else {}
        return (meta is not None and meta.deletion_timestamp is None and labels.get(naming.LABEL_FUNCTION) == fn.name
                and labels.get(naming.LABEL_POOL_STATE) in (naming.POOL_CLAIMED, naming.POOL_SPECIALIZED))

    def _done(self, key: tuple[str, str], _: asyncio.Task[None]) -> None:
        self._tasks.pop(key, None)

    async def _specialize(self, fn: Function, pod: PodView, archive: Archive | None) -> None:
        """Specialise a claimed pod as `fn` and promote it; runs at most `specialize_timeout`.
        Any failure is logged and undone (the pod deleted, the Deployment scaled one up); never raises."""
        specialized = False
        reason: str | None = None
        try:
            async with asyncio.timeout(self._specialize_timeout):
                reason = await self._post(fn, pod, archive)
                if reason is None:
                    specialized = True
                    if (claim := self._claims.get(pod.key)) is not None:
                        claim.specialized = True
                    await self._patch(pod, pool.promote_patch(fn, archive))
        except TimeoutError:
            reason = f"no answer within {self._specialize_timeout:g}s"
        except ApiException as e:
            if e.status == 404:
                # Deleted meanwhile (the function scaled down, the operator reaped it): nothing to undo.
                logger.info("pool pod %s/%s was deleted while it became %s", pod.namespace, pod.name, fn.name)
                self._claims.pop(pod.key, None)
                self._mirror.notify({fn.ref})
                return
            reason = f"promoting it failed: {describe(e)}"
        except (aiohttp.ClientError, OSError) as e:
            reason = describe(e)
        except Exception as e:  # a bug here must not leave the claim half done
            logger.exception("specialising pool pod %s/%s as %s failed", pod.namespace, pod.name, fn.name)
            reason = describe(e)
        if reason is None:
            logger.info("pool pod %s/%s is now an instance of %s", pod.namespace, pod.name, fn.name)
            claim = self._claims.get(pod.key)
            if claim is not None:
                claim.promoted = True
            return
        logger.warning("specialising pool pod %s/%s as %s failed: %s; deleting it and scaling the Deployment "
                       "instead", pod.namespace, pod.name, fn.name, reason)
        try:
            await self._undo(fn, pod, specialized=specialized)
        finally:
            self._claims.pop(pod.key, None)
            self._mirror.notify({fn.ref})

    async def _undo(self, fn: Function, pod: PodView, *, specialized: bool) -> None:
        """Scale the Deployment one up instead of the claimed pod, then delete the pod; failures are
        logged (the operator reaps a pod left claimed)."""
        await self._compensate(fn, pod.key)
        await self._delete(pod, grace=termination_grace_seconds(fn) if specialized else 0)

    async def _post(self, fn: Function, pod: PodView, archive: Archive | None) -> str | None:
        """Send the specialisation; None when the instance answered 200, else why not."""
        assert pod.ip is not None and pod.uid is not None
        body = pool.specialize_body(fn, region=self._region, archive=archive)
        signature = specialize.signature(specialize.namespace_key(self._secret, pod.namespace), pod.uid, body)
        host = f"[{pod.ip}]" if ":" in pod.ip else pod.ip
        if self._session is None:
            self._session = aiohttp.ClientSession()
        async with self._session.post(f"http://{host}:{pod.port}{contract.PATH_SPECIALIZE}", data=body,
                                      headers={contract.HEADER_SIGNATURE: signature,
                                               "Content-Type": "application/json"}) as response:
            if response.status == 200:
                return None
            text = (await response.text(errors="replace"))[:_ANSWER_LIMIT]
            return f"the instance answered {response.status}: {text}"

    async def _patch(self, pod: PodView, patch: dict[str, Any]) -> None:
        await self._core.patch_namespaced_pod(pod.name, pod.namespace, patch, _content_type=MERGE_PATCH)

    async def _delete(self, pod: PodView, *, grace: int) -> None:
        """Delete the pod; failures are logged (the operator reaps what is left: `kfn.core.pool.reap`)."""
        try:
            await self._core.delete_namespaced_pod(pod.name, pod.namespace, grace_period_seconds=grace)
        except (TimeoutError, ApiException, aiohttp.ClientError, OSError) as e:
            if isinstance(e, ApiException) and e.status == 404:
                return
            logger.warning("deleting pool pod %s/%s failed: %s", pod.namespace, pod.name, describe(e))
            return
        logger.info("deleted pool pod %s/%s", pod.namespace, pod.name)

    async def _compensate(self, fn: Function, key: tuple[str, str]) -> None:
        """Scale the function's Deployment one over its current spec.replicas, in place of pool pod
        `key`, short of the function's maxReplicas with its other pool pods; failures are logged."""
        fn = self._mirror.functions.get(fn.ref, fn)
        others = ({pod.key for pod in self._mirror.pooled(fn.ref)} | self.in_flight(fn.ref)) - {key}
        ceiling = fn.spec.scale.maxReplicas - len(others)
        try:
            scale = await self._apps.read_namespaced_deployment_scale(fn.name, fn.namespace)
            current = int((scale.spec.replicas if scale.spec is not None else 0) or 0)
            replicas = min(current + 1, ceiling)
            if replicas <= current:
                logger.info("not scaling %s/%s instead of its pool pod: it has %d instance(s) asked for, its "
                            "maxReplicas %d", fn.namespace, fn.name, current + len(others), fn.spec.scale.maxReplicas)
                return
            await self._apps.patch_namespaced_deployment_scale(
                fn.name, fn.namespace, [{"op": "replace", "path": "/spec/replicas", "value": replicas}])
        except (TimeoutError, ApiException, aiohttp.ClientError, OSError) as e:
            if isinstance(e, ApiException) and e.status == 404:
                logger.debug("not scaling %s/%s instead: it has no Deployment yet", fn.namespace, fn.name)
            else:
                logger.error("scaling %s/%s instead of its pool pod failed: %s", fn.namespace, fn.name, describe(e))
            return
        logger.info("scaled %s/%s to %d (its pool pod failed)", fn.namespace, fn.name, replicas)
        self._mirror.replicas[fn.ref] = replicas

    async def close(self) -> None:
        """Cancel the specialisations in progress and wait for them, then undo the claims they
        leave unfinished (each pod deleted, its Deployment scaled one up instead: other gateways
        count a claimed pod as the function's instance) for at most `undo_timeout` (what is left
        the operator reaps), then close the HTTP session. Runs about 10 s more at most."""
        await stop_tasks(list(self._tasks.values()), what="pool specialisations")
        self._tasks.clear()
        unfinished = [claim for claim in self._claims.values() if not claim.promoted]
        try:
            async with asyncio.timeout(self._undo_timeout):
                for claim in unfinished:
                    logger.warning("pool pod %s/%s was not yet an instance of %s when the gateway stopped: "
                                   "deleting it and scaling the Deployment instead",
                                   claim.pod.namespace, claim.pod.name, claim.fn.name)
                    await self._undo(claim.fn, claim.pod, specialized=claim.specialized)
                    self._claims.pop(claim.pod.key, None)
        except TimeoutError:
            logger.warning("undoing unfinished pool claims took over %gs; the operator reaps the rest",
                           self._undo_timeout)
        self._claims.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None
