"""Schedule expressions, their fire times and the event a tick delivers: pure, all in UTC.

Three syntaxes, as `spec.triggers[].schedule` takes them:

- EventBridge's `rate(N unit)`: unit minute(s) | hour(s) | day(s), singular exactly when N is 1.
  EventBridge counts from when the rule was created; kfn counts from the Unix epoch instead, so
  every replica, and a restarted leader, agrees on the ticks without stored state:
  `rate(5 minutes)` fires at :00, :05, :10 …, `rate(1 day)` at 00:00 UTC, `rate(7 hours)` at
  multiples of 7 h since 1970-01-01T00:00Z.
- EventBridge's `cron(minutes hours day-of-month month day-of-week year)`: six fields; `,` `-`
  `*` `/` everywhere, ranges may wrap (`22-2`), months JAN–DEC, days of week 1–7 or SUN–SAT
  (1 = Sunday); exactly one of day-of-month and day-of-week is `?`; day-of-month takes `L` (last
  day), `nW` (the weekday nearest day n, within the month) and `LW` (the last weekday);
  day-of-week takes `L` (Saturday), `nL` (the month's last such day) and `n#k` (its k-th, the
  only entry of the field); years 1970–2199.
- Standard five-field cron (`minute hour day-of-month month day-of-week`, 0 or 7 = Sunday,
  names, `@hourly` …): as Vixie cron, when both day fields are restricted a day matching
  either one fires.

Ticks fall on whole minutes. Missed ticks (the scheduler was down when they were due) follow
`plan`: the most recent missed tick fires once, late, if it is at most `catch_up` old (default
`DEFAULT_CATCH_UP`); older ones are skipped and counted. That is Kubernetes CronJob's rule
(`startingDeadlineSeconds`, one run for any number of missed schedules) and EventBridge
Scheduler's flexible window, and it never floods a function with a backlog of stale ticks. A
scheduler that has never fired a trigger starts at the next tick, firing nothing from the past.

Each tick's event is EventBridge's Scheduled Event; its `id` is derived from the function, the
trigger and the tick (`tick_id`), so a tick fired twice (a leader handing over mid-tick) is the
same invocation id twice, which the async store stores once.
"""
from __future__ import annotations

import calendar
import datetime as dt
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

from kfn_runtime import awslambda

UTC: Final = dt.UTC
EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=UTC)
MINUTE: Final = dt.timedelta(minutes=1)
DEFAULT_CATCH_UP: Final = dt.timedelta(hours=1)
# EventBridge's year range; a standard cron looks this far ahead (a 29 February that is a Monday
# recurs within 28 years, so nothing that ever fires again needs more).
MAX_YEAR: Final = 2199
_STANDARD_HORIZON_YEARS: Final = 60
# The namespace of tick ids (uuid5): fixed, so every replica derives the same id for a tick.
_TICK_NAMESPACE: Final = uuid.UUID("6f1d9d5c-4b0e-4a51-9a57-2f3c0f4d7b11")

_MONTHS = {name: i for i, name in enumerate(
    ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"], start=1)}
_DAYS = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]
_RATE = re.compile(r"^rate\(\s*(\d+)\s+([a-z]+)\s*\)$")
_CRON = re.compile(r"^cron\((.*)\)$")
_RATE_UNITS = {"minute": 60, "hour": 3600, "day": 86400}
_MACROS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0",
           "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *"}


class InvalidSchedule(ValueError):
    """An expression kfn cannot read; the message says what is wrong with it."""


