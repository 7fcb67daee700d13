"""The scaling decision, over synthetic time series: no clocks, no sleeps."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import pytest

from kfn.core.functions import parse_function
from kfn.core.scaling import Decision, Sample, ScalerState, ScaleSettings, Unobserved, decide, window_average

SETTINGS = ScaleSettings(min_replicas=0, max_replicas=20, target_concurrency=10.0,
                         idle_timeout=60.0, stable_window=60.0)


def steady(concurrency: float, *, start: float = 1.0, end: float = 60.0, step: float = 1.0,
           requests: int | None = None) -> list[Sample]:
    """One sample per `step` seconds in [start, end], all with the same load."""
    count = int(round((end - start) / step)) + 1
    arrivals = requests if requests is not None else (1 if concurrency > 0 else 0)
    return [Sample(time=start + i * step, concurrency=concurrency, requests=arrivals) for i in range(count)]


@dataclass(frozen=True)
class Case:
    id: str
    samples: list[Sample]
    now: float
    current: int
    expected: int
    kind: str
    ready: int | None = None       # defaults to current
    in_flight: float = 0.0
    queued: float = 0.0
    settings: ScaleSettings = SETTINGS
    state: ScalerState = field(default_factory=ScalerState)


CASES = [
    Case("steady load above target scales up",
         steady(25.0), now=60, current=2, expected=3, kind="stable"),
    Case("steady load at target holds",
         steady(20.0), now=60, current=2, expected=2, kind="stable"),
    Case("rounding noise does not add an instance",
         steady(14.000000000001, end=60), now=60, current=2, expected=2, kind="stable",
         settings=replace(SETTINGS, target_concurrency=7.0)),
    Case("fractional target concurrency",
         steady(1.2), now=60, current=2, expected=3, kind="stable",
         settings=replace(SETTINGS, target_concurrency=0.5)),
    Case("scale-down is at most max_scale_down_rate per decision",
         steady(3.0), now=60, current=10, expected=5, kind="stable"),
    Case("scale-down rate follows the setting",
         steady(3.0), now=60, current=12, expected=3, kind="stable",
         settings=replace(SETTINGS, max_scale_down_rate=4.0)),
    Case("scale-up is at most max_scale_up_rate per decision",
         steady(190.0), now=60, current=2, expected=4, kind="stable",
         settings=replace(SETTINGS, max_scale_up_rate=2.0, panic_threshold=1000.0)),
    Case("a limit on growth never shrinks instances that are still starting",
         steady(100.0), now=60, current=10, ready=1, expected=10, kind="stable",
         settings=replace(SETTINGS, max_scale_up_rate=2.0, panic_threshold=1000.0)),
    Case("a limit on shrinking never grows past what was asked for",
         steady(3.0), now=60, current=1, ready=10, expected=1, kind="stable"),
    Case("min replicas hold even without load",
         steady(0.0, end=600), now=600, current=3, expected=2, kind="stable",
         settings=replace(SETTINGS, min_replicas=2)),
    Case("max replicas cap the stable decision",
         steady(150.0), now=60, current=3, expected=5, kind="stable",
         settings=replace(SETTINGS, max_replicas=5, panic_threshold=1000.0)),
    Case("max replicas cap the panic decision",
         steady(500.0), now=60, current=1, expected=5, kind="panic",
         settings=replace(SETTINGS, max_replicas=5)),
    Case("samples older than the stable window are ignored",
         [Sample(1.0, 1000.0, 50), *steady(10.0, start=62, end=120)], now=120, current=1, expected=1, kind="stable"),
    Case("an average of zero keeps one instance before the idle timeout",
         [Sample(1.0, 0.5, 1), *steady(0.0, start=2, end=59, requests=0)], now=59, current=2, expected=1,
         kind="stable"),
    Case("idle for idle_timeout scales to zero",
         [Sample(1.0, 0.5, 1), *steady(0.0, start=2, end=61, requests=0)], now=61, current=1, expected=0,
         kind="idle"),
    Case("idle but min replicas above zero keeps min replicas",
         steady(0.0, requests=0, end=300), now=300, current=1, expected=1, kind="stable",
         settings=replace(SETTINGS, min_replicas=1), state=ScalerState(last_active=0.0)),
    Case("a long request in flight prevents scale to zero",
         [Sample(1.0, 1.0, 1), *steady(1.0, start=2, end=600, requests=0)], now=600, current=1, expected=1,
         kind="stable", in_flight=1.0),
    Case("held requests seen only in samples prevent scale to zero",
         [Sample(1.0, 1.0, 1), *steady(1.0, start=2, end=600, requests=0)], now=600, current=1, expected=1,
         kind="stable", state=ScalerState(last_active=1.0)),
    Case("first request from zero asks for one instance",
         [Sample(1.0, 0.2, 1)], now=1, current=0, expected=1, kind="stable", in_flight=1.0),
    Case("a request held with no samples yet is a cold start",
         [], now=1, current=0, expected=1, kind="cold-start", in_flight=1.0),
    Case("a burst from zero asks for enough instances at once",
         steady(50.0, start=1, end=3), now=3, current=0, expected=5, kind="panic", in_flight=50.0),
    Case("nothing happening at zero stays at zero",
         steady(0.0, requests=0), now=60, current=0, expected=0, kind="stable"),
    Case("empty sample list holds the current count",
         [], now=100, current=3, expected=3, kind="no-data"),
    Case("empty sample list at zero stays at zero",
         [], now=100, current=0, expected=0, kind="no-data"),
    Case("no samples is no evidence of idleness",
         [], now=1000, current=2, expected=2, kind="no-data", state=ScalerState(last_active=1.0)),
    Case("empty sample list still clamps to the bounds",
         [], now=100, current=8, expected=5, kind="no-data", settings=replace(SETTINGS, max_replicas=5)),
    # Queued asynchronous work.
    Case("queued async work at zero asks for one instance",
         steady(0.0, requests=0), now=60, current=0, expected=1, kind="stable", queued=3.0),
    Case("queued async work with no samples yet is a cold start",
         [], now=1, current=0, expected=1, kind="cold-start", queued=1.0),
    Case("queued async work prevents scale to zero after the idle timeout",
         steady(0.0, requests=0, end=300), now=300, current=1, expected=1, kind="stable", queued=1.0,
         state=ScalerState(last_active=0.0)),
    Case("a backlog scales toward queued / target concurrency",
         steady(0.0, requests=0), now=60, current=1, expected=4, kind="queued", queued=35.0),
    Case("a backlog is bounded by max replicas",
         steady(0.0, requests=0), now=60, current=1, expected=5, kind="queued", queued=1000.0,
         settings=replace(SETTINGS, max_replicas=5)),
    Case("synchronous load above what the queue needs decides",
         steady(45.0), now=60, current=5, expected=5, kind="stable", queued=5.0),
    Case("the queue's floor holds against a scale-down",
         steady(0.0, requests=0, end=50), now=50, current=6, expected=5, kind="queued", queued=45.0),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_decision(case: Case) -> None:
    decision = decide(samples=case.samples, now=case.now, current=case.current,
                      ready=case.current if case.ready is None else case.ready,
                      in_flight=case.in_flight, settings=case.settings, state=case.state, queued=case.queued)
    assert (decision.replicas, decision.kind) == (case.expected, case.kind), decision.reason


def test_reason_names_the_queued_work() -> None:
    decision = decide(samples=steady(0.0, requests=0), now=60, current=0, ready=0, in_flight=0.0,
                      settings=SETTINGS, state=ScalerState(), queued=25.0)
    assert decision.reason.endswith("; 25 async events queued / target 10 → 3")


def test_queued_work_counts_as_activity_in_state() -> None:
    decision = decide(samples=steady(0.0, requests=0), now=60, current=1, ready=1, in_flight=0.0,
                      settings=SETTINGS, state=ScalerState(last_active=0.0), queued=1.0)
    assert decision.state.last_active == 60


def test_reason_names_the_average_the_target_and_the_result() -> None:
    settings = replace(SETTINGS, target_concurrency=7.0)
    decision = decide(samples=steady(12.3), now=60, current=1, ready=1, in_flight=0.0,
                      settings=settings, state=ScalerState())
    assert decision.reason == "stable: avg concurrency 12.3 / target 7 → 2"


def test_reason_of_scale_to_zero_names_the_idle_time() -> None:
    decision = decide(samples=steady(0.0, requests=0), now=70, current=1, ready=1, in_flight=0.0,
                      settings=SETTINGS, state=ScalerState(last_active=10.0))
    assert decision.reason == "idle for 60s → 0"


def test_reason_mentions_clamping() -> None:
    decision = decide(samples=steady(150.0), now=60, current=3, ready=3, in_flight=0.0,
                      settings=replace(SETTINGS, max_replicas=5, panic_threshold=1000.0), state=ScalerState())
    assert decision.reason.endswith("clamped to maxReplicas 5")


def test_activity_is_remembered_in_state() -> None:
    samples = [Sample(1.0, 0.0, 1), Sample(2.0, 0.0, 0)]
    decision = decide(samples=samples, now=2, current=1, ready=1, in_flight=0.0, settings=SETTINGS,
                      state=ScalerState())
    assert decision.state.last_active == 1.0


def test_in_flight_now_counts_as_activity_now() -> None:
    decision = decide(samples=[Sample(1.0, 0.0, 1)], now=30, current=1, ready=1, in_flight=2.0,
                      settings=SETTINGS, state=ScalerState())
    assert decision.state.last_active == 30


def test_idle_timer_starts_when_the_function_is_first_seen() -> None:
    # An autoscaler (re)started next to running instances has no idea when the last request came.
    first = decide(samples=steady(0.0, requests=0, start=1, end=5), now=5, current=2, ready=2, in_flight=0.0,
                   settings=SETTINGS, state=ScalerState())
    assert first.replicas == 1
    later = decide(samples=steady(0.0, requests=0, start=6, end=65), now=65, current=1, ready=1, in_flight=0.0,
                   settings=SETTINGS, state=first.state)
    assert later.replicas == 0


def test_idle_scale_to_zero_does_not_wait_for_the_scale_down_rate() -> None:
    decision = decide(samples=steady(0.0, requests=0), now=60, current=8, ready=8, in_flight=0.0,
                      settings=SETTINGS, state=ScalerState(last_active=0.0))
    assert decision.replicas == 0


def test_panic_threshold_is_relative_to_ready_instances() -> None:
    # 5 ready instances at target 10 panic at 100 held requests, not before.
    calm = decide(samples=steady(99.0), now=60, current=5, ready=5, in_flight=0.0,
                  settings=SETTINGS, state=ScalerState())
    burst = decide(samples=steady(100.0), now=60, current=5, ready=5, in_flight=0.0,
                   settings=SETTINGS, state=ScalerState())
    assert (calm.panic, burst.panic) == (False, True)


def test_panic_decides_from_the_panic_window() -> None:
    samples = steady(5.0, end=54) + steady(100.0, start=55, end=60)
    decision = decide(samples=samples, now=60, current=1, ready=1, in_flight=0.0,
                      settings=SETTINGS, state=ScalerState())
    assert decision.panic
    assert decision.replicas == 10  # the stable average (~14) would have said 2
    assert decision.reason.startswith("panic: avg concurrency 100 over 6s / target 10 → 10")


def test_entering_panic_never_lowers_the_current_count() -> None:
    samples = steady(5.0, end=54) + steady(40.0, start=55, end=60)
    decision = decide(samples=samples, now=60, current=7, ready=1, in_flight=0.0,
                      settings=SETTINGS, state=ScalerState())
    assert decision.panic and decision.replicas == 7


def test_window_average_weighs_samples_by_the_time_they_cover() -> None:
    samples = [Sample(0.0, 0.0, 0), Sample(1.0, 10.0, 1), Sample(4.0, 2.0, 1)]
    # 10 for one second, 2 for three seconds.
    assert window_average(samples, start=0.0, end=4.0) == pytest.approx((10 * 1 + 2 * 3) / 4)


def test_window_average_clips_a_sample_to_the_window_start() -> None:
    samples = [Sample(0.0, 0.0, 0), Sample(10.0, 4.0, 1), Sample(12.0, 1.0, 1)]
    # The second sample covers (0, 10]; only (8, 10] of it is in the window.
    assert window_average(samples, start=8.0, end=12.0) == pytest.approx((4 * 2 + 1 * 2) / 4)


def test_window_average_without_samples_in_the_window_is_none() -> None:
    assert window_average([Sample(1.0, 3.0, 1)], start=5.0, end=10.0) is None


def test_settings_from_spec_reads_the_function() -> None:
    fn = parse_function({
        "apiVersion": "kfn.dev/v1alpha1", "kind": "Function", "metadata": {"name": "hello"},
        "spec": {"handler": "main.handler", "source": {"files": {"main.py": "x = 1"}}, "concurrency": 20,
                 "scale": {"minReplicas": 1, "maxReplicas": 4, "idleTimeout": "2m", "stableWindow": "30s"}},
    })
    assert ScaleSettings.from_spec(fn.spec) == ScaleSettings(
        min_replicas=1, max_replicas=4, target_concurrency=14.0, idle_timeout=120.0, stable_window=30.0)
    assert ScaleSettings.from_spec(fn.spec).panic_window == pytest.approx(3.0)


# --- Over time: feed decisions back in, as the autoscaler does, with instances ready at once.

def simulate(load: Callable[[float], float], *, until: int, settings: ScaleSettings = SETTINGS,
             current: int = 1) -> list[tuple[float, Decision]]:
    samples: list[Sample] = []
    state = ScalerState()
    out: list[tuple[float, Decision]] = []
    for t in range(1, until + 1):
        value = load(t)
        samples.append(Sample(float(t), value, 1 if value > 0 else 0))
        decision = decide(samples=samples, now=float(t), current=current, ready=current, in_flight=value,
                          settings=settings, state=state)
        out.append((float(t), decision))
        state, current = decision.state, decision.replicas
    return out


def burst(t: float) -> float:
    return 100.0 if 61 <= t <= 70 else 5.0


def test_burst_enters_panic_and_scales_from_the_panic_window() -> None:
    run = dict(simulate(burst, until=75))
    assert not run[60].panic
    assert run[61].panic
    assert max(d.replicas for d in run.values()) == 10


def test_panic_never_scales_down() -> None:
    run = simulate(burst, until=200)
    panicking = [d.replicas for _, d in run if d.panic]
    assert panicking == sorted(panicking)


def test_panic_ends_after_a_stable_window_without_the_panic_condition() -> None:
    run = simulate(burst, until=200)
    last_condition = max(d.state.last_panic_condition for _, d in run if d.state.last_panic_condition is not None)
    exit_time = next(t for t, d in run if t > last_condition and not d.panic)
    assert exit_time == last_condition + SETTINGS.stable_window


def test_after_panic_the_count_comes_down_gently() -> None:
    run = simulate(burst, until=300)
    after = [d.replicas for t, d in run if t > 70 and not d.panic]
    steps = list(zip(after, after[1:], strict=False))
    assert after[-1] == 1
    assert all(b >= a // 2 for a, b in steps)
    assert any(b < a for a, b in steps)


def test_steady_load_converges_and_stays() -> None:
    run = simulate(lambda t: 35.0, until=120)
    assert {d.replicas for t, d in run if t > 60} == {4}


def test_a_backlog_worked_off_scales_to_zero_an_idle_timeout_after_it_emptied() -> None:
    # 40 events queued at t=1, the queue drains by 10 a second; no synchronous traffic at all.
    samples: list[Sample] = []
    state, current = ScalerState(), 0
    run: dict[float, Decision] = {}
    for t in range(1, 121):
        samples.append(Sample(float(t), 0.0, 0))
        queued = max(0.0, 40.0 - 10.0 * (t - 1))
        decision = decide(samples=samples, now=float(t), current=current, ready=current, in_flight=0.0,
                          settings=SETTINGS, state=state, queued=queued)
        run[float(t)] = decision
        state, current = decision.state, decision.replicas
    assert run[1].replicas == 4
    assert run[4].replicas >= 1                 # the last 10 events still queued
    assert run[4 + 59].replicas == 1            # last queued at t=4: not idle for 60 s yet
    assert run[4 + 60].replicas == 0
    assert run[4 + 60].kind == "idle"


def test_traffic_stopping_scales_to_zero_after_the_idle_timeout() -> None:
    run = dict(simulate(lambda t: 5.0 if t <= 30 else 0.0, until=120))
    assert run[89].replicas == 1
    assert run[90].replicas == 0
    assert run[90].kind == "idle"


# --- No evidence (the source cannot see the function): hold, never zero.

def test_an_unobserved_function_under_load_is_held_not_scaled_to_zero() -> None:
    # Loaded at 35 for a minute, then the gateway's series vanish for two idle timeouts.
    samples = steady(35.0, end=60.0)
    state, current = ScalerState(last_active=60.0), 4
    for t in range(61, 181):
        decision = decide(samples=samples, now=float(t), current=current, ready=current, in_flight=0.0,
                          settings=SETTINGS, state=state, unobserved=Unobserved("no gateway target is up"))
        state, current = decision.state, decision.replicas
        assert (decision.replicas, decision.kind) == (4, "unobserved"), t
    assert "no gateway target is up" in decision.reason
    assert "hold 4" in decision.reason


def test_an_unobserved_function_is_held_within_its_replica_bounds() -> None:
    decision = decide(samples=[], now=10.0, current=0, ready=0, in_flight=0.0,
                      settings=replace(SETTINGS, min_replicas=2), state=ScalerState(), unobserved=Unobserved("x"))
    assert decision.replicas == 2
    assert "clamped to minReplicas 2" in decision.reason


def test_time_without_evidence_restarts_the_idle_timer() -> None:
    samples = steady(0.0, end=10.0)
    state = ScalerState(last_active=1.0)
    for t in range(11, 100):
        state = decide(samples=samples, now=float(t), current=1, ready=1, in_flight=0.0, settings=SETTINGS,
                       state=state, unobserved=Unobserved("x")).state
    # Last unseen at t=99, seen idle from t=100: zero a whole idle timeout (60 s) after t=99, not before.
    samples = [Sample(float(t), 0.0, 0) for t in range(100, 160)]
    at_158 = decide(samples=samples[:-1], now=158.0, current=1, ready=1, in_flight=0.0, settings=SETTINGS, state=state)
    at_159 = decide(samples=samples, now=159.0, current=1, ready=1, in_flight=0.0, settings=SETTINGS,
                    state=at_158.state)
    assert (at_158.replicas, at_159.replicas) == (1, 0)


def test_a_function_at_zero_stays_at_zero_after_a_spell_without_evidence() -> None:
    # A metrics outage is no sign of activity for a function at zero: a request for it would have
    # started an instance through the gateway. Counting the unseen time would start one instance of
    # every idle function once the metrics are back.
    state = decide(samples=[Sample(1.0, 0.0, 0)], now=1.0, current=0, ready=0, in_flight=0.0, settings=SETTINGS,
                   state=ScalerState()).state
    state = decide(samples=[Sample(1.0, 0.0, 0)], now=2.0, current=0, ready=0, in_flight=0.0, settings=SETTINGS,
                   state=state, unobserved=Unobserved("x")).state
    after = decide(samples=[Sample(1.0, 0.0, 0), Sample(3.0, 0.0, 0)], now=3.0, current=0, ready=0, in_flight=0.0,
                   settings=SETTINGS, state=state)
    assert after.replicas == 0, after.reason
