"""kopf handlers: keep every Function's ConfigMap, Deployment and Service as its spec says.

`register(registry, controller)` wires a `Controller` into a kopf registry; nothing is registered
at import time, so tests and `kfn operator` build their own registries.

- Function created / changed / seen at operator start → `Controller.reconcile`: parse (invalid →
  Ready=False/InvalidSpec, an Event, and a permanent error: kopf does not retry until the spec
  changes), then create-or-patch the children, a code ConfigMap and a Deployment (adopted:
  deleting the Function deletes them; a function has no Service: the gateway reaches its pods at
  their IPs), never touching the Deployment's replicas after creation (the autoscaler owns them).
- A Function with requirements, where they are built once (`kfn_operator.builds`): its pods fetch
  the archive once it is stored; until then the build Job runs, the Function is Ready=False/Building
  and its Deployment (if any: the previous spec's, which keeps serving) is left alone.
- Deployment changes, as the operator's one `KubernetesBackend` mirrors them (kopf watches no
  Deployments), and Function status changes (a status written from an older view of the
  Deployment, by kopf's patch or by hand) → a work queue (`kfn._cogs.workqueue`, each function
  once at a time, changes within `STATUS_DELAY` making one write, a failure tried again until it
  succeeds) → the Function's status (replicas, readyReplicas, Ready condition), written only when
  it differs from the Deployment's; a Deployment deleted while its Function lives is recreated.
- A build Job ended or deleted → the Functions waiting for it are reconciled (deployed, BuildFailed, or
  built again), those the store cannot answer for retried every `builds.STORE_RETRY` seconds.
- Operator start/stop → the API client, the operator's one `kfn.kube.KubernetesBackend` (its
  informers, listing in the background) and, sharing it, the autoscaler loop (`kfn_operator.lease`),
  the scheduler of schedule triggers (`kfn_operator.scheduler`) and the warm pools
  (`kfn_operator.pools`), started in that order and stopped in reverse.

kopf watches Functions and build Jobs with its own client (logged in with the credentials of
`kfn.kube.connection`); everything else goes through the official client's asyncio API.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Mapping
from typing import Any, cast

import kopf
from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from kfn._cogs.lifecycle import Parts
from kfn._cogs.workqueue import WorkQueue
from kfn.core import naming
from kfn.core.functions import FieldError, Function, FunctionRef, InvalidFunction, parse_function
from kfn.core.instancespec import Archive
from kfn.kube import KubernetesBackend, connect
from kfn.kube.resources import (
    conflicted,
    manifest,
    namespace_terminating,
    patch_function_status,
    pointer,
    set_ops,
    typed,
)
from kfn_operator import builders, builds, installed_crd, status
from kfn_operator.config import OperatorConfig
from kfn_operator.lease import OperatorAutoscaler
from kfn_operator.network_policies import NetworkPolicies
from kfn_operator.pools import Pools
from kfn_operator.scheduler import OperatorScheduler

logger = logging.getLogger(__name__)

# How many code ConfigMaps a function keeps: the current one and the one before it, so pods of
# the previous ReplicaSet can still start while a rollout is in progress.
KEPT_CODE_CONFIGMAPS = 2
# How often a Function's status is read and written again when the write met a newer Function (409).
STATUS_WRITE_ATTEMPTS = 5
# Seconds between a Deployment's change and the write of its Function's status (changes meanwhile
# make one write), and how many statuses are written at once.
STATUS_DELAY = 1.0
STATUS_WORKERS = 4

Log = logging.Logger | logging.LoggerAdapter[Any]


def _body(obj: Mapping[str, Any]) -> kopf.Body:
    # kopf's helpers (adopt, warn) take its Body; a plain manifest dict serves as well.
    return cast(kopf.Body, obj)


class Controller:
    """Creates and patches a Function's children through one Kubernetes API client."""

    def __init__(self, config: OperatorConfig, *, api: client.ApiClient | None = None) -> None:
        self.config = config
        self._api = api
        self._parts = Parts("operator")
        self._store = (builds.ArchiveStore(config.archive_url, config.archive_key)
                       if config.archive_url and config.archive_key else None)
        self._backend: KubernetesBackend | None = None
        self._statuses: WorkQueue[FunctionRef] | None = None
        self._deployed: set[FunctionRef] = set()   # functions whose Deployment the mirror has shown
        self._policies = NetworkPolicies(config.function_ingress)

    @property
    def api(self) -> client.ApiClient:
        if self._api is None:
            raise RuntimeError("the controller is not started")
        return self._api

    async def start(self) -> None:
        """Connect (unless given an API client), then start the autoscaler and the scheduler and, if
        either runs, the one `KubernetesBackend` they share, all in the background: the backend
        lists the cluster meanwhile, their terms wait for that, reconciling Functions never does.
        Returns at once; a failure stops what started and raises."""
        async with self._parts.starting() as parts:
            if self._api is None:
                self._api = await connect()
                parts.add("API client", self._close_api)
            if not self.config.namespaces:
                # Helm never upgrades crds/: say so when the installed CRD is not this build's (a
                # namespaced operator may read nothing outside its namespaces, the CRD included).
                parts.task("installed CRD check", lambda: installed_crd.check(
                    self.api, event_namespace=self.config.lease_namespace))
            if self._store is not None:
                parts.add("archive store client", self._store.close)
                parts.task("builds recheck", self._recheck_building)
            backend = self._backend = KubernetesBackend(self.api, namespaces=self.config.namespaces,
                                                        sync_timeout=self.config.sync_timeout)
            synced = asyncio.Event()
            parts.add("Kubernetes backend", backend.close)   # its informers retry until closed
            parts.task("Kubernetes backend sync", lambda: _sync(backend, synced))
            # Functions' status from their Deployments, as the backend's one Deployment informer
            # mirrors them (kopf watches no Deployments): a change waits STATUS_DELAY, so that the
            # few changes of a new or rolling Deployment make one write, and the write of the
            # reconcile that made it is seen first.
            # A key is never dropped: a Deployment deleted while the API fails is recreated by no
            # other event (a function deleted meanwhile succeeds at once: nothing to do).
            statuses = self._statuses = WorkQueue("function status", self.sync_status,
                                                  workers=STATUS_WORKERS, retries=None)
            backend.add_deployment_listener(self._deployment_changed)
            parts.task("function status", statuses.run)
            # Warm pools (off: the pool Deployments there are deleted, then the task ends).
            parts.task("old Services", self._delete_old_services)
            pools = Pools(self.api, self.config, backend, synced=synced, store=self._store)
            parts.task("warm pools", pools.run)
            if self.config.autoscaler:
                autoscaling = OperatorAutoscaler(self.api, self.config, backend, synced=synced)
                await parts.start("autoscaler", autoscaling.start, autoscaling.close)
            if self.config.scheduler:
                scheduling = OperatorScheduler(self.api, self.config, backend, synced=synced)
                await parts.start("scheduler", scheduling.start, scheduling.close)

    async def _delete_old_services(self) -> None:
        """Delete the Services earlier versions of kfn made for each Function (the gateway reaches
        pods at their IPs; a Service only put the instance's port in front of every pod of the
        cluster, and a thousand of them cost kube-proxy a rule sync each). One pass, at start;
        a failure is logged and left for the next start."""
        core = client.CoreV1Api(self.api)
        selector = f"{naming.LABEL_MANAGED_BY}={naming.MANAGED_BY},{naming.LABEL_COMPONENT}={naming.COMPONENT_FUNCTION}"
        try:
            listings = ([await core.list_namespaced_service(ns, label_selector=selector)
                         for ns in self.config.namespaces] if self.config.namespaces else
                        [await core.list_service_for_all_namespaces(label_selector=selector)])
            for listing in listings:
                for service in listing.items or ():
                    meta = service.metadata
                    if meta is None or not meta.name or not meta.namespace:
                        continue
                    if (meta.labels or {}).get(naming.LABEL_FUNCTION) != meta.name or not any(
                            ref.kind == naming.KIND and ref.api_version == f"{naming.GROUP}/{naming.VERSION}"
                            and ref.name == meta.name for ref in meta.owner_references or ()):
                        # Not one kfn made: those were named after their Function, and labelled so
                        # (a user's copy under another name keeps the labels and the owner).
                        continue
                    try:
                        await core.delete_namespaced_service(meta.name, meta.namespace)
                        logger.info("deleted the Service %s/%s an earlier kfn made", meta.namespace, meta.name)
                    except ApiException as e:
                        if e.status != 404:
                            raise
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - the next start tries again
            logger.warning("could not delete the Services earlier versions of kfn made for functions: %s", e)

    async def close(self) -> None:
        """Stop what `start` started, last first (waits for each, bounded); failures are logged."""
        await self._parts.stop()

    async def _close_api(self) -> None:
        if self._api is not None:
            await self._api.close()  # type: ignore[no-untyped-call]
            self._api = None

    # ---- reconciliation

    async def reconcile(self, body: Mapping[str, Any], patch: kopf.Patch, log: Log) -> None:
        """Bring the children to the spec; raises kopf.PermanentError for an invalid spec and
        lets API errors propagate (kopf retries those with backoff)."""
        try:
            fn = parse_function(_plain(body))
        except InvalidFunction as e:
            patch.setdefault("status", {}).update(status.invalid_status(body, e))
            await self.warn(body, status.REASON_INVALID_SPEC, str(e))
            raise kopf.PermanentError(f"invalid spec: {e}") from None
        try:
            self.config.images.image_for(fn)
        except ValueError as e:
            patch.setdefault("status", {}).update(status.invalid_status(
                body, InvalidFunction([FieldError("spec.runtime", str(e))])))
            await self.warn(body, status.REASON_INVALID_SPEC, str(e))
            raise kopf.PermanentError(str(e)) from None

        configmap = builders.build_code_configmap(fn)
        old_build = (body.get("status") or {}).get("build")
        prepared: builds.Prepared | None = None
        try:
            if fn.spec.requirements and self._store is not None:
                prepared = await builds.Builds(self.api, self.config, self._store).prepare(fn, body, log)
                if prepared.archive is None:
                    # Nothing is touched until the archive exists: the previous spec's pods keep serving.
                    await self._report_build(body, prepared.build, old_build)
                    patch.setdefault("status", {}).update(status.build_status(body, prepared.build))
                    return
            if configmap is not None:
                kopf.adopt(configmap, owner=_body(body))
                await self._ensure_configmap(configmap, log)
            deployment = await self._ensure_deployment(fn, body, log,
                                                       archive=prepared.archive if prepared is not None else None)
            await self._policies.ensure(self.api, fn.namespace, log)   # once per namespace; never raises
        except ApiException as e:
            if conflicted(e):
                # A child changed between reading and patching it (its controller wrote its status):
                # read it again in a second, not after kopf's default minute of backoff.
                raise kopf.TemporaryError("a child changed while it was updated: reading it again",
                                          delay=1) from None
            if not namespace_terminating(e):
                raise
            # The namespace is being deleted with the Function in it (an operator that starts, or
            # resumes, just then): its children would go with it, so none is built and nothing is
            # retried; the Function's own deletion follows.
            log.info("namespace %s is being deleted: %s is not built", fn.namespace, fn.name)
            return
        old_code = (body.get("status") or {}).get("codeHash")
        if configmap is not None and old_code is not None and old_code != fn.code_hash():
            # Only when the code changed: a new Function has no old code to list (one list per
            # Function created costs the API server a scan of the namespace's ConfigMaps).
            await self._collect_old_code(fn, body, keep=configmap["metadata"]["name"], log=log)

        new_status = status.deployment_status(body, deployment,
                                              build=prepared.build if prepared is not None else None)
        new_status["observedGeneration"] = (body.get("metadata") or {}).get("generation")
        new_status["codeHash"] = fn.code_hash()
        if prepared is not None:
            new_status["build"] = prepared.build
        elif old_build is not None:
            new_status["build"] = None   # pip in each pod again, or no requirements any more
        changed = _changed_status(body.get("status") or {}, new_status)
        if changed:
            # Only what changed: an unchanged Function (every one, when the operator starts and kopf
            # resumes them all) costs no status write.
            patch.setdefault("status", {}).update(changed)

    async def _report_build(self, body: Mapping[str, Any], build: Mapping[str, Any],
                            old: Mapping[str, Any] | None) -> None:
        """A Warning event when this Function's build of this key has just failed (once per failure)."""
        if build.get("state") != status.BUILD_FAILED:
            return
        if old and old.get("key") == build.get("key") and old.get("state") == status.BUILD_FAILED:
            return
        await self.warn(body, status.REASON_BUILD_FAILED, build.get("message") or "")

    async def warn(self, fn_body: Mapping[str, Any], reason: str, message: str) -> None:
        """Post a Warning Event about a Function through the operator's own API client; returns once
        posted, and a failure is logged, never raised (the status says it too).

        Not `kopf.warn`: that needs the context kopf sets only for its per-object handlers, and the
        Functions are also reconciled outside them (the recheck of those still Building), where it
        raises LookupError: the reconcile failed before writing its status, every time."""
        event = status.warning_event(fn_body, reason=reason, message=message)
        try:
            await client.CoreV1Api(self.api).create_namespaced_event(
                event["metadata"]["namespace"], typed(client.CoreV1Event, event))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - an Event is best effort; never fail a reconcile for it
            logger.warning("could not post the %s event of Function %s: %s", reason,
                           (fn_body.get("metadata") or {}).get("name"), e)

    async def build_ended(self, job: Mapping[str, Any], log: Log, *, deleted: bool = False) -> None:
        """Reconcile the Functions waiting for a build Job that ended or was `deleted` (nothing while it
        runs), writing their status. A finished or deleted Job sends no more events, so a Function
        whose reconcile fails for now (the store cannot say whether the Job stored its archive, an API
        error) is tried again every `builds.STORE_RETRY` seconds while it still waits for this key:
        runs until none is left. API errors listing the Functions propagate."""
        if self._store is None or (not deleted and builds.job_outcome(job) is None):
            return
        retrying: set[str] | None = None   # the names of the Functions to try again, after the first round
        while True:
            failed: set[str] = set()
            for fn_body in await builds.Builds(self.api, self.config, self._store).waiting(job):
                meta = fn_body["metadata"]
                if meta.get("deletionTimestamp") or (retrying is not None and meta["name"] not in retrying):
                    continue
                try:
                    await self._reconcile_and_write(fn_body, log)
                except (kopf.TemporaryError, ApiException) as e:
                    log.warning("Function %s, waiting for build Job %s: %s; trying again in %gs", meta["name"],
                                (job.get("metadata") or {}).get("name"), e, builds.STORE_RETRY)
                    failed.add(meta["name"])
            if not failed:
                return
            retrying = failed
            await asyncio.sleep(builds.STORE_RETRY)

    async def _recheck_building(self) -> None:
        """Every `builds.BUILDING_RECHECK` seconds, reconcile the Functions whose status still says
        Building (see there why): runs until cancelled; a pass that fails is logged, and the next
        one tries again."""
        custom = client.CustomObjectsApi(self.api)
        while True:
            await asyncio.sleep(builds.BUILDING_RECHECK)
            try:
                listings = ([await custom.list_namespaced_custom_object(naming.GROUP, naming.VERSION, namespace,
                                                                        naming.PLURAL)
                             for namespace in self.config.namespaces] if self.config.namespaces else
                            [await custom.list_cluster_custom_object(naming.GROUP, naming.VERSION, naming.PLURAL)])
                for listing in listings:
                    for item in cast(Mapping[str, Any], listing).get("items") or ():
                        build = (item.get("status") or {}).get("build") or {}
                        deleting = (item.get("metadata") or {}).get("deletionTimestamp")
                        if build.get("state") == status.BUILD_BUILDING and not deleting:
                            await self._reconcile_and_write(dict(item), logger)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the next pass tries again
                logger.warning("could not look again at the Functions waiting for a build: %s", e)

    async def _reconcile_and_write(self, fn_body: dict[str, Any], log: Log) -> None:
        """Reconcile a Function outside kopf's handlers (a build Job ended, a Deployment deleted, a
        recheck) and write its status; kopf.TemporaryError and API errors propagate."""
        meta = fn_body["metadata"]
        patch: dict[str, Any] = {}
        try:
            await self.reconcile(fn_body, patch, log)  # type: ignore[arg-type]  # a dict serves as kopf.Patch
        except kopf.PermanentError:
            pass  # the InvalidSpec status below says why
        if patch.get("status"):
            await patch_function_status(self.api, FunctionRef(meta["namespace"], meta["name"]), patch["status"])

    async def _ensure_configmap(self, configmap: dict[str, Any], log: Log) -> None:
        meta = configmap["metadata"]
        try:
            await client.CoreV1Api(self.api).create_namespaced_config_map(
                meta["namespace"], typed(client.V1ConfigMap, configmap))
            log.info("created ConfigMap %s", meta["name"])
        except ApiException as e:
            # Content-addressed and immutable: an existing one with this name has this content.
            if e.status != 409:
                raise

    async def _ensure_deployment(self, fn: Function, owner: Mapping[str, Any], log: Log, *,
                                 archive: Archive | None) -> dict[str, Any]:
        """Create the Deployment (its pods fetching `archive`, when given), or bring an existing one
        to the spec; returns it as a manifest. A Function never reconciled before (no
        status.observedGeneration) has its Deployment created without reading first: one call
        fewer per Function of a batch; a 409 then reads what is there and brings it to the spec."""
        apps = client.AppsV1Api(self.api)
        existing: dict[str, Any] | None = None
        first = (owner.get("status") or {}).get("observedGeneration") is None
        if not first:
            existing = await self._read_deployment(fn)
        if existing is None:
            deployment = builders.build_deployment(fn, images=self.config.images, pip=self.config.pip,
                                                  region=self.config.region, replicas=fn.spec.scale.minReplicas,
                                                  archive=archive)
            kopf.adopt(deployment, owner=_body(owner))
            try:
                created = await apps.create_namespaced_deployment(fn.namespace, typed(client.V1Deployment, deployment))
            except ApiException as e:
                if e.status != 409:
                    raise
                created = None
            if created is not None:
                log.info("created Deployment %s with %d replicas", fn.name, fn.spec.scale.minReplicas)
                return manifest(created)
            # It exists: created meanwhile (another replica of the operator, or a restart mid-way),
            # or this Function's status was never written. Never a second one: bring it to the spec,
            # or, when it cannot be read back yet, let the next reconcile do so.
            existing = await self._read_deployment(fn) if first else None
            if existing is None:
                raise kopf.TemporaryError("the Deployment appeared while creating it", delay=1) from None
        wanted = builders.build_deployment(fn, images=self.config.images, pip=self.config.pip,
                                           region=self.config.region, replicas=None, archive=archive)
        kopf.adopt(wanted, owner=_body(owner))
        meta = existing.get("metadata") or {}
        template_annotations = ((existing.get("spec") or {}).get("template") or {}).get("metadata", {}).get(
            "annotations") or {}
        digest = wanted["metadata"]["annotations"][naming.ANNOTATION_SPEC_HASH]
        if (template_annotations.get(naming.ANNOTATION_SPEC_HASH) == digest
                and (meta.get("annotations") or {}).get(naming.ANNOTATION_SPEC_HASH) == digest
                and _owners(meta) == _owners(wanted["metadata"])):
            # Left alone only when this Function owns it: one an older Function of the same name
            # left (its garbage collection pending) is adopted, not deleted from under the new one.
            return dict(existing)
        # Everything but replicas (the autoscaler's) and the selector (immutable).
        ops = set_ops({
            pointer("metadata", "labels"): {**(meta.get("labels") or {}), **wanted["metadata"]["labels"]},
            pointer("metadata", "annotations"): {**(meta.get("annotations") or {}),
                                                 **wanted["metadata"]["annotations"]},
            pointer("metadata", "ownerReferences"): wanted["metadata"]["ownerReferences"],
            **{pointer("spec", key): value for key, value in wanted["spec"].items() if key != "selector"},
        }, resource_version=meta.get("resourceVersion"))
        updated = await apps.patch_namespaced_deployment(fn.name, fn.namespace, ops)
        log.info("updated Deployment %s (code %s)", fn.name, fn.code_hash())
        return manifest(updated)

    async def _read_deployment(self, fn: Function) -> dict[str, Any] | None:
        """The function's Deployment as a manifest, or None when there is none."""
        try:
            return manifest(await client.AppsV1Api(self.api).read_namespaced_deployment(fn.name, fn.namespace))
        except ApiException as e:
            if e.status != 404:
                raise
            return None

    async def _collect_old_code(self, fn: Function, owner: Mapping[str, Any], *, keep: str, log: Log) -> None:
        core = client.CoreV1Api(self.api)
        selector = f"{naming.LABEL_FUNCTION}={fn.name},{naming.LABEL_COMPONENT}={builders.COMPONENT_CODE}"
        listing = await core.list_namespaced_config_map(fn.namespace, label_selector=selector)
        owner_uid = (owner.get("metadata") or {}).get("uid")
        old = [cm.metadata for cm in listing.items or ()
               if cm.metadata is not None and cm.metadata.name and cm.metadata.name != keep
               and any(ref.uid == owner_uid for ref in cm.metadata.owner_references or ())]
        old.sort(key=lambda meta: (meta.creation_timestamp.isoformat() if meta.creation_timestamp else "",
                                   int(meta.resource_version or 0)), reverse=True)
        for meta in old[KEPT_CODE_CONFIGMAPS - 1:]:
            assert meta.name is not None
            try:
                await core.delete_namespaced_config_map(meta.name, fn.namespace)
                log.info("deleted old code ConfigMap %s", meta.name)
            except ApiException as e:
                if e.status != 404:
                    raise

    async def restore(self, ref: FunctionRef, log: Log) -> bool:
        """Recreate a Function's children after its Deployment was deleted from under it; False
        when the Function is gone or going (nothing to recreate). API errors propagate."""
        fn_body = await self._get_function(ref)
        if fn_body is None or (fn_body.get("metadata") or {}).get("deletionTimestamp"):
            return False  # the Function is going away: the garbage collector took the Deployment
        log.warning("Deployment %s was deleted; recreating it", ref.name)
        await self._reconcile_and_write(fn_body, log)
        return True

    async def _get_function(self, ref: FunctionRef) -> dict[str, Any] | None:
        try:
            found = await client.CustomObjectsApi(self.api).get_namespaced_custom_object(
                naming.GROUP, naming.VERSION, ref.namespace, naming.PLURAL, ref.name)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        return dict(cast(Mapping[str, Any], found))

    # ---- status

    def _deployment_changed(self, ref: FunctionRef) -> None:
        """The mirror's word that the function's Deployment, or its Function's status, changed."""
        if self._backend is not None and self._backend.deployment(ref) is not None:
            self._deployed.add(ref)   # gone later while its Function stays: recreated (sync_status)
        if self._statuses is not None:
            self._statuses.add_after(ref, STATUS_DELAY)

    async def sync_status(self, ref: FunctionRef) -> None:
        """Copy the state of a function's Deployment, as the operator's one Deployment informer
        mirrors it, into the Function's status, only when something changed; recreate the
        Deployment when it went while its Function stays.

        The Function comes from the mirror too (no read per change); the write is conditional on
        the Function as seen, so a concurrent InvalidSpec wins. When the Function changed in between
        (409: kopf's own annotations, a status written elsewhere, a mirror behind), it is read
        through the API and the status computed anew, up to STATUS_WRITE_ATTEMPTS times; a conflict
        after that, like any other API error, propagates (the status queue tries again later).
        """
        backend = self._backend
        if backend is None:
            return
        fn = backend.function(ref)
        if fn is None or fn.metadata.model_extra and fn.metadata.model_extra.get("deletionTimestamp"):
            self._deployed.discard(ref)
            return  # being deleted: the garbage collector takes the Deployment too
        state = backend.deployment(ref)
        if state is None:
            # Recreated once: the Deployment it makes is seen again (and a failure here is retried
            # by the queue, the function still remembered); forgotten once the Function is gone.
            if ref in self._deployed and not await self.restore(ref, logger):
                self._deployed.discard(ref)
            return
        deployment = state.as_manifest()
        fn_body: dict[str, Any] | None = {"metadata": fn.metadata.model_dump(exclude_defaults=True),
                                           "status": fn.status or {}}
        for attempt in range(1, STATUS_WRITE_ATTEMPTS + 1):
            if fn_body is None or (fn_body.get("metadata") or {}).get("deletionTimestamp"):
                return
            meta = fn_body["metadata"]
            current = fn_body.get("status") or {}
            conditions = current.get("conditions") or ()
            if any(c.get("type") == status.READY and c.get("reason") == status.REASON_INVALID_SPEC
                   for c in conditions):
                return  # the running Deployment is from an earlier, valid spec; the error stays visible
            new = status.deployment_status(fn_body, deployment, build=current.get("build"))
            if all(current.get(k) == v for k, v in new.items() if k != "conditions") and \
                    _same_conditions(conditions, new["conditions"]):
                return
            try:
                await patch_function_status(self.api, ref, new, resource_version=meta.get("resourceVersion"))
            except ApiException as e:
                if not conflicted(e) or attempt == STATUS_WRITE_ATTEMPTS:
                    raise
                fn_body = await self._get_function(ref)
                continue
            ready = next(c for c in new["conditions"] if c["type"] == status.READY)
            was_failing = any(c.get("type") == status.READY and c.get("reason") == status.REASON_DEPLOYMENT_FAILED
                              for c in conditions)
            if ready["reason"] == status.REASON_DEPLOYMENT_FAILED and not was_failing:
                await self.warn(fn_body, status.REASON_DEPLOYMENT_FAILED, ready["message"])
            return


