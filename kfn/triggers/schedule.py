"""Schedule triggers: `spec.triggers: [{schedule: "rate(5 minutes)"}]` and cron expressions, each tick
an asynchronous invocation with EventBridge's Scheduled Event.

`ScheduleSource` plans every schedule trigger with `kfn.core.schedules.plan` from its
`TickRecord` (`kfn.triggers.ticks`): at each tick it stores the event through the sink under the
tick's id (`schedules.tick_id`: function, trigger index, tick), then records the tick. So:

- a tick fired twice (two schedulers overlapping during a hand-over, a scheduler that died
  between storing the event and recording the tick) has one id both times, and the store keeps
  one event (JetStream for its 2-minute duplicate window, SQLite while the event is queued);
- after downtime, the latest missed tick fires once, late, if it is at most `catch_up` (1 h) old;
  older missed ticks are skipped and counted (`schedules.plan`, Kubernetes CronJob's rule);
- a trigger seen for the first time (or whose expression changed) starts at its next tick: its
  record is created with "done up to now", so it fires nothing from the past — but a tick missed
  after that, while no scheduler ran, is caught up;
- a tick whose event could not be stored is not recorded, and tried again `retry` seconds later
  (late, still within the catch-up window).

Exactly one scheduler must fire: the source itself does not elect. It runs while its process
leads (`kfn.kube.lease.LeaseElection` in the operator on Kubernetes, `kfn.triggers.leader.FileLock`
in local mode) and is started afresh, with its records read again, each time leadership is won.
"""
from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import orjson

from kfn.core import schedules
from kfn.core.aiotasks import stop_tasks
from kfn.core.functions import Function, FunctionRef
from kfn.triggers.base import EventSink, triggers_of
from kfn.triggers.ticks import TickRecord, TickStore

logger = logging.getLogger(__name__)

KIND = "schedule"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class ScheduleTrigger:
    function: FunctionRef
    index: int                   # the trigger's place in spec.triggers
    expression: str
    schedule: schedules.Schedule

    @property
    def key(self) -> str:
        """Its tick record's key: NAMESPACE.NAME.INDEX."""
        return f"{self.function.namespace}.{self.function.name}.{self.index}"

    def event_id(self, tick: dt.datetime) -> str:
        return schedules.tick_id(str(self.function), self.index, tick)

    def event(self, tick: dt.datetime, *, region: str) -> bytes:
        rule = schedules.rule_name(self.function.name, self.function.namespace, self.index)
        return orjson.dumps(schedules.scheduled_event(tick, event_id=self.event_id(tick), rule=rule, region=region))


def schedule_triggers(functions: Sequence[Function]) -> dict[str, ScheduleTrigger]:
    """Every schedule trigger of `functions`, by record key."""
    out: dict[str, ScheduleTrigger] = {}
    for function in functions:
        for index, expression in triggers_of(function, KIND):
            trigger = ScheduleTrigger(function.ref, index, expression, schedules.parse(expression))
            out[trigger.key] = trigger
    return out


@dataclass
class ScheduleCounters:
    fired: int = 0          # ticks whose event was stored
    late: int = 0           # of those, fired after their time had passed (caught up)
    skipped: int = 0        # missed ticks not fired (older than the catch-up window, or superseded)
    errors: int = 0         # ticks that could not be stored or recorded (tried again)


