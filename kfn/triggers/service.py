"""The triggers of one process, wired: what every replica runs, and what only the leader runs.

`TriggerService(functions, sink, settings, everywhere=..., leader_only=..., election=...)`:

- the kinds in `everywhere` run in this process from `start` to `close` (NATS triggers: every
  gateway replica, sharing JetStream consumers and queue groups);
- the kinds in `leader_only` run while `election` says this process leads (schedules: one
  scheduler fires each tick), started afresh each time it wins — `kfn.kube.lease.LeaseElection`
  on Kubernetes, `kfn.triggers.leader.FileLock` in local mode; no election: always.

Both follow `functions` (an instance backend) and store events through `sink`.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

from kfn.core.aiotasks import stop_tasks
from kfn.core.functions import FunctionRef
from kfn.triggers.base import EventSink, FunctionSource, Triggers
from kfn.triggers.registry import TriggerSettings, build

logger = logging.getLogger(__name__)


class Election(Protocol):
    async def run(self, lead: Callable[[], Awaitable[None]]) -> None:
        """Until cancelled: run `lead()` while this process leads, cancel it when it stops leading."""


class TriggerService:
    def __init__(self, functions: FunctionSource, sink: EventSink, settings: TriggerSettings, *,
                 everywhere: Iterable[str] = (), leader_only: Iterable[str] = (),
                 election: Election | None = None) -> None:
        self._functions = functions
        self._sink = sink
        self._settings = settings
        self._everywhere = tuple(everywhere)
        self._leader_only = tuple(leader_only)
        self._election = election
        self.shared: Triggers | None = None
        self.led: Triggers | None = None          # while leading
        self.leading = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start the shared kinds now and campaign for the leader's; returns at once."""
        if self._everywhere:
            self.shared = build(self._everywhere, self._settings)
            await self.shared.start(self._sink)
            self.shared.follow(self._functions)
        if self._leader_only:
            run = self._lead() if self._election is None else self._election.run(self._lead)
            self._task = asyncio.create_task(run, name="kfn-triggers-leader")

    async def _lead(self) -> None:
        ticks = self._settings.ticks
        triggers = build(self._leader_only, self._settings)
        try:
            if ticks is not None:
                await ticks.start()
            await triggers.start(self._sink)
            triggers.follow(self._functions)
            self.led = triggers
            self.leading.set()
            await asyncio.Event().wait()
        finally:
            self.leading.clear()
            self.led = None
            await triggers.close()
            if ticks is not None:
                with contextlib.suppress(Exception):
                    await ticks.close()

    async def close(self) -> None:
        if self._task is not None:
            await stop_tasks([self._task], what="leader triggers")
            self._task = None
        if self.shared is not None:
            await self.shared.close()
            self.shared = None

    def problems(self) -> dict[FunctionRef, list[str]]:
        out: dict[FunctionRef, list[str]] = {}
        for triggers in (self.shared, self.led):
            if triggers is not None:
                for ref, problems in triggers.problems().items():
                    out.setdefault(ref, []).extend(problems)
        return out
