"""Invocation counters, exposed in the Prometheus text format on /_/metrics.

Counting is plain arithmetic under a lock, so serving invocations never imports prometheus_client;
it is imported on the first scrape and renders the numbers through a custom collector on a
registry owned by this object.
"""
from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterator

from kfn_runtime import contract

TYPE_CHECKING = False  # importing typing costs milliseconds on every cold start
if TYPE_CHECKING:
    from typing import Any


class MetricsUnavailable(RuntimeError):
    """prometheus_client is not installed (outside the runtime image)."""


class Metrics:
    def __init__(self, *, concurrency: int, in_flight: Callable[[], int], environments: Callable[[], int],
                 buckets: tuple[float, ...] = contract.DURATION_BUCKETS) -> None:
        self._lock = threading.Lock()
        self._concurrency = concurrency
        self._in_flight = in_flight
        self._environments = environments
        self._buckets = tuple(sorted(buckets))
        self._bucket_counts = [0] * (len(self._buckets) + 1)  # the last one is +Inf
        self._duration_sum = 0.0
        self._by_outcome: dict[str, int] = {}
        self._registry: object | None = None

    def observe(self, outcome: str, seconds: float) -> None:
        """One invocation request answered: "ok", "error" (the function failed), "timeout", or the
        status of a rejection ("429", "503")."""
        index = bisect.bisect_left(self._buckets, seconds)
        with self._lock:
            self._by_outcome[outcome] = self._by_outcome.get(outcome, 0) + 1
            self._bucket_counts[index] += 1
            self._duration_sum += seconds

    def snapshot(self) -> dict[str, Any]:
        """The current numbers, for tests and for the collector."""
        with self._lock:
            cumulative, running = [], 0
            for count in self._bucket_counts:
                running += count
                cumulative.append(running)
            return {
                "by_outcome": dict(self._by_outcome),
                "buckets": list(zip([*self._buckets, float("inf")], cumulative, strict=True)),
                "count": running,
                "sum": self._duration_sum,
                "in_flight": self._in_flight(),
                "environments": self._environments(),
                "concurrency": self._concurrency,
            }

    def render(self) -> tuple[bytes, str]:
        """The exposition body and its content type; MetricsUnavailable without prometheus_client."""
        try:
            from prometheus_client import CollectorRegistry, exposition
        except ImportError:
            raise MetricsUnavailable("prometheus_client is not installed") from None
        with self._lock:
            if self._registry is None:
                registry = CollectorRegistry(auto_describe=False)
                registry.register(_Collector(self))  # type: ignore[arg-type]  # structurally a Collector
                self._registry = registry
        return exposition.generate_latest(self._registry), exposition.CONTENT_TYPE_LATEST  # type: ignore[arg-type]


class _Collector:
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[object]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        snap = self._metrics.snapshot()
        invocations = CounterMetricFamily(
            contract.METRIC_INVOCATIONS, "Invocations by outcome: ok, error, timeout, or a rejection's status.",
            labels=["outcome"])
        for outcome, count in sorted(snap["by_outcome"].items()):
            invocations.add_metric([outcome], count)
        yield invocations
        yield HistogramMetricFamily(
            contract.METRIC_DURATION, "Time from request received to response ready, in seconds.",
            buckets=[("+Inf" if le == float("inf") else _le(le), count) for le, count in snap["buckets"]],
            sum_value=snap["sum"])
        yield GaugeMetricFamily(contract.METRIC_IN_FLIGHT, "Invocations running or waiting for an environment.",
                                value=snap["in_flight"])
        yield GaugeMetricFamily(contract.METRIC_CONCURRENCY_LIMIT, "Execution environments at most (KFN_CONCURRENCY).",
                                value=snap["concurrency"])
        yield GaugeMetricFamily(contract.METRIC_ENVIRONMENTS, "Execution environments alive.",
                                value=snap["environments"])


def _le(bound: float) -> str:
    return repr(float(bound))
