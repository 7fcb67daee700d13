"""The schedule trigger source over a fake clock, an in-memory tick store and a recording sink: no sleeps.

Each test drives `ScheduleSource.fire_due()` by hand at chosen instants, as the source's own loop
would at each wake-up.
"""
from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from kfn.core import schedules
from kfn.core.functions import Function, FunctionRef
from kfn.triggers.schedule import ScheduleSource
from kfn.triggers.ticks import MemoryTicks, TickRecord
from tests.support.functions import make_function

T0 = dt.datetime(2026, 3, 2, 12, 0, 30, tzinfo=dt.UTC)   # 30 s past a whole minute
HELLO = FunctionRef("default", "hello")


class Clock:
    def __init__(self, now: dt.datetime = T0) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now

    def at(self, hour: int, minute: int, second: int = 0) -> None:
        self.now = self.now.replace(hour=hour, minute=minute, second=second)


class Sink:
    """Records every accept; stores each id once, like the event store; can be made to fail."""

    def __init__(self) -> None:
        self.calls: list[tuple[FunctionRef, dict[str, Any], str]] = []
        self.stored: dict[str, dict[str, Any]] = {}
        self.failing = False

    async def __call__(self, function: FunctionRef, payload: bytes, invocation_id: str) -> None:
        if self.failing:
            raise ConnectionError("the store is down")
        event = json.loads(payload)
        self.calls.append((function, event, invocation_id))
        self.stored.setdefault(invocation_id, event)

    def times(self) -> list[str]:
        return [event["time"] for _, event, _ in self.calls]


async def source_for(*functions: Function, clock: Clock, ticks: MemoryTicks | None = None,
                     sink: Sink | None = None) -> tuple[ScheduleSource, Sink, MemoryTicks]:
    ticks = ticks or MemoryTicks()
    sink = sink or Sink()
    source = ScheduleSource(ticks, clock=clock, region="eu-west-1")
    source._sink = sink   # fire_due is driven by hand: no background loop (start() would create one)
    source.update(list(functions))
    return source, sink, ticks


async def test_a_new_trigger_fires_nothing_from_the_past_and_waits_for_its_next_tick() -> None:
    clock = Clock()
    source, sink, ticks = await source_for(make_function(triggers=[{"schedule": "rate(5 minutes)"}]), clock=clock)
    wake = await source.fire_due()
    assert sink.calls == []
    assert wake == dt.datetime(2026, 3, 2, 12, 5, tzinfo=dt.UTC)
    assert ticks.records["default.hello.0"] == TickRecord("rate(5 minutes)", T0)


async def test_each_tick_fires_once() -> None:
    clock = Clock()
    source, sink, _ = await source_for(make_function(triggers=[{"schedule": "rate(5 minutes)"}]), clock=clock)
    await source.fire_due()
    for minute in (5, 5, 7, 10, 10, 15):
        clock.at(12, minute)
        await source.fire_due()
    assert sink.times() == ["2026-03-02T12:05:00Z", "2026-03-02T12:10:00Z", "2026-03-02T12:15:00Z"]


async def test_the_event_is_eventbridges_scheduled_event_under_the_tick_id() -> None:
    clock = Clock()
    source, sink, _ = await source_for(make_function(triggers=[{"nats": {"subject": "x"}},
                                                               {"schedule": "cron(0/5 * * * ? *)"}]),
                                       clock=clock)
    await source.fire_due()
    clock.at(12, 5, 1)
    await source.fire_due()
    ((function, event, invocation_id),) = sink.calls
    tick = dt.datetime(2026, 3, 2, 12, 5, tzinfo=dt.UTC)
    assert function == HELLO
    assert invocation_id == schedules.tick_id("hello.default", 1, tick)
    assert event == {
        "version": "0", "id": invocation_id, "detail-type": "Scheduled Event", "source": "aws.events",
        "account": "000000000000", "time": "2026-03-02T12:05:00Z", "region": "eu-west-1",
        "resources": ["arn:aws:events:eu-west-1:000000000000:rule/kfn-default-hello-1"], "detail": {},
    }


