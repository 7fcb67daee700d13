"""What the gateway tells about traffic: /metrics (kfn's and OpenFaaS's names), /system/functions,
and the in-process MetricsSource the autoscaler reads."""
from __future__ import annotations

import asyncio
import time
from datetime import datetime

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from kfn.core import naming
from kfn.core.scaling import Sample
from kfn_autoscaler.sources import parse_gateway_metrics
from tests.support.backend import ControlledFunctions, FakeBackend, FunctionError, raising, ref, timed_out
from tests.support.functions import make_function
from tests.support.gateway import RunningGateway, running_gateway
from tests.support.waiting import eventually

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(metrics: Samples, name: str, **labels: str) -> float:
    """One sample's value; a function named without a namespace is in the default one."""
    if naming.METRIC_LABEL_FUNCTION in labels:
        labels.setdefault(naming.METRIC_LABEL_NAMESPACE, "default")
    openfaas = labels.get(naming.METRIC_LABEL_OPENFAAS_FUNCTION)
    if openfaas is not None and "." not in openfaas:
        labels[naming.METRIC_LABEL_OPENFAAS_FUNCTION] = f"{openfaas}.default"
    return metrics[(name, frozenset(labels.items()))]


async def scrape(gw: RunningGateway) -> str:
    async with gw.session.get(gw.url("/metrics")) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return await response.text()


async def test_metrics_count_invocations_by_function_and_code_after_traffic() -> None:
    functions = ControlledFunctions()
    backend = FakeBackend(make_function("hello", concurrency=1), make_function("idle"), fn=functions)
    backend.scale_gate = asyncio.Event()
    async with backend, running_gateway(backend) as gw:
        first = asyncio.create_task(gw.json("GET", "/function/hello"))
        await eventually(lambda: gw.gateway.stats(ref("hello")).queued == 1)
        backend.scale_gate.set()
        assert (await first)[0] == 200
        for _ in range(2):
            assert (await gw.json("GET", "/function/hello"))[0] == 200
        await gw.json("GET", "/function/nope")   # unknown functions are not counted
        held = asyncio.create_task(gw.json("GET", "/function/hello/hold/x"))
        queued = asyncio.create_task(gw.json("GET", "/function/hello"))
        await eventually(lambda: gw.gateway.stats(ref("hello")).queued == 1)

        metrics = samples(await scrape(gw))
        functions.release("x")
        await asyncio.gather(held, queued)

    F, C, OF = naming.METRIC_LABEL_FUNCTION, naming.METRIC_LABEL_CODE, naming.METRIC_LABEL_OPENFAAS_FUNCTION
    assert value(metrics, naming.METRIC_INVOCATIONS, **{F: "hello", C: "200"}) == 3
    assert value(metrics, naming.METRIC_OPENFAAS_INVOCATIONS, **{OF: "hello", C: "200"}) == 3
    assert not any(dict(labels).get(F) == "nope" or dict(labels).get(OF) == "nope" for _, labels in metrics)
    assert value(metrics, naming.METRIC_DURATION + "_count", **{F: "hello"}) == 3
    assert value(metrics, naming.METRIC_OPENFAAS_SECONDS + "_count", **{OF: "hello"}) == 3
    assert value(metrics, naming.METRIC_OPENFAAS_SECONDS + "_sum", **{OF: "hello"}) > 0
    assert value(metrics, naming.METRIC_IN_FLIGHT, **{F: "hello"}) == 1
    assert value(metrics, naming.METRIC_QUEUE_DEPTH, **{F: "hello"}) == 1
    assert value(metrics, naming.METRIC_COLD_STARTS, **{F: "hello"}) == 1
    assert value(metrics, naming.METRIC_COLD_START_WAIT + "_count", **{F: "hello"}) == 1
    assert value(metrics, naming.METRIC_REPLICAS_DESIRED, **{F: "hello"}) == 1
    assert value(metrics, naming.METRIC_REPLICAS_READY, **{F: "hello"}) == 1
    assert value(metrics, naming.METRIC_REPLICAS_DESIRED, **{F: "idle"}) == 0
    assert value(metrics, naming.METRIC_REPLICAS_READY, **{F: "idle"}) == 0
    assert value(metrics, naming.METRIC_LOAD_SECONDS, **{F: "hello"}) > 0


