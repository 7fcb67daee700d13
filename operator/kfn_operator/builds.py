"""Requirements built once: the operator's side of `kfn_runtime.build` and `kfn_runtime.fetch`.

For a Function with requirements, `Builds.prepare` finds the archive its pods fetch: the one its
status already names, else the one the archive store (the gateway's `/system/archives/NS/KEY`)
has, else it starts the build Job (`builders.build_job`: one per archive key and namespace, shared
by every Function needing that key) and says the Function waits. Nothing here waits for a build:
when a Job ends, the Job watch (`kfn_operator.handlers`) reconciles the Functions waiting for it
(`Builds.waiting`), and `prepare` then finds the archive stored, or the Job failed (its pod's
termination message, which the build writes, is the reason). A failed Job is the memory of a failed
key: while it exists (Kubernetes deletes it `builders.BUILD_JOB_TTL_SECONDS` after it ended) its key
is not built again; once it is deleted (so too a Job deleted while it ran) the Job watch reconciles
the Functions waiting for it, which builds again. A store that refuses the operator's own tokens
(403: the operator's and the gateway's signing keys differ) fails the build at once, no Job started:
no build could store its archive.
"""
from __future__ import annotations

import enum
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import aiohttp
import kopf
from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from kfn.core import naming
from kfn.core.functions import Function
from kfn.core.instancespec import Archive, archive_url
from kfn.kube.resources import manifest, typed
from kfn_operator import builders, status
from kfn_operator.config import OperatorConfig
from kfn_runtime import archive as archives

logger = logging.getLogger(__name__)

# How long the store may take to say whether it has an archive (a HEAD); past it, "unknown".
LOOKUP_TIMEOUT = 5.0
# Seconds before asking the store again when it could not say whether a finished build stored its archive.
STORE_RETRY = 10.0
# How often a Function still Building is reconciled anyway: a Job that ended before the Function's
# status named its key (kopf writes it once the reconcile returns) concerns no Function when its last
# event comes, and nothing else would ever look again.
BUILDING_RECHECK = 10.0
# The header in which the store answers an archive's digest.
DIGEST_HEADER = "X-Kfn-Archive-Digest"
# Functions listed per page when looking for those waiting for a Job.
LIST_PAGE = 100
# A failure's message in status.build and the Ready condition (the kubelet keeps 4 KiB of it).
MESSAGE_LIMIT = 4000

Log = logging.Logger | logging.LoggerAdapter[Any]


class Lookup(enum.Enum):
    ABSENT = "absent"     # the store answered 404
    REFUSED = "refused"   # the store answered 403: the operator's signing key is not the gateway's
    UNKNOWN = "unknown"   # the store could not be asked, or answered otherwise

# status.build.message when the store refuses the operator's own tokens: no build could store its archive.
KEY_REFUSED = ("the archive store answers 403 to this operator's tokens: the operator's and the gateway's "
               "signing keys (--archive-key-file) differ, so no build is started")


@dataclass(frozen=True)
class Prepared:
    """What `prepare` found: the archive to deploy with (None: not yet, or never) and status.build."""

    archive: Archive | None
    build: dict[str, Any]


