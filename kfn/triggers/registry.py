"""The trigger kinds and their sources, keyed by `kfn.core.triggerspec.TRIGGER_KINDS`.

A kind's factory builds its source from the `TriggerSettings` of a process, or says why it
cannot run there (`Unavailable`, e.g. NATS triggers without a NATS server). A new kind of
trigger adds one entry here (and a field to `kfn.core.triggerspec.Trigger`); the test of this
registry checks both lists name the same kinds.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from kfn.core import schedules
from kfn.triggers.base import Triggers, TriggerSource
from kfn.triggers.nats import NatsSubjectSource
from kfn.triggers.schedule import ScheduleSource
from kfn.triggers.ticks import SqliteTicks, TickStore


class Unavailable(Exception):
    """This kind cannot run in this process; the message says why (shown per function)."""


@dataclass(frozen=True)
class TriggerSettings:
    region: str                            # the Scheduled Event's region
    nats_url: str | None = None            # the NATS server of `nats` triggers
    ticks: TickStore | None = None         # where schedules record their ticks
    catch_up: dt.timedelta = schedules.DEFAULT_CATCH_UP
    nats_ack_wait: float = 30.0


def _schedule(settings: TriggerSettings) -> TriggerSource:
    if settings.ticks is None:
        raise Unavailable("no tick store to record fired ticks in")
    return ScheduleSource(settings.ticks, region=settings.region, catch_up=settings.catch_up)


def _nats(settings: TriggerSettings) -> TriggerSource:
    if not settings.nats_url:
        raise Unavailable("no NATS server configured (KFN_NATS_URL)")
    return NatsSubjectSource(settings.nats_url, ack_wait=settings.nats_ack_wait)


SOURCES: dict[str, Callable[[TriggerSettings], TriggerSource]] = {
    "schedule": _schedule,
    "nats": _nats,
}


def build(kinds: Iterable[str], settings: TriggerSettings) -> Triggers:
    """The sources of `kinds` for one process; a kind that cannot run is reported per function."""
    sources: list[TriggerSource] = []
    missing: dict[str, str] = {}
    for kind in kinds:
        try:
            sources.append(SOURCES[kind](settings))
        except Unavailable as e:
            missing[kind] = str(e)
    return Triggers(sources, missing=missing)


def local_settings(database: Path, *, region: str, nats_url: str | None = None) -> TriggerSettings:
    """Local mode's: ticks in a table of `database` (the work directory's async-events database,
    `kfn.events.sqlite.FILE_NAME`), NATS triggers only with a server to take them from."""
    return TriggerSettings(nats_url=nats_url, ticks=SqliteTicks(database), region=region)
