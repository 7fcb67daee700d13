"""The autoscaler's loop, with a fake backend, a fake metrics source and a fake clock."""
from __future__ import annotations

import asyncio

import prometheus_client
import pytest

from kfn.core import naming
from kfn.core.functions import FunctionRef
from kfn.core.scaling import Decision, MetricsUnavailable, Observation, Sample
from kfn.events.store import QueueStats
from kfn_autoscaler.autoscaler import Autoscaler
from kfn_autoscaler.sources import QueuedWorkSource
from tests.support.backend import FakeBackend, ref
from tests.support.clocks import FakeClock
from tests.support.functions import TICK_SCALE, make_function


class FakeSource:
    """Reports, per function, a constant concurrency (stamped with the tick's time)."""

    def __init__(self) -> None:
        self.load: dict[str, float] = {}
        self.held: dict[str, float] = {}
        self.no_sample: set[str] = set()
        self.error: Exception | None = None
        self.calls = 0

    async def collect(self, now: float) -> dict[FunctionRef, Observation]:
        self.calls += 1
        if self.error is not None:
            raise self.error
        out = {}
        for name in set(self.load) | self.no_sample:
            sample = None if name in self.no_sample else Sample(now, self.load[name], 1 if self.load[name] else 0)
            out[FunctionRef.parse(name)] = Observation(sample=sample, in_flight=self.held.get(name, 0.0))
        return out


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def source() -> FakeSource:
    return FakeSource()


async def ticks(autoscaler: Autoscaler, clock: FakeClock, count: int, *, step: float = 1.0) -> dict[str, Decision]:
    """The decisions of the last of `count` ticks, by function name."""
    decisions: dict[FunctionRef, Decision] = {}
    for _ in range(count):
        clock.now += step
        decisions = await autoscaler.tick()
    return {ref.name: decision for ref, decision in decisions.items()}


async def test_load_above_target_scales_up(clock: FakeClock, source: FakeSource) -> None:
    backend = FakeBackend(make_function("hello", scale=TICK_SCALE), replicas=1)
    source.load["hello"] = 15.0
    decisions = await ticks(Autoscaler(backend, source, clock=clock), clock, 1)
    assert decisions["hello"].replicas == 2
    assert backend.scale_calls == [("hello", 2, decisions["hello"].reason)]


async def test_an_unchanged_decision_does_not_call_scale(clock: FakeClock, source: FakeSource) -> None:
    backend = FakeBackend(make_function("hello", scale=TICK_SCALE), replicas=2)
    source.load["hello"] = 15.0
    await ticks(Autoscaler(backend, source, clock=clock), clock, 5)
    assert backend.scale_calls == []


async def test_decisions_start_from_what_the_backend_was_last_asked_for(clock: FakeClock, source: FakeSource) -> None:
    backend = FakeBackend(make_function("hello", scale=TICK_SCALE), replicas=2)
    source.load["hello"] = 15.0
    autoscaler = Autoscaler(backend, source, clock=clock)
    await ticks(autoscaler, clock, 1)
    backend.replicas[ref("hello")] = 6  # someone else scaled it
    await ticks(autoscaler, clock, 1)
    assert backend.scale_calls == [("hello", 3, backend.scale_calls[0][2])]  # gently down from 6, not from 2


async def test_history_keeps_only_what_the_stable_window_needs(clock: FakeClock, source: FakeSource) -> None:
    backend = FakeBackend(make_function("hello", scale={**TICK_SCALE, "stableWindow": 10}), replicas=1)
    source.load["hello"] = 5.0
    autoscaler = Autoscaler(backend, source, clock=clock)
    await ticks(autoscaler, clock, 100)
    kept = autoscaler.samples(FunctionRef.parse("hello"))
    assert len(kept) == 11
    assert kept[1].time > clock.now - 10  # one older sample marks where the window's first one began


async def test_a_repeated_sample_is_recorded_once(clock: FakeClock) -> None:
    class Stale:
        async def collect(self, now: float) -> dict[FunctionRef, Observation]:
            return {FunctionRef.parse("hello"): Observation(sample=Sample(5.0, 1.0, 1), in_flight=0.0)}

    autoscaler = Autoscaler(FakeBackend(make_function("hello", scale=TICK_SCALE), replicas=1), Stale(), clock=clock)
    await ticks(autoscaler, clock, 3)
    assert autoscaler.samples(FunctionRef.parse("hello")) == (Sample(5.0, 1.0, 1),)


