"""Metric sources for Kubernetes, against real HTTP servers on 127.0.0.1 whose answers tests control."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import prometheus_client
import pytest
from aiohttp import web

from kfn.core import naming
from kfn.core.functions import FunctionRef
from kfn.core.scaling import MetricsUnavailable, Observation, Sample, Unobserved
from kfn.events.store import QueueStats
from kfn_autoscaler.autoscaler import Autoscaler
from kfn_autoscaler.sources import PrometheusScrapeSource, PromQLSource, QueuedWorkSource, parse_gateway_metrics
from tests.support.backend import FakeBackend, ref
from tests.support.clocks import FakeClock
from tests.support.functions import TICK_SCALE, make_function

FN = naming.METRIC_LABEL_FUNCTION


def named(observations: dict[FunctionRef, Any]) -> dict[str, Any]:
    """Observations by function name (these functions all live in the default namespace)."""
    assert all(ref.namespace == "default" for ref in observations)
    return {ref.name: observation for ref, observation in observations.items()}


def exposition(*, load: dict[str, float] | None = None,
               invocations: dict[tuple[str, str], float] | None = None,
               in_flight: dict[str, float] | None = None, queued: dict[str, float] | None = None,
               created: float | None = None, async_depth: dict[str, float] | None = None,
               async_in_flight: dict[str, float] | None = None, known: tuple[str, ...] = ()) -> str:
    """A gateway's /metrics text, in the Prometheus text format (`known`: functions it routes)."""
    lines = [f"# TYPE {naming.METRIC_REPLICAS_DESIRED} gauge"]
    for name in known:
        lines.append(f'{naming.METRIC_REPLICAS_DESIRED}{{{FN}="{name}",{naming.METRIC_LABEL_NAMESPACE}="default"}} 1')
    lines.append(f"# TYPE {naming.METRIC_LOAD_SECONDS} counter")
    for name, value in (load or {}).items():
        lines.append(f'{naming.METRIC_LOAD_SECONDS}{{{FN}="{name}"}} {value}')
    if created is not None:
        base = naming.METRIC_LOAD_SECONDS.removesuffix("_total")
        lines.append(f"# TYPE {base}_created gauge")
        for name in load or {}:
            lines.append(f'{base}_created{{{FN}="{name}"}} {created}')
    lines.append(f"# TYPE {naming.METRIC_INVOCATIONS} counter")
    for (name, code), value in (invocations or {}).items():
        lines.append(f'{naming.METRIC_INVOCATIONS}{{{FN}="{name}",{naming.METRIC_LABEL_CODE}="{code}"}} {value}')
    lines.append(f"# TYPE {naming.METRIC_IN_FLIGHT} gauge")
    for name, value in (in_flight or {}).items():
        lines.append(f'{naming.METRIC_IN_FLIGHT}{{{FN}="{name}"}} {value}')
    lines.append(f"# TYPE {naming.METRIC_QUEUE_DEPTH} gauge")
    for name, value in (queued or {}).items():
        lines.append(f'{naming.METRIC_QUEUE_DEPTH}{{{FN}="{name}"}} {value}')
    for metric, values in ((naming.METRIC_ASYNC_QUEUE_DEPTH, async_depth),
                           (naming.METRIC_ASYNC_IN_FLIGHT, async_in_flight)):
        lines.append(f"# TYPE {metric} gauge")
        for name, value in (values or {}).items():
            lines.append(f'{metric}{{{FN}="{name}",{naming.METRIC_LABEL_NAMESPACE}="default"}} {value}')
    # Unrelated metrics are ignored.
    lines.append("# TYPE process_cpu_seconds_total counter")
    lines.append("process_cpu_seconds_total 12.5")
    return "\n".join(lines) + "\n"