async def _sync(backend: KubernetesBackend, synced: asyncio.Event) -> None:
    """Start `backend` and set `synced` once it has listed the cluster; runs until then, however
    long (its informers retry a failing API, each sync timeout is logged)."""
    while True:
        try:
            await backend.start()
        except TimeoutError:
            logger.warning("the cluster is not listed yet (Functions, Deployments, pods): the autoscaler and "
                           "the scheduler wait for it")
            continue
        synced.set()
        return


def _changed_status(current: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of `new` that differ from `current` (conditions compared without their
    transition times; a field set to None differs only from one present)."""
    changed: dict[str, Any] = {}
    for key, value in new.items():
        if key == "conditions":
            if not _same_conditions(current.get(key), value):
                changed[key] = value
        elif value is None:
            if current.get(key) is not None:
                changed[key] = None
        elif current.get(key) != value:
            changed[key] = value
    return changed


def _owners(meta: Mapping[str, Any]) -> list[tuple[Any, Any]]:
    """The (uid, controller) of each owner in `meta`, the fields adoption decides."""
    return sorted(((o.get("uid"), bool(o.get("controller"))) for o in meta.get("ownerReferences") or ()),
                  key=str)


def _same_conditions(old: Any, new: list[dict[str, Any]]) -> bool:
    def strip(conditions: Any) -> list[dict[str, Any]]:
        return sorted(({k: v for k, v in c.items() if k != "lastTransitionTime"} for c in conditions or ()),
                      key=lambda c: str(c.get("type", "")))
    return strip(old) == strip(new)


def _plain(body: Mapping[str, Any]) -> dict[str, Any]:
    """A kopf Body as the manifest dict parse_function expects (without kopf's own annotations)."""
    raw = dict(body)
    return {k: v for k, v in raw.items() if k in ("apiVersion", "kind", "metadata", "spec")}




class DigestDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """kopf's last-handled state, with the spec replaced by its digest.

    kopf keeps the last handled spec to tell real changes from noise, by default verbatim in an
    annotation. Inline code may make a spec approach 1 MiB, while all annotations of an object
    must stay under 256 KiB; the handlers never read kopf's per-field diff, so a digest that
    changes whenever the spec does is all they need.
    """

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> Any:
        essence = super().build(body=body, extra_fields=extra_fields)
        if "spec" in essence:
            blob = json.dumps(essence["spec"], sort_keys=True, separators=(",", ":"))
            essence["spec"] = {"sha256": hashlib.sha256(blob.encode()).hexdigest()}
        return essence


def make_settings(config: OperatorConfig) -> kopf.OperatorSettings:
    """kopf settings kfn relies on."""
    settings = kopf.OperatorSettings()
    # Progress and the last-handled spec live in annotations, so the CRD's status schema stays
    # kfn's own (no `status.kopf` to allow).
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=naming.GROUP)
    settings.persistence.diffbase_storage = DigestDiffBaseStorage(prefix=naming.GROUP, key="last-handled-spec")
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.watching.reconnect_backoff = 1.0
    # One replica runs kopf at all: the one holding the operator's Lease (kfn_operator.main), so
    # kopf's peering (which lets replicas of equal priority act side by side) is never used.
    settings.peering.standalone = True
    # Watching named namespaces needs no cluster-wide list of namespaces or CRDs: the namespaced
    # RBAC variant grants none (see kfn_operator.rbac).
    settings.scanning.disabled = bool(config.namespaces)
    return settings


def register(registry: kopf.OperatorRegistry, controller: Controller) -> None:
    """Add kfn's handlers to `registry`."""
    resource = (naming.GROUP, naming.VERSION, naming.PLURAL)

    # Starting needs only local configuration: a failure is not worth kopf's minute-long retries.
    @kopf.on.startup(registry=registry, errors=kopf.ErrorsMode.PERMANENT)
    async def start(**_: Any) -> None:
        await controller.start()

    @kopf.on.cleanup(registry=registry)
    async def stop(**_: Any) -> None:
        await controller.close()

    @kopf.on.resume(*resource, registry=registry)
    @kopf.on.create(*resource, registry=registry)
    @kopf.on.update(*resource, registry=registry, field="spec")
    async def reconcile(body: kopf.Body, patch: kopf.Patch, logger: Log, **_: Any) -> None:
        await controller.reconcile(body, patch, logger)

    if controller.config.builds:
        @kopf.on.event("batch", "v1", "jobs", registry=registry,
                       labels={naming.LABEL_MANAGED_BY: naming.MANAGED_BY,
                               naming.LABEL_COMPONENT: builders.COMPONENT_BUILD})
        async def build_changed(type: str, body: kopf.Body, logger: Log, **_: Any) -> None:
            try:
                # A Job deleted before it ended is started again for the Functions still waiting for it.
                await controller.build_ended(dict(body), logger, deleted=type == "DELETED")
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - never crash the watch; the next event of the Job retries
                logger.warning("could not reconcile the Functions waiting for build Job %s: %s",
                               body.get("metadata", {}).get("name"), e)
