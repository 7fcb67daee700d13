"""Schedule expressions: EventBridge rate() and cron(), five-field cron, fire times, missed ticks, the event."""
from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kfn.core import schedules
from kfn.core.schedules import InvalidSchedule, next_fire_times, parse, plan

UTC = dt.UTC


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


def fires(expression: str, after: str, count: int = 3) -> list[str]:
    return [t.strftime("%Y-%m-%dT%H:%M") for t in next_fire_times(parse(expression), at(after), count)]


# -- rate() -------------------------------------------------------------------------------------

def test_rate_in_minutes_fires_on_multiples_since_the_epoch() -> None:
    assert fires("rate(5 minutes)", "2026-03-01T10:02:30") == ["2026-03-01T10:05", "2026-03-01T10:10",
                                                               "2026-03-01T10:15"]


def test_rate_of_one_day_fires_at_midnight_utc() -> None:
    assert fires("rate(1 day)", "2026-03-01T10:00:00", 2) == ["2026-03-02T00:00", "2026-03-03T00:00"]


def test_rate_fires_strictly_after_a_tick() -> None:
    assert fires("rate(1 hour)", "2026-03-01T10:00:00", 1) == ["2026-03-01T11:00"]


@pytest.mark.parametrize("expression, message", [
    ("rate(1 minutes)", "a rate of 1 takes the singular unit"),
    ("rate(5 minute)", "a rate above 1 takes the plural unit"),
    ("rate(0 minutes)", "must be a positive integer"),
    ("rate(5 seconds)", "the unit of a rate must be minute(s), hour(s) or day(s)"),
    ("rate(five minutes)", "must be rate(N unit)"),
])
def test_invalid_rate_says_why(expression: str, message: str) -> None:
    with pytest.raises(InvalidSchedule, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse(expression)


# -- EventBridge cron() -------------------------------------------------------------------------

def test_cron_every_day_at_noon() -> None:
    assert fires("cron(0 12 * * ? *)", "2026-03-01T12:00:00", 2) == ["2026-03-02T12:00", "2026-03-03T12:00"]


def test_cron_lists_of_minutes() -> None:
    assert fires("cron(5,35 14 * * ? *)", "2026-03-01T14:06:00", 2) == ["2026-03-01T14:35", "2026-03-02T14:05"]


def test_cron_steps_and_weekday_names() -> None:
    # 2026-03-06 is a Friday: the next working-hours tick after 17:55 is Monday 08:00.
    assert fires("cron(0/5 8-17 ? * MON-FRI *)", "2026-03-06T17:55:00", 2) == ["2026-03-09T08:00",
                                                                               "2026-03-09T08:05"]


def test_cron_day_of_week_counts_from_sunday_as_one() -> None:
    # 2026-03-01 is a Sunday.
    assert fires("cron(0 9 ? * 1 *)", "2026-02-27T00:00:00", 1) == ["2026-03-01T09:00"]


def test_cron_last_day_of_month() -> None:
    assert fires("cron(0 0 L * ? *)", "2026-02-01T00:00:00", 2) == ["2026-02-28T00:00", "2026-03-31T00:00"]


def test_cron_last_friday_of_month_within_years() -> None:
    assert fires("cron(15 10 ? * 6L 2026-2027)", "2026-12-01T00:00:00", 2) == ["2026-12-25T10:15",
                                                                               "2027-01-29T10:15"]


def test_cron_nth_weekday_of_month() -> None:
    # The second Tuesday of March and April 2026.
    assert fires("cron(0 9 ? * 3#2 *)", "2026-03-01T00:00:00", 2) == ["2026-03-10T09:00", "2026-04-14T09:00"]


def test_cron_nearest_weekday_moves_a_weekend_day_into_the_month() -> None:
    # 2026-08-01 is a Saturday: 1W is Monday the 3rd, not Friday in July. 2026-03-15 is a Sunday → Monday 16th.
    assert fires("cron(0 0 1W * ? *)", "2026-07-31T00:00:00", 1) == ["2026-08-03T00:00"]
    assert fires("cron(0 0 15W * ? *)", "2026-03-01T00:00:00", 1) == ["2026-03-16T00:00"]


def test_cron_last_weekday_of_month() -> None:
    # 2026-05-31 is a Sunday: the last weekday is Friday the 29th.
    assert fires("cron(0 0 LW * ? *)", "2026-05-01T00:00:00", 1) == ["2026-05-29T00:00"]


def test_cron_wrapping_hour_range() -> None:
    assert fires("cron(0 22-1 * * ? *)", "2026-03-01T21:00:00", 4) == [
        "2026-03-01T22:00", "2026-03-01T23:00", "2026-03-02T00:00", "2026-03-02T01:00"]


def test_cron_month_names() -> None:
    assert fires("cron(0 0 1 JAN,JUL ? *)", "2026-03-01T00:00:00", 2) == ["2026-07-01T00:00", "2027-01-01T00:00"]


def test_cron_that_never_fires_again_has_no_next_time() -> None:
    assert next_fire_times(parse("cron(0 0 1 1 ? 2020)"), at("2026-01-01T00:00:00"), 1) == []


@pytest.mark.parametrize("expression, message", [
    ("cron(0 12 * * *)", "cron() takes six fields"),
    ("cron(0 12 * * * *)", "exactly one of day-of-month and day-of-week must be '?'"),
    ("cron(0 12 ? * ? *)", "exactly one of day-of-month and day-of-week must be '?'"),
    ("cron(60 12 * * ? *)", "minutes: 60 is out of range 0-59"),
    ("cron(0 24 * * ? *)", "hours: 24 is out of range 0-23"),
    ("cron(0 12 ? * 8 *)", "day-of-week: 8 is out of range 1-7"),
    ("cron(0 12 ? * 3#1,6#3 *)", "'#' takes one day and a week"),
    ("cron(0 12 ? * 3#6 *)", "the week after '#' must be 1-5"),
    ("cron(0 12 L,15 * ? *)", "day-of-month takes L, LW or nW alone"),
    ("cron(0 12 * FOO ? *)", "month: 'FOO' is not a number or a name"),
    ("cron(0 12 * * ? 2300)", "year: 2300 is out of range 1970-2199"),
    ("cron(0/0 12 * * ? *)", "the step after '/' must be a positive integer"),
])
def test_invalid_cron_says_why(expression: str, message: str) -> None:
    with pytest.raises(InvalidSchedule, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse(expression)


# -- five-field cron ----------------------------------------------------------------------------

def test_standard_cron_every_fifteen_minutes_on_weekdays() -> None:
    # 2026-03-07 is a Saturday.
    assert fires("*/15 * * * 1-5", "2026-03-06T23:50:00", 2) == ["2026-03-09T00:00", "2026-03-09T00:15"]


def test_standard_cron_sunday_is_zero_or_seven() -> None:
    assert fires("0 9 * * 0", "2026-02-27T00:00:00", 1) == fires("0 9 * * 7", "2026-02-27T00:00:00", 1) == [
        "2026-03-01T09:00"]


def test_standard_cron_with_both_day_fields_fires_on_either() -> None:
    # The 13th, or any Friday: Friday 2026-03-06, then Friday the 13th.
    assert fires("0 0 13 * 5", "2026-03-01T00:00:00", 3) == ["2026-03-06T00:00", "2026-03-13T00:00",
                                                             "2026-03-20T00:00"]


def test_standard_cron_macros() -> None:
    assert fires("@hourly", "2026-03-01T10:30:00", 1) == ["2026-03-01T11:00"]
    assert fires("@daily", "2026-03-01T10:30:00", 1) == ["2026-03-02T00:00"]


def test_line_with_four_fields_is_rejected() -> None:
    with pytest.raises(InvalidSchedule, match="five-field cron line"):
        parse("0 12 * *")


# -- properties ---------------------------------------------------------------------------------

def _field(values: list[int]) -> st.SearchStrategy[str]:
    low, high = values[0], values[-1]
    single = st.sampled_from(values).map(str)
    ranged = st.tuples(st.sampled_from(values), st.sampled_from(values)).map(lambda p: f"{min(p)}-{max(p)}")
    stepped = st.tuples(st.sampled_from(values), st.integers(1, max(1, high - low))).map(lambda p: f"{p[0]}/{p[1]}")
    listed = st.lists(st.sampled_from(values), min_size=1, max_size=4).map(lambda v: ",".join(map(str, v)))
    return st.one_of(st.just("*"), single, ranged, stepped, listed)


_DAY_OF_MONTH = st.one_of(_field(list(range(1, 32))), st.just("L"), st.just("LW"),
                          st.integers(1, 31).map(lambda d: f"{d}W"))
_DAY_OF_WEEK = st.one_of(_field(list(range(1, 8))), st.just("L"), st.integers(1, 7).map(lambda d: f"{d}L"),
                         st.tuples(st.integers(1, 7), st.integers(1, 4)).map(lambda p: f"{p[0]}#{p[1]}"))


@st.composite
def eventbridge_crons(draw: st.DrawFn) -> str:
    minute = draw(_field(list(range(60))))
    hour = draw(_field(list(range(24))))
    month = draw(_field(list(range(1, 13))))
    if draw(st.booleans()):
        days = f"{draw(_DAY_OF_MONTH)} {month} ?"
    else:
        days = f"? {month} {draw(_DAY_OF_WEEK)}"
    return f"cron({minute} {hour} {days} *)"


@st.composite
def standard_crons(draw: st.DrawFn) -> str:
    return " ".join([draw(_field(list(range(60)))), draw(_field(list(range(24)))),
                     draw(_field(list(range(1, 32)))), draw(_field(list(range(1, 13)))),
                     draw(_field(list(range(0, 7))))])


_INSTANTS = st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2100, 1, 1),
                         timezones=st.just(UTC))
_PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_PROPERTY
@given(expression=st.one_of(eventbridge_crons(), standard_crons()), now=_INSTANTS, fraction=st.floats(0, 1))
def test_next_fire_time_is_after_now_matches_and_is_the_earliest(expression: str, now: dt.datetime,
                                                                 fraction: float) -> None:
    schedule = parse(expression)
    following = schedule.next_after(now)
    if following is None:
        return   # e.g. 30 February: never (checked below for what does fire)
    assert following > now
    assert schedule.matches(following)
    # Earliest: any whole minute strictly between now and the tick does not match, and the
    # search from it lands on the same tick.
    span = (following - now).total_seconds()
    probe = (now + dt.timedelta(seconds=span * fraction)).replace(second=0, microsecond=0)
    if now < probe < following:
        assert not schedule.matches(probe)
        assert schedule.next_after(probe) == following


@_PROPERTY
@given(expression=st.one_of(eventbridge_crons(), standard_crons()), now=_INSTANTS)
def test_no_minute_before_the_next_fire_time_matches_within_a_day(expression: str, now: dt.datetime) -> None:
    schedule = parse(expression)
    following = schedule.next_after(now)
    minute = now.replace(second=0, microsecond=0) + schedules.MINUTE
    for _ in range(24 * 60):
        if following is not None and minute >= following:
            break
        assert not schedule.matches(minute), f"{expression} matches {minute} before {following}"
        minute += schedules.MINUTE


