"""The gateway's Prometheus metrics and the in-process load measurements the autoscaler reads.

Per function the gateway counts the requests it *holds* (arrived and not yet answered: queued or
in flight). The time integral of that count is the load (`kfn_gateway_load_seconds_total`, in
request-seconds); its rate over any interval is the average concurrency, which is what the
autoscaler scales on. The integral is advanced at every change of the count and whenever it is
read, so it is exact rather than sampled.
"""
from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from kfn.core import naming
from kfn.core.functions import FunctionRef
from kfn.core.instances import InstanceBackend
from kfn.core.scaling import Observation, Sample


class RouteView(Protocol):
    """What the metrics read of a route (kfn_gateway.routing.Route) at scrape time."""

    @property
    def ref(self) -> FunctionRef: ...

    @property
    def queued(self) -> int: ...

    @property
    def metrics(self) -> FunctionMetrics: ...

FUNCTION = naming.METRIC_LABEL_FUNCTION
NAMESPACE = naming.METRIC_LABEL_NAMESPACE
CODE = naming.METRIC_LABEL_CODE
OPENFAAS_FUNCTION = naming.METRIC_LABEL_OPENFAAS_FUNCTION

# Invocations take from a millisecond to 15 minutes; cold starts from ~50 ms to a minute.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    30.0, 60.0, 300.0, 900.0)
COLD_START_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)


@dataclass(frozen=True)
class FunctionStats:
    """What the gateway knows about one function's traffic."""

    invocations: int            # requests answered (any status) since the gateway started
    last_used: float | None     # wall-clock time (time.time()) of the last request, or None
    in_flight: int              # requests held and not waiting in the queue (being served)
    queued: int                 # requests waiting for a free instance slot now


class GatewayMetrics:
    """The metric families of one gateway that are updated as events happen (cold starts).

    The per-request families (invocations by status, durations) are plain counters on each
    `FunctionMetrics`, exported by `StateCollector` at scrape time: prometheus_client's
    children take a lock per update, which the hot path does not need on one event loop.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.cold_starts = Counter(
            naming.METRIC_COLD_STARTS, "Scale-ups from zero instances that the gateway asked for.",
            [FUNCTION, NAMESPACE], registry=registry)
        self.cold_start_wait = Histogram(
            naming.METRIC_COLD_START_WAIT, "Seconds the request that caused a cold start waited for an instance.",
            [FUNCTION, NAMESPACE], buckets=COLD_START_BUCKETS, registry=registry)

    def for_function(self, ref: FunctionRef) -> FunctionMetrics:
        return FunctionMetrics(ref, self)


class FunctionMetrics:
    """One function's counters: the hot path only does arithmetic on plain numbers."""

    def __init__(self, ref: FunctionRef, metrics: GatewayMetrics) -> None:
        self.ref = ref
        self.created = time.time()
        self.held = 0
        self.arrived = 0
        self.invocations = 0
        self.last_used: float | None = None
        self.by_status: dict[int, int] = {}
        # Durations: counts per DURATION_BUCKETS bucket (the last is +Inf), and their sum.
        self.duration_counts = [0] * (len(DURATION_BUCKETS) + 1)
        self.duration_sum = 0.0
        self._load = 0.0
        self._since = time.monotonic()
        self._metrics = metrics

    def arrive(self) -> float:
        """Count a request in; returns its start (monotonic) for `finish`."""
        now = time.monotonic()
        self._load += self.held * (now - self._since)
        self._since = now
        self.held += 1
        self.arrived += 1
        self.last_used = time.time()
        return now

    def finish(self, status: int, started: float) -> None:
        """Count a request out with the status it was answered with."""
        now = time.monotonic()
        self._load += self.held * (now - self._since)
        self._since = now
        self.held -= 1
        self.invocations += 1
        self.by_status[status] = self.by_status.get(status, 0) + 1
        elapsed = now - started
        # Prometheus buckets are upper bounds, inclusive: bisect_left finds the first bound >= elapsed.
        self.duration_counts[bisect.bisect_left(DURATION_BUCKETS, elapsed)] += 1
        self.duration_sum += elapsed

    def load(self, now: float | None = None) -> float:
        """Request-seconds held so far (`now` is time.monotonic(), taken if not given)."""
        if now is None:
            now = time.monotonic()
        return self._load + self.held * max(0.0, now - self._since)

    def cold_start(self) -> None:
        self._metrics.cold_starts.labels(self.ref.name, self.ref.namespace).inc()

    def cold_start_waited(self, seconds: float) -> None:
        self._metrics.cold_start_wait.labels(self.ref.name, self.ref.namespace).observe(seconds)

    def duration_buckets(self) -> list[tuple[str, float]]:
        """Cumulative (le, count) pairs, as a Prometheus histogram exposes them."""
        out: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip((*DURATION_BUCKETS, float("inf")), self.duration_counts, strict=True):
            total += count
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), total))
        return out