async def test_a_second_scheduler_on_the_same_records_does_not_fire_a_tick_again() -> None:
    # A hand-over: the new leader reads what the old one recorded.
    clock = Clock()
    ticks = MemoryTicks()
    function = make_function(triggers=[{"schedule": "rate(1 minute)"}])
    first, sink, _ = await source_for(function, clock=clock, ticks=ticks)
    await first.fire_due()
    clock.at(12, 1)
    await first.fire_due()
    second, _, _ = await source_for(function, clock=clock, ticks=ticks, sink=sink)
    await second.fire_due()
    clock.at(12, 2)
    await second.fire_due()
    assert sink.times() == ["2026-03-02T12:01:00Z", "2026-03-02T12:02:00Z"]


async def test_a_tick_fired_twice_has_the_same_id() -> None:
    # A scheduler that stored the event but died before recording the tick: the next one fires
    # the tick again, under the same id, which the store keeps once.
    clock = Clock()
    function = make_function(triggers=[{"schedule": "rate(1 minute)"}])
    ticks = MemoryTicks()
    first, sink, _ = await source_for(function, clock=clock, ticks=ticks)
    await first.fire_due()
    recorded = dict(ticks.records)
    clock.at(12, 1)
    await first.fire_due()
    ticks.records = recorded            # the record of 12:01 never written
    second, _, _ = await source_for(function, clock=clock, ticks=ticks, sink=sink)
    clock.at(12, 1, 20)
    await second.fire_due()
    assert len(sink.calls) == 2
    assert sink.calls[0][2] == sink.calls[1][2]
    assert len(sink.stored) == 1


async def test_the_latest_missed_tick_fires_once_late_after_downtime() -> None:
    clock = Clock()
    ticks = MemoryTicks()
    function = make_function(triggers=[{"schedule": "rate(5 minutes)"}])
    first, sink, _ = await source_for(function, clock=clock, ticks=ticks)
    await first.fire_due()
    clock.at(12, 5)
    await first.fire_due()
    # Down from 12:06 to 12:32: the ticks of 12:10 … 12:30 were missed.
    clock.at(12, 32)
    restarted, _, _ = await source_for(function, clock=clock, ticks=ticks, sink=sink)
    wake = await restarted.fire_due()
    assert sink.times() == ["2026-03-02T12:05:00Z", "2026-03-02T12:30:00Z"]
    assert (restarted.counters.fired, restarted.counters.late, restarted.counters.skipped) == (1, 1, 4)
    assert wake == dt.datetime(2026, 3, 2, 12, 35, tzinfo=dt.UTC)


async def test_after_long_downtime_only_the_latest_missed_tick_fires() -> None:
    clock = Clock()
    ticks = MemoryTicks()
    function = make_function(triggers=[{"schedule": "rate(5 minutes)"}])
    first, sink, _ = await source_for(function, clock=clock, ticks=ticks)
    await first.fire_due()
    clock.at(12, 5)
    await first.fire_due()
    # Down for two hours, back at 14:06: of the 24 missed ticks only the latest (14:05) fires.
    clock.at(14, 6)
    restarted, _, _ = await source_for(function, clock=clock, ticks=ticks, sink=sink)
    await restarted.fire_due()
    assert sink.times()[-1] == "2026-03-02T14:05:00Z"
    assert restarted.counters.skipped == 23


async def test_a_missed_tick_more_than_an_hour_old_is_not_fired() -> None:
    clock = Clock()
    ticks = MemoryTicks()
    function = make_function(triggers=[{"schedule": "cron(0 9 * * ? *)"}])    # daily at 09:00
    first, sink, _ = await source_for(function, clock=clock, ticks=ticks)
    await first.fire_due()                               # 12:00:30: the record starts here
    clock.now = dt.datetime(2026, 3, 3, 10, 30, tzinfo=dt.UTC)    # 09:00 the next day was missed by 1.5 h
    restarted, _, _ = await source_for(function, clock=clock, ticks=ticks, sink=sink)
    wake = await restarted.fire_due()
    assert sink.calls == []
    assert restarted.counters.skipped == 1
    assert ticks.records["default.hello.0"].through == clock.now   # counted once, not again
    assert wake == dt.datetime(2026, 3, 4, 9, 0, tzinfo=dt.UTC)
    await restarted.fire_due()
    assert restarted.counters.skipped == 1


