"""Collection: where the autoscaler's load figures come from on Kubernetes, the gateways' metrics.

Every gateway replica exports, per function, the counter `kfn_gateway_load_seconds_total` (the
time integral of requests it holds, so its rate is the average concurrency), the counter of
invocations, and the gauges of requests in flight and queued. The function's load is the sum over
gateway replicas. Two sources compute it:

- `PrometheusScrapeSource` scrapes every replica's /metrics itself (no Prometheus needed);
- `PromQLSource` asks a Prometheus server that already scrapes them.

No metrics is not no traffic: both report a function (a zero sample when it has no load) only
when a gateway that is up reports it — every gateway exports `kfn_function_replicas_desired` for
every function it knows. Any other function is left out (the autoscaler holds it: `Unobserved`),
and when no gateway that is up can be seen at all they raise MetricsUnavailable.

Queued asynchronous work (`Observation.queued`) comes from the delivery engine's gauges
`kfn_async_queue_depth` − `kfn_async_in_flight`: every replica reads the same shared store, so
the figure is the **maximum** over replicas, not their sum. In local mode, `QueuedWorkSource`
adds it to another source from the engine's own `queue_stats()`.
"""
from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from kfn.core import naming
from kfn.core.functions import FunctionRef
from kfn.core.scaling import MetricsSource, MetricsUnavailable, Observation, Sample, Unobserved
from kfn.events.store import QueueStats

logger = logging.getLogger(__name__)

FUNCTION = naming.METRIC_LABEL_FUNCTION
NAMESPACE = naming.METRIC_LABEL_NAMESPACE
_SUFFIX_TOTAL = "_total"


def _created_name(counter: str) -> str:
    base = counter[: -len(_SUFFIX_TOTAL)] if counter.endswith(_SUFFIX_TOTAL) else counter
    return f"{base}_created"


# A counter series: the function it belongs to and all its labels (e.g. several `code`s).
SeriesKey = tuple[FunctionRef, frozenset[tuple[str, str]]]


def _ref(labels: Mapping[str, str]) -> FunctionRef | None:
    name = labels.get(FUNCTION)
    return FunctionRef(labels.get(NAMESPACE) or naming.DEFAULT_NAMESPACE, name) if name else None


@dataclass(frozen=True)
class ScrapedLoad:
    """The figures the autoscaler needs from one gateway's /metrics, per function."""

    load: dict[SeriesKey, float] = field(default_factory=dict)          # request-seconds counter
    invocations: dict[SeriesKey, float] = field(default_factory=dict)   # request counter
    created: dict[tuple[str, SeriesKey], float] = field(default_factory=dict)  # (metric, series) → created time
    held: dict[FunctionRef, float] = field(default_factory=dict)        # in flight + queued, right now
    known: set[FunctionRef] = field(default_factory=set)                # every function the gateway knows
    async_depth: dict[FunctionRef, float] = field(default_factory=dict)      # async events stored
    async_in_flight: dict[FunctionRef, float] = field(default_factory=dict)  # async events being delivered

    def functions(self) -> set[FunctionRef]:
        return ({key[0] for key in (*self.load, *self.invocations)} | set(self.held) | set(self.async_depth)
                | self.known)

    def queued(self) -> dict[FunctionRef, float]:
        """Async events waiting for delivery per function, as this replica sees the shared store."""
        return {ref: max(0.0, depth - self.async_in_flight.get(ref, 0.0)) for ref, depth in self.async_depth.items()}


def parse_gateway_metrics(text: str) -> ScrapedLoad:
    """Pick kfn's gateway metrics out of a Prometheus text exposition. Raises ValueError if it is malformed."""
    load_created = _created_name(naming.METRIC_LOAD_SECONDS)
    invocations_created = _created_name(naming.METRIC_INVOCATIONS)
    result = ScrapedLoad()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            function = _ref(sample.labels)
            if function is None or math.isnan(sample.value):
                continue
            key: SeriesKey = (function, frozenset(sample.labels.items()))
            if sample.name == naming.METRIC_LOAD_SECONDS:
                result.load[key] = result.load.get(key, 0.0) + sample.value
            elif sample.name == naming.METRIC_INVOCATIONS:
                result.invocations[key] = result.invocations.get(key, 0.0) + sample.value
            elif sample.name == load_created:
                result.created[(naming.METRIC_LOAD_SECONDS, key)] = sample.value
            elif sample.name == invocations_created:
                result.created[(naming.METRIC_INVOCATIONS, key)] = sample.value
            elif sample.name == naming.METRIC_REPLICAS_DESIRED:
                result.known.add(function)
            elif sample.name in (naming.METRIC_IN_FLIGHT, naming.METRIC_QUEUE_DEPTH):
                result.held[function] = result.held.get(function, 0.0) + sample.value
            elif sample.name == naming.METRIC_ASYNC_QUEUE_DEPTH:
                result.async_depth[function] = result.async_depth.get(function, 0.0) + sample.value
            elif sample.name == naming.METRIC_ASYNC_IN_FLIGHT:
                result.async_in_flight[function] = result.async_in_flight.get(function, 0.0) + sample.value
    return result


