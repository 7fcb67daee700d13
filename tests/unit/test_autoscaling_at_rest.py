"""Idle functions cost (next to) nothing per autoscaler tick (issue 15, item 14).

A function at zero replicas with nothing happening is at a fixed point of `decide`: the loop
keeps the decision and skips deciding again until its input changes. These tests prove the
fixed point on `decide` itself, that an idle tick decides only for what changed, and that resting
changes nothing the autoscaler does (the same scale calls, decisions and metrics; a decision's
state and reason carry the windows' averages, so waking from rest must weigh the skipped zero
samples exactly as deciding every tick did).
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import prometheus_client
import pytest

import kfn_autoscaler.autoscaler as autoscaler_module
import kfn_gateway.metrics as metrics_module
from kfn.core import naming
from kfn.core.functions import FunctionRef
from kfn.core.scaling import Decision, Observation, Sample, ScalerState, ScaleSettings, decide
from kfn.events.store import QueueStats
from kfn_autoscaler.autoscaler import Autoscaler
from kfn_autoscaler.sources import QueuedWorkSource
from kfn_gateway.metrics import LoadSource
from tests.support.backend import FakeBackend, ref
from tests.support.clocks import FakeClock
from tests.support.functions import TICK_SCALE, make_function


def settings(**overrides: Any) -> ScaleSettings:
    return ScaleSettings(**{"min_replicas": 0, "max_replicas": 10, "target_concurrency": 10.0,
                            "idle_timeout": 30.0, "stable_window": 60.0, **overrides})


def zeros(start: float, end: float) -> list[Sample]:
    return [Sample(float(t), 0.0, 0) for t in range(int(start), int(end) + 1)]


@pytest.mark.parametrize("scale", [settings(), settings(idle_timeout=5.0, stable_window=60.0),
                                   settings(idle_timeout=120.0, stable_window=10.0)],
                         ids=["defaults", "idle-shorter-than-window", "window-shorter-than-idle"])
@pytest.mark.parametrize("history", ["busy-then-idle", "never-active"])
def test_decide_for_a_quiet_function_at_zero_is_a_fixed_point(scale: ScaleSettings, history: str) -> None:
    if history == "busy-then-idle":
        # Busy until t=100 (a burst, a panic), then only zero samples; asked for 0 since.
        busy = [Sample(float(t), 35.0, 5) for t in range(90, 101)]
        start = 100 + scale.idle_timeout + 1
        samples = busy + zeros(101, start)
        state = ScalerState(panicking_since=95.0, panic_replicas=4, last_active=100.0, last_panic_condition=100.0)
    else:
        start = 1000.0
        samples = zeros(start - 3, start)
        state = ScalerState()
    first = decide(samples=samples, now=start, current=0, ready=0, in_flight=0.0, settings=scale, state=state)
    assert first.replicas == 0
    at_rest = decide(samples=samples + [Sample(start + 1, 0.0, 0)], now=start + 1, current=0, ready=0,
                     in_flight=0.0, settings=scale, state=first.state)
    assert at_rest.state == first.state
    # From then on, any later quiet input (zero samples, nothing held or queued) gives the same decision,
    # whatever instances are still draining (ready) and however long the wait.
    for later in (2.0, 7.0, 61.0, 600.0, 86_400.0):
        now = start + later
        again = decide(samples=samples + zeros(start + 1, now), now=now, current=0, ready=1,
                       in_flight=0.0, settings=scale, state=at_rest.state)
        assert again == at_rest, later


class ScriptedSource:
    """Per tick, per function: (concurrency, requests, in flight); absent means a zero sample."""

    def __init__(self, names: list[str], script: dict[int, dict[str, tuple[float, int, float]]]) -> None:
        self.names = names
        self.script = script
        self.tick = 0

    async def collect(self, now: float) -> dict[FunctionRef, Observation]:
        self.tick += 1
        now_load = self.script.get(self.tick, {})
        out = {}
        for name in self.names:
            concurrency, requests, held = now_load.get(name, (0.0, 0, 0.0))
            out[FunctionRef.parse(name)] = Observation(Sample(now, concurrency, requests), in_flight=held)
        return out


class CountingDecide:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, **kwargs: Any) -> Decision:
        self.calls += 1
        return decide(**kwargs)


async def test_an_idle_tick_decides_only_for_the_functions_whose_input_changed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    names = [f"fn-{i:04d}" for i in range(1000)]
    backend = FakeBackend(*(make_function(name, scale={**TICK_SCALE, "idleTimeout": 5}) for name in names), replicas=0)
    backend.replicas[ref("fn-0001")] = 1   # one instance left from earlier traffic: idle, it goes to zero
    source = ScriptedSource(names, {20: {"fn-0002": (3.0, 3, 1.0)}})
    counting = CountingDecide()
    monkeypatch.setattr(autoscaler_module, "decide", counting)
    clock = FakeClock()
    autoscaler = Autoscaler(backend, source, clock=clock)
    per_tick = []
    for _ in range(20):
        clock.now += 1
        before = counting.calls
        decisions = await autoscaler.tick()
        per_tick.append(counting.calls - before)
        assert len(decisions) == len(names)   # every function still has its decision
    # Tick 1 decides everything; then only fn-0001 until it reaches zero (tick 7) and rests.
    assert per_tick[0] == len(names)
    assert per_tick[1:7] == [1] * 6
    assert per_tick[7:19] == [0] * 12
    # Traffic for one function: one decision, and it scales from zero.
    assert per_tick[19] == 1
    assert backend.scale_calls == [("fn-0001", 0, backend.scale_calls[0][2]), ("fn-0002", 1, backend.scale_calls[1][2])]


def _script() -> dict[int, dict[str, tuple[float, int, float]]]:
    """Traffic for three functions over 400 ticks: bursts, idle stretches to zero, wake-ups."""
    script: dict[int, dict[str, tuple[float, int, float]]] = {}

    def load(ticks: range, name: str, concurrency: float, requests: int = 1, held: float = 0.0) -> None:
        for t in ticks:
            script.setdefault(t, {})[name] = (concurrency, requests, held)

    load(range(3, 9), "bursty", 35.0, 5, 30.0)        # a panic
    load(range(60, 61), "bursty", 2.0, 1)              # one request after it went to zero
    load(range(150, 156), "bursty", 12.0, 3, 8.0)
    load(range(10, 11), "steady", 4.0, 2, 0.0)         # early: its first samples are still in the window
    load(range(151, 152), "steady", 0.5, 1, 0.0)       # a lone request, long after the start
    load(range(200, 290), "steady", 9.0, 2, 9.0)
    load(range(330, 331), "steady", 0.0, 1, 0.0)       # an arrival without measurable load
    load(range(370, 372), "late", 25.0, 4, 25.0)       # never seen before: cold start at tick 370
    return script


async def _run(script: dict[int, dict[str, tuple[float, int, float]]]) -> tuple[Any, ...]:
    names = ["bursty", "steady", "late"]
    backend = FakeBackend(make_function("bursty", scale={**TICK_SCALE, "stableWindow": 20, "idleTimeout": 10}),
                          make_function("steady", scale={**TICK_SCALE, "stableWindow": 60, "idleTimeout": 30}),
                          make_function("late", scale={**TICK_SCALE, "stableWindow": 6, "idleTimeout": 40}), replicas=0)
    registry = prometheus_client.CollectorRegistry()
    clock = FakeClock()
    autoscaler = Autoscaler(backend, ScriptedSource(names, script), clock=clock, registry=registry)
    trace = []
    for _ in range(400):
        clock.now += 1
        decisions = await autoscaler.tick()
        trace.append({ref.name: d for ref, d in sorted(decisions.items())})
    metrics = sorted((s.name, tuple(sorted(s.labels.items())), s.value)
                     for m in registry.collect() for s in m.samples if not s.name.endswith("_created"))
    return backend.scale_calls, trace, metrics


async def test_resting_changes_nothing_the_autoscaler_does(monkeypatch: pytest.MonkeyPatch) -> None:
    resting_skips = CountingDecide()
    monkeypatch.setattr(autoscaler_module, "decide", resting_skips)
    with_rest = await _run(_script())
    # The same run deciding every function at every tick.
    monkeypatch.setattr(autoscaler_module, "_rests", lambda *args, **kwargs: False)
    every_tick = CountingDecide()
    monkeypatch.setattr(autoscaler_module, "decide", every_tick)
    without_rest = await _run(_script())
    assert every_tick.calls == 3 * 400 and resting_skips.calls < every_tick.calls / 2
    scaled, trace, metrics = with_rest
    assert scaled == without_rest[0]
    assert [name for name, _, _ in scaled].count("bursty") >= 4   # the script does scale up and down
    for tick, (rested, decided) in enumerate(zip(trace, without_rest[1], strict=True)):
        assert rested == decided, f"tick {tick + 1}"
    assert metrics == without_rest[2]


@pytest.mark.parametrize("wake", ["request", "held", "queued", "min-replicas", "scaled-elsewhere", "source-down"])
async def test_a_function_at_rest_is_decided_again_as_soon_as_anything_changes(
        monkeypatch: pytest.MonkeyPatch, wake: str) -> None:
    backend = FakeBackend(make_function("hello", scale={**TICK_SCALE, "idleTimeout": 5}), replicas=0)
    inner = ScriptedSource(["hello"], {})
    queued: dict[FunctionRef, QueueStats] = {}
    source = QueuedWorkSource(inner, lambda: queued)
    counting = CountingDecide()
    monkeypatch.setattr(autoscaler_module, "decide", counting)
    clock = FakeClock()
    autoscaler = Autoscaler(backend, source, clock=clock)
    for _ in range(3):
        clock.now += 1
        await autoscaler.tick()
    calls = counting.calls
    clock.now += 1
    await autoscaler.tick()
    assert counting.calls == calls   # at rest

    hello = FunctionRef.parse("hello")
    if wake == "request":
        inner.script[inner.tick + 1] = {"hello": (0.0, 1, 0.0)}
    elif wake == "held":
        inner.script[inner.tick + 1] = {"hello": (0.5, 0, 1.0)}
    elif wake == "queued":
        queued[hello] = QueueStats(depth=3, in_flight=0, oldest_accepted_at=1.0)
    elif wake == "min-replicas":
        backend.add_function(make_function("hello", scale={**TICK_SCALE, "idleTimeout": 5, "minReplicas": 1}))
    elif wake == "scaled-elsewhere":
        backend.replicas[ref("hello")] = 2
    else:
        inner.names = []   # the source has nothing about it: held where it is, not at rest
    clock.now += 1
    decision = (await autoscaler.tick())[hello]
    assert counting.calls == calls + 1
    expected = {"request": 1, "held": 1, "queued": 1, "min-replicas": 1, "scaled-elsewhere": 1, "source-down": 0}
    assert decision.replicas == expected[wake]   # scaled elsewhere to 2: decided anew, gently down
    assert backend.replicas[ref("hello")] == expected[wake]


class FakeRouteMetrics:
    def __init__(self) -> None:
        self.request_seconds = 0.0
        self.arrived = 0
        self.held = 0

    def load(self, now: float) -> float:
        return self.request_seconds


async def test_the_gateway_source_measures_load_after_idle_collections_over_the_last_interval_only(
        monkeypatch: pytest.MonkeyPatch) -> None:
    mono = FakeClock()
    monkeypatch.setattr(metrics_module, "time", SimpleNamespace(monotonic=mono))
    backend = FakeBackend(make_function("hello", scale=TICK_SCALE), make_function("quiet", scale=TICK_SCALE),
                          replicas=0)
    routes = {name: SimpleNamespace(metrics=FakeRouteMetrics()) for name in ("hello", "quiet", "late")}
    source = LoadSource(backend, lambda ref: routes[ref.name])   # type: ignore[arg-type,return-value]
    idle = []
    for t in range(1, 5):
        mono.now += 1
        idle.append(await source.collect(float(t)))
    assert all(o[FunctionRef.parse("hello")] == Observation(Sample(float(t), 0.0, 0), 0.0)
               for t, o in zip(range(1, 5), idle, strict=True))
    hello = routes["hello"].metrics
    hello.request_seconds, hello.arrived, hello.held = 2.0, 2, 1
    backend.add_function(make_function("late", scale=TICK_SCALE))
    routes["late"].metrics.request_seconds, routes["late"].metrics.arrived = 5.0, 1
    mono.now += 1
    busy = await source.collect(5.0)
    # Two request-seconds in the last second: concurrency 2 (not 2 spread over the idle collections).
    assert busy[FunctionRef.parse("hello")] == Observation(Sample(5.0, 2.0, 2), 1.0)
    assert busy[FunctionRef.parse("quiet")] == Observation(Sample(5.0, 0.0, 0), 0.0)
    # A function first seen now is measured since the source began (5 request-seconds over 5 s).
    assert busy[FunctionRef.parse("late")] == Observation(Sample(5.0, 1.0, 1), 0.0)


async def test_the_holds_of_a_function_at_rest_are_in_the_decisions_counter_whenever_it_is_read(
        monkeypatch: pytest.MonkeyPatch) -> None:
    backend = FakeBackend(make_function("hello", scale={**TICK_SCALE, "idleTimeout": 5}), replicas=0)
    counting = CountingDecide()
    monkeypatch.setattr(autoscaler_module, "decide", counting)
    registry = prometheus_client.CollectorRegistry()
    clock = FakeClock()
    autoscaler = Autoscaler(backend, ScriptedSource(["hello"], {}), clock=clock, registry=registry)
    labels = {naming.METRIC_LABEL_FUNCTION: "hello", naming.METRIC_LABEL_NAMESPACE: "default", "action": "hold"}
    for tick in range(1, 11):
        clock.now += 1
        decision = (await autoscaler.tick())[ref("hello")]
        assert registry.get_sample_value(naming.METRIC_AUTOSCALER_DECISIONS,
                                         {**labels, "kind": decision.kind}) == tick
    assert counting.calls < 10   # it did rest