async def test_a_tick_that_could_not_be_stored_is_not_recorded_and_fires_on_the_retry() -> None:
    clock = Clock()
    source, sink, ticks = await source_for(make_function(triggers=[{"schedule": "rate(1 minute)"}]), clock=clock)
    await source.fire_due()
    clock.at(12, 1)
    sink.failing = True
    wake = await source.fire_due()
    assert sink.calls == []
    assert ticks.records["default.hello.0"].through == T0
    assert wake == clock.now + dt.timedelta(seconds=5)
    assert HELLO in source.problems()
    sink.failing = False
    clock.at(12, 1, 5)
    await source.fire_due()
    assert sink.times() == ["2026-03-02T12:01:00Z"]
    assert source.problems() == {}


async def test_a_changed_expression_starts_afresh() -> None:
    clock = Clock()
    source, sink, ticks = await source_for(make_function(triggers=[{"schedule": "rate(1 minute)"}]), clock=clock)
    await source.fire_due()
    clock.at(12, 3, 30)
    source.update([make_function(triggers=[{"schedule": "rate(1 hour)"}])])
    wake = await source.fire_due()
    assert sink.calls == []
    assert ticks.records["default.hello.0"] == TickRecord("rate(1 hour)", clock.now)
    assert wake == dt.datetime(2026, 3, 2, 13, 0, tzinfo=dt.UTC)


async def test_a_removed_trigger_stops_firing_and_is_forgotten() -> None:
    clock = Clock()
    source, sink, ticks = await source_for(make_function(triggers=[{"schedule": "rate(1 minute)"}]), clock=clock)
    await source.fire_due()
    source.update([make_function()])
    clock.at(12, 5)
    assert await source.fire_due() is None
    assert sink.calls == []
    assert ticks.records == {}


async def test_functions_and_triggers_fire_independently() -> None:
    clock = Clock()
    source, sink, _ = await source_for(
        make_function(triggers=[{"schedule": "rate(1 minute)"}, {"schedule": "rate(2 minutes)"}]),
        make_function("other", namespace="team-a", triggers=[{"schedule": "*/3 * * * *"}]), clock=clock)
    await source.fire_due()
    for minute in range(1, 7):
        clock.at(12, minute)
        await source.fire_due()
    fired = sorted((str(f), e["resources"][0].rsplit("/", 1)[1], e["time"][11:16]) for f, e, _ in sink.calls)
    per_rule: dict[str, list[str]] = {}
    for _, rule, time in fired:
        per_rule.setdefault(rule, []).append(time)
    assert per_rule == {
        "kfn-default-hello-0": ["12:01", "12:02", "12:03", "12:04", "12:05", "12:06"],
        "kfn-default-hello-1": ["12:02", "12:04", "12:06"],
        "kfn-team-a-other-0": ["12:03", "12:06"],
    }


async def test_a_schedule_that_never_fires_again_sleeps() -> None:
    clock = Clock()
    source, sink, _ = await source_for(make_function(triggers=[{"schedule": "cron(0 12 1 1 ? 2020)"}]), clock=clock)
    assert await source.fire_due() is None
    assert sink.calls == []


@pytest.mark.parametrize("expression", ["rate(1 minute)", "* * * * *", "cron(* * * * ? *)"])
async def test_every_syntax_fires_each_minute(expression: str) -> None:
    clock = Clock()
    source, sink, _ = await source_for(make_function(triggers=[{"schedule": expression}]), clock=clock)
    await source.fire_due()
    for minute in (1, 2):
        clock.at(12, minute)
        await source.fire_due()
    assert sink.times() == ["2026-03-02T12:01:00Z", "2026-03-02T12:02:00Z"]
