"""The queues of deleted functions, removed: collect, decide (`kfn.core.orphans`), act.

`Orphans` runs beside the delivery engine of a process that delivers (each gateway replica, `kfn
local`). Every `OrphanSettings.period` seconds it reads which functions have stored events
(`EventStore.queued`: one query or request), the in-flight count of those its process does not
know (`EventStore.stats` and `EventStore.newest` for those only), decides with `kfn.core.orphans.decide` (the rule: a
function gone for `grace` seconds loses its queue; see there), and removes the queues it names
(`EventStore.discard`). Each removal is counted (`discarded`, exported on the gateway's /metrics
as kfn_async_events_discarded_total{function,namespace,reason="function_deleted"}) and logged once
with its count; then `removed` is awaited (the engine's queue statistics read again, so the
queue gauges the autoscaler reads drop the function at once).

`known()` returning None means some functions cannot be read now (`kfn local` with a manifest
broken since it was first read): that look is skipped, no function taken for gone.

Every gateway replica runs one: all of them see a deletion, the removal is idempotent, and each
counts only what its own removal took, so the counters summed over replicas are the events
removed.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass

from kfn.core import orphans
from kfn.core.aiotasks import stop_tasks
from kfn.core.functions import FunctionRef
from kfn.events.store import EventStore, StoreUnavailable

logger = logging.getLogger(__name__)

# The shortest period between two looks at the queues, however short the grace.
MIN_PERIOD = 1.0


@dataclass(frozen=True)
class OrphanSettings:
    grace: float = orphans.DEFAULT_GRACE   # a function gone this long loses its queued events
    interval: float = 15.0                 # how often the queues are looked at (at most)
    namespaces: tuple[str, ...] = ()       # the namespaces this process serves (empty: all)

    @property
    def period(self) -> float:
        """How often the queues are looked at: `interval`, or half the grace when that is shorter
        (at least `MIN_PERIOD`), so a queue goes at most half a grace late."""
        return min(self.interval, max(MIN_PERIOD, self.grace / 2))


class Orphans:
    """Removes the queued events of functions gone from `known()` (see the module docstring)."""

    def __init__(self, store: EventStore, known: Callable[[], Collection[FunctionRef] | None], *,
                 settings: OrphanSettings = OrphanSettings(), removed: Callable[[], Awaitable[object]] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.settings = settings
        self._known = known
        self._removed = removed
        self._clock = clock
        self._missing_since: dict[FunctionRef, float] = {}
        # Per function found gone, its newest event at the last look (`EventStore.newest`).
        self._marks: dict[FunctionRef, int] = {}
        self._unsure = False
        # Events this process removed unrun, per function and reason (kfn_async_events_discarded_total).
        self.discarded: dict[tuple[FunctionRef, str], int] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Look at the queues every `settings.period` seconds, in the background, until `close`."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name="kfn-async-orphans")

    async def close(self) -> None:
        """Stop looking; a removal under way is cancelled (the store applies it whole or not at all)."""
        task, self._task = self._task, None
        if task is not None:
            await stop_tasks([task], what="the removal of deleted functions' queues")

    async def run(self) -> None:
        """Sweep every `settings.period` seconds until cancelled; a sweep that fails is logged and
        tried again at the next."""
        while True:
            await asyncio.sleep(self.settings.period)
            try:
                await self.sweep()
            except StoreUnavailable as e:
                logger.warning("could not look for the queues of deleted functions: %s", e)
            except Exception:
                logger.exception("could not look for the queues of deleted functions")

    async def sweep(self) -> dict[FunctionRef, int]:
        """One look: remove the queues `kfn.core.orphans.decide` names; returns the events removed
        per function (those whose removal took some). Raises StoreUnavailable when the queues
        cannot be read; a removal that fails is logged and tried again at the next sweep."""
        seen = self._known()
        if seen is None:
            # Not every function can be read now (a manifest broken since it was first read):
            # none is taken for gone, and no grace runs, until all can be.
            if not self._unsure:
                logger.warning("not removing the queues of deleted functions while some functions cannot be read")
            self._unsure = True
            return {}
        self._unsure = False
        known = frozenset(seen)
        queued = await self.store.queued()
        unknown = [ref for ref in queued if ref not in known]
        flying = {ref: stats.in_flight for ref, stats in (await self.store.stats(unknown)).items()} if unknown else {}
        marks = {ref: await self.store.newest(ref) for ref in unknown}
        decision = orphans.decide(known=known, in_flight={ref: flying.get(ref, 0) for ref in queued},
                                  missing_since=self._missing_since, now=self._clock(),
                                  grace=self.settings.grace, namespaces=self.settings.namespaces)
        self._missing_since = dict(decision.missing_since)
        # Only what was stored by the previous look goes: an event accepted since (by a replica
        # that already sees the function recreated, while this one does not yet) is kept, and
        # goes at the next look if the function is still gone then.
        previous, self._marks = self._marks, {ref: marks[ref] for ref in decision.missing_since if ref in marks}
        removed: dict[FunctionRef, int] = {}
        for ref in sorted(decision.remove):
            now_known = self._known()
            if now_known is None or ref in frozenset(now_known):   # known again (or unsure) while this sweep ran
                continue
            try:
                count = await self.store.discard(ref, through=previous.get(ref, marks.get(ref)))
            except StoreUnavailable as e:
                logger.warning("could not remove the queued async events of %s, a deleted function: %s", ref, e)
                continue
            if count:
                removed[ref] = count
                key = (ref, orphans.REASON_FUNCTION_DELETED)
                self.discarded[key] = self.discarded.get(key, 0) + count
                logger.warning("function %s is gone (for %gs at least): removed its %d queued async event(s) "
                               "unrun", ref, self.settings.grace, count)
        if removed and self._removed is not None:
            with contextlib.suppress(StoreUnavailable):
                await self._removed()
        return removed