def counter_increase(previous: Mapping[SeriesKey, float], current: Mapping[SeriesKey, float], *,
                     metric: str, previous_created: Mapping[tuple[str, SeriesKey], float],
                     current_created: Mapping[tuple[str, SeriesKey], float]) -> dict[FunctionRef, float]:
    """Per function, how much a counter grew between two scrapes of the same gateway.

    A series that went down, or whose `_created` time changed, was reset (the gateway restarted):
    its whole current value is the increase since then. A new series started from 0.
    """
    out: dict[FunctionRef, float] = {}
    for key, value in current.items():
        before = previous.get(key)
        created_before = previous_created.get((metric, key))
        created_now = current_created.get((metric, key))
        reset = before is None or value < before or (
            created_before is not None and created_now is not None and created_now != created_before)
        delta = value if reset else value - before  # type: ignore[operator]
        out[key[0]] = out.get(key[0], 0.0) + max(0.0, delta)
    return out


@dataclass(frozen=True)
class _Scrape:
    time: float
    metrics: ScrapedLoad


class PrometheusScrapeSource:
    """Scrapes every gateway replica's /metrics and sums the load per function.

    Each replica is remembered by URL: its own previous scrape is the baseline for its rates, so a
    replica missed for a tick (unreachable: logged and skipped) contributes its average over the
    longer interval when it comes back, and a replica that restarted (counters reset) is not
    mistaken for negative load. Replicas no longer listed by `urls_provider` are forgotten.
    """

    def __init__(self, urls_provider: Callable[[], Awaitable[list[str]]], *,
                 session: aiohttp.ClientSession, timeout: float = 2.0) -> None:
        self._urls_provider = urls_provider
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._previous: dict[str, _Scrape] = {}

    async def collect(self, now: float) -> dict[FunctionRef, Observation | Unobserved]:
        """Scrape all replicas concurrently; returns within about `timeout` seconds.

        Raises MetricsUnavailable when there is no replica or none could be scraped. While some
        replica cannot be scraped, a function with no load seen is `Unobserved` (the missing
        replica may be serving it); one with load is reported.
        """
        urls = list(dict.fromkeys(await self._urls_provider()))
        for gone in set(self._previous) - set(urls):
            del self._previous[gone]
        if not urls:
            raise MetricsUnavailable("no gateway replicas to scrape")

        results = await asyncio.gather(*(self._scrape(url) for url in urls), return_exceptions=True)

        concurrency: dict[FunctionRef, float] = {}
        requests: dict[FunctionRef, float] = {}
        held: dict[FunctionRef, float] = {}
        queued: dict[FunctionRef, float] = {}
        seen: set[FunctionRef] = set()
        measured: set[FunctionRef] = set()
        reachable = 0
        for url, result in zip(urls, results, strict=True):
            if isinstance(result, BaseException):
                if isinstance(result, asyncio.CancelledError):
                    raise result
                logger.warning("skipping gateway %s this tick: %s", url, _describe(result))
                continue
            reachable += 1
            current = _Scrape(time=now, metrics=result)
            previous = self._previous.get(url)
            self._previous[url] = current
            seen |= result.functions()
            for function, value in result.held.items():
                held[function] = held.get(function, 0.0) + value
            # One shared queue: every replica reports all of it, so the largest report, not the sum.
            for function, value in result.queued().items():
                queued[function] = max(queued.get(function, 0.0), value)
            if previous is None or now <= previous.time:
                continue  # no baseline for this replica yet
            elapsed = now - previous.time
            load = counter_increase(previous.metrics.load, result.load, metric=naming.METRIC_LOAD_SECONDS,
                                    previous_created=previous.metrics.created, current_created=result.created)
            calls = counter_increase(previous.metrics.invocations, result.invocations,
                                     metric=naming.METRIC_INVOCATIONS,
                                     previous_created=previous.metrics.created, current_created=result.created)
            # Every function this replica knows (now or before) was measured by it, even at zero.
            functions = result.functions() | previous.metrics.functions()
            measured |= functions
            for function in functions:
                concurrency[function] = concurrency.get(function, 0.0) + load.get(function, 0.0) / elapsed
                requests[function] = requests.get(function, 0.0) + calls.get(function, 0.0)
        if not reachable:
            raise MetricsUnavailable(f"none of {len(urls)} gateway replicas could be scraped")

        # A replica missed this tick may hold requests: no evidence of idleness for any function.
        missed = len(urls) - reachable
        out: dict[FunctionRef, Observation | Unobserved] = {}
        for function in seen | measured:
            sample = None
            if function in measured:
                sample = Sample(time=now, concurrency=concurrency[function],
                                requests=round(requests[function]))
            observation = Observation(sample=sample, in_flight=held.get(function, 0.0),
                                      queued=queued.get(function, 0.0))
            if missed and not _active(observation):
                out[function] = Unobserved(f"{missed} of {len(urls)} gateway replicas could not be scraped")
            else:
                out[function] = observation
        return out

    async def _scrape(self, url: str) -> ScrapedLoad:
        async with self._session.get(url, timeout=self._timeout) as response:
            if response.status != 200:
                raise aiohttp.ClientResponseError(response.request_info, response.history,
                                                  status=response.status, message=response.reason or "")
            text = await response.text()
        return parse_gateway_metrics(text)


