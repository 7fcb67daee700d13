"""The autoscaler's loop: collect load, decide (`kfn.core.scaling.decide`), tell the backend.

Collection is a `MetricsSource` (the gateway's in-process figures in local mode; on Kubernetes
`kfn_autoscaler.sources`), the decision is the pure `decide`, and actuation is the backend's
`scale`. The same loop runs in local mode and on Kubernetes; only the backend and source differ.

A function the source cannot see (`Unobserved`, or missing from what it collected) and every
function while the source is unavailable (`MetricsUnavailable`) are held where they are: no
metrics is no evidence of idleness. The source's state is exported (`kfn_autoscaler_metrics_available`,
`kfn_autoscaler_unobserved_functions`), logged when it changes, and readable as `source_problem`.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

import prometheus_client
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from kfn.core import naming
from kfn.core.functions import FunctionRef, FunctionSpec
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
    Unobserved,
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
    unobserved: str | None = None   # why the source could not see it at the last tick
    spec: FunctionSpec | None = None         # the spec `settings` were read from
    settings: ScaleSettings | None = None
    decision: Decision | None = None         # the last decision made
    desired_exported: int | None = None      # the value last set on the desired-replicas gauge
    # At rest: the last decision is a fixed point of `decide` for a quiet observation (see _rests).
    resting: bool = False
    quiet_first: float | None = None   # time of the first zero sample skipped at rest (None: none skipped)
    quiet_last: float = 0.0            # and of the last
    # Holds at rest are counted here, in the ticks from `holds_from` to `holds_to`, and added to the
    # decisions counter when it is read or the function wakes (`Autoscaler._flush_holds`).
    holds_from: int | None = None
    holds_to: int = 0
    counters: dict[tuple[str, str], prometheus_client.Counter] | None = None   # decisions, by (kind, action)

    def skipped(self) -> list[Sample]:
        """The zero samples skipped at rest, as `decide` weighs them: two stand for them all (the
        first marks where the quiet run began, the last where it ended; all are zero)."""
        first, last = self.quiet_first, self.quiet_last
        if first is None:
            return []
        return [Sample(first, 0.0, 0)] + ([Sample(last, 0.0, 0)] if last > first else [])

    def recorded(self) -> tuple[Sample, ...]:
        """The history as `decide` would see it, the zero samples skipped at rest included."""
        return (*self.history, *self.skipped())

    def newest(self) -> float | None:
        """The time of the newest sample kept or skipped, if any."""
        return self.quiet_last if self.quiet_first is not None else self.history[-1].time if self.history else None


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
        # Registered through _Flushed: holds counted at rest are added before it is read.
        self._decisions = prometheus_client.Counter(
            naming.METRIC_AUTOSCALER_DECISIONS,
            f"Autoscaler decisions, by kind ({', '.join(DECISION_KINDS)}) and action (up, down, hold).",
            [naming.METRIC_LABEL_FUNCTION, naming.METRIC_LABEL_NAMESPACE, "kind", "action"], registry=None)
        self.registry.register(_Flushed(self._decisions, self._flush_all_holds))
        self._ticks = 0
        self._available = prometheus_client.Gauge(
            naming.METRIC_AUTOSCALER_SOURCE_AVAILABLE,
            "1 when the last collection of load metrics succeeded, 0 when the source was unavailable "
            "(every function is then held where it is).", registry=self.registry)
        self._unobserved = prometheus_client.Gauge(
            naming.METRIC_AUTOSCALER_UNOBSERVED,
            "Functions the metrics source had no evidence about at the last tick (held where they are).",
            registry=self.registry)
        self._available.set(1)
        self.source_problem: str | None = None

    def samples(self, ref: FunctionRef) -> tuple[Sample, ...]:
        """The samples kept for a function (oldest first): what its next decision will see."""
        track = self._tracks.get(ref)
        return track.recorded() if track is not None else ()

    async def tick(self) -> dict[FunctionRef, Decision]:
        """One round: collect, decide for every function, scale those whose count changes.

        Returns at once after one collection and the scale calls. If the source is unavailable
        (MetricsUnavailable) every function is held where it is and `source_problem` says why;
        any other collection error propagates and nothing is scaled. A failing scale or hook for
        one function is logged and the other functions are still handled.
        """
        now = self._clock()
        observations: Mapping[FunctionRef, Observation | Unobserved] = {}
        problem: str | None = None
        try:
            observations = await self._source.collect(now)
        except MetricsUnavailable as e:
            problem = f"metrics unavailable: {e}"
        missing = Unobserved(problem or "no metrics for it from a gateway that is up")
        functions = {fn.ref: fn for fn in self._backend.functions()}
        # Without any function there is nothing to hold (and the gateways export no per-function series).
        self._set_problem(problem if functions else None)
        tracks = self._tracks
        for gone in tracks.keys() - functions.keys():
            del tracks[gone]
            self._forget_metrics(gone)

        self._ticks += 1
        tick = self._ticks
        desired = self._backend.desired
        decisions: dict[FunctionRef, Decision] = {}
        unobserved = 0
        # Quiet observations are mostly one object shared by every idle function (LoadSource's):
        # whether it is quiet, and its time, are worked out once per object.
        seen: Observation | Unobserved | None = None
        quiet: float | None = None
        for ref, fn in functions.items():
            observation = observations.get(ref, missing)
            track = tracks.get(ref)
            if track is not None and track.resting and track.spec is fn.spec and track.decision is not None:
                if observation is not seen:
                    seen, quiet = observation, _quiet_time(observation)
                newest = track.newest()
                if quiet is not None and (newest is None or quiet > newest) and desired(ref) == 0:
                    # At rest, and nothing happened: `decide` would answer what it did last time (its
                    # fixed point), so the decision is not made again; only its zero sample is kept,
                    # and its hold counted.
                    if track.quiet_first is None:
                        track.quiet_first = quiet
                    track.quiet_last = quiet
                    if track.holds_from is None:
                        track.holds_from = tick
                    track.holds_to = tick
                    decisions[ref] = track.decision
                    continue
            if track is not None:
                self._flush_holds(ref, track)   # counted under the decision it rested with
            try:
                decisions[ref] = await self._handle(ref, fn.spec, observation, now)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("autoscaling %s failed", ref)
            # A function at rest was observed (see _rests): only those decided can be unobserved.
            track = tracks.get(ref)
            if track is not None and track.unobserved:
                unobserved += 1
        self._unobserved.set(unobserved)
        return decisions

    def _set_problem(self, problem: str | None) -> None:
        if problem != self.source_problem:
            if problem is None:
                logger.info("autoscaler metrics available again")
            else:
                logger.warning("autoscaler %s: holding every function's replicas until it is back", problem)
        self.source_problem = problem
        self._available.set(0 if problem else 1)

    async def run(self) -> None:
        """Tick every `interval` seconds until cancelled; a failing tick is logged and the loop goes on."""
        while True:
            started = self._clock()
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                # Unavailable metrics are handled in tick (held and reported); anything else is a bug.
                logger.exception("autoscaler tick failed, holding replicas")
            elapsed = self._clock() - started
            await asyncio.sleep(max(0.0, self._interval - elapsed))

    async def _handle(self, ref: FunctionRef, spec: FunctionSpec, observation: Observation | Unobserved,
                      now: float) -> Decision:
        track = self._tracks.get(ref)
        if track is None:
            track = self._tracks[ref] = _Track(history=deque(), state=ScalerState())
        if track.settings is None or track.spec is not spec:
            track.settings, track.spec = ScaleSettings.from_spec(spec), spec
        settings = track.settings
        # Waking from rest: the zero samples skipped meanwhile weigh in the windows as they would have.
        track.history.extend(track.skipped())
        track.quiet_first = None
        track.resting = False
        unobserved: Unobserved | None = None
        if isinstance(observation, Unobserved):
            unobserved, observation = observation, Observation(sample=None, in_flight=0.0)
        reason = unobserved.reason if unobserved is not None else None
        if reason != track.unobserved and self.source_problem is None:
            # Per function only while the source as a whole works (its outage is logged once).
            if reason is not None:
                logger.warning("holding %s at %d replicas: %s", ref, self._backend.desired(ref), reason)
            elif track.unobserved is not None:
                logger.info("metrics for %s available again", ref)
        track.unobserved = reason
        sample = observation.sample
        if sample is not None and (not track.history or sample.time > track.history[-1].time):
            track.history.append(sample)
        # Keep one sample older than the window: it marks where the oldest sample's span began.
        horizon = now - settings.history
        while len(track.history) >= 2 and track.history[1].time <= horizon:
            track.history.popleft()

        current = self._backend.desired(ref)
        before = track.state
        decision = decide(samples=tuple(track.history), now=now, current=current,
                          ready=len(self._backend.ready(ref)), in_flight=observation.in_flight,
                          settings=settings, state=before, queued=observation.queued,
                          unobserved=unobserved)
        track.state = decision.state
        track.decision = decision

        action = "up" if decision.replicas > current else "down" if decision.replicas < current else "hold"
        if decision.replicas != track.desired_exported:
            self._desired.labels(ref.name, ref.namespace).set(decision.replicas)
            track.desired_exported = decision.replicas
        self._count(ref, track, decision.kind, action)
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
        track.resting = (_rests(decision, before=before, current=current, observation=observation,
                                unobserved=unobserved)
                         and (self._on_decision is None or track.last_reported == key))
        return decision

    def _count(self, ref: FunctionRef, track: _Track, kind: str, action: str, amount: int = 1) -> None:
        # Children are kept: looking a label set up is most of the cost of counting.
        if track.counters is None:
            track.counters = {}
        child = track.counters.get((kind, action))
        if child is None:
            child = track.counters[(kind, action)] = self._decisions.labels(ref.name, ref.namespace, kind, action)
        child.inc(amount)

    def _flush_holds(self, ref: FunctionRef, track: _Track) -> None:
        """Add the holds counted at rest to the decisions counter."""
        if track.holds_from is not None and track.decision is not None:
            self._count(ref, track, track.decision.kind, "hold", track.holds_to - track.holds_from + 1)
        track.holds_from = None

    def _flush_all_holds(self) -> None:
        for ref, track in self._tracks.items():
            if track.holds_from is not None:
                self._flush_holds(ref, track)

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


def _rests(decision: Decision, *, before: ScalerState, current: int, observation: Observation,
           unobserved: Unobserved | None) -> bool:
    """Whether `decision` is a fixed point of `decide` for any later quiet observation (`_quiet`)
    of a function still asked for 0 replicas with unchanged settings: the same replicas (0), state,
    kind and reason, so the loop may skip deciding it again.

    That holds for a function at zero, not panicking, whose state the decision left unchanged, after
    a quiet observation: decided idle (idleness only grows with time, and the idle rule comes before
    any average), or never active and decided stable at 0 (a window of zero samples stays one).
    Proved against `decide` by tests/unit/test_autoscaling_at_rest.py.
    """
    return (unobserved is None and _quiet(observation) and current == 0 and decision.replicas == 0
            and decision.state == before and before.panicking_since is None and not decision.panic
            and (decision.kind == "idle" or (decision.kind == "stable" and before.last_active is None)))


def _quiet_time(observation: Observation | Unobserved) -> float | None:
    """The time of `observation`'s sample if it is quiet (`_quiet`), else None."""
    if not isinstance(observation, Observation) or observation.sample is None or not _quiet(observation):
        return None
    return observation.sample.time


class _Flushed(Collector):
    """`metric` as registered, with `flush` called before each read (the registry reads collectors
    on the event loop's thread, as the gateway's and the operator's /metrics handlers do)."""

    def __init__(self, metric: prometheus_client.Counter, flush: Callable[[], None]) -> None:
        self._metric = metric
        self._flush = flush

    def describe(self) -> Iterable[Metric]:
        return self._metric.describe()

    def collect(self) -> Iterable[Metric]:
        self._flush()
        return self._metric.collect()


def _quiet(observation: Observation) -> bool:
    """A zero sample, nothing held or queued: no evidence of anything happening."""
    sample = observation.sample
    return (sample is not None and not sample.concurrency and not sample.requests
            and not observation.in_flight and not observation.queued)