class ScheduleSource:
    """The `schedule` trigger kind; see the module docstring.

    `clock` gives the time (UTC, aware). `speed` is how many seconds of that clock pass in one
    real second (1 but in tests that run a faster clock): waits are divided by it.
    """

    kind = KIND

    def __init__(self, ticks: TickStore, *, region: str,
                 catch_up: dt.timedelta = schedules.DEFAULT_CATCH_UP, clock: Callable[[], dt.datetime] = utcnow,
                 retry: float = 5.0, max_wait: float = 60.0, late_after: float = 1.0, speed: float = 1.0,
                 parallel: int = 32) -> None:
        self._ticks = ticks
        self.region = region
        self._catch_up = catch_up
        self._clock = clock
        self._retry = dt.timedelta(seconds=retry)
        self._max_wait = max_wait
        self._late_after = dt.timedelta(seconds=late_after)
        self._speed = speed
        self._parallel = asyncio.Semaphore(parallel)
        self.counters = ScheduleCounters()
        self._sink: EventSink | None = None
        self._triggers: dict[str, ScheduleTrigger] = {}
        self._records: dict[str, TickRecord] = {}
        self._next: dict[str, dt.datetime | None] = {}   # when each trigger is due next (None: never again)
        self._removed: set[str] = set()
        self._problems: dict[FunctionRef, str] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- TriggerSource ----------------------------------------------------------------------------

    async def start(self, sink: EventSink) -> None:
        self._sink = sink
        # Records are read afresh: another scheduler may have fired since this one last led.
        self._records.clear()
        self._next.clear()
        self._task = asyncio.create_task(self._run(), name="kfn-schedules")

    def update(self, functions: Sequence[Function]) -> None:
        fresh = schedule_triggers(functions)
        for key, trigger in fresh.items():
            if self._triggers.get(key) != trigger:
                self._next.pop(key, None)       # new or changed: plan it now
        self._removed |= set(self._triggers) - set(fresh)
        self._removed -= set(fresh)
        self._triggers = fresh
        self._wake.set()

    async def close(self) -> None:
        if self._task is not None:
            await stop_tasks([self._task], what="schedules")
            self._task = None

    def problems(self) -> dict[FunctionRef, str]:
        return dict(self._problems)

    # -- the scheduler ----------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                wake_at = await self.fire_due()
            except Exception:
                logger.exception("the scheduler failed; trying again")
                wake_at = self._clock() + self._retry
            now = self._clock()
            wait = self._max_wait if wake_at is None else (wake_at - now).total_seconds() / self._speed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=min(self._max_wait, max(0.01, wait)))

    async def fire_due(self) -> dt.datetime | None:
        """Fire what is due now (each due trigger at most once), forget removed triggers; returns
        when the next trigger is due (None: none ever again)."""
        now = self._clock()
        for key in list(self._removed):
            self._removed.discard(key)
            self._records.pop(key, None)
            self._next.pop(key, None)
            try:
                await self._ticks.delete(key)
            except Exception as e:  # noqa: BLE001 - a leftover record only matters if the trigger comes back
                logger.warning("could not forget the schedule %s: %s", key, e)
        due = [t for key, t in self._triggers.items() if key not in self._next or _due(self._next[key], now)]
        if due:
            results = await asyncio.gather(*(self._fire(trigger, now) for trigger in due), return_exceptions=True)
            for trigger, result in zip(due, results, strict=True):
                if isinstance(result, BaseException):
                    if isinstance(result, asyncio.CancelledError):
                        raise result
                    self.counters.errors += 1
                    self._problems[trigger.function] = f"schedule {trigger.expression!r}: {result}"
                    logger.warning("schedule %r of %s: %s; trying again in %s", trigger.expression,
                                   trigger.function, result, self._retry)
                    self._next[trigger.key] = now + self._retry
                else:
                    self._problems.pop(trigger.function, None)
        upcoming = [n for key, n in self._next.items() if key in self._triggers and n is not None]
        return min(upcoming, default=None)

    async def _fire(self, trigger: ScheduleTrigger, now: dt.datetime) -> None:
        async with self._parallel:
            record = self._records.get(trigger.key)
            if record is None:
                record = await self._ticks.get(trigger.key)
            if record is None or record.expression != trigger.expression:
                # Never fired: start at the next tick (nothing from the past).
                record = TickRecord(trigger.expression, now)
                await self._ticks.put(trigger.key, record)
                self._records[trigger.key] = record
                self._next[trigger.key] = trigger.schedule.next_after(now)
                return
            self._records[trigger.key] = record
            plan = schedules.plan(trigger.schedule, last_fired=record.through, now=now, catch_up=self._catch_up)
            if plan.skipped:
                self.counters.skipped += plan.skipped
                logger.warning("schedule %r of %s: %d missed tick(s) skipped (older than %s, or superseded)",
                               trigger.expression, trigger.function, plan.skipped, self._catch_up)
            through = plan.fire if plan.fire is not None else (now if plan.skipped else None)
            if plan.fire is not None:
                assert self._sink is not None
                await self._sink(trigger.function, trigger.event(plan.fire, region=self.region),
                                 trigger.event_id(plan.fire))
                self.counters.fired += 1
                if now - plan.fire > self._late_after:
                    self.counters.late += 1
                    logger.info("schedule %r of %s: fired the tick of %s late, at %s", trigger.expression,
                                trigger.function, plan.fire.isoformat(), now.isoformat())
            if through is not None:
                record = TickRecord(trigger.expression, through)
                await self._ticks.put(trigger.key, record)
                self._records[trigger.key] = record
            self._next[trigger.key] = plan.next


def _due(when: dt.datetime | None, now: dt.datetime) -> bool:
    return when is not None and when <= now
