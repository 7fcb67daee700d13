"""The autoscaler's loop: collect load, decide (`kfn.core.scaling.decide`), tell the backend.

Collection is a `MetricsSource` (the gateway's in-process figures in local mode; on Kubernetes
`kfn_autoscaler.sources`), the decision is the pure `decide`, and actuation is the backend's
`scale`. The same loop runs in local mode and on Kubernetes; only the backend and source differ.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import prometheus_client

from kfn.core import naming
from kfn.core.functions import FunctionRef
from kfn.core.instances import InstanceBackend
from kfn.core.scaling import (
    DECISION_KINDS,
    Decision,
    MetricsSource,
    MetricsUnavailable,
    Observation,
    Sample,
    ScalerState,
    ScaleSettings,
    decide,
)

logger = logging.getLogger(__name__)

DecisionHook = Callable[[FunctionRef, Decision], "Awaitable[None] | None"]


@dataclass
class _Track:
    """One function's memory between ticks."""

    history: deque[Sample]
    state: ScalerState
    last_reported: tuple[int, str, bool] | None = None


class Autoscaler:
    """Decides every `interval` seconds how many instances each function runs.

    It keeps, per function, the samples its largest window needs and the decision's state, and
    calls `backend.scale` only when a decision differs from what the backend was last asked for.
    `on_decision(ref, decision)` is called when a function's replica count, kind of decision
    or panic mode changes (the Kubernetes side writes Function status from it).
    """

    def __init__(self, backend: InstanceBackend, source: MetricsSource, *, interval: float = 1.0,
                 clock: Callable[[], float] = time.monotonic,
                 registry: prometheus_client.CollectorRegistry | None = None,
                 on_decision: DecisionHook | None = None) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be positive (got {interval})")
        self._backend = backend
        self._source = source
        self._interval = interval
        self._clock = clock
        self._on_decision = on_decision
        self._tracks: dict[FunctionRef, _Track] = {}
        self.registry = registry if registry is not None else prometheus_client.CollectorRegistry()
        self._desired = prometheus_client.Gauge(
            naming.METRIC_AUTOSCALER_DESIRED, "Replicas the autoscaler last decided a function should run.",
            [naming.METRIC_LABEL_FUNCTION, naming.METRIC_LABEL_NAMESPACE], registry=self.registry)
        self._decisions = prometheus_client.Counter(
            naming.METRIC_AUTOSCALER_DECISIONS,
            f"Autoscaler decisions, by kind ({', '.join(DECISION_KINDS)}) and action (up, down, hold).",
            [naming.METRIC_LABEL_FUNCTION, naming.METRIC_LABEL_NAMESPACE, "kind", "action"], registry=self.registry)

    def samples(self, ref: FunctionRef) -> tuple[Sample, ...]:
        """The samples kept for a function (oldest first): what its next decision will see."""
        track = self._tracks.get(ref)
        return tuple(track.history) if track is not None else ()

    async def tick(self) -> dict[FunctionRef, Decision]:
        """One round: collect, decide for every function, scale those whose count changes.

        Returns at once after one collection and the scale calls. If collection fails the error
        propagates and nothing is scaled; a failing scale or hook for one function is logged and
        the other functions are still handled.
        """
        now = self._clock()
        observations = await self._source.collect(now)
        functions = {fn.ref: fn for fn in self._backend.functions()}
        for gone in set(self._tracks) - set(functions):
            del self._tracks[gone]
            self._forget_metrics(gone)

        decisions: dict[FunctionRef, Decision] = {}
        for ref, fn in functions.items():
            try:
                decisions[ref] = await self._handle(ref, ScaleSettings.from_spec(fn.spec),
                                                    observations.get(ref), now)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("autoscaling %s failed", ref)
        return decisions

    async def run(self) -> None:
        """Tick every `interval` seconds until cancelled; a failing tick is logged and the loop goes on."""
        while True:
            started = self._clock()
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                # Unavailable metrics are an expected state (a gateway restarting), not a bug: no traceback.
                logger.warning("autoscaler tick failed, holding replicas: %s", e,
                               exc_info=not isinstance(e, MetricsUnavailable))
            elapsed = self._clock() - started
            await asyncio.sleep(max(0.0, self._interval - elapsed))

    async def _handle(self, ref: FunctionRef, settings: ScaleSettings, observation: Observation | None,
                      now: float) -> Decision:
        track = self._tracks.get(ref)
        if track is None:
            track = self._tracks[ref] = _Track(history=deque(), state=ScalerState())
        if observation is None:
            observation = Observation(sample=Sample(time=now, concurrency=0.0, requests=0), in_flight=0.0)
        sample = observation.sample
        if sample is not None and (not track.history or sample.time > track.history[-1].time):
            track.history.append(sample)
        # Keep one sample older than the window: it marks where the oldest sample's span began.
        horizon = now - settings.history
        while len(track.history) >= 2 and track.history[1].time <= horizon:
            track.history.popleft()

        current = self._backend.desired(ref)
        decision = decide(samples=tuple(track.history), now=now, current=current,
                          ready=len(self._backend.ready(ref)), in_flight=observation.in_flight,
                          settings=settings, state=track.state, queued=observation.queued)
        track.state = decision.state

        action = "up" if decision.replicas > current else "down" if decision.replicas < current else "hold"
        self._desired.labels(ref.name, ref.namespace).set(decision.replicas)
        self._decisions.labels(ref.name, ref.namespace, decision.kind, action).inc()
        if decision.replicas != current:
            logger.info("scaling %s %d → %d: %s", ref, current, decision.replicas, decision.reason)
            await self._backend.scale(ref, decision.replicas, reason=decision.reason)

        key = (decision.replicas, decision.kind, decision.panic)
        if self._on_decision is not None and key != track.last_reported:
            try:
                result = self._on_decision(ref, decision)
                if inspect.isawaitable(result):
                    await result
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("on_decision hook failed for %s", ref)
            else:
                track.last_reported = key
        return decision

    def _forget_metrics(self, ref: FunctionRef) -> None:
        try:
            self._desired.remove(ref.name, ref.namespace)
        except KeyError:
            pass
        # Counters per function are dropped with the function: their label sets are not enumerable
        # through the public API, so clear by the sets this autoscaler can produce.
        for kind in DECISION_KINDS:
            for action in ("up", "down", "hold"):
                try:
                    self._decisions.remove(ref.name, ref.namespace, kind, action)
                except KeyError:
                    pass
