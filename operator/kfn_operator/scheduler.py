"""Schedule triggers on Kubernetes: fired by the operator replica holding the Lease `kfn-scheduler`.

While leading (`kfn.kube.lease.LeaseElection`, the mechanism the autoscaler elects with; one Lease
per duty, so the scheduler and the autoscaler may lead on different replicas), the scheduler
follows Functions (the operator process's one `kfn.kube.KubernetesBackend`, shared with the
autoscaler) and runs
`kfn.triggers.schedule.ScheduleSource`: each tick's Scheduled Event is stored in the async event
store on NATS JetStream ($KFN_NATS_URL, `kfn.events.jetstream.JetStreamStore`) under the tick's
id, and the tick recorded in the JetStream key-value bucket `KFN_SCHEDULES`
(`kfn.triggers.ticks.KvTicks`); the gateways' delivery engines deliver the events.

A replica taking over reads the records: a tick the previous leader fired is not fired again, one
it missed is fired late (within the catch-up hour). During a hand-over both may fire the same
tick: the same id, which JetStream stores once within its 2-minute duplicate window.

Without $KFN_NATS_URL there is nowhere to store events: schedules are not fired (logged once).
`--standalone` (one replica) fires without a Lease.
"""
from __future__ import annotations

import asyncio
import logging

from kubernetes.aio import client

from kfn.core.aiotasks import stop_tasks
from kfn.core.functions import Function, FunctionRef
from kfn.core.instances import Listener
from kfn.events.jetstream import JetStreamStore
from kfn.kube import KubernetesBackend
from kfn.kube.lease import LeaseElection
from kfn.triggers.base import Triggers
from kfn.triggers.schedule import ScheduleSource
from kfn.triggers.ticks import KvTicks
from kfn_operator.config import OperatorConfig

logger = logging.getLogger(__name__)


class OperatorScheduler:
    """Fires schedule triggers while this replica holds the scheduler's Lease (always, standalone).

    `synced` is set once `backend` has listed the cluster: each term waits for it before firing
    (None: the caller started the backend already).
    """

    def __init__(self, api: client.ApiClient, config: OperatorConfig, backend: KubernetesBackend, *,
                 synced: asyncio.Event | None = None, retry: float = 5.0) -> None:
        self._api = api
        self._config = config
        self._functions = _Functions(backend)
        self._synced = synced
        self._retry = retry
        self._task: asyncio.Task[None] | None = None
        self.leading = asyncio.Event()
        self.source: ScheduleSource | None = None     # while leading

    async def start(self) -> None:
        """Start campaigning (returns at once); a no-op without a NATS server."""
        if not self._config.nats_url:
            logger.warning("schedule triggers are not fired: no NATS server to store their events in "
                           "(KFN_NATS_URL; the chart's async.nats)")
            return
        if self._config.standalone:
            self._task = asyncio.create_task(self._lead(), name="kfn-scheduler")
            return
        election = LeaseElection(self._api, name=self._config.scheduler_lease_name,
                                 namespace=self._config.lease_namespace, identity=self._config.identity,
                                 duration=self._config.lease_duration, what="scheduler")
        self._task = asyncio.create_task(election.run(self._lead), name="kfn-scheduler")

    async def close(self) -> None:
        if self._task is not None:
            await stop_tasks([self._task], what="scheduler")
            self._task = None

    async def _lead(self) -> None:
        """Wait for the backend to list the cluster, then fire schedules until cancelled; whatever
        fails (NATS down, the API) is retried."""
        if self._synced is not None:
            await self._synced.wait()
        while True:
            try:
                await self._fire()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - an unreachable NATS or API server: try again
                logger.warning("the scheduler stopped (%s); starting again in %.0fs", e, self._retry)
            await asyncio.sleep(self._retry)

    async def _fire(self) -> None:
        assert self._config.nats_url is not None
        store = JetStreamStore(self._config.nats_url, connect_attempts=3)
        ticks = KvTicks(self._config.nats_url, connect_attempts=3)
        source = ScheduleSource(ticks, region=self._config.region)
        triggers = Triggers([source])
        try:
            await store.start()
            await ticks.start()
            await triggers.start(store.accept)
            triggers.follow(self._functions)
            self.source = source
            self.leading.set()
            logger.info("scheduler active (%s): firing the schedule triggers of %d function(s)",
                        self._config.identity, sum(1 for f in self._functions.functions() if f.spec.triggers))
            await asyncio.Event().wait()
        finally:
            self.leading.clear()
            self.source = None
            await triggers.close()
            self._functions.forget()
            await ticks.close()
            await store.close()


class _Functions:
    """The shared backend's Functions as one term of leading follows them: `Triggers.follow` adds a
    listener it never removes, and the backend outlives the term (`forget` at its end)."""

    def __init__(self, backend: KubernetesBackend) -> None:
        self._backend = backend
        self._listeners: list[Listener] = []
        backend.add_listener(self._changed)

    def functions(self) -> list[Function]:
        return self._backend.functions()

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def forget(self) -> None:
        """Drop the term's listeners."""
        self._listeners.clear()

    def _changed(self, ref: FunctionRef) -> None:
        for listener in list(self._listeners):
            listener(ref)