async def test_a_function_measured_idle_scales_to_zero_after_the_idle_timeout(clock: FakeClock,
                                                                              source: FakeSource) -> None:
    backend = FakeBackend(make_function("quiet", scale={**TICK_SCALE, "idleTimeout": 30}), replicas=1)
    source.load["quiet"] = 0.0
    autoscaler = Autoscaler(backend, source, clock=clock)
    await ticks(autoscaler, clock, 30)  # the idle timer starts at the first tick
    assert backend.replicas[ref("quiet")] == 1
    await ticks(autoscaler, clock, 1)
    assert backend.replicas[ref("quiet")] == 0
    assert autoscaler.samples(FunctionRef.parse("quiet"))[-1] == Sample(clock.now, 0.0, 0)


async def test_a_function_absent_from_the_metrics_is_held_not_scaled_to_zero(clock: FakeClock, source: FakeSource,
                                                                             caplog: pytest.LogCaptureFixture) -> None:
    backend = FakeBackend(make_function("busy", scale={**TICK_SCALE, "idleTimeout": 30}), replicas=4)
    source.load["busy"] = 35.0
    autoscaler = Autoscaler(backend, source, clock=clock)
    await ticks(autoscaler, clock, 5)
    del source.load["busy"]  # the gateway's series are gone (its scrape target is down): no evidence
    decisions = await ticks(autoscaler, clock, 120)
    assert backend.replicas[ref("busy")] == 4
    assert decisions["busy"].kind == "unobserved"
    assert "no metrics for it from a gateway that is up" in decisions["busy"].reason
    assert "holding busy.default at 4 replicas" in caplog.text
    assert autoscaler.registry.get_sample_value(naming.METRIC_AUTOSCALER_UNOBSERVED) == 1


async def test_after_an_unobserved_spell_zero_needs_a_whole_observed_idle_timeout(clock: FakeClock,
                                                                                 source: FakeSource) -> None:
    backend = FakeBackend(make_function("busy", scale={**TICK_SCALE, "idleTimeout": 30}), replicas=1)
    source.load["busy"] = 0.0
    autoscaler = Autoscaler(backend, source, clock=clock)
    await ticks(autoscaler, clock, 10)
    del source.load["busy"]
    await ticks(autoscaler, clock, 60)
    source.load["busy"] = 0.0  # seen again, idle
    await ticks(autoscaler, clock, 29)
    assert backend.replicas[ref("busy")] == 1
    await ticks(autoscaler, clock, 2)
    assert backend.replicas[ref("busy")] == 0


async def test_a_function_without_a_computable_sample_is_held(clock: FakeClock, source: FakeSource) -> None:
    backend = FakeBackend(make_function("hello", scale=TICK_SCALE), replicas=3)
    source.no_sample.add("hello")
    decisions = await ticks(Autoscaler(backend, source, clock=clock), clock, 100)
    assert decisions["hello"].kind == "no-data"
    assert backend.scale_calls == []


async def test_held_requests_at_zero_start_an_instance(clock: FakeClock, source: FakeSource) -> None:
    backend = FakeBackend(make_function("cold", scale=TICK_SCALE), replicas=0)
    source.no_sample.add("cold")
    source.held["cold"] = 1.0
    await ticks(Autoscaler(backend, source, clock=clock), clock, 1)
    assert backend.replicas[ref("cold")] == 1


async def test_queued_async_events_at_zero_start_an_instance(clock: FakeClock, source: FakeSource) -> None:
    backend = FakeBackend(make_function("hello", scale=TICK_SCALE), replicas=0)
    stats = {FunctionRef.parse("hello"): QueueStats(depth=2, in_flight=0, oldest_accepted_at=1.0)}
    autoscaler = Autoscaler(backend, QueuedWorkSource(source, lambda: stats), clock=clock)
    await ticks(autoscaler, clock, 1)
    assert backend.replicas[ref("hello")] == 1


async def test_a_removed_function_is_forgotten(clock: FakeClock, source: FakeSource) -> None:
    backend = FakeBackend(make_function("hello", scale=TICK_SCALE), make_function("other", scale=TICK_SCALE),
                          replicas=1)
    source.load.update(hello=5.0, other=5.0)
    autoscaler = Autoscaler(backend, source, clock=clock)
    await ticks(autoscaler, clock, 3)
    backend.remove_function("hello")
    decisions = await ticks(autoscaler, clock, 1)
    assert set(decisions) == {"other"}
    assert autoscaler.samples(FunctionRef.parse("hello")) == ()
    labels = {naming.METRIC_LABEL_FUNCTION: "hello", naming.METRIC_LABEL_NAMESPACE: "default"}
    assert autoscaler.registry.get_sample_value(naming.METRIC_AUTOSCALER_DESIRED, labels) is None


