"""The NetworkPolicy `kfn-functions` of each function namespace: only the gateway reaches function pods.

Where the chart has `networkPolicy.enabled` (the operator's `$KFN_NETWORK_POLICY`), the first
reconcile of a Function in a namespace makes sure that namespace has the policy
`builders.build_network_policy` describes (created, or its spec put back to what it should be),
once per namespace for the life of the process. The policy only admits: function and pool pods take
connections on the instance's port from the gateway's pods, nothing else; what function pods may
send is left to the namespace's own policies. A policy stays when the namespace's last Function goes
(it selects nothing then), and after `helm uninstall`, like the pool Deployments.

A failure (no permission, the API down) never holds up a Function: it is logged, and tried again by
a reconcile in that namespace after `RETRY_SECONDS`.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from kfn.kube.resources import namespace_terminating, pointer, set_ops, typed
from kfn_operator import builders

logger = logging.getLogger(__name__)

Log = logging.Logger | logging.LoggerAdapter[Any]

# A namespace whose policy could not be written is tried again no sooner than this.
RETRY_SECONDS = 60.0


class NetworkPolicies:
    """Keeps the function namespaces' NetworkPolicy, one write per namespace per process."""

    def __init__(self, ingress: builders.FunctionIngress | None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ingress = ingress
        self._clock = clock
        self._done: set[str] = set()
        self._failed_at: dict[str, float] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def ensure(self, api: client.ApiClient, namespace: str, log: Log) -> None:
        """Make sure `namespace` has its policy (nothing when policies are off, or it was done).
        Takes one or two API calls the first time, none after; never raises: a failure is logged
        and retried by a call after RETRY_SECONDS."""
        if self._ingress is None or namespace in self._done:
            return
        failed_at = self._failed_at.get(namespace)
        if failed_at is not None and self._clock() - failed_at < RETRY_SECONDS:
            return
        lock = self._locks.setdefault(namespace, asyncio.Lock())
        async with lock:
            if namespace in self._done:
                return
            try:
                await self._write(api, namespace, log)
            except ApiException as e:
                self._failed_at[namespace] = self._clock()
                if not namespace_terminating(e):
                    log.warning("could not write the NetworkPolicy %s/%s (%s %s): function pods there take "
                                "connections from anywhere until it exists; trying again in %.0f s",
                                namespace, builders.NETWORK_POLICY_NAME, e.status, e.reason, RETRY_SECONDS)
                return
            except (TimeoutError, OSError) as e:
                self._failed_at[namespace] = self._clock()
                log.warning("could not write the NetworkPolicy %s/%s (%s); trying again in %.0f s",
                            namespace, builders.NETWORK_POLICY_NAME, e, RETRY_SECONDS)
                return
            self._done.add(namespace)
            self._failed_at.pop(namespace, None)
        self._locks.pop(namespace, None)

    async def _write(self, api: client.ApiClient, namespace: str, log: Log) -> None:
        assert self._ingress is not None
        wanted = builders.build_network_policy(namespace, self._ingress)
        networking = client.NetworkingV1Api(api)
        try:
            await networking.create_namespaced_network_policy(namespace, typed(client.V1NetworkPolicy, wanted))
            log.info("created NetworkPolicy %s/%s: function pods take connections from the gateway only",
                     namespace, builders.NETWORK_POLICY_NAME)
            return
        except ApiException as e:
            if e.status != 409:
                raise
        # There already (an earlier operator, or another release's settings): put back its spec.
        await networking.patch_namespaced_network_policy(builders.NETWORK_POLICY_NAME, namespace, set_ops({
            pointer("metadata", "labels"): wanted["metadata"]["labels"],
            pointer("spec"): wanted["spec"],
        }))
