"""How many instances a function should run: a pure function of observed load and time.

The rules follow Knative's Pod Autoscaler (KPA). Load is concurrency: the requests the gateway
holds for a function (queued + in flight). Two windows are averaged over the same samples:

- the *stable* window (spec.scale.stableWindow, 60s by default) drives ordinary decisions:
  desired = ceil(average concurrency / target concurrency per instance);
- the *panic* window (10% of the stable window) reacts to bursts: when its average reaches
  `panic_threshold` (200%) of what the ready instances are meant to carry, the autoscaler panics,
  scales from the panic window, and never scales down until a whole stable window passes
  without the panic condition.

Scaling down is gentle (at most a factor `max_scale_down_rate` per decision), scaling up is
bounded by `max_scale_up_rate`. Scale to zero is not a consequence of averages but of idleness:
only when minReplicas is 0 and no request arrived and nothing was in flight for idleTimeout.

Queued asynchronous work (`queued`: events stored for the function and not being delivered yet,
as `kfn.events` counts them) is activity too: while any is queued the function never scales to
zero and runs at least one instance, and at least ceil(queued / target concurrency) (within
maxReplicas), so a backlog is worked off by as many instances as synchronous load of that size
would get. Events being delivered are requests the gateway holds: they are in the samples already.

No metrics is not no traffic. A source that cannot see a function's load (Prometheus has no
series for it from a gateway that is up, every gateway unreachable, the series carry the wrong
labels) says so with `Unobserved`, and `decide` then holds the function where it is: it never
scales down, let alone to zero, without evidence, and the idle timer starts over when the
function is seen again, so zero always follows a whole idleTimeout of *observed* idleness.

Nothing here reads a clock or does I/O: a `MetricsSource` collects samples, `decide` turns them
into a replica count, and `kfn_autoscaler.Autoscaler` acts on it through the instance backend.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from kfn.core.functions import FunctionRef, FunctionSpec

# Rounding noise (e.g. 14.000000001 / 7) must not ask for an extra instance.
_EPSILON = 1e-9


@dataclass(frozen=True)
class ScaleSettings:
    """The knobs of one function's scaling, in seconds and requests."""

    min_replicas: int
    max_replicas: int
    target_concurrency: float
    idle_timeout: float
    stable_window: float
    panic_window_fraction: float = 0.1
    panic_threshold: float = 2.0
    max_scale_up_rate: float = 1000.0
    max_scale_down_rate: float = 2.0

    @classmethod
    def from_spec(cls, spec: FunctionSpec) -> ScaleSettings:
        return cls(
            min_replicas=spec.scale.minReplicas,
            max_replicas=spec.scale.maxReplicas,
            target_concurrency=spec.target_concurrency,
            idle_timeout=spec.scale.idleTimeout,
            stable_window=spec.scale.stableWindow,
        )

    @property
    def panic_window(self) -> float:
        return self.stable_window * self.panic_window_fraction

    @property
    def history(self) -> float:
        """How far back samples matter: the largest window."""
        return max(self.stable_window, self.panic_window)


@dataclass(frozen=True)
class Sample:
    time: float          # when the sample was taken (monotonic seconds)
    concurrency: float   # average requests held by the gateway (queued + in flight) since the previous sample
    requests: int        # requests that arrived since the previous sample


@dataclass(frozen=True)
class Observation:
    """What a metrics source saw for one function in one collection."""

    sample: Sample | None   # None if nothing new could be computed this tick
    in_flight: float        # requests held right now (queued + in flight)
    queued: float = 0.0     # asynchronous events stored and not being delivered (queued or awaiting a retry)


@dataclass(frozen=True)
class Unobserved:
    """A source's word that it has no evidence about a function's load this time (`reason` says
    why): neither load nor idleness. `decide` holds such a function where it is."""

    reason: str


class MetricsSource(Protocol):
    """Where the autoscaler's samples come from: the seam between collection and decision."""

    async def collect(self, now: float) -> Mapping[FunctionRef, Observation | Unobserved]:
        """Load per function since the previous call; samples are stamped with `now`.

        Idleness needs evidence: a function with no load is reported with a zero sample only when
        the source saw it measured (a gateway that is up reports it). A function missing from the
        result is `Unobserved`: the autoscaler holds it. A function whose load could not be
        computed this time (no baseline yet) gets `Observation(sample=None, ...)`. When nothing at
        all could be collected, raise MetricsUnavailable: the autoscaler then holds every function
        where it is and reports the source unavailable.
        """
        ...


