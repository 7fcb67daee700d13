"""One leader among replicas: a `coordination.k8s.io` Lease, through the official client's leader
election (`kubernetes.aio.leaderelection`).

`LeaseElection.run(lead)` campaigns for the Lease until cancelled; while this replica holds it,
`lead()` runs in a task of its own, cancelled as soon as the Lease cannot be renewed within
`renew_deadline` (the client's renew loop gives up) or the election is cancelled. A replica that
stops cleanly (`run` cancelled) hands the Lease back (holder cleared), so another one takes over
at its next retry instead of after `duration`; one that dies is replaced once the Lease expires.

The operator elects the replica that runs kopf (`kfn-operator`), and within it its autoscaler
(`kfn-autoscaler`) and its scheduler of schedule triggers (`kfn-scheduler`), with this class.

What a Lease does not give: two leaders never overlap only if every holder notices a failed
renewal, and stops what it leads, before the Lease expires for the others: the holder gives up
after failing to renew for half of `duration` (7 s of 15), which leaves the other half for `lead`
to stop (the operator's kopf needs about 2 s). A leader paused longer than that (a stopped
process, a partition) may act once more after it lost. What it leads must tolerate that (the
scheduler does: a tick's invocation id is derived from the tick, and the event store keeps one
event per id; the operator's writes are idempotent, its status writes conditional and retried).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException
from kubernetes.aio.leaderelection import electionconfig, leaderelection
from kubernetes.aio.leaderelection.resourcelock.leaselock import LeaseLock

from kfn.kube.informer import describe

logger = logging.getLogger(__name__)


class _LeaseLock(LeaseLock):
    """The client's Lease lock, creating the Lease without `pretty=True`: the client's own
    argument validation rejects that boolean (kubernetes 37), so no Lease could ever be taken.
    Every holder read is passed to `observed`."""

    def __init__(self, name: str, namespace: str, identity: str, api: client.ApiClient,
                 observed: Callable[[str | None], None]) -> None:
        super().__init__(name, namespace, identity, api)
        self._observed = observed

    async def get(self, name: str, namespace: str) -> Any:
        found, record = await super().get(name, namespace)
        if found and record is not None and not isinstance(record, Exception):
            self._observed(record.holder_identity)
        return found, record

    async def create(self, name: str, namespace: str, election_record: Any) -> bool:
        body = client.V1Lease(metadata=client.V1ObjectMeta(name=name), spec=self.update_lease(election_record))
        try:
            await self.api_instance.create_namespaced_lease(namespace, body)
        except ApiException as e:
            logger.warning("could not create the Lease %s/%s: %s", namespace, name, describe(e))
            return False
        return True


class LeaseElection:
    """Campaigns for the Lease `namespace/name` as `identity`; see the module docstring.

    `duration` is the Lease's duration in whole seconds (the Lease API's unit); the holder renews
    every `duration // 6` seconds (at least 1) and gives up leading when it could not renew for
    half of `duration` (at least 2 s).
    """

    def __init__(self, api: client.ApiClient, *, name: str, namespace: str, identity: str,
                 duration: int = 15, what: str = "leader") -> None:
        if duration < 3:
            raise ValueError(f"a Lease duration under 3 s leaves no time to renew it (got {duration})")
        self._api = api
        self.name = name
        self.namespace = namespace
        self.identity = identity
        self.duration = duration
        self._what = what
        self.leading = asyncio.Event()
        self.holder: str | None = None      # the holder last read from the Lease
        self._lead_task: asyncio.Task[None] | None = None

    @property
    def retry_period(self) -> int:
        return max(1, self.duration // 6)

    @property
    def renew_deadline(self) -> int:
        """How long the holder tries to renew before it stops leading: half the Lease (at least 2 s)."""
        return max(2, self.duration // 2)

    async def run(self, lead: Callable[[], Awaitable[None]]) -> None:
        """Campaign forever; lead while holding the Lease. Runs until cancelled, then stops
        `lead` (waiting for it) and hands the Lease back if this replica holds it."""
        try:
            while True:
                lock = _LeaseLock(self.name, self.namespace, self.identity, self._api, self._observe)
                election = leaderelection.LeaderElection(electionconfig.Config(
                    lock, lease_duration=self.duration, renew_deadline=self.renew_deadline,
                    retry_period=self.retry_period, onstarted_leading=lambda: self._lead(lead),
                    onstopped_leading=self._stopped))
                try:
                    await election.run()
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # noqa: BLE001 - an unreachable API server: campaign again
                    logger.warning("%s election for the Lease %s/%s failed: %s", self._what, self.namespace,
                                   self.name, describe(e))
                # The election only returns once the Lease is lost; make sure leading has stopped.
                await self._stop_leading()
                await asyncio.sleep(self.retry_period)
        finally:
            # Cancelled: the client's election leaves the task it started for `lead` running.
            await self._stop_leading()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.release(), timeout=5)

    def _observe(self, holder: str | None) -> None:
        if holder and holder != self.identity and holder != self.holder:
            logger.info("%s: %s stands by: %s holds the Lease %s/%s", self._what, self.identity, holder,
                        self.namespace, self.name)
        self.holder = holder

    async def _lead(self, lead: Callable[[], Awaitable[None]]) -> None:
        self._lead_task = asyncio.current_task()
        logger.info("%s: %s holds the Lease %s/%s", self._what, self.identity, self.namespace, self.name)
        self.leading.set()
        try:
            await lead()
        finally:
            self.leading.clear()

    async def _stopped(self) -> None:
        logger.warning("%s: %s lost the Lease %s/%s", self._what, self.identity, self.namespace, self.name)

    async def _stop_leading(self) -> None:
        task, self._lead_task = self._lead_task, None
        if task is None or task.done():
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(asyncio.shield(task), timeout=30)

    async def release(self) -> bool:
        """Clear the Lease's holder if it is this replica (optimistically: a Lease changed since it
        was read is left alone). True if it was handed back."""
        api = client.CoordinationV1Api(self._api)
        try:
            lease = await api.read_namespaced_lease(self.name, self.namespace)
            if lease.spec is None or lease.spec.holder_identity != self.identity:
                return False
            lease.spec.holder_identity = None
            lease.spec.acquire_time = None
            lease.spec.renew_time = None
            await api.replace_namespaced_lease(self.name, self.namespace, lease)
        except ApiException as e:
            logger.info("could not hand back the Lease %s/%s: %s", self.namespace, self.name, describe(e))
            return False
        logger.info("%s: %s handed back the Lease %s/%s", self._what, self.identity, self.namespace, self.name)
        return True
