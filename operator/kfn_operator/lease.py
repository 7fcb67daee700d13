"""The autoscaler on Kubernetes: `kfn_autoscaler.Autoscaler` wired to the cluster, on one replica.

- Actuation and the view of functions/instances: `kfn.kube.KubernetesBackend` (scale
  subresource patches, pod-based ready counts), the same backend the gateway uses: the operator
  process's one, shared with the scheduler and started by its owner (`handlers.Controller`).
- Load: `kfn_autoscaler.sources.PrometheusScrapeSource` over every ready gateway pod, found
  through the EndpointSlices matching `--gateway-selector` (the gateway Service's labels) in the
  operator's own namespace ($POD_NAMESPACE; without it, the watched namespaces), or
  `kfn_autoscaler.sources.PromQLSource` when `--prometheus-url` is given.
- Decisions: written to the Function's status (desiredReplicas, lastScaleReason, lastScaleTime)
  and exported as Prometheus metrics (`--metrics-port`).
- One active autoscaler among operator replicas: a `coordination.k8s.io` Lease
  (`kfn.kube.lease.LeaseElection`, the official client's leader election). kopf's peering only
  pauses lower-priority operators and lets equal ones run side by side, so it cannot elect.
  `--standalone` skips the Lease (a single replica).
"""
from __future__ import annotations

import asyncio
import logging

import aiohttp
import prometheus_client
from aiohttp import web
from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from kfn.core.aiotasks import stop_tasks
from kfn.core.functions import FunctionRef
from kfn.core.scaling import Decision, MetricsSource
from kfn.kube import KubernetesBackend
from kfn.kube.lease import LeaseElection
from kfn.kube.resources import patch_function_status
from kfn_autoscaler.autoscaler import Autoscaler
from kfn_autoscaler.sources import PrometheusScrapeSource, PromQLSource
from kfn_operator import status
from kfn_operator.config import OperatorConfig
from kfn_operator.endpoints import serve_get

logger = logging.getLogger(__name__)


class OperatorAutoscaler:
    """Runs one `Autoscaler` loop while this operator replica holds the Lease (or always, standalone).

    `synced` is set once `backend` has listed the cluster: each term waits for it before acting
    (None: the caller started the backend already).
    """

    def __init__(self, api: client.ApiClient, config: OperatorConfig, backend: KubernetesBackend, *,
                 synced: asyncio.Event | None = None) -> None:
        self._api = api
        self._config = config
        self.registry = prometheus_client.CollectorRegistry()
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._metrics_runner: web.AppRunner | None = None
        self.leading = asyncio.Event()
        self._closing = False
        self.backend = backend
        self._synced = synced
        self._autoscaler: Autoscaler | None = None

    async def start(self) -> None:
        """Start the background loop (and the metrics endpoint); returns at once."""
        self._session = aiohttp.ClientSession()
        source: MetricsSource
        if self._config.prometheus_url:
            source = PromQLSource(self._config.prometheus_url, session=self._session)
        else:
            source = PrometheusScrapeSource(self.gateway_urls, session=self._session)
        self._autoscaler = Autoscaler(self.backend, source, interval=self._config.autoscale_interval,
                                      registry=self.registry, on_decision=self._record)
        if self._config.metrics_port is not None:
            self._metrics_runner = await _serve_metrics(self.registry, self._config.metrics_port)
        if self._config.standalone:
            self._task = asyncio.create_task(self._lead(), name="kfn-autoscaler")
        else:
            election = LeaseElection(self._api, name=self._config.lease_name, namespace=self._config.lease_namespace,
                                     identity=self._config.identity, duration=self._config.lease_duration,
                                     what="autoscaler")
            self._task = asyncio.create_task(election.run(self._lead), name="kfn-autoscaler")

    async def close(self) -> None:
        """Stop the loop and wait for it (bounded); releases the HTTP session and the metrics endpoint."""
        self._closing = True
        await stop_tasks([self._task] if self._task is not None else [], what="autoscaler")
        self._task = None
        if self._metrics_runner is not None:
            await self._metrics_runner.cleanup()
            self._metrics_runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _lead(self) -> None:
        """Wait for the backend to list the cluster, then run the autoscaler; until cancelled (the
        Lease lost or shutdown)."""
        assert self._autoscaler is not None
        if self._closing:
            return  # the election started this task after close() began: nothing to lead
        if self._synced is not None:
            await self._synced.wait()
        logger.info("autoscaler active (%s)", self._config.identity)
        self.leading.set()
        try:
            await self._autoscaler.run()
        finally:
            self.leading.clear()

    async def gateway_urls(self) -> list[str]:
        """The /metrics URL of every ready gateway pod (EndpointSlices matching the gateway selector)."""
        discovery = client.DiscoveryV1Api(self._api)
        if self._config.gateway_namespace:
            scopes: tuple[str | None, ...] = (self._config.gateway_namespace,)
        else:
            scopes = self._config.namespaces or (None,)
        urls: list[str] = []
        for ns in scopes:
            if ns is None:
                listing = await discovery.list_endpoint_slice_for_all_namespaces(
                    label_selector=self._config.gateway_selector)
            else:
                listing = await discovery.list_namespaced_endpoint_slice(
                    ns, label_selector=self._config.gateway_selector)
            for slice_ in listing.items or ():
                port = next((p.port for p in slice_.ports or () if p.name == self._config.gateway_port_name), None)
                if port is None and slice_.ports and len(slice_.ports) == 1:
                    port = slice_.ports[0].port
                if port is None:
                    continue
                for endpoint in slice_.endpoints or ():
                    if endpoint.conditions is not None and endpoint.conditions.ready is False:
                        continue
                    for address in endpoint.addresses or ():
                        host = f"[{address}]" if ":" in address else address
                        urls.append(f"http://{host}:{port}{self._config.gateway_metrics_path}")
        return urls

    async def _record(self, ref: FunctionRef, decision: Decision) -> None:
        if self.backend.function(ref) is None:
            return
        try:
            await patch_function_status(self._api, ref, status.decision_status(
                replicas=decision.replicas, reason=decision.reason))
        except ApiException as e:
            if e.status != 404:
                raise


async def _serve_metrics(registry: prometheus_client.CollectorRegistry, port: int) -> web.AppRunner:
    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=prometheus_client.generate_latest(registry),
                            headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST})

    return await serve_get(port, "/metrics", metrics)