class StateCollector(Collector):
    """Gauges and counters read from live state at scrape time: nothing to update per request."""

    def __init__(self, backend: InstanceBackend, routes: Callable[[], Iterable[RouteView]]) -> None:
        self._backend = backend
        self._routes = routes

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        labels = [FUNCTION, NAMESPACE]
        invocations = CounterMetricFamily(
            naming.METRIC_INVOCATIONS, "Requests answered by the gateway, by function and HTTP status code.",
            labels=[FUNCTION, NAMESPACE, CODE])
        duration = HistogramMetricFamily(
            naming.METRIC_DURATION,
            "Seconds from a request's arrival at the gateway to its answer (queueing included).", labels=labels)
        # OpenFaaS's names, so dashboards built for its gateway keep working.
        openfaas_invocations = CounterMetricFamily(
            naming.METRIC_OPENFAAS_INVOCATIONS, "Function invocations (OpenFaaS-compatible).",
            labels=[OPENFAAS_FUNCTION, CODE])
        openfaas_seconds = HistogramMetricFamily(
            naming.METRIC_OPENFAAS_SECONDS, "Function invocation seconds (OpenFaaS-compatible).",
            labels=[OPENFAAS_FUNCTION])
        desired = GaugeMetricFamily(naming.METRIC_REPLICAS_DESIRED, "Replicas last asked of the backend.",
                                    labels=labels)
        ready = GaugeMetricFamily(naming.METRIC_REPLICAS_READY, "Instances ready to receive requests.",
                                  labels=labels)
        for function in self._backend.functions():
            ref = function.ref
            desired.add_metric([ref.name, ref.namespace], self._backend.desired(ref))
            ready.add_metric([ref.name, ref.namespace], len(self._backend.ready(ref)))
        in_flight = GaugeMetricFamily(naming.METRIC_IN_FLIGHT, "Requests held by the gateway and not queued.",
                                      labels=labels)
        queued = GaugeMetricFamily(naming.METRIC_QUEUE_DEPTH, "Requests waiting for a free instance slot.",
                                   labels=labels)
        load = CounterMetricFamily(naming.METRIC_LOAD_SECONDS,
                                   "Time integral of requests held (queued + in flight), in request-seconds.",
                                   labels=labels)
        now = time.monotonic()
        for route in self._routes():
            queue = route.queued
            key = [route.ref.name, route.ref.namespace]
            in_flight.add_metric(key, route.metrics.held - queue)
            queued.add_metric(key, queue)
            load.add_metric(key, route.metrics.load(now), created=route.metrics.created)
            metrics = route.metrics
            if metrics.invocations:
                for status, count in sorted(metrics.by_status.items()):
                    invocations.add_metric([*key, str(status)], count, created=metrics.created)
                    openfaas_invocations.add_metric([str(route.ref), str(status)], count, created=metrics.created)
                buckets = metrics.duration_buckets()
                duration.add_metric(key, buckets, metrics.duration_sum)
                openfaas_seconds.add_metric([str(route.ref)], buckets, metrics.duration_sum)
        yield invocations
        yield duration
        yield openfaas_invocations
        yield openfaas_seconds
        yield desired
        yield ready
        yield in_flight
        yield queued
        yield load


class LoadSource:
    """The autoscaler's `MetricsSource` inside the gateway's process: exact, no scraping.

    Each `collect` differences the load integral and arrival count against the previous call (the
    first call against the moment this source was made, when every function's load was zero).
    Functions with nothing new since the previous call share one zero observation: an idle
    collection allocates (next to) nothing per function, which keeps idle cheap with thousands.
    """

    def __init__(self, backend: InstanceBackend, route: Callable[[FunctionRef], RouteView | None]) -> None:
        self._backend = backend
        self._route = route
        self._started = time.monotonic()
        # function → (load, arrived) at the previous collection, made at `_previous_time`
        self._previous: dict[FunctionRef, tuple[float, int]] = {}
        self._previous_time = self._started

    async def collect(self, now: float) -> dict[FunctionRef, Observation]:
        """Returns at once; never raises for lack of traffic (no traffic is a zero sample)."""
        mono = time.monotonic()
        out: dict[FunctionRef, Observation] = {}
        previous = self._previous
        current: dict[FunctionRef, tuple[float, int]] = {}
        unchanged: Observation | None = None
        for function in self._backend.functions():
            name = function.ref
            route = self._route(name)
            if route is None:
                load, arrived, held = 0.0, 0, 0
            else:
                load, arrived, held = route.metrics.load(mono), route.metrics.arrived, route.metrics.held
            before = previous.get(name)
            # Seen at the previous collection: the difference is since then; else since this source began.
            before_time = self._previous_time if before is not None else self._started
            before_load, before_arrived = before if before is not None else (0.0, 0)
            elapsed = mono - before_time
            if before is not None and held == 0 and load == before_load and arrived == before_arrived:
                current[name] = before
                if elapsed > 0:
                    if unchanged is None:
                        unchanged = Observation(sample=Sample(time=now, concurrency=0.0, requests=0), in_flight=0.0)
                    out[name] = unchanged
                else:
                    out[name] = Observation(sample=None, in_flight=0.0)
                continue
            sample = None
            if elapsed > 0:
                sample = Sample(time=now, concurrency=max(0.0, (load - before_load) / elapsed),
                                requests=max(0, arrived - before_arrived))
            current[name] = (load, arrived)
            out[name] = Observation(sample=sample, in_flight=float(held))
        self._previous = current
        self._previous_time = mono
        return out