class FakeGateway:
    """Serves /metrics with whatever text the test sets; can be stopped to become unreachable."""

    def __init__(self) -> None:
        self.text = exposition()
        self.status = 200
        self.hang = False
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/metrics"

    async def stop(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.hang:
            # Longer than any source timeout; released when the test stops the server.
            await asyncio.wait_for(self._release.wait(), timeout=30)
        return web.Response(text=self.text, status=self.status, content_type="text/plain")


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def gateways() -> AsyncIterator[Callable[[int], Awaitable[list[FakeGateway]]]]:
    started: list[FakeGateway] = []

    async def make(count: int) -> list[FakeGateway]:
        for _ in range(count):
            gateway = FakeGateway()
            await gateway.start()
            started.append(gateway)
        return started[-count:]

    try:
        yield make
    finally:
        for gateway in started:
            await gateway.stop()


def scraping(urls: list[str], session: aiohttp.ClientSession, **kwargs: Any) -> PrometheusScrapeSource:
    async def provider() -> list[str]:
        return list(urls)
    return PrometheusScrapeSource(provider, session=session, **kwargs)


# --- PrometheusScrapeSource


async def test_first_scrape_has_no_rate_yet_but_knows_what_is_held(session, gateways) -> None:
    (gw,) = await gateways(1)
    gw.text = exposition(load={"hello": 10}, invocations={("hello", "200"): 4}, in_flight={"hello": 2},
                         queued={"hello": 3})
    observed = named(await scraping([gw.url], session).collect(100.0))
    assert observed["hello"].sample is None
    assert observed["hello"].in_flight == 5


async def test_concurrency_is_the_rate_of_load_seconds(session, gateways) -> None:
    (gw,) = await gateways(1)
    source = scraping([gw.url], session)
    gw.text = exposition(load={"hello": 10})
    await source.collect(100.0)
    gw.text = exposition(load={"hello": 16})
    observed = named(await source.collect(102.0))
    assert observed["hello"].sample == Sample(time=102.0, concurrency=3.0, requests=0)


async def test_requests_are_new_invocations_of_every_code(session, gateways) -> None:
    (gw,) = await gateways(1)
    source = scraping([gw.url], session)
    gw.text = exposition(load={"hello": 1}, invocations={("hello", "200"): 10, ("hello", "500"): 1})
    await source.collect(100.0)
    gw.text = exposition(load={"hello": 2}, invocations={("hello", "200"): 15, ("hello", "500"): 3})
    observed = named(await source.collect(101.0))
    assert observed["hello"].sample.requests == 7


async def test_load_is_summed_over_gateway_replicas(session, gateways) -> None:
    a, b = await gateways(2)
    source = scraping([a.url, b.url], session)
    a.text = exposition(load={"hello": 0, "other": 5}, in_flight={"hello": 1})
    b.text = exposition(load={"hello": 100}, in_flight={"hello": 2}, queued={"hello": 4})
    await source.collect(10.0)
    a.text = exposition(load={"hello": 4, "other": 5}, in_flight={"hello": 1})
    b.text = exposition(load={"hello": 106}, in_flight={"hello": 2}, queued={"hello": 4})
    observed = named(await source.collect(12.0))
    assert observed["hello"].sample.concurrency == pytest.approx(2.0 + 3.0)
    assert observed["hello"].in_flight == 7
    assert observed["other"].sample.concurrency == 0.0


async def test_a_restarted_gateway_counts_from_zero(session, gateways) -> None:
    (gw,) = await gateways(1)
    source = scraping([gw.url], session)
    gw.text = exposition(load={"hello": 500}, invocations={("hello", "200"): 900})
    await source.collect(100.0)
    gw.text = exposition(load={"hello": 4}, invocations={("hello", "200"): 3})
    observed = named(await source.collect(102.0))
    assert observed["hello"].sample == Sample(time=102.0, concurrency=2.0, requests=3)


async def test_a_reset_is_seen_in_created_even_when_the_counter_grew(session, gateways) -> None:
    (gw,) = await gateways(1)
    source = scraping([gw.url], session)
    gw.text = exposition(load={"hello": 5}, created=1000.0)
    await source.collect(100.0)
    gw.text = exposition(load={"hello": 8}, created=1099.0)
    observed = named(await source.collect(102.0))
    assert observed["hello"].sample.concurrency == pytest.approx(4.0)  # 8 since the restart, not 3


async def test_a_function_first_seen_later_counts_from_zero(session, gateways) -> None:
    (gw,) = await gateways(1)
    source = scraping([gw.url], session)
    gw.text = exposition(load={"hello": 5})
    await source.collect(100.0)
    gw.text = exposition(load={"hello": 5, "new": 3}, invocations={("new", "200"): 2})
    observed = named(await source.collect(101.0))
    assert observed["new"].sample == Sample(time=101.0, concurrency=3.0, requests=2)


async def test_an_unreachable_replica_is_skipped_and_logged(session, gateways, caplog) -> None:
    a, b = await gateways(2)
    source = scraping([a.url, b.url], session)
    a.text = exposition(load={"hello": 0})
    b.text = exposition(load={"hello": 0})
    await source.collect(100.0)
    await b.stop()
    a.text = exposition(load={"hello": 2})
    with caplog.at_level(logging.WARNING, logger="kfn_autoscaler.sources"):
        observed = named(await source.collect(101.0))
    assert observed["hello"].sample.concurrency == pytest.approx(2.0)
    assert b.url in caplog.text


async def test_a_replica_back_after_a_miss_reports_its_average_since_its_last_scrape(session, gateways) -> None:
    a, b = await gateways(2)
    source = scraping([a.url, b.url], session)
    a.text = exposition(load={"hello": 0})
    b.text = exposition(load={"hello": 0})
    await source.collect(100.0)
    b.status = 503
    a.text = exposition(load={"hello": 1})
    await source.collect(101.0)
    b.status = 200
    a.text = exposition(load={"hello": 2})
    b.text = exposition(load={"hello": 8})  # 8 request-seconds over the 2 s since its last scrape
    observed = named(await source.collect(102.0))
    assert observed["hello"].sample.concurrency == pytest.approx(1.0 + 4.0)


async def test_a_replica_that_answers_garbage_is_skipped(session, gateways, caplog) -> None:
    a, b = await gateways(2)
    source = scraping([a.url, b.url], session)
    a.text = exposition(load={"hello": 0})
    b.text = "this is { not prometheus\n"
    await source.collect(100.0)
    a.text = exposition(load={"hello": 1})
    with caplog.at_level(logging.WARNING, logger="kfn_autoscaler.sources"):
        observed = named(await source.collect(101.0))
    assert observed["hello"].sample.concurrency == pytest.approx(1.0)
    assert b.url in caplog.text


async def test_a_replica_that_hangs_is_given_up_on(session, gateways) -> None:
    a, b = await gateways(2)
    source = scraping([a.url, b.url], session, timeout=0.2)
    b.hang = True
    a.text = exposition(load={"hello": 0}, in_flight={"hello": 1})
    observed = named(await source.collect(100.0))
    assert observed["hello"].in_flight == 1


async def test_no_reachable_replica_is_an_error(session, gateways) -> None:
    (gw,) = await gateways(1)
    gw.status = 500
    with pytest.raises(MetricsUnavailable, match="none of 1"):
        await scraping([gw.url], session).collect(100.0)


async def test_no_replica_at_all_is_an_error(session) -> None:
    with pytest.raises(MetricsUnavailable, match="no gateway replicas"):
        await scraping([], session).collect(100.0)


async def test_a_replica_no_longer_listed_is_forgotten(session, gateways) -> None:
    a, b = await gateways(2)
    urls = [a.url, b.url]
    source = scraping(urls, session)
    a.text = exposition(load={"hello": 0})
    b.text = exposition(load={"hello": 0})
    await source.collect(100.0)
    urls.remove(b.url)
    a.text = exposition(load={"hello": 1})
    await source.collect(101.0)
    urls.append(b.url)
    b.text = exposition(load={"hello": 50})
    a.text = exposition(load={"hello": 2})
    observed = named(await source.collect(102.0))
    assert observed["hello"].sample.concurrency == pytest.approx(1.0)  # b has no baseline again


async def test_a_function_gone_from_a_replica_is_measured_at_zero(session, gateways) -> None:
    (gw,) = await gateways(1)
    source = scraping([gw.url], session)
    gw.text = exposition(load={"hello": 5})
    await source.collect(100.0)
    gw.text = exposition()
    observed = named(await source.collect(101.0))
    assert observed["hello"].sample == Sample(time=101.0, concurrency=0.0, requests=0)


async def test_queued_async_work_is_depth_minus_in_flight(session, gateways) -> None:
    (gw,) = await gateways(1)
    gw.text = exposition(async_depth={"hello": 7}, async_in_flight={"hello": 2})
    observed = named(await scraping([gw.url], session).collect(100.0))
    assert observed["hello"].queued == 5
    assert observed["hello"].in_flight == 0


async def test_queued_async_work_is_the_largest_report_not_the_sum(session, gateways) -> None:
    # Every replica reads the one shared queue: two replicas reporting 5 mean 5 queued, not 10.
    a, b = await gateways(2)
    a.text = exposition(async_depth={"hello": 7}, async_in_flight={"hello": 2})
    b.text = exposition(async_depth={"hello": 6}, async_in_flight={"hello": 3})
    observed = named(await scraping([a.url, b.url], session).collect(100.0))
    assert observed["hello"].queued == 5


async def test_a_function_only_queued_gets_a_sample_once_measured(session, gateways) -> None:
    (gw,) = await gateways(1)
    source = scraping([gw.url], session)
    gw.text = exposition(async_depth={"idle": 3})
    await source.collect(100.0)
    observed = named(await source.collect(101.0))
    assert observed["idle"].sample == Sample(time=101.0, concurrency=0.0, requests=0)
    assert observed["idle"].queued == 3


async def test_a_known_function_without_traffic_is_measured_at_zero(session, gateways) -> None:
    (a,) = await gateways(1)
    a.text = exposition(known=("quiet",))
    source = scraping([a.url], session)
    await source.collect(10.0)
    observed = named(await source.collect(11.0))
    assert observed["quiet"].sample == Sample(11.0, 0.0, 0)


async def test_a_function_no_reachable_gateway_reports_is_left_out(session, gateways) -> None:
    a, b = await gateways(2)
    a.text = exposition(known=("hello",))
    b.text = exposition(known=("hello", "other"))
    source = scraping([a.url, b.url], session)
    await source.collect(10.0)
    await b.stop()  # the only gateway that knows "other" is gone: no evidence about it
    observed = named(await source.collect(11.0))
    assert set(observed) == {"hello"}


async def test_while_a_replica_cannot_be_scraped_no_function_is_seen_idle(session, gateways) -> None:
    a, b = await gateways(2)
    a.text = b.text = exposition(load={"busy": 0.0}, known=("busy", "quiet"))
    source = scraping([a.url, b.url], session)
    await source.collect(10.0)
    a.text = exposition(load={"busy": 2.0}, known=("busy", "quiet"))
    await b.stop()
    observed = named(await source.collect(11.0))
    assert observed["busy"].sample == Sample(11.0, 2.0, 0)
    assert observed["quiet"] == Unobserved("1 of 2 gateway replicas could not be scraped")


def test_parses_what_prometheus_client_exports() -> None:
    registry = prometheus_client.CollectorRegistry()
    load = prometheus_client.Counter(naming.METRIC_LOAD_SECONDS, "load", [FN], registry=registry)
    calls = prometheus_client.Counter(naming.METRIC_INVOCATIONS, "calls", [FN, naming.METRIC_LABEL_CODE],
                                      registry=registry)
    held = prometheus_client.Gauge(naming.METRIC_IN_FLIGHT, "held", [FN], registry=registry)
    load.labels("hello").inc(2.5)
    calls.labels("hello", "200").inc(3)
    held.labels("hello").set(4)
    parsed = parse_gateway_metrics(prometheus_client.generate_latest(registry).decode())
    assert sum(parsed.load.values()) == 2.5
    assert sum(parsed.invocations.values()) == 3
    assert parsed.held == {FunctionRef.parse("hello"): 4}
    assert len(parsed.created) == 2


async def test_the_autoscaler_scales_on_scraped_gateways(session, gateways) -> None:
    a, b = await gateways(2)
    clock = FakeClock()
    backend = FakeBackend(make_function("hello", scale=TICK_SCALE), replicas=1)
    autoscaler = Autoscaler(backend, scraping([a.url, b.url], session), clock=clock)
    total = 0.0
    for _ in range(5):
        clock.now += 1
        total += 15.0  # 15 requests held on each gateway, all the time
        a.text = exposition(load={"hello": total}, in_flight={"hello": 15})
        b.text = exposition(load={"hello": total}, in_flight={"hello": 15})
        await autoscaler.tick()
    assert backend.replicas[ref("hello")] == 3  # 30 held / target 10


# --- PromQLSource


class FakePrometheus:
    """Answers /api/v1/query like Prometheus, from a table of query → {function: value}, or from
    `vectors(query)`, which returns the items (labels, value) of any query the test plays."""

    def __init__(self) -> None:
        self.answers: dict[str, dict[str, str]] = {}
        self.vectors: Callable[[str], list[tuple[dict[str, str], str]]] | None = None
        self.queries: list[str] = []
        self.error: str | None = None
        self.raw: str | None = None
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/api/v1/query", self._query)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _query(self, request: web.Request) -> web.Response:
        query = request.query.get("query", "")
        self.queries.append(query)
        if self.raw is not None:
            return web.Response(text=self.raw, status=502)
        if self.error is not None:
            return web.json_response({"status": "error", "errorType": "bad_data", "error": self.error}, status=400)
        if self.vectors is not None:
            items = self.vectors(query)
        else:
            items = [({FN: name}, value) for name, value in self.answers.get(query, {}).items()]
        result = [{"metric": labels, "value": [1700000000.0, value]} for labels, value in items]
        return web.json_response({"status": "success", "data": {"resultType": "vector", "result": result}})


@pytest.fixture
async def prometheus() -> AsyncIterator[FakePrometheus]:
    server = FakePrometheus()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_promql_builds_observations_from_five_queries(session, prometheus) -> None:
    source = PromQLSource(prometheus.url, session=session)
    prometheus.answers[source.evidence_query] = {"hello": "2", "idle": "2"}
    prometheus.answers[source.load_query] = {"hello": "2.5", "idle": "0"}
    prometheus.answers[source.requests_query] = {"hello": "12.4", "idle": "0"}
    prometheus.answers[source.held_query] = {"hello": "3"}
    prometheus.answers[source.queued_query] = {"hello": "4", "backlog": "9"}
    observed = named(await source.collect(50.0))
    assert observed["hello"].sample == Sample(time=50.0, concurrency=2.5, requests=13)
    assert (observed["hello"].in_flight, observed["hello"].queued) == (3, 4)
    assert observed["idle"].sample == Sample(time=50.0, concurrency=0.0, requests=0)
    assert (observed["idle"].in_flight, observed["idle"].queued) == (0, 0)
    assert observed["backlog"].queued == 9


async def test_promql_queries_name_the_gateway_metrics_and_the_window(session, prometheus) -> None:
    source = PromQLSource(prometheus.url, session=session, window="1m")
    prometheus.answers[source.evidence_query] = {"hello": "1"}
    await source.collect(50.0)
    assert sorted(prometheus.queries) == sorted([
        f"sum by (function, namespace) (rate({naming.METRIC_LOAD_SECONDS}[1m]))",
        f"sum by (function, namespace) (increase({naming.METRIC_INVOCATIONS}[1m]))",
        f'sum by (function, namespace) ({{__name__=~"{naming.METRIC_IN_FLIGHT}|{naming.METRIC_QUEUE_DEPTH}"}})',
        f"max by (function, namespace) ({naming.METRIC_ASYNC_QUEUE_DEPTH} - {naming.METRIC_ASYNC_IN_FLIGHT})",
        "count by (function, namespace, exported_function, exported_namespace) "
        f"({naming.METRIC_REPLICAS_DESIRED} and on (job, instance) (up == 1))",
        f"count by (job) ((up == 0) and on (job) {naming.METRIC_REPLICAS_DESIRED})",
    ])


async def test_promql_skips_values_that_are_not_numbers(session, prometheus) -> None:
    source = PromQLSource(prometheus.url, session=session)
    prometheus.answers[source.evidence_query] = {"seen": "1"}
    prometheus.answers[source.load_query] = {"hello": "NaN"}
    observed = named(await source.collect(50.0))
    assert set(observed) == {"seen"}


def scraped_by_prometheus(case: str, *, hello: float) -> Callable[[str], list[tuple[dict[str, str], str]]]:
    """What Prometheus answers the PromQL source when two gateway targets of release namespace `kfn`
    serve function hello (namespace default, `hello` requests held) and know function idle:

    - healthy: scraped with honor_labels, targets up;
    - up==0: the targets are down, so their series went stale: every query is empty;
    - no up: gateway series without an `up` of their own (federated, or kept by remote write): the
      rates and gauges Prometheus still has read 0, and `up` does not join them;
    - other labels: scraped without honor_labels: `namespace` is the target's (kfn), kfn's own
      namespace became exported_namespace.
    """
    def vectors(query: str) -> list[tuple[dict[str, str], str]]:
        labels = {"function": "hello", "namespace": "default"}
        if case == "other labels":
            labels = {"function": "hello", "namespace": "kfn", "exported_namespace": "default"}
        idle = {**labels, "function": "idle"}
        if case == "up==0":
            return []
        if "up == 1" in query:
            return [] if case == "no up" else [(labels, "2"), (idle, "2")]
        if case == "no up":
            return [({"function": "hello", "namespace": "default"}, "0")]
        by_query = {naming.METRIC_LOAD_SECONDS: hello, naming.METRIC_INVOCATIONS: hello * 10,
                    naming.METRIC_IN_FLIGHT: hello}
        value = next((v for metric, v in by_query.items() if metric in query), None)
        if value is None:
            return []
        pick = {k: v for k, v in labels.items() if k in ("function", "namespace")}
        return [(pick, repr(float(value))), ({**pick, "function": "idle"}, "0")]
    return vectors


@pytest.mark.parametrize("case", ["up==0", "no up", "other labels"])
async def test_promql_without_evidence_of_idleness_holds_a_loaded_function(session, prometheus, caplog,
                                                                           case: str) -> None:
    clock = FakeClock()
    backend = FakeBackend(make_function("hello", scale={**TICK_SCALE, "idleTimeout": 30}), replicas=4)
    autoscaler = Autoscaler(backend, PromQLSource(prometheus.url, session=session), clock=clock)
    prometheus.vectors = scraped_by_prometheus(case, hello=35.0)
    for _ in range(90):  # three idle timeouts
        clock.now += 1
        decisions = await autoscaler.tick()
    assert backend.scale_calls == []
    assert decisions[FunctionRef.parse("hello")].kind == "unobserved"
    assert autoscaler.registry.get_sample_value(naming.METRIC_AUTOSCALER_SOURCE_AVAILABLE) == 0
    assert "holding every function" in caplog.text
    if case == "other labels":
        assert "honor_labels: true" in (autoscaler.source_problem or "")


async def test_promql_with_one_gateway_target_down_no_function_is_seen_idle(session, prometheus) -> None:
    source = PromQLSource(prometheus.url, session=session)
    prometheus.answers[source.evidence_query] = {"busy": "1", "quiet": "1"}
    prometheus.answers[source.load_query] = {"busy": "3", "quiet": "0"}
    prometheus.answers[source.down_query] = {"": "1"}  # one target of the gateways' job: up == 0
    observed = named(await source.collect(50.0))
    assert observed["busy"].sample == Sample(50.0, 3.0, 0)
    assert observed["quiet"] == Unobserved("1 gateway target(s) down in Prometheus (up == 0)")


async def test_promql_healthy_scales_a_loaded_function_up_and_an_idle_one_to_zero(session, prometheus) -> None:
    clock = FakeClock()
    backend = FakeBackend(make_function("hello", scale={**TICK_SCALE, "idleTimeout": 30}),
                          make_function("idle", scale={**TICK_SCALE, "idleTimeout": 30}), replicas=1)
    autoscaler = Autoscaler(backend, PromQLSource(prometheus.url, session=session), clock=clock)
    prometheus.vectors = scraped_by_prometheus("healthy", hello=35.0)
    for _ in range(31):
        clock.now += 1
        await autoscaler.tick()
    assert (backend.replicas[ref("hello")], backend.replicas[ref("idle")]) == (4, 0)
    assert autoscaler.source_problem is None
    prometheus.vectors = scraped_by_prometheus("healthy", hello=0.0)  # the load stops
    for _ in range(31):
        clock.now += 1
        await autoscaler.tick()
    assert backend.replicas[ref("hello")] == 0


async def test_promql_error_answer_is_metrics_unavailable(session, prometheus) -> None:
    prometheus.error = "parse error at char 3"
    with pytest.raises(MetricsUnavailable, match="parse error at char 3"):
        await PromQLSource(prometheus.url, session=session).collect(50.0)


async def test_promql_non_json_answer_is_metrics_unavailable(session, prometheus) -> None:
    prometheus.raw = "<html>bad gateway</html>"
    with pytest.raises(MetricsUnavailable, match="HTTP 502"):
        await PromQLSource(prometheus.url, session=session).collect(50.0)


async def test_promql_unreachable_server_is_metrics_unavailable(session, prometheus) -> None:
    url = prometheus.url
    await prometheus.stop()
    with pytest.raises(MetricsUnavailable):
        await PromQLSource(url, session=session).collect(50.0)


def test_promql_window_must_be_a_prometheus_duration() -> None:
    with pytest.raises(ValueError, match="window"):
        PromQLSource("http://127.0.0.1:9", session=None, window="30 seconds; drop")  # type: ignore[arg-type]


# --- QueuedWorkSource (local mode: the delivery engine in the same process)


class _Fixed:
    def __init__(self, observations: dict[FunctionRef, Observation]) -> None:
        self.observations = observations

    async def collect(self, now: float) -> dict[FunctionRef, Observation]:
        return dict(self.observations)


async def test_queued_work_is_added_to_the_observations_of_another_source() -> None:
    hello = FunctionRef.parse("hello")
    inner = _Fixed({hello: Observation(sample=Sample(5.0, 2.0, 1), in_flight=1.0)})
    source = QueuedWorkSource(inner, lambda: {hello: QueueStats(depth=6, in_flight=2, oldest_accepted_at=1.0)})
    observed = await source.collect(5.0)
    assert observed[hello] == Observation(sample=Sample(5.0, 2.0, 1), in_flight=1.0, queued=4.0)


async def test_a_function_with_only_queued_work_gets_an_observation() -> None:
    backlog = FunctionRef.parse("backlog")
    source = QueuedWorkSource(_Fixed({}), lambda: {backlog: QueueStats(3, 0, 1.0),
                                                   FunctionRef.parse("empty"): QueueStats(0, 0, None)})
    observed = await source.collect(7.0)
    assert observed == {backlog: Observation(sample=Sample(7.0, 0.0, 0), in_flight=0.0, queued=3.0)}


@pytest.mark.parametrize("window", ["30s\n", "1m]) or vector(1", ""])
async def test_a_promql_window_that_is_not_a_whole_duration_is_refused(window: str) -> None:
    # It is pasted into the query: "30s\n" passed a `$`-anchored check, and more would follow it.
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ValueError, match="window must be a Prometheus duration"):
            PromQLSource("http://127.0.0.1:9", session=session, window=window)