class MetricsUnavailable(RuntimeError):
    """A metrics source could not observe anything this time (every gateway unreachable, ...)."""


@dataclass(frozen=True)
class ScalerState:
    """What the decision remembers between ticks; a new function starts with `ScalerState()`."""

    panicking_since: float | None = None
    panic_replicas: int = 0
    last_active: float | None = None          # last time a request arrived or anything was in flight
    last_panic_condition: float | None = None  # last time the panic window was over the threshold


@dataclass(frozen=True)
class Decision:
    replicas: int
    reason: str
    state: ScalerState
    panic: bool = False
    # A short, fixed vocabulary for metrics labels: DECISION_KINDS.
    kind: str = "stable"


DECISION_KINDS: tuple[str, ...] = ("stable", "panic", "idle", "cold-start", "no-data", "queued", "unobserved")


def window_average(samples: Sequence[Sample], *, start: float, end: float) -> float | None:
    """The time-weighted average concurrency over (start, end], or None without samples in it.

    A sample covers the time since the previous sample, so irregular ticks and skipped ticks
    (a source that could not compute anything) weigh as long as they lasted.
    """
    total = 0.0
    weight = 0.0
    previous: float | None = None
    ordered = sorted(samples, key=lambda s: s.time)
    for i, sample in enumerate(ordered):
        begin = previous
        previous = sample.time
        if sample.time <= start or sample.time > end:
            continue
        if begin is None:
            # The oldest sample's own span is unknown: assume the spacing of the samples after it.
            gap = ordered[i + 1].time - sample.time if i + 1 < len(ordered) else 1.0
            begin = sample.time - (gap if gap > 0 else 1.0)
        span = sample.time - max(begin, start)
        if span <= 0:
            continue
        total += sample.concurrency * span
        weight += span
    if weight <= 0:
        return None
    return total / weight


def _instances_for(concurrency: float, target: float) -> int:
    return max(0, math.ceil(concurrency / target - _EPSILON))


def _num(value: float) -> str:
    return f"{value:g}" if float(value).is_integer() else f"{value:.1f}"