@dataclass(frozen=True)
class Rate:
    """`rate(N unit)`: every `seconds`, counted from the Unix epoch."""

    expression: str
    seconds: int

    def next_after(self, instant: dt.datetime) -> dt.datetime | None:
        elapsed = (_utc(instant) - EPOCH).total_seconds()
        ticks = int(elapsed // self.seconds) + 1
        return EPOCH + dt.timedelta(seconds=ticks * self.seconds)

    def matches(self, instant: dt.datetime) -> bool:
        instant = _utc(instant)
        return (instant - EPOCH).total_seconds() % self.seconds == 0


@dataclass(frozen=True)
class _DayOfMonth:
    days: frozenset[int]              # plain days 1–31
    last: bool = False                # L
    nearest_weekday: int | None = None  # nW
    last_weekday: bool = False        # LW

    def matches(self, day: dt.date) -> bool:
        length = calendar.monthrange(day.year, day.month)[1]
        if day.day in self.days:
            return True
        if self.last and day.day == length:
            return True
        if self.last_weekday:
            last = dt.date(day.year, day.month, length)
            return day == _nearest_weekday(last)
        if self.nearest_weekday is not None:
            target = min(self.nearest_weekday, length)
            if target == self.nearest_weekday:
                return day == _nearest_weekday(dt.date(day.year, day.month, target))
        return False


@dataclass(frozen=True)
class _DayOfWeek:
    days: frozenset[int]                  # 0 = Sunday … 6 = Saturday
    last_of_month: int | None = None      # nL: the last such day of the month
    nth: tuple[int, int] | None = None    # n#k: the k-th such day of the month

    def matches(self, day: dt.date) -> bool:
        weekday = _sunday_first(day)
        if weekday in self.days:
            return True
        length = calendar.monthrange(day.year, day.month)[1]
        if self.last_of_month is not None and weekday == self.last_of_month and day.day + 7 > length:
            return True
        if self.nth is not None:
            nth_day, k = self.nth
            return weekday == nth_day and (day.day - 1) // 7 + 1 == k
        return False


@dataclass(frozen=True)
class Cron:
    """A cron expression (EventBridge's six fields, or standard cron's five)."""

    expression: str
    minutes: frozenset[int]
    hours: frozenset[int]
    months: frozenset[int]
    years: frozenset[int] | None            # None: every year
    day_of_month: _DayOfMonth | None        # None: not restricted (`*` / `?`)
    day_of_week: _DayOfWeek | None
    either_day: bool = False                # standard cron with both restricted: a day matching one fires

    def _day_matches(self, day: dt.date) -> bool:
        dom, dow = self.day_of_month, self.day_of_week
        if dom is None and dow is None:
            return True
        if dom is None:
            return dow is not None and dow.matches(day)
        if dow is None:
            return dom.matches(day)
        if self.either_day:
            return dom.matches(day) or dow.matches(day)
        return dom.matches(day) and dow.matches(day)

    def matches(self, instant: dt.datetime) -> bool:
        instant = _utc(instant)
        return (instant.second == 0 and instant.microsecond == 0 and instant.minute in self.minutes
                and instant.hour in self.hours and instant.month in self.months
                and (self.years is None or instant.year in self.years) and self._day_matches(instant.date()))

    def next_after(self, instant: dt.datetime) -> dt.datetime | None:
        """The first tick strictly after `instant`, or None if the expression never fires again."""
        start = _utc(instant).replace(second=0, microsecond=0) + MINUTE
        last_year = MAX_YEAR if self.years is not None else start.year + _STANDARD_HORIZON_YEARS
        hours = sorted(self.hours)
        minutes = sorted(self.minutes)
        for year in range(start.year, last_year + 1):
            if self.years is not None and year not in self.years:
                continue
            for month in sorted(self.months):
                if (year, month) < (start.year, start.month):
                    continue
                first_day = start.day if (year, month) == (start.year, start.month) else 1
                for day_number in range(first_day, calendar.monthrange(year, month)[1] + 1):
                    day = dt.date(year, month, day_number)
                    if not self._day_matches(day):
                        continue
                    found = _first_time(day, hours, minutes, start)
                    if found is not None:
                        return found
        return None


Schedule = Rate | Cron


def parse(expression: str) -> Schedule:
    """A schedule from `rate(...)`, `cron(...)` (EventBridge) or a five-field cron line."""
    if not isinstance(expression, str):
        raise InvalidSchedule(f"must be a string (got {type(expression).__name__})")
    text = expression.strip()
    if not text:
        raise InvalidSchedule("must not be empty")
    rate = _RATE.fullmatch(text)
    if rate:
        return _parse_rate(text, int(rate.group(1)), rate.group(2))
    if text.startswith("rate"):
        raise InvalidSchedule(f"must be rate(N unit), e.g. rate(5 minutes) (got {text!r})")
    cron = _CRON.fullmatch(text)
    if cron:
        return _parse_eventbridge(text, cron.group(1).split())
    if text.startswith("cron"):
        raise InvalidSchedule(f"must be cron(minutes hours day-of-month month day-of-week year) (got {text!r})")
    if text.lower() in _MACROS:
        return _parse_standard(text, _MACROS[text.lower()].split())
    fields = text.split()
    if len(fields) != 5:
        raise InvalidSchedule(
            f"must be rate(N unit), cron(six fields) or a five-field cron line (got {len(fields)} fields in {text!r})")
    return _parse_standard(text, fields)


def next_fire_times(schedule: Schedule, after: dt.datetime, count: int) -> list[dt.datetime]:
    """The next `count` ticks strictly after `after` (fewer if the schedule ends)."""
    out: list[dt.datetime] = []
    current = after
    while len(out) < count:
        following = schedule.next_after(current)
        if following is None:
            break
        out.append(following)
        current = following
    return out


@dataclass(frozen=True)
class Plan:
    """What a scheduler does at `now`: fire `fire` (a tick, maybe a late one) or nothing, having
    skipped `skipped` missed ticks; then sleep until `next`."""

    fire: dt.datetime | None
    skipped: int
    next: dt.datetime | None


def plan(schedule: Schedule, *, last_fired: dt.datetime | None, now: dt.datetime,
         catch_up: dt.timedelta = DEFAULT_CATCH_UP, max_counted: int = 1000) -> Plan:
    """The missed-tick policy (see the module docstring), as one decision.

    `last_fired` is the latest tick already fired, or the instant the scheduler started if it
    never fired (None: nothing is due). The ticks in (last_fired, now] are due: the latest fires
    if it is at most `catch_up` before `now`; the others are skipped (counted up to
    `max_counted`, so a years-old `last_fired` costs bounded work).
    """
    now = _utc(now)
    following = schedule.next_after(now)
    if last_fired is None:
        return Plan(fire=None, skipped=0, next=following)
    last_fired = _utc(last_fired)
    due = _count_between(schedule, last_fired, now, max_counted)
    if due == 0:
        return Plan(fire=None, skipped=0, next=following)
    # The latest due tick within the catch-up window, if any: search only that window.
    latest: dt.datetime | None = None
    current = max(last_fired, now - catch_up - dt.timedelta(microseconds=1))
    while True:
        tick = schedule.next_after(current)
        if tick is None or tick > now:
            break
        latest = tick
        current = tick
    if latest is None:
        return Plan(fire=None, skipped=due, next=following)
    return Plan(fire=latest, skipped=due - 1, next=following)


def _count_between(schedule: Schedule, after: dt.datetime, until: dt.datetime, limit: int) -> int:
    """Ticks in (after, until], at most `limit`."""
    if isinstance(schedule, Rate):
        first = schedule.next_after(after)
        if first is None or first > until:
            return 0
        return min(limit, int((until - first).total_seconds() // schedule.seconds) + 1)
    count = 0
    current = after
    while count < limit:
        tick = schedule.next_after(current)
        if tick is None or tick > until:
            break
        count += 1
        current = tick
    return count


def tick_id(function: str, trigger: int, tick: dt.datetime) -> str:
    """The invocation id of one tick of one trigger of one function (`name.namespace`)."""
    return str(uuid.uuid5(_TICK_NAMESPACE, f"{function}/{trigger}/{_iso(tick)}"))


def rule_name(function_name: str, namespace: str, trigger: int) -> str:
    """The name kfn gives a function's schedule, as EventBridge names rules."""
    return f"kfn-{namespace}-{function_name}-{trigger}"


def scheduled_event(tick: dt.datetime, *, event_id: str, rule: str, region: str,
                    account: str = awslambda.DEFAULT_ACCOUNT) -> dict[str, Any]:
    """EventBridge's Scheduled Event for one tick (what a Lambda function gets from a schedule)."""
    return {
        "version": "0",
        "id": event_id,
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": account,
        "time": _iso(tick),
        "region": region,
        "resources": [f"arn:aws:events:{region}:{account}:rule/{rule}"],
        "detail": {},
    }


# -- parsing -----------------------------------------------------------------------------------


def _parse_rate(text: str, value: int, unit: str) -> Rate:
    singular = unit[:-1] if unit.endswith("s") else unit
    if singular not in _RATE_UNITS:
        raise InvalidSchedule(f"the unit of a rate must be minute(s), hour(s) or day(s) (got {unit!r} in {text!r})")
    if value < 1:
        raise InvalidSchedule(f"the value of a rate must be a positive integer (got {value} in {text!r})")
    if value == 1 and unit != singular:
        raise InvalidSchedule(f"a rate of 1 takes the singular unit, e.g. rate(1 {singular}) (got {text!r})")
    if value > 1 and unit == singular:
        raise InvalidSchedule(f"a rate above 1 takes the plural unit, e.g. rate({value} {singular}s) (got {text!r})")
    return Rate(text, value * _RATE_UNITS[singular])


def _parse_eventbridge(text: str, fields: list[str]) -> Cron:
    if len(fields) != 6:
        raise InvalidSchedule(f"cron() takes six fields: minutes hours day-of-month month day-of-week year "
                              f"(got {len(fields)} in {text!r})")
    minute, hour, dom, month, dow, year = (f.upper() for f in fields)
    if (dom == "?") == (dow == "?"):
        raise InvalidSchedule(f"exactly one of day-of-month and day-of-week must be '?' (got {dom!r} and {dow!r} "
                              f"in {text!r})")
    where = f" in {text!r}"
    return Cron(
        expression=text,
        minutes=_values(minute, 0, 59, "minutes", where),
        hours=_values(hour, 0, 23, "hours", where),
        months=_values(month, 1, 12, "month", where, names=_MONTHS),
        years=None if year == "*" else _values(year, 1970, MAX_YEAR, "year", where, wrap=False),
        day_of_month=None if dom in ("?", "*") else _eventbridge_dom(dom, where),
        day_of_week=None if dow in ("?", "*") else _eventbridge_dow(dow, where),
    )


def _parse_standard(text: str, fields: list[str]) -> Cron:
    minute, hour, dom, month, dow = (f.upper() for f in fields)
    where = f" in {text!r}"
    day_names = {name: i for i, name in enumerate(_DAYS)}
    dom_set = None if dom == "*" else _DayOfMonth(_values(dom, 1, 31, "day-of-month", where))
    dow_set = None
    if dow != "*":
        days = _values(dow, 0, 7, "day-of-week", where, names=day_names, wrap=False)
        dow_set = _DayOfWeek(frozenset(d % 7 for d in days))
    return Cron(
        expression=text,
        minutes=_values(minute, 0, 59, "minute", where),
        hours=_values(hour, 0, 23, "hour", where),
        months=_values(month, 1, 12, "month", where, names=_MONTHS),
        years=None,
        day_of_month=dom_set,
        day_of_week=dow_set,
        either_day=dom_set is not None and dow_set is not None,
    )


def _eventbridge_dom(field: str, where: str) -> _DayOfMonth:
    if field == "L":
        return _DayOfMonth(frozenset(), last=True)
    if field == "LW":
        return _DayOfMonth(frozenset(), last_weekday=True)
    match = re.fullmatch(r"(\d+)W", field)
    if match:
        day = int(match.group(1))
        if not 1 <= day <= 31:
            raise InvalidSchedule(f"day-of-month {field!r}: the day must be 1-31{where}")
        return _DayOfMonth(frozenset(), nearest_weekday=day)
    if "L" in field or "W" in field:
        raise InvalidSchedule(f"day-of-month takes L, LW or nW alone, not in a list or range (got {field!r}){where}")
    return _DayOfMonth(_values(field, 1, 31, "day-of-month", where))


def _eventbridge_dow(field: str, where: str) -> _DayOfWeek:
    names = {name: i + 1 for i, name in enumerate(_DAYS)}   # EventBridge: 1 = Sunday
    if field == "L":
        return _DayOfWeek(frozenset({6}))
    if "#" in field:
        match = re.fullmatch(r"([0-9A-Z]+)#(\d+)", field)
        if not match:
            raise InvalidSchedule(f"day-of-week {field!r}: '#' takes one day and a week, e.g. 3#2, "
                                  f"and nothing else in the field{where}")
        day = _value(match.group(1), 1, 7, "day-of-week", where, names)
        k = int(match.group(2))
        if not 1 <= k <= 5:
            raise InvalidSchedule(f"day-of-week {field!r}: the week after '#' must be 1-5{where}")
        return _DayOfWeek(frozenset(), nth=(day - 1, k))
    match = re.fullmatch(r"([0-9A-Z]+)L", field)
    if match:
        day = _value(match.group(1), 1, 7, "day-of-week", where, names)
        return _DayOfWeek(frozenset(), last_of_month=day - 1)
    if "L" in field:   # no day's name has an L
        raise InvalidSchedule(f"day-of-week takes L or nL alone, not in a list or range (got {field!r}){where}")
    return _DayOfWeek(frozenset(d - 1 for d in _values(field, 1, 7, "day-of-week", where, names=names)))


def _values(field: str, low: int, high: int, what: str, where: str, *, names: dict[str, int] | None = None,
            wrap: bool = True) -> frozenset[int]:
    if not field:
        raise InvalidSchedule(f"{what} must not be empty{where}")
    out: set[int] = set()
    for part in field.split(","):
        out.update(_part(part, low, high, what, where, names, wrap))
    return frozenset(out)


def _part(part: str, low: int, high: int, what: str, where: str, names: dict[str, int] | None,
          wrap: bool) -> Iterator[int]:
    base, slash, step_text = part.partition("/")
    step = 1
    if slash:
        if not step_text.isdigit() or int(step_text) < 1:
            raise InvalidSchedule(f"{what} {part!r}: the step after '/' must be a positive integer{where}")
        step = int(step_text)
    if base == "*":
        start, end = low, high
    elif "-" in base:
        first, _, last = base.partition("-")
        start = _value(first, low, high, what, where, names)
        end = _value(last, low, high, what, where, names)
    else:
        start = _value(base, low, high, what, where, names)
        # `5/15` means from 5 on, every 15; a bare value is just itself.
        end = high if slash else start
    if start <= end:
        yield from range(start, end + 1, step)
        return
    if not wrap:
        raise InvalidSchedule(f"{what} {part!r}: the range must not run backwards{where}")
    # A wrapping range, such as hours 22-2: 22, 23, 0, 1, 2.
    span = high - low + 1
    for offset in range(0, (end - start) % span + 1, step):
        yield low + (start - low + offset) % span


def _value(text: str, low: int, high: int, what: str, where: str, names: dict[str, int] | None) -> int:
    if names is not None and text in names:
        return names[text]
    if not text.isdigit():
        raise InvalidSchedule(f"{what}: {text!r} is not a number{' or a name' if names else ''}{where}")
    value = int(text)
    if not low <= value <= high:
        raise InvalidSchedule(f"{what}: {value} is out of range {low}-{high}{where}")
    return value


# -- time helpers ------------------------------------------------------------------------------


def _utc(instant: dt.datetime) -> dt.datetime:
    if instant.tzinfo is None:
        raise ValueError("schedules work on aware datetimes (UTC)")
    return instant.astimezone(UTC)


def _iso(instant: dt.datetime) -> str:
    return _utc(instant).strftime("%Y-%m-%dT%H:%M:%SZ")


def _sunday_first(day: dt.date) -> int:
    return (day.weekday() + 1) % 7


def _nearest_weekday(day: dt.date) -> dt.date:
    """The weekday nearest `day` within its month (Quartz's W): Saturday → Friday, Sunday → Monday,
    except across the month's edges (the 1st on a Saturday → Monday the 3rd, and so on)."""
    length = calendar.monthrange(day.year, day.month)[1]
    weekday = day.weekday()   # Monday = 0
    if weekday == 5:
        return day - dt.timedelta(days=1) if day.day > 1 else day + dt.timedelta(days=2)
    if weekday == 6:
        return day + dt.timedelta(days=1) if day.day < length else day - dt.timedelta(days=2)
    return day


def _first_time(day: dt.date, hours: list[int], minutes: list[int], start: dt.datetime) -> dt.datetime | None:
    for hour in hours:
        for minute in minutes:
            candidate = dt.datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC)
            if candidate >= start:
                return candidate
    return None