@_PROPERTY
@given(value=st.integers(1, 500), unit=st.sampled_from(["minute", "hour", "day"]), now=_INSTANTS)
def test_rate_fires_within_one_period_after_now(value: int, unit: str, now: dt.datetime) -> None:
    schedule = parse(f"rate({value} {unit}{'s' if value > 1 else ''})")
    following = schedule.next_after(now)
    assert following is not None
    assert now < following <= now + dt.timedelta(seconds=value * {"minute": 60, "hour": 3600, "day": 86400}[unit])
    assert schedule.matches(following)


# -- missed ticks -------------------------------------------------------------------------------

def test_a_scheduler_that_never_fired_fires_nothing_from_the_past() -> None:
    decision = plan(parse("rate(1 minute)"), last_fired=None, now=at("2026-03-01T10:00:30"))
    assert (decision.fire, decision.skipped, decision.next) == (None, 0, at("2026-03-01T10:01:00"))


def test_the_tick_that_is_due_fires() -> None:
    decision = plan(parse("rate(5 minutes)"), last_fired=at("2026-03-01T10:00:00"), now=at("2026-03-01T10:05:02"))
    assert (decision.fire, decision.skipped) == (at("2026-03-01T10:05:00"), 0)


def test_missed_ticks_fire_once_for_the_latest() -> None:
    decision = plan(parse("rate(5 minutes)"), last_fired=at("2026-03-01T10:00:00"), now=at("2026-03-01T10:32:00"))
    assert (decision.fire, decision.skipped, decision.next) == (at("2026-03-01T10:30:00"), 5,
                                                               at("2026-03-01T10:35:00"))


def test_a_missed_tick_older_than_the_catch_up_window_is_skipped() -> None:
    decision = plan(parse("cron(0 0 * * ? *)"), last_fired=at("2026-03-01T00:00:00"),
                    now=at("2026-03-03T05:00:00"), catch_up=dt.timedelta(hours=1))
    assert (decision.fire, decision.skipped) == (None, 2)


def test_missed_cron_ticks_within_the_window_fire_the_latest() -> None:
    decision = plan(parse("cron(0 * * * ? *)"), last_fired=at("2026-03-01T06:00:00"),
                    now=at("2026-03-01T09:20:00"), catch_up=dt.timedelta(hours=1))
    assert (decision.fire, decision.skipped) == (at("2026-03-01T09:00:00"), 2)


def test_counting_missed_ticks_is_bounded() -> None:
    decision = plan(parse("* * * * *"), last_fired=at("2000-01-01T00:00:00"), now=at("2026-03-01T00:00:30"),
                    max_counted=50)
    assert decision.fire == at("2026-03-01T00:00:00")
    assert decision.skipped == 49


# -- the event ----------------------------------------------------------------------------------

def test_scheduled_event_has_eventbridges_shape() -> None:
    event = schedules.scheduled_event(at("2026-03-01T12:00:00"), event_id="id-1",
                                      rule=schedules.rule_name("report", "default", 0), region="eu-west-1")
    assert event == {
        "version": "0", "id": "id-1", "detail-type": "Scheduled Event", "source": "aws.events",
        "account": "000000000000", "time": "2026-03-01T12:00:00Z", "region": "eu-west-1",
        "resources": ["arn:aws:events:eu-west-1:000000000000:rule/kfn-default-report-0"], "detail": {},
    }


def test_a_tick_has_one_id_whoever_fires_it() -> None:
    tick = at("2026-03-01T12:00:00")
    assert schedules.tick_id("report.default", 0, tick) == schedules.tick_id("report.default", 0, tick)
    assert schedules.tick_id("report.default", 0, tick) != schedules.tick_id("report.default", 1, tick)
    assert schedules.tick_id("report.default", 0, tick) != schedules.tick_id("report.default", 0,
                                                                             tick + schedules.MINUTE)