async def test_metrics_record_error_codes_per_function() -> None:
    backend = FakeBackend(make_function("hello"), start_on_scale=False)
    from kfn_gateway.settings import GatewaySettings
    async with backend, running_gateway(backend, settings=GatewaySettings(max_body_bytes=10)) as gw:
        await gw.json("POST", "/function/hello", data=b"x" * 11)
        metrics = samples(await scrape(gw))
    assert value(metrics, naming.METRIC_INVOCATIONS, function="hello", code="413") == 1
    assert value(metrics, naming.METRIC_OPENFAAS_INVOCATIONS, function_name="hello", code="413") == 1


@pytest.mark.parametrize(("error", "code"), [(FunctionError(), "500"), (timed_out(), "504")],
                         ids=["function-error", "timeout"])
async def test_metrics_count_a_functions_failures_by_the_status_the_client_got(error: Exception, code: str) -> None:
    backend = FakeBackend(make_function("hello"), fn=raising(error))
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        await gw.json("GET", "/function/hello")
        metrics = samples(await scrape(gw))
    assert value(metrics, naming.METRIC_INVOCATIONS, function="hello", code=code) == 1


async def test_the_duration_histogram_counts_every_request_in_cumulative_buckets() -> None:
    backend = FakeBackend(make_function("hello"))
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        for _ in range(3):
            await gw.json("GET", "/function/hello")
        metrics = samples(await scrape(gw))
    buckets = sorted((float(dict(labels)["le"]), count) for (name, labels), count in metrics.items()
                     if name == naming.METRIC_DURATION + "_bucket")
    counts = [count for _, count in buckets]
    assert counts == sorted(counts)  # cumulative
    assert buckets[-1] == (float("inf"), 3)
    assert value(metrics, naming.METRIC_DURATION + "_count", function="hello") == 3


async def test_metrics_live_in_the_gateways_own_registry() -> None:
    backend = FakeBackend(make_function("hello"))
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        await gw.json("GET", "/function/hello")
    labels = {"function": "hello", "namespace": "default", "code": "200"}
    assert REGISTRY.get_sample_value(naming.METRIC_INVOCATIONS, labels) is None
    assert gw.gateway.registry.get_sample_value(naming.METRIC_INVOCATIONS, labels) == 1


async def test_the_autoscalers_scrape_parser_reads_the_gateways_metrics() -> None:
    functions = ControlledFunctions()
    backend = FakeBackend(make_function("hello"), fn=functions)
    async with backend, running_gateway(backend) as gw:
        await backend.add_instance("hello")
        held = [asyncio.create_task(gw.json("GET", f"/function/hello/hold/{i}")) for i in range(2)]
        await eventually(lambda: functions.held() == 2)
        parsed = parse_gateway_metrics(await scrape(gw))
        functions.release("0")
        functions.release("1")
        await asyncio.gather(*held)
    assert parsed.held == {ref("hello"): 2}
    assert sum(v for (fn, _), v in parsed.load.items() if fn == ref("hello")) > 0