def decide(*, samples: Sequence[Sample], now: float, current: int, ready: int,
           in_flight: float, settings: ScaleSettings, state: ScalerState, queued: float = 0.0,
           unobserved: Unobserved | None = None) -> Decision:
    """The replica count a function should have at `now`, and the state to pass to the next call.

    `current` is the replica count currently asked for, `ready` the instances serving now,
    `in_flight` the requests the gateway holds right now, `queued` the asynchronous events
    waiting for delivery; `samples` may hold more history than the windows need (older samples
    are ignored). With `unobserved` (the source cannot see the function now) the function is
    held at `current` (within min/maxReplicas), and the time counts as activity.
    """
    target = settings.target_concurrency
    if unobserved is not None:
        # No evidence either way: hold, and restart the idle timer of a function with instances (the
        # unseen time may have had traffic). At zero it stays as it was: a request for a function at
        # zero starts an instance through the gateway, so unseen time there is no sign of activity,
        # and counting it would start an instance of every idle function after a metrics outage.
        held = min(max(current, settings.min_replicas), settings.max_replicas)
        reason = f"no evidence of load or idleness ({unobserved.reason}) → hold {current}"
        if held != current:
            reason += f", clamped to {'minReplicas' if held > current else 'maxReplicas'} {held}"
        kept = replace(state, last_active=now) if current > 0 else state
        return Decision(replicas=held, reason=reason, state=kept,
                        panic=state.panicking_since is not None, kind="unobserved")
    # Activity: a request arrived or something was held. Long requests count, so an instance
    # serving a 10-minute call is never idle.
    last_active = state.last_active
    for sample in samples:
        if (sample.requests > 0 or sample.concurrency > 0) and sample.time <= now:
            last_active = sample.time if last_active is None else max(last_active, sample.time)
    if in_flight > 0 or queued > 0:
        last_active = now
    if last_active is None and current > 0:
        # Nothing seen yet: the idle timer starts when the autoscaler first sees the function.
        last_active = now
    active = in_flight > 0 or queued > 0 or (last_active is not None and now - last_active < settings.idle_timeout)
    idle_for = None if last_active is None else now - last_active
    state = replace(state, last_active=last_active)

    def finish(replicas: int, reason: str, kind: str, new_state: ScalerState, panic: bool = False) -> Decision:
        # Cold start: something is waiting and nothing runs, so at least one instance.
        if in_flight > 0 and replicas < 1:
            replicas, reason, kind = 1, f"cold start: {_num(in_flight)} in flight → 1", "cold-start"
        # Queued async work: at least the instances it would take as synchronous load, and one.
        if queued > 0:
            floor = max(1, _instances_for(queued, target))
            if replicas < floor:
                replicas, kind = floor, "queued"
                reason = f"{reason}; {_num(queued)} async events queued / target {_num(target)} → {floor}"
        bounded = min(max(replicas, settings.min_replicas), settings.max_replicas)
        if bounded != replicas:
            which = "minReplicas" if bounded > replicas else "maxReplicas"
            reason = f"{reason}, clamped to {which} {bounded}"
        return Decision(replicas=bounded, reason=reason, state=new_state, panic=panic, kind=kind)

    stable = window_average(samples, start=now - settings.stable_window, end=now)
    panic_avg = window_average(samples, start=now - settings.panic_window, end=now)

    if stable is None:
        # No data to judge: hold (a gateway that cannot be scraped is no evidence of idleness).
        replicas = current
        if active and current == 0:
            replicas = 1
            return finish(replicas, "cold start: activity with no instances → 1", "cold-start", state)
        return finish(replicas, f"no data → hold {current}", "no-data", state, state.panicking_since is not None)

    # Idle long enough: scale to zero, ending any panic (idleness is the stronger signal).
    if settings.min_replicas == 0 and not active and idle_for is not None:
        quiet = ScalerState(last_active=last_active)
        if current == 0:
            return finish(0, "idle → 0", "idle", quiet)
        return finish(0, f"idle for {_num(idle_for)}s → 0", "idle", quiet)

    # Rate limits are relative to ready instances (at least 1, so scaling from zero works). They
    # only slow a change down: instances still starting (or not yet gone) must not turn a limit
    # on growth into a shrink, or a limit on shrinking into growth.
    base = max(1, ready)
    up_bound = max(math.ceil(settings.max_scale_up_rate * base - _EPSILON), current)
    down_bound = min(math.floor(base / settings.max_scale_down_rate + _EPSILON), current)

    def bounded_rate(n: int) -> int:
        return min(max(n, down_bound), up_bound)

    stable_desired = bounded_rate(_instances_for(stable, target))
    if panic_avg is None:
        panic_avg = stable
    panic_desired = bounded_rate(_instances_for(panic_avg, target))
    over_threshold = panic_avg >= settings.panic_threshold * target * base - _EPSILON and panic_avg > 0

    panicking_since = state.panicking_since
    last_condition = state.last_panic_condition
    panic_replicas = state.panic_replicas
    if over_threshold:
        if panicking_since is None:
            panicking_since = now
            # Entering panic never shrinks what is already asked for.
            panic_replicas = current
        last_condition = now
    elif panicking_since is not None and last_condition is not None and now - last_condition >= settings.stable_window:
        panicking_since = None
        last_condition = None
        panic_replicas = 0

    if panicking_since is not None:
        panic_replicas = max(panic_replicas, panic_desired)
        new_state = replace(state, panicking_since=panicking_since, last_panic_condition=last_condition,
                            panic_replicas=panic_replicas)
        reason = (f"panic: avg concurrency {_num(panic_avg)} over {_num(settings.panic_window)}s "
                  f"/ target {_num(target)} → {panic_desired}")
        if panic_replicas > panic_desired:
            reason += f", holding {panic_replicas} until the panic ends"
        return finish(panic_replicas, reason, "panic", new_state, panic=True)

    new_state = replace(state, panicking_since=None, last_panic_condition=None, panic_replicas=0)
    desired = stable_desired
    reason = f"stable: avg concurrency {_num(stable)} / target {_num(target)} → {desired}"
    if desired < 1 and (current > 0 or active):
        # Zero comes from idleness alone, never from an average that happens to be 0.
        desired = 1
        reason = f"stable: avg concurrency {_num(stable)}, not idle for {_num(settings.idle_timeout)}s yet → 1"
    return finish(desired, reason, "stable", new_state)