def _active(observation: Observation) -> bool:
    """Whether an observation shows any load (evidence of activity whatever else is unknown)."""
    sample = observation.sample
    return (observation.in_flight > 0 or observation.queued > 0
            or (sample is not None and (sample.concurrency > 0 or sample.requests > 0)))


def _describe(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "timed out"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


# The prefix Prometheus gives a scraped label that clashes with a target label (without honor_labels).
_RENAMED = "exported_"
_PROMQL_DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")


class PromQLSource:
    """Asks a Prometheus server that scrapes the gateways for each function's load.

    Concurrency is the rate of the load counter over `window`, summed over gateway replicas, and
    Prometheus handles counter resets. Requests are the increase of invocations over `window`,
    so idleness is noticed up to one `window` late. Queued async work is the largest report of
    any replica (they share one queue).

    Evidence (`evidence_query`): the functions that a gateway target Prometheus scrapes *now*
    (`up == 1`, joined on job and instance) reports in `kfn_function_replicas_desired`. Only those
    get a zero sample when they have no load; a function with load is reported whatever the
    evidence. Prometheus must therefore scrape the gateways itself (not only receive their series
    by federation or remote write) and keep kfn's own labels (`honor_labels: true`): series whose
    `namespace` was renamed to `exported_namespace` make the whole source unavailable, since the
    load of every namespace would be added up under the gateway's.
    """

    def __init__(self, base_url: str, *, session: aiohttp.ClientSession, window: str = "30s",
                 timeout: float = 5.0) -> None:
        if not _PROMQL_DURATION.fullmatch(window):
            raise ValueError(f"window must be a Prometheus duration such as '30s' or '1m' (got {window!r})")
        self._url = base_url.rstrip("/") + "/api/v1/query"
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        by = f"sum by ({FUNCTION}, {NAMESPACE})"
        self.load_query = f"{by} (rate({naming.METRIC_LOAD_SECONDS}[{window}]))"
        self.requests_query = f"{by} (increase({naming.METRIC_INVOCATIONS}[{window}]))"
        self.held_query = f'{by} ({{__name__=~"{naming.METRIC_IN_FLIGHT}|{naming.METRIC_QUEUE_DEPTH}"}})'
        # Both gauges of one replica carry the same labels, so the difference is taken per replica.
        self.queued_query = (f"max by ({FUNCTION}, {NAMESPACE}) "
                             f"({naming.METRIC_ASYNC_QUEUE_DEPTH} - {naming.METRIC_ASYNC_IN_FLIGHT})")
        self.evidence_query = (f"count by ({FUNCTION}, {NAMESPACE}, {_RENAMED}{FUNCTION}, {_RENAMED}{NAMESPACE}) "
                               f"({naming.METRIC_REPLICAS_DESIRED} and on (job, instance) (up == 1))")
        # Targets that are down in a job whose other targets are gateways: their load is unknown.
        self.down_query = f"count by (job) ((up == 0) and on (job) {naming.METRIC_REPLICAS_DESIRED})"

    async def collect(self, now: float) -> dict[FunctionRef, Observation | Unobserved]:
        """Run the six queries concurrently; returns within about `timeout` seconds.

        Raises MetricsUnavailable if Prometheus cannot be reached or answers with an error, has no
        series from a gateway target that is up, or has renamed kfn's labels (no honor_labels).
        While a target in the gateways' job is down, a function with no load is `Unobserved`.
        """
        try:
            load, requests, held, queued, evidence, down = await asyncio.gather(
                self._query(self.load_query), self._query(self.requests_query), self._query(self.held_query),
                self._query(self.queued_query), self._vector(self.evidence_query), self._vector(self.down_query))
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            raise MetricsUnavailable(f"Prometheus query failed: {_describe(e)}") from e
        renamed = sorted({label for labels, _ in evidence for label in labels if label.startswith(_RENAMED)})
        if renamed:
            raise MetricsUnavailable(
                f"the gateways' series in Prometheus carry {', '.join(renamed)}: Prometheus renamed kfn's own "
                "labels, so load cannot be told apart by namespace; scrape the gateways with honor_labels: true "
                "(honorLabels: true in a ServiceMonitor)")
        seen = {ref for ref in (_ref(labels) for labels, _ in evidence) if ref is not None}
        if not seen:
            raise MetricsUnavailable(
                f"Prometheus has no {naming.METRIC_REPLICAS_DESIRED} series from a gateway target that is up "
                "(up == 1): is the gateway scraped, and is its target up?")
        missed = round(sum(value for _, value in down))
        out: dict[FunctionRef, Observation | Unobserved] = {}
        for function in seen | {f for values in (load, requests, held, queued) for f in values}:
            arrived = requests.get(function, 0.0)
            # increase() extrapolates to the window's edges: any growth means at least one request.
            count = max(0, math.ceil(arrived - 1e-9)) if arrived > 0 else 0
            sample = Sample(time=now, concurrency=max(0.0, load.get(function, 0.0)), requests=count)
            observation = Observation(sample=sample, in_flight=max(0.0, held.get(function, 0.0)),
                                      queued=max(0.0, queued.get(function, 0.0)))
            if _active(observation):
                out[function] = observation   # load is evidence enough, whoever reports it
            elif missed:
                out[function] = Unobserved(f"{missed} gateway target(s) down in Prometheus (up == 0)")
            elif function in seen:
                out[function] = observation
        return out

    async def _query(self, query: str) -> dict[FunctionRef, float]:
        """An instant vector summed per function (items without a function label or a number skipped)."""
        out: dict[FunctionRef, float] = {}
        for labels, value in await self._vector(query):
            function = _ref(labels)
            if function is not None:
                out[function] = out.get(function, 0.0) + value
        return out

    async def _vector(self, query: str) -> list[tuple[dict[str, str], float]]:
        """An instant vector's items as (labels, value); NaN and malformed items are skipped.

        Raises ValueError for an answer that is not a successful instant vector.
        """
        async with self._session.get(self._url, params={"query": query}, timeout=self._timeout) as response:
            try:
                body = await response.json(content_type=None)
            except ValueError:
                raise ValueError(f"HTTP {response.status} with a body that is not JSON") from None
        if not isinstance(body, dict) or body.get("status") != "success":
            error = body.get("error") if isinstance(body, dict) else None
            raise ValueError(f"HTTP {response.status}: {error or 'not a Prometheus answer'}")
        data = body.get("data") or {}
        if data.get("resultType") != "vector":
            raise ValueError(f"expected an instant vector, got {data.get('resultType')!r}")
        out: list[tuple[dict[str, str], float]] = []
        for item in data.get("result") or []:
            labels = item.get("metric") if isinstance(item, dict) else None
            try:
                value = float(item["value"][1])
            except (KeyError, IndexError, TypeError, ValueError):
                continue
            if not isinstance(labels, dict) or math.isnan(value):
                continue
            out.append(({str(k): str(v) for k, v in labels.items()}, value))
        return out


class QueuedWorkSource:
    """Another source's observations plus each function's queued async work, read from the
    delivery engine in this process (`DeliveryEngine.queue_stats`: local mode, one engine).

    A function with queued events and no load at all gets an observation of its own (a zero
    sample), so a function at zero replicas with queued events is scaled up; one the other source
    could not see gets one without a sample (its queued work is known, its load is not).
    """

    def __init__(self, source: MetricsSource, queue_stats: Callable[[], Mapping[FunctionRef, QueueStats]]) -> None:
        self._source = source
        self._queue_stats = queue_stats

    async def collect(self, now: float) -> dict[FunctionRef, Observation | Unobserved]:
        observations = dict(await self._source.collect(now))
        for function, stats in self._queue_stats().items():
            queued = float(max(0, stats.depth - stats.in_flight))
            if queued <= 0:
                continue
            observation = observations.get(function)
            if observation is None:
                observation = Observation(sample=Sample(time=now, concurrency=0.0, requests=0), in_flight=0.0)
            elif isinstance(observation, Unobserved):
                observation = Observation(sample=None, in_flight=0.0)
            observations[function] = replace(observation, queued=queued)
        return observations
