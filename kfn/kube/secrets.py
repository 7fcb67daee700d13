"""Secrets made once: created when missing, never changed once they exist.

The chart's keys (the admin key, the archive and pool keys, the NATS password) are made this way
by a Helm hook Job (`kfn secrets ensure`), so that `helm template` renders no random value: each
render of the chart is the same, and a key survives upgrades, `helm uninstall` and reinstalls.

`ensure` creates a Secret and treats 409 AlreadyExists as "keep it": the values it was given are
then dropped, whatever the existing Secret holds. It needs only `create` on Secrets (and `get`,
to say which entries an existing one lacks).

One exception, for upgrades from a chart that rendered these Secrets itself: an existing Secret
that a Helm release owns (annotation `meta.helm.sh/release-name`) is annotated
`helm.sh/resource-policy: keep` (its data untouched; this needs `patch` on it). The upgrade no
longer renders it, and Helm deletes what a release no longer renders, unless it is so annotated.
"""
from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import aiohttp
from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from kfn.kube.informer import describe

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Helm's annotations: the release that owns an object, and the policy that keeps Helm from deleting it.
HELM_RELEASE = "meta.helm.sh/release-name"
HELM_RESOURCE_POLICY = "helm.sh/resource-policy"

# Answers worth another attempt: the API server busy, restarting or briefly unreachable.
_TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})


class SecretsUnavailable(Exception):
    """The API refused or failed a request about a Secret; the message says which and why."""


@dataclass(frozen=True)
class Outcome:
    """What `ensure` did with one Secret: created it, or kept the existing one (`missing`: the
    entries asked for that the existing one lacks, left so; `kept_from_helm`: it belonged to a Helm
    release and was annotated to outlive it)."""

    namespace: str
    name: str
    created: bool
    missing: tuple[str, ...] = ()
    kept_from_helm: bool = False


async def ensure(api: client.ApiClient, namespace: str, name: str, data: Mapping[str, bytes], *,
                 labels: Mapping[str, str] | None = None, annotations: Mapping[str, str] | None = None,
                 attempts: int = 5, wait: float = 1.0) -> Outcome:
    """Create the Secret `namespace/name` with `data`, `labels` and `annotations`, unless one of
    that name exists.

    Runs until the API answered, at most `attempts` requests for each call it makes, `wait`
    seconds before the second and doubling after; only transient failures (429, 5xx, no
    connection) are tried again. Raises SecretsUnavailable for any other answer (403: RBAC)
    or when the attempts run out. Never changes an existing Secret.
    """
    core = client.CoreV1Api(api)
    body = client.V1Secret(
        metadata=client.V1ObjectMeta(name=name, namespace=namespace, labels=dict(labels or {}) or None,
                                     annotations=dict(annotations or {}) or None),
        type="Opaque", data={key: base64.b64encode(value).decode() for key, value in data.items()})
    try:
        await _attempt(f"create the Secret {namespace}/{name}", lambda: core.create_namespaced_secret(namespace, body),
                       attempts=attempts, wait=wait)
        return Outcome(namespace, name, created=True)
    except _Exists:
        pass
    existing = await _attempt(f"read the Secret {namespace}/{name}",
                              lambda: core.read_namespaced_secret(name, namespace), attempts=attempts, wait=wait)
    present = set((existing.data or {}).keys()) | set((getattr(existing, "string_data", None) or {}).keys())
    annotations = (existing.metadata.annotations if existing.metadata else None) or {}
    kept_from_helm = False
    if HELM_RELEASE in annotations and annotations.get(HELM_RESOURCE_POLICY) != "keep":
        patch = {"metadata": {"annotations": {HELM_RESOURCE_POLICY: "keep"}}}
        await _attempt(f"mark the Secret {namespace}/{name} kept ({HELM_RESOURCE_POLICY}: keep)",
                       lambda: core.patch_namespaced_secret(name, namespace, patch,
                                                           _content_type="application/merge-patch+json"),
                       attempts=attempts, wait=wait)
        kept_from_helm = True
    return Outcome(namespace, name, created=False, missing=tuple(k for k in data if k not in present),
                   kept_from_helm=kept_from_helm)


class _Exists(Exception):
    """409 AlreadyExists on create."""


async def _attempt(what: str, call: Callable[[], Awaitable[T]], *, attempts: int, wait: float) -> T:
    for attempt in range(1, max(1, attempts) + 1):
        try:
            return await call()
        except ApiException as e:
            if e.status == 409:
                raise _Exists() from e
            if e.status not in _TRANSIENT_STATUS or attempt >= attempts:
                raise SecretsUnavailable(f"could not {what}: {_message(e)}") from e
            error: BaseException = e
        except (OSError, TimeoutError, aiohttp.ClientError) as e:
            if attempt >= attempts:
                raise SecretsUnavailable(f"could not {what}: {describe(e)}") from e
            error = e
        logger.warning("could not %s (%s); trying again in %gs", what, describe(error), wait)
        await asyncio.sleep(wait)
        wait *= 2
    raise AssertionError("unreachable")


def _message(error: ApiException) -> str:
    """The API's own words (its Status message), else its HTTP status and reason."""
    try:
        message = json.loads(error.body or "{}").get("message")
    except (ValueError, AttributeError):
        message = None
    return f"HTTP {error.status} {error.reason}" + (f": {message}" if message else "")