async def test_a_function_that_comes_back_starts_afresh(clock: FakeClock, source: FakeSource) -> None:
    fn = make_function("hello", scale=TICK_SCALE)
    backend = FakeBackend(fn, replicas=1)
    source.load["hello"] = 5.0
    autoscaler = Autoscaler(backend, source, clock=clock)
    await ticks(autoscaler, clock, 3)
    backend.remove_function("hello")
    await ticks(autoscaler, clock, 1)
    backend.add_function(fn)
    await ticks(autoscaler, clock, 1)
    assert len(autoscaler.samples(FunctionRef.parse("hello"))) == 1


async def test_decisions_are_exported_as_metrics(clock: FakeClock, source: FakeSource) -> None:
    backend = FakeBackend(make_function("hello", scale=TICK_SCALE), replicas=1)
    source.load["hello"] = 25.0
    autoscaler = Autoscaler(backend, source, clock=clock)
    await ticks(autoscaler, clock, 1)
    labels = {naming.METRIC_LABEL_FUNCTION: "hello", naming.METRIC_LABEL_NAMESPACE: "default"}
    assert autoscaler.registry.get_sample_value(naming.METRIC_AUTOSCALER_DESIRED, labels) == 3
    assert autoscaler.registry.get_sample_value(
        naming.METRIC_AUTOSCALER_DECISIONS, {**labels, "kind": "panic", "action": "up"}) == 1


async def test_metrics_go_to_the_given_registry_only(clock: FakeClock, source: FakeSource) -> None:
    registry = prometheus_client.CollectorRegistry()
    source.load["hello"] = 5.0
    autoscaler = Autoscaler(FakeBackend(make_function("hello", scale=TICK_SCALE), replicas=1), source, clock=clock,
                            registry=registry)
    await ticks(autoscaler, clock, 1)
    assert autoscaler.registry is registry
    labels = {naming.METRIC_LABEL_FUNCTION: "hello", naming.METRIC_LABEL_NAMESPACE: "default"}
    assert registry.get_sample_value(naming.METRIC_AUTOSCALER_DESIRED, labels) == 1
    assert prometheus_client.REGISTRY.get_sample_value(
        naming.METRIC_AUTOSCALER_DESIRED, {naming.METRIC_LABEL_FUNCTION: "hello"}) is None


async def test_two_autoscalers_do_not_share_metrics(clock: FakeClock, source: FakeSource) -> None:
    # Each builds its own registry; duplicate metric names would raise if they were shared.
    first = Autoscaler(FakeBackend(replicas=1), source, clock=clock)
    second = Autoscaler(FakeBackend(replicas=1), source, clock=clock)
    assert first.registry is not second.registry


async def test_on_decision_hears_about_changes_only(clock: FakeClock, source: FakeSource) -> None:
    heard: list[tuple[str, int]] = []

    async def hook(ref: FunctionRef, decision: Decision) -> None:
        heard.append((ref.name, decision.replicas))

    backend = FakeBackend(make_function("hello", scale=TICK_SCALE), replicas=2)
    source.load["hello"] = 15.0
    autoscaler = Autoscaler(backend, source, clock=clock, on_decision=hook)
    await ticks(autoscaler, clock, 5)
    source.load["hello"] = 35.0
    await ticks(autoscaler, clock, 20)
    assert heard == [("hello", 2), ("hello", 3), ("hello", 4)]  # the stable average climbs 15 → 35


async def test_on_decision_may_be_a_plain_function(clock: FakeClock, source: FakeSource) -> None:
    heard: list[str] = []
    source.load["hello"] = 5.0
    autoscaler = Autoscaler(FakeBackend(make_function("hello", scale=TICK_SCALE), replicas=1), source, clock=clock,
                            on_decision=lambda name, decision: heard.append(decision.kind))
    await ticks(autoscaler, clock, 1)
    assert heard == ["stable"]


async def test_a_failing_hook_does_not_stop_scaling(clock: FakeClock, source: FakeSource) -> None:
    def hook(name: str, decision: Decision) -> None:
        raise RuntimeError("status patch failed")

    backend = FakeBackend(make_function("hello", scale=TICK_SCALE), replicas=1)
    source.load["hello"] = 15.0
    await ticks(Autoscaler(backend, source, clock=clock, on_decision=hook), clock, 1)
    assert backend.replicas[ref("hello")] == 2


