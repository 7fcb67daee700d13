"""API keys from Kubernetes Secrets, followed through informers (rotation needs no restart).

- in each namespace the gateway serves, the Secret `kfn-api-keys` (`kfn.core.keys.SECRET_NAME`):
  each data entry is one key of that namespace (entry name = key id, value = the key);
- in the gateway's own namespace, the Secret `kfn-admin-keys` (`ADMIN_SECRET_NAME`): admin keys.

Only Secrets of exactly these names are listed and watched (a `metadata.name` field selector), so
the gateway's RBAC can name them (`resourceNames`) instead of granting every Secret. A key that
cannot be used (too short, a bad id) is logged and skipped; the others of its Secret still work.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import logging
from collections.abc import Sequence
from typing import Any

from kubernetes.aio import client

from kfn.core.aiotasks import stop_tasks
from kfn.core.keys import ADMIN_SECRET_NAME, SECRET_NAME, InvalidKeys, KeyRing, check_key
from kfn.kube.informer import DELETED, Backoff, Informer

logger = logging.getLogger(__name__)


class SecretKeys:
    """A `KeySource` following the key Secrets of `namespaces` (empty: all) and the admin Secret
    of `admin_namespace` (None: no admin keys)."""

    def __init__(self, api: client.ApiClient, *, namespaces: Sequence[str] = (), admin_namespace: str | None = None,
                 secret_name: str = SECRET_NAME, admin_secret_name: str = ADMIN_SECRET_NAME,
                 backoff: Backoff | None = None, sync_timeout: float = 10.0) -> None:
        self._core = client.CoreV1Api(api)
        self._namespaces = tuple(dict.fromkeys(namespaces))
        self._admin_namespace = admin_namespace
        self._secret_name = secret_name
        self._admin_secret_name = admin_secret_name
        self._backoff = backoff or Backoff()
        self._sync_timeout = sync_timeout
        # (namespace, is admin) → [(key id, secret)]
        self._secrets: dict[tuple[str, bool], list[tuple[str, str]]] = {}
        self._ring = KeyRing()
        self._informers: list[Informer] = []
        self._tasks: list[asyncio.Task[None]] = []

    def keys(self) -> KeyRing:
        return self._ring

    async def start(self) -> None:
        """Start following the Secrets; returns once each has been listed, or after `sync_timeout`
        (then the keys arrive when the API answers; until then no key is accepted)."""
        selector = f"metadata.name={self._secret_name}"
        for ns in self._namespaces or (None,):
            lister: tuple[Any, ...] = ((self._core.list_namespaced_secret, ns) if ns is not None
                                       else (self._core.list_secret_for_all_namespaces,))
            self._informers.append(Informer(
                f"API key Secrets{f' in {ns}' if ns else ''}", *lister, field_selector=selector,
                on_replace=functools.partial(self._replace, ns, False), on_event=functools.partial(self._event, False),
                backoff=self._backoff))
        if self._admin_namespace is not None:
            self._informers.append(Informer(
                f"the admin key Secret in {self._admin_namespace}", self._core.list_namespaced_secret,
                self._admin_namespace, field_selector=f"metadata.name={self._admin_secret_name}",
                on_replace=functools.partial(self._replace, self._admin_namespace, True),
                on_event=functools.partial(self._event, True), backoff=self._backoff))
        self._tasks = [asyncio.create_task(i.run(), name=f"kfn-informer-{i.what}") for i in self._informers]
        try:
            # Each in turn under one deadline: no gathering future left unread when cancelled meanwhile.
            async with asyncio.timeout(self._sync_timeout):
                for informer in self._informers:
                    await informer.synced.wait()
        except TimeoutError:
            logger.error("could not list the API key Secrets within %gs (RBAC? see the gateway's log above); "
                         "no key is accepted until they are read", self._sync_timeout)

    async def close(self) -> None:
        await stop_tasks(self._tasks, what="API key informers")
        self._tasks.clear()
        self._informers.clear()

    def _replace(self, ns: str | None, admin: bool, items: list[Any]) -> None:
        for key in [k for k in self._secrets if k[1] == admin and (ns is None or k[0] == ns)]:
            del self._secrets[key]
        for secret in items:
            self._store(secret, admin)
        self._rebuild()

    def _event(self, admin: bool, kind: str, secret: Any) -> None:
        namespace = secret.metadata.namespace or ""
        if kind == DELETED:
            self._secrets.pop((namespace, admin), None)
        else:
            self._store(secret, admin)
        self._rebuild()

    def _store(self, secret: Any, admin: bool) -> None:
        namespace = secret.metadata.namespace or ""
        name = secret.metadata.name
        if name != (self._admin_secret_name if admin else self._secret_name):
            return   # a field selector the server ignored
        entries = []
        for key_id, value in sorted((secret.data or {}).items()):
            try:
                text = base64.b64decode(value, validate=True).decode("utf-8").strip()
                check_key(key_id, text)
            except (binascii.Error, UnicodeDecodeError) as e:
                logger.error("Secret %s/%s: entry %r is not a key: %s", namespace, name, key_id, type(e).__name__)
                continue
            except InvalidKeys as e:
                logger.error("Secret %s/%s: %s; that key is ignored", namespace, name, e)
                continue
            entries.append((key_id, text))
        self._secrets[(namespace, admin)] = entries

    def _rebuild(self) -> None:
        before = len(self._ring)
        self._ring = KeyRing.of((key_id, None if admin else namespace, secret)
                                for (namespace, admin), entries in self._secrets.items()
                                for key_id, secret in entries)
        if len(self._ring) != before:
            logger.info("API keys: %s", self._ring.summary())
