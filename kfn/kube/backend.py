"""Functions on Kubernetes as the data path sees them: ready pods, replica counts, scaling.

`KubernetesBackend` implements `kfn.core.instances.InstanceBackend` over its parts:

- `kfn.kube.mirror.ClusterMirror`: Functions, the replica counts of their Deployments and their
  pods, mirrored by informers, and the listeners told of each change;
- `kfn.kube.probes.ReadinessProbes`: which pods serve, by the kubelet's word or, sooner, the
  backend's own probe of the runtime's readiness path (only the gateway probes: `probe=True`);
- `kfn.kube.rotation.Rotation`: the ready instances (pods' own IPs, so requests go straight to
  pods), instances out of rotation after a failure, why none starts (a pod's problem, or a failed
  build of its requirements: `kfn.kube.builds`);
- `kfn.kube.scaling.Scaler`: the replica count asked for, and the `scale` subresource patch;
- `kfn.kube.pool.PoolClaimer` (the gateway's, optional): a scale from zero served by claiming and
  specialising a warm pool's pod; without one, pooled pods are only counted and scaled down;
- `kfn.kube.logs`: the function containers' output (`function_logs`), its builds' (`build_logs`).

The gateway, the autoscaler and the operator share this class.
"""
from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager

from kubernetes.aio import client

from kfn.core.functions import Function, FunctionRef
from kfn.core.instances import Instance, Listener, StartProblem
from kfn.kube.informer import Backoff
from kfn.kube.logs import build_logs, function_logs
from kfn.kube.mirror import ClusterMirror, DeploymentListener, DeploymentState
from kfn.kube.pool import PoolClaimer
from kfn.kube.rotation import Rotation
from kfn.kube.scaling import Scaler


class KubernetesBackend:
    """Functions, their pods and replica counts as the Kubernetes API reports them.

    `api` belongs to the caller (one API client per process). `namespaces` empty means all.
    `pool` (a `kfn.kube.pool.PoolClaimer` over `mirror`, see `pool_claimer`) is closed with it.
    """

    def __init__(self, api: client.ApiClient, *, namespaces: Sequence[str] = (), backoff: Backoff | None = None,
                 failure_cooldown: float = 10.0, clock: Callable[[], float] = time.monotonic,
                 sync_timeout: float = 30.0, probe: bool = False, probe_interval: float = 0.01,
                 probe_timeout: float = 120.0,
                 pool: Callable[[ClusterMirror], PoolClaimer] | None = None) -> None:
        self._api = api
        self._mirror = ClusterMirror(api, namespaces=namespaces, backoff=backoff or Backoff(),
                                     sync_timeout=sync_timeout, probe=probe, probe_interval=probe_interval,
                                     probe_timeout=probe_timeout)
        # The rotation's cache must hear of changes before any other listener: it is the first.
        self._rotation = Rotation(self._mirror, failure_cooldown=failure_cooldown, clock=clock)
        self._pool = pool(self._mirror) if pool is not None else None
        self._scaler = Scaler(api, self._mirror, self._pool)

    async def start(self) -> None:
        """Start the informers; returns once each has listed once (or raises TimeoutError after
        `sync_timeout`, the informers retrying in the background until `close`)."""
        await self._mirror.start()

    async def close(self) -> None:
        """Cancel the pool's specialisations, the informers and probes and wait for them; the API
        client stays the caller's."""
        if self._pool is not None:
            await self._pool.close()
        await self._mirror.close()

    def function(self, ref: FunctionRef) -> Function | None:
        return self._mirror.functions.get(ref)

    def functions(self) -> list[Function]:
        return list(self._mirror.functions.values())

    def existing(self) -> set[FunctionRef]:
        """Every Function that exists, those invalid with no valid definition yet included (not
        served, not deleted): what decides that a function is gone (`kfn.events.orphans`)."""
        return {*self._mirror.functions, *self._mirror.invalid}

    def ready(self, ref: FunctionRef) -> list[Instance]:
        return self._rotation.ready(ref)

    def desired(self, ref: FunctionRef) -> int:
        return self._scaler.desired(ref)

    def problem(self, ref: FunctionRef) -> StartProblem | None:
        """The first problem a pod of the function reports, while none of them serves."""
        return self._rotation.problem(ref)

    async def scale(self, ref: FunctionRef, replicas: int, *, reason: str = "") -> None:
        """Ask for `replicas` instances (`kfn.kube.scaling.Scaler.scale`): the Deployment's scale
        subresource, a claimed pool pod from zero, pooled pods deleted first on the way down.

        Failures are logged, not raised: the caller sees no new instance and times out.
        """
        await self._scaler.scale(ref, replicas, reason=reason)

    def report_failure(self, instance: Instance, *, error: str) -> None:
        self._rotation.report_failure(instance, error=error)

    def add_listener(self, listener: Listener) -> None:
        self._mirror.add_listener(listener)

    def add_deployment_listener(self, listener: DeploymentListener) -> None:
        """Call `listener(ref)` when the state of a function's Deployment changes (see
        `kfn.kube.mirror.ClusterMirror.add_deployment_listener`)."""
        self._mirror.add_deployment_listener(listener)

    def deployment(self, ref: FunctionRef) -> DeploymentState | None:
        """What the function's Deployment says of it (None: no Deployment seen)."""
        return self._mirror.deployments.get(ref)

    def logs(self, ref: FunctionRef, *, tail: int, follow: bool,
             build: bool = False) -> AbstractAsyncContextManager[AsyncIterator[str]]:
        """The function containers' output, each line prefixed with `[POD] ` (`function_logs`); with
        `build`, its latest build Job's (`build_logs`: NoBuild on entering if it has had none)."""
        if build:
            return build_logs(self._api, self._mirror, ref, tail=tail, follow=follow)
        return function_logs(self._api, self._mirror, ref, tail=tail, follow=follow)