class ArchiveStore:
    """Asks the archive store whether it has an archive, with the get token of that archive."""

    def __init__(self, base_url: str, secret: bytes, *, timeout: float = LOOKUP_TIMEOUT) -> None:
        self._base_url = base_url
        self._secret = secret
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    def url(self, namespace: str, key: str) -> str:
        return archive_url(self._base_url, namespace, key)

    def token(self, verb: str, namespace: str, key: str) -> str:
        return archives.token(self._secret, verb, namespace, key)

    def archive(self, namespace: str, key: str, digest: str) -> Archive:
        """What a pod of `namespace` needs to fetch archive `key`."""
        return Archive(self.url(namespace, key), self.token(archives.VERB_GET, namespace, key), digest)

    async def lookup(self, namespace: str, key: str) -> str | Lookup:
        """The digest of archive `key` of `namespace`, or ABSENT, or REFUSED (logged: the store refuses
        this operator's token), or UNKNOWN (logged) when the store cannot say; takes at most
        LOOKUP_TIMEOUT seconds and never raises."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        url = self.url(namespace, key)
        headers = {"Authorization": f"Bearer {self.token(archives.VERB_GET, namespace, key)}"}
        try:
            async with self._session.head(url, headers=headers, timeout=self._timeout) as response:
                digest = response.headers.get(DIGEST_HEADER, "")
                if response.status == 200 and digest.startswith(archives.DIGEST_PREFIX):
                    return digest
                if response.status == 404:
                    return Lookup.ABSENT
                if response.status == 403:
                    logger.error("the archive store answered HEAD %s with 403: the operator's signing key is not "
                                 "the gateway's", url)
                    return Lookup.REFUSED
                logger.warning("the archive store answered HEAD %s with %d", url, response.status)
        except (aiohttp.ClientError, TimeoutError) as e:
            logger.warning("the archive store cannot be asked for %s: %s", url, e or type(e).__name__)
        return Lookup.UNKNOWN

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def job_outcome(job: Mapping[str, Any]) -> bool | None:
    """True if the Job succeeded, False if it failed, None while it runs."""
    for condition in (job.get("status") or {}).get("conditions") or ():
        if condition.get("status") != "True":
            continue
        if condition.get("type") in ("Complete", "SuccessCriteriaMet"):
            return True
        if condition.get("type") in ("Failed", "FailureTarget"):
            return False
    return None


def _current_build(body: Mapping[str, Any]) -> Mapping[str, Any]:
    return (body.get("status") or {}).get("build") or {}


class Builds:
    """The builds of one operator: through its API client and the archive store."""

    def __init__(self, api: client.ApiClient, config: OperatorConfig, store: ArchiveStore) -> None:
        self._api = api
        self._config = config
        self._store = store

    def key(self, fn: Function) -> str:
        return builders.archive_key(fn, images=self._config.images, pip=self._config.pip)

    async def prepare(self, fn: Function, body: Mapping[str, Any], log: Log) -> Prepared:
        """The archive `fn`'s pods fetch, or the build it waits for (the Job started if it is not
        there); returns at once, whatever the build's state. API errors propagate;
        kopf.TemporaryError when the Job succeeded and the store cannot be asked."""
        key = self.key(fn)
        current = _current_build(body)
        job_name = builders.build_job_name(key)
        known_job = current.get("job") if current.get("key") == key else None
        if current.get("key") == key and current.get("digest"):
            return self._stored(fn, key, current["digest"], known_job)
        found = await self._store.lookup(fn.namespace, key)
        if isinstance(found, str):
            return self._stored(fn, key, found, known_job)
        if found is Lookup.REFUSED:
            return self._refused(key, known_job)
        job = await self._ensure_job(fn, key, log)
        outcome = job_outcome(job)
        if outcome is None:
            return Prepared(None, status.build_record(key=key, state=status.BUILD_BUILDING, job=job_name))
        if outcome is False:
            message = await self.failure_message(job)
            return Prepared(None, status.build_record(key=key, state=status.BUILD_FAILED, job=job_name,
                                                      message=message))
        # The Job stored the archive after the store was asked, or the store lost it since.
        found = await self._store.lookup(fn.namespace, key)
        if isinstance(found, str):
            return self._stored(fn, key, found, job_name)
        if found is Lookup.REFUSED:
            return self._refused(key, job_name)
        if found is Lookup.UNKNOWN:
            raise kopf.TemporaryError(f"the build Job {job_name} succeeded; the archive store cannot be asked "
                                      "for its archive", delay=STORE_RETRY)
        # Stored once, gone since (the store's data lost): build it again.
        log.warning("the archive store no longer has archive %s that Job %s built: building it again", key, job_name)
        await self._delete_job(job_name, fn.namespace)
        await self._ensure_job(fn, key, log)
        return Prepared(None, status.build_record(key=key, state=status.BUILD_BUILDING, job=job_name))

    def _stored(self, fn: Function, key: str, digest: str, job: str | None) -> Prepared:
        return Prepared(self._store.archive(fn.namespace, key, digest),
                        status.build_record(key=key, state=status.BUILD_STORED, job=job, digest=digest))

    @staticmethod
    def _refused(key: str, job: str | None) -> Prepared:
        """Failed: the store refuses this operator's tokens, so no build of it could be stored or fetched."""
        return Prepared(None, status.build_record(key=key, state=status.BUILD_FAILED, job=job,
                                                  message=KEY_REFUSED))

    async def _ensure_job(self, fn: Function, key: str, log: Log) -> dict[str, Any]:
        """The build Job of `key` in `fn`'s namespace: created, or the one there (another Function's,
        or an earlier attempt's: it builds the same key)."""
        batch = client.BatchV1Api(self._api)
        job = builders.build_job(fn, key, images=self._config.images, pip=self._config.pip,
                                 archive_url=self._store.url(fn.namespace, key),
                                 token=self._store.token(archives.VERB_PUT, fn.namespace, key),
                                 timeout=self._config.build_timeout, resources=self._config.build_resources)
        name = job["metadata"]["name"]
        try:
            created = manifest(await batch.create_namespaced_job(fn.namespace, typed(client.V1Job, job)))
            log.info("started build Job %s for archive %s", name, key)
            return created
        except ApiException as e:
            if e.status != 409:
                raise
        existing = manifest(await batch.read_namespaced_job(name, fn.namespace))
        if ((existing.get("metadata") or {}).get("labels") or {}).get(naming.LABEL_ARCHIVE) != key:
            raise kopf.PermanentError(f"the Job {name} exists and builds something else: delete it")
        return existing

    async def _delete_job(self, name: str, namespace: str) -> None:
        """Delete a build Job and its pod (gone already: fine)."""
        try:
            await client.BatchV1Api(self._api).delete_namespaced_job(name, namespace,
                                                                    propagation_policy="Background")
        except ApiException as e:
            if e.status != 404:
                raise

    async def failure_message(self, job: Mapping[str, Any]) -> str:
        """Why a build Job failed: its pod's termination message (the build's reason and the
        installer's last lines), else the Job's own condition (its deadline passed, ...)."""
        meta = job.get("metadata") or {}
        name, namespace = meta.get("name", ""), meta.get("namespace", "")
        pods = await client.CoreV1Api(self._api).list_namespaced_pod(namespace, label_selector=f"job-name={name}")
        for pod in pods.items or ():
            for container in (pod.status.container_statuses or ()) if pod.status else ():
                terminated = container.state.terminated if container.state else None
                if terminated is not None and terminated.message and terminated.message.strip():
                    return _clip(f"the build Job {name} failed: {terminated.message.strip()}")
        for condition in (job.get("status") or {}).get("conditions") or ():
            if condition.get("type") in ("Failed", "FailureTarget") and condition.get("status") == "True":
                detail = condition.get("message") or condition.get("reason") or ""
                return _clip(f"the build Job {name} failed: {detail}".rstrip(": "))
        return f"the build Job {name} failed"

    async def waiting(self, job: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The Functions of the Job's namespace whose status.build names its key and is not stored:
        those its end concerns (listed page by page)."""
        meta = job.get("metadata") or {}
        key = (meta.get("labels") or {}).get(naming.LABEL_ARCHIVE)
        namespace = meta.get("namespace")
        if not key or not namespace:
            return []
        found: list[dict[str, Any]] = []
        token: str | None = None
        custom = client.CustomObjectsApi(self._api)
        while True:
            kwargs: dict[str, Any] = {"limit": LIST_PAGE}
            if token:
                kwargs["_continue"] = token
            page = cast(Mapping[str, Any], await custom.list_namespaced_custom_object(
                naming.GROUP, naming.VERSION, namespace, naming.PLURAL, **kwargs))
            for item in page.get("items") or ():
                build = _current_build(item)
                if build.get("key") == key and build.get("state") != status.BUILD_STORED:
                    found.append(dict(item))
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return found


def _clip(text: str) -> str:
    return text if len(text) <= MESSAGE_LIMIT else "…" + text[-(MESSAGE_LIMIT - 1):]