async def test_a_failing_scale_does_not_stop_other_functions(clock: FakeClock, source: FakeSource) -> None:
    backend = FakeBackend(make_function("broken", scale=TICK_SCALE), make_function("fine", scale=TICK_SCALE),
                          replicas=1)
    backend.scale_errors[ref("broken")] = RuntimeError("the API said no")
    source.load.update(broken=15.0, fine=15.0)
    decisions = await ticks(Autoscaler(backend, source, clock=clock), clock, 1)
    assert backend.replicas == {ref("broken"): 1, ref("fine"): 2}
    assert set(decisions) == {"fine"}


async def test_a_failed_scale_is_retried_next_tick(clock: FakeClock, source: FakeSource) -> None:
    backend = FakeBackend(make_function("hello", scale=TICK_SCALE), replicas=1)
    backend.scale_errors[ref("hello")] = RuntimeError("the API said no")
    source.load["hello"] = 15.0
    autoscaler = Autoscaler(backend, source, clock=clock)
    await ticks(autoscaler, clock, 1)
    backend.scale_errors.clear()
    await ticks(autoscaler, clock, 1)
    assert backend.replicas[ref("hello")] == 2


async def test_an_unavailable_source_holds_every_function_and_is_reported(clock: FakeClock, source: FakeSource,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    backend = FakeBackend(make_function("hello", scale=TICK_SCALE), make_function("idle", scale=TICK_SCALE), replicas=3)
    source.load.update(hello=25.0, idle=0.0)
    autoscaler = Autoscaler(backend, source, clock=clock)
    await ticks(autoscaler, clock, 3)
    assert autoscaler.registry.get_sample_value(naming.METRIC_AUTOSCALER_SOURCE_AVAILABLE) == 1
    source.error = MetricsUnavailable("Prometheus has no gateway target that is up")
    backend.scale_calls.clear()
    decisions = await ticks(autoscaler, clock, 100)
    assert backend.scale_calls == []
    assert {d.kind for d in decisions.values()} == {"unobserved"}
    assert autoscaler.source_problem == "metrics unavailable: Prometheus has no gateway target that is up"
    assert autoscaler.registry.get_sample_value(naming.METRIC_AUTOSCALER_SOURCE_AVAILABLE) == 0
    assert caplog.text.count("no gateway target that is up: holding every function") == 1  # once, not per tick
    source.error = None
    await ticks(autoscaler, clock, 1)
    assert autoscaler.source_problem is None
    assert autoscaler.registry.get_sample_value(naming.METRIC_AUTOSCALER_SOURCE_AVAILABLE) == 1


async def test_an_unavailable_source_without_any_function_is_not_reported(clock: FakeClock,
                                                                          source: FakeSource) -> None:
    # A fresh install: the gateways export no per-function series yet, and there is nothing to hold.
    source.error = MetricsUnavailable("Prometheus has no series from a gateway target that is up")
    autoscaler = Autoscaler(FakeBackend(replicas=1), source, clock=clock)
    await ticks(autoscaler, clock, 3)
    assert autoscaler.source_problem is None
    assert autoscaler.registry.get_sample_value(naming.METRIC_AUTOSCALER_SOURCE_AVAILABLE) == 1


async def test_a_failing_source_fails_the_tick_and_scales_nothing(clock: FakeClock, source: FakeSource) -> None:
    backend = FakeBackend(make_function("hello", scale=TICK_SCALE), replicas=3)
    source.error = RuntimeError("a bug in the source")
    with pytest.raises(RuntimeError):
        await ticks(Autoscaler(backend, source, clock=clock), clock, 1)
    assert backend.scale_calls == []


async def test_run_goes_on_after_a_failing_tick_until_cancelled(clock: FakeClock) -> None:
    class Flaky:
        def __init__(self) -> None:
            self.calls = 0
            self.third = asyncio.Event()

        async def collect(self, now: float) -> dict[FunctionRef, Observation]:
            self.calls += 1
            if self.calls >= 3:
                self.third.set()
            if self.calls == 1:
                raise RuntimeError("first scrape failed")
            return {FunctionRef.parse("hello"): Observation(Sample(now, 15.0, 3), 15.0)}

    backend = FakeBackend(make_function("hello", scale=TICK_SCALE), replicas=1)
    flaky = Flaky()
    task = asyncio.create_task(Autoscaler(backend, flaky, interval=0.001).run())
    try:
        await asyncio.wait_for(flaky.third.wait(), timeout=5)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert backend.replicas[ref("hello")] == 2


def test_interval_must_be_positive(source: FakeSource) -> None:
    with pytest.raises(ValueError, match="interval"):
        Autoscaler(FakeBackend(replicas=1), source, interval=0)
