"""The delivery engine's state as Prometheus metrics (a collector, read at scrape time)."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kfn.core import naming
from kfn.core.functions import FunctionRef
from kfn.events.delivery import DeliveryEngine

_LABELS = [naming.METRIC_LABEL_FUNCTION, naming.METRIC_LABEL_NAMESPACE]


class AsyncCollector(Collector):
    """Queue depth, oldest event age and in-flight deliveries per function (as the engine last
    read them from the store), the engine's counters by outcome and, with `discarded`, the events
    removed unrun per function and reason (`kfn.events.orphans.Orphans.discarded`)."""

    def __init__(self, engine: DeliveryEngine, *, clock: Callable[[], float] = time.time,
                 discarded: Callable[[], Mapping[tuple[FunctionRef, str], int]] | None = None) -> None:
        self._engine = engine
        self._clock = clock
        self._discarded = discarded

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(naming.METRIC_ASYNC_QUEUE_DEPTH,
                                  "Asynchronous events stored per function: queued, waiting to retry or in flight.",
                                  labels=_LABELS)
        age = GaugeMetricFamily(naming.METRIC_ASYNC_OLDEST_AGE,
                                "Age of the oldest stored asynchronous event per function.", labels=_LABELS)
        in_flight = GaugeMetricFamily(naming.METRIC_ASYNC_IN_FLIGHT,
                                      "Asynchronous events being delivered per function.", labels=_LABELS)
        now = self._clock()
        for ref, stats in sorted(self._engine.queue_stats().items()):
            labels = [ref.name, ref.namespace]
            depth.add_metric(labels, stats.depth)
            age.add_metric(labels, stats.oldest_age(now))
            in_flight.add_metric(labels, stats.in_flight)
        events = CounterMetricFamily(naming.METRIC_ASYNC_EVENTS,
                                     "What this delivery engine did with asynchronous events, by outcome.",
                                     labels=[naming.METRIC_LABEL_OUTCOME])
        for outcome, count in self._engine.counters.as_dict().items():
            events.add_metric([outcome], count)
        yield depth
        yield age
        yield in_flight
        yield events
        if self._discarded is not None:
            discarded = CounterMetricFamily(
                naming.METRIC_ASYNC_DISCARDED, "Asynchronous events removed unrun, by function and reason.",
                labels=[*_LABELS, naming.METRIC_LABEL_REASON])
            for (ref, reason), count in sorted(self._discarded().items()):
                discarded.add_metric([ref.name, ref.namespace, reason], count)
            yield discarded

    def describe(self) -> Iterator[Metric]:
        return iter(())