async def test_system_functions_lists_every_function_with_replicas_and_traffic() -> None:
    backend = FakeBackend(make_function("hello", scale={"minReplicas": 1}),
                          make_function("custom", image="example.com/fn:1", namespace="team"))
    async with backend, running_gateway(backend) as gw:
        before = time.time()
        for _ in range(2):
            await gw.json("GET", "/function/hello")
        status, items, _ = await gw.json("GET", "/system/functions")
        status_one, one, _ = await gw.json("GET", "/system/functions/hello")
        status_missing, missing, _ = await gw.json("GET", "/system/functions/nope")
    assert status == 200
    by_name = {item["name"]: item for item in items}
    assert set(by_name) == {"hello", "custom"}
    hello = by_name["hello"]
    assert hello["namespace"] == "default"
    assert hello["runtime"] == "python3.12"
    assert hello["image"] is None
    assert hello["replicas"] == 1
    assert hello["availableReplicas"] == 1
    assert hello["invocationCount"] == 2
    assert hello["inFlight"] == 0 and hello["queued"] == 0
    assert hello["url"] == f"http://127.0.0.1:{gw.port}/function/hello"
    assert hello["lastUsed"].endswith("Z")
    assert datetime.fromisoformat(hello["lastUsed"]).timestamp() >= before - 1
    custom = by_name["custom"]
    assert custom["namespace"] == "team"
    assert custom["image"] == "example.com/fn:1"
    assert custom["replicas"] == 0 and custom["availableReplicas"] == 0
    assert custom["invocationCount"] == 0 and custom["lastUsed"] is None
    assert (status_one, one) == (200, hello | {"inFlight": 0})
    assert status_missing == 404 and missing["function"] == "nope"


async def test_metrics_source_reports_the_average_load_and_arrivals_between_collections() -> None:
    functions = ControlledFunctions()
    backend = FakeBackend(make_function("hello"), make_function("quiet"), fn=functions)
    async with backend, running_gateway(backend) as gw:
        source = gw.gateway.metrics_source
        await backend.add_instance("hello")
        await source.collect(1.0)
        held = [asyncio.create_task(gw.json("GET", f"/function/hello/hold/{i}")) for i in range(3)]
        await eventually(lambda: functions.held() == 3)
        arrived = await source.collect(2.0)
        await asyncio.sleep(0.05)  # let load accumulate; the value does not depend on how long
        steady = await source.collect(3.0)
        for i in range(3):
            functions.release(str(i))
        await asyncio.gather(*held)
        await asyncio.sleep(0.01)
        drained = await source.collect(4.0)
        idle = await source.collect(5.0)

    hello = arrived[ref("hello")]
    assert hello.in_flight == 3
    assert hello.sample is not None and hello.sample.requests == 3 and hello.sample.time == 2.0
    assert 0 < hello.sample.concurrency <= 3
    # Three requests held the whole interval: average concurrency exactly 3.
    held_throughout = steady[ref("hello")].sample
    assert held_throughout is not None and (held_throughout.time, held_throughout.requests) == (3.0, 0)
    assert held_throughout.concurrency == pytest.approx(3.0)
    assert steady[ref("hello")].in_flight == 3
    drained_sample = drained[ref("hello")].sample
    assert drained[ref("hello")].in_flight == 0
    assert drained_sample is not None and 0 < drained_sample.concurrency < 3
    assert idle[ref("hello")].sample == Sample(time=5.0, concurrency=0.0, requests=0)
    # A function without traffic is observed too, at zero.
    assert steady[ref("quiet")].sample == Sample(time=3.0, concurrency=0.0, requests=0)
    assert steady[ref("quiet")].in_flight == 0


async def test_metrics_source_counts_queued_requests_as_load() -> None:
    backend = FakeBackend(make_function("hello"), start_on_scale=False)
    async with backend, running_gateway(backend) as gw:
        source = gw.gateway.metrics_source
        await backend.scale(ref("hello"), 1)
        tasks = [asyncio.create_task(gw.json("GET", "/function/hello")) for _ in range(2)]
        await eventually(lambda: gw.gateway.stats(ref("hello")).queued == 2)
        await source.collect(1.0)
        await asyncio.sleep(0.02)
        observed = await source.collect(2.0)
        await backend.add_instance("hello")
        await asyncio.gather(*tasks)
    sample = observed[ref("hello")].sample
    assert observed[ref("hello")].in_flight == 2
    assert sample is not None and sample.concurrency == pytest.approx(2.0)
