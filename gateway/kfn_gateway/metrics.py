"""The gateway's Prometheus metrics and the in-process load measurements the autoscaler reads.

Per function the gateway counts the requests it *holds* (arrived and not yet answered: queued or
in flight). The time integral of that count is the load (`kfn_gateway_load_seconds_total`, in
request-seconds); its rate over any interval is the average concurrency, which is what the
autoscaler scales on. The integral is advanced at every change of the count and whenever it is
read, so it is exact rather than sampled.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
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
    """The metric families of one gateway, registered in its own CollectorRegistry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.invocations = Counter(
            naming.METRIC_INVOCATIONS, "Requests answered by the gateway, by function and HTTP status code.",
            [FUNCTION, NAMESPACE, CODE], registry=registry)
        self.duration = Histogram(
            naming.METRIC_DURATION,
            "Seconds from a request's arrival at the gateway to its answer (queueing included).",
            [FUNCTION, NAMESPACE], buckets=DURATION_BUCKETS, registry=registry)
        self.cold_starts = Counter(
            naming.METRIC_COLD_STARTS, "Scale-ups from zero instances that the gateway asked for.",
            [FUNCTION, NAMESPACE], registry=registry)
        self.cold_start_wait = Histogram(
            naming.METRIC_COLD_START_WAIT, "Seconds the request that caused a cold start waited for an instance.",
            [FUNCTION, NAMESPACE], buckets=COLD_START_BUCKETS, registry=registry)
        # OpenFaaS's names, so dashboards built for its gateway keep working.
        self.openfaas_invocations = Counter(
            naming.METRIC_OPENFAAS_INVOCATIONS, "Function invocations (OpenFaaS-compatible).",
            [OPENFAAS_FUNCTION, CODE], registry=registry)
        self.openfaas_seconds = Histogram(
            naming.METRIC_OPENFAAS_SECONDS, "Function invocation seconds (OpenFaaS-compatible).",
            [OPENFAAS_FUNCTION], buckets=DURATION_BUCKETS, registry=registry)

    def for_function(self, ref: FunctionRef) -> FunctionMetrics:
        return FunctionMetrics(ref, self)


class FunctionMetrics:
    """One function's counters and cached metric children: the hot path only does arithmetic."""

    def __init__(self, ref: FunctionRef, metrics: GatewayMetrics) -> None:
        self.ref = ref
        self.created = time.time()
        self.held = 0
        self.arrived = 0
        self.invocations = 0
        self.last_used: float | None = None
        self._load = 0.0
        self._since = time.monotonic()
        self._metrics = metrics
        self._duration = metrics.duration.labels(ref.name, ref.namespace)
        self._openfaas_seconds = metrics.openfaas_seconds.labels(str(ref))
        self._by_code: dict[int, tuple[Counter, Counter]] = {}

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
        children = self._by_code.get(status)
        if children is None:
            code = str(status)
            children = self._by_code[status] = (
                self._metrics.invocations.labels(self.ref.name, self.ref.namespace, code),
                self._metrics.openfaas_invocations.labels(str(self.ref), code))
        children[0].inc()
        children[1].inc()
        elapsed = now - started
        self._duration.observe(elapsed)
        self._openfaas_seconds.observe(elapsed)

    def load(self, now: float | None = None) -> float:
        """Request-seconds held so far (`now` is time.monotonic(), taken if not given)."""
        if now is None:
            now = time.monotonic()
        return self._load + self.held * max(0.0, now - self._since)

    def cold_start(self) -> None:
        self._metrics.cold_starts.labels(self.ref.name, self.ref.namespace).inc()

    def cold_start_waited(self, seconds: float) -> None:
        self._metrics.cold_start_wait.labels(self.ref.name, self.ref.namespace).observe(seconds)


class StateCollector(Collector):
    """Gauges and counters read from live state at scrape time: nothing to update per request."""

    def __init__(self, backend: InstanceBackend, routes: Callable[[], Iterable[RouteView]]) -> None:
        self._backend = backend
        self._routes = routes

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        labels = [FUNCTION, NAMESPACE]
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
        yield desired
        yield ready
        yield in_flight
        yield queued
        yield load


class LoadSource:
    """The autoscaler's `MetricsSource` inside the gateway's process: exact, no scraping.

    Each `collect` differences the load integral and arrival count against the previous call (the
    first call against the moment this source was made, when every function's load was zero).
    """

    def __init__(self, backend: InstanceBackend, route: Callable[[FunctionRef], RouteView | None]) -> None:
        self._backend = backend
        self._route = route
        self._started = time.monotonic()
        # function → (monotonic time, load, arrived) at the previous collection
        self._previous: dict[FunctionRef, tuple[float, float, int]] = {}

    async def collect(self, now: float) -> dict[FunctionRef, Observation]:
        """Returns at once; never raises for lack of traffic (no traffic is a zero sample)."""
        mono = time.monotonic()
        out: dict[FunctionRef, Observation] = {}
        previous = self._previous
        current: dict[FunctionRef, tuple[float, float, int]] = {}
        for function in self._backend.functions():
            name = function.ref
            route = self._route(name)
            if route is None:
                load, arrived, held = 0.0, 0, 0
            else:
                load, arrived, held = route.metrics.load(mono), route.metrics.arrived, route.metrics.held
            before_time, before_load, before_arrived = previous.get(name, (self._started, 0.0, 0))
            elapsed = mono - before_time
            sample = None
            if elapsed > 0:
                sample = Sample(time=now, concurrency=max(0.0, (load - before_load) / elapsed),
                                requests=max(0, arrived - before_arrived))
            current[name] = (mono, load, arrived)
            out[name] = Observation(sample=sample, in_flight=float(held))
        self._previous = current
        return out
