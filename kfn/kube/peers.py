"""The gateway's live replicas, from the EndpointSlices of its own Service.

Every gateway replica delivers stored asynchronous invocations from the shared queue, each taking
its share of a function's async concurrency (`kfn.events.delivery.delivery_share`). The share
must follow the replicas as a HorizontalPodAutoscaler or `kubectl scale` changes their number, so
`GatewayPeers` follows the EndpointSlices labelled `kubernetes.io/service-name=<the Service>` in
the gateway's namespace (one informer: list, then watch) and reports the count of its ready
endpoints (`ready_replicas`), this replica included, whenever it changes (0 when none is ready:
not known, the engine keeps its last count).

When the watch is not allowed (HTTP 401 or 403 on the first list: RBAC without
`discovery.k8s.io/endpointslices` in the gateway's namespace), `start` logs it once and reports
nothing: the engine keeps the count it was given (`kfn gateway --replicas`). Other errors are
retried by the informer meanwhile, the last count kept.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from kfn.core.aiotasks import stop_tasks
from kfn.kube.informer import DELETED, Backoff, Informer, describe

logger = logging.getLogger(__name__)

# The label the EndpointSlice controller puts on each slice of a Service: the Service's name.
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


def ready_replicas(slices: Iterable[Any], *, own_pod: str | None = None) -> int:
    """The pods ready behind `slices` (typed `V1EndpointSlice`s of one Service), each counted once
    however many slices or addresses name it (dual-stack Services have one slice per family), plus
    `own_pod` (this replica, named as its endpoints' targetRef names it) if not among them: a
    replica not ready yet, or draining, still delivers. An endpoint without a ready condition is
    ready (the API's meaning of an unknown condition). 0 when no endpoint is ready (the gateways
    starting, or all failing their readiness probe): nothing is known, and the caller keeps the
    count it had rather than each replica taking the whole concurrency."""
    pods: set[str] = set()
    for endpoint_slice in slices:
        for endpoint in endpoint_slice.endpoints or ():
            conditions = endpoint.conditions
            if conditions is not None and conditions.ready is False:
                continue
            target = endpoint.target_ref
            if target is not None and target.name:
                pods.add(f"pod:{target.name}")
            elif endpoint.addresses:
                pods.add(f"address:{sorted(endpoint.addresses)[0]}")
    if not pods:
        return 0
    if own_pod:
        pods.add(f"pod:{own_pod}")
    return len(pods)


class GatewayPeers:
    """Follows the ready endpoints of Service `service` in `namespace` and calls
    `on_change(replicas)` with their count (`ready_replicas`) each time it changes; see the module
    docstring."""

    def __init__(self, api: client.ApiClient, *, namespace: str, service: str,
                 on_change: Callable[[int], None], own_pod: str | None = None,
                 backoff: Backoff | None = None) -> None:
        self._discovery = client.DiscoveryV1Api(api)
        self.namespace = namespace
        self.service = service
        self._on_change = on_change
        self._own_pod = own_pod
        self._backoff = backoff or Backoff()
        self._selector = f"{SERVICE_NAME_LABEL}={service}"
        self._slices: dict[str, Any] = {}
        self.replicas: int | None = None   # the last count reported; None before the first list
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        """Following (False before `start`, after `close`, and once the watch was refused)."""
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start following, in the background (returns at once)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="kfn-gateway-peers")

    async def close(self) -> None:
        """Stop following (bounded); the last count stays where it was reported."""
        if self._task is not None:
            await stop_tasks([self._task], what="the gateway peers informer")
            self._task = None

    async def _run(self) -> None:
        """Runs until cancelled, or returns at once when the watch is not allowed."""
        if not await self._allowed():
            return
        informer = Informer(f"the EndpointSlices of Service {self.namespace}/{self.service}",
                            self._discovery.list_namespaced_endpoint_slice, self.namespace,
                            label_selector=self._selector, on_replace=self._replace, on_event=self._event,
                            backoff=self._backoff)
        await informer.run()

    async def _allowed(self) -> bool:
        """False if the API refuses listing the slices (401, 403); any other failure is the
        informer's to retry."""
        try:
            await self._discovery.list_namespaced_endpoint_slice(self.namespace, label_selector=self._selector,
                                                                 limit=1)
        except ApiException as e:
            if e.status in (401, 403):
                logger.warning("cannot list the EndpointSlices of Service %s/%s (%s): async delivery keeps "
                               "sharing among the --replicas count", self.namespace, self.service, describe(e))
                return False
        except Exception as e:  # noqa: BLE001 - unreachable for now: the informer retries
            logger.info("listing the EndpointSlices of Service %s/%s failed (%s); retrying",
                        self.namespace, self.service, describe(e))
        return True

    def _replace(self, items: list[Any]) -> None:
        self._slices = {item.metadata.name: item for item in items if item.metadata is not None}
        self._report()

    def _event(self, kind: str, item: Any) -> None:
        if item.metadata is None:
            return
        if kind == DELETED:
            self._slices.pop(item.metadata.name, None)
        else:
            self._slices[item.metadata.name] = item
        self._report()

    def _report(self) -> None:
        replicas = ready_replicas(self._slices.values(), own_pod=self._own_pod)
        if replicas == self.replicas:
            return
        self.replicas = replicas
        try:
            self._on_change(replicas)
        except Exception:
            logger.exception("could not apply %d gateway replicas", replicas)
