"""X-Call-Id through the gateway on the SQLite store (issue 15, items 2 and 3): a caller's id is
its function's own, so another function's caller cannot suppress its events, and a retry after
the event ran is answered as the duplicate it is (202 with the same id) and does not run again."""
from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from kfn.core import schedules
from kfn.core.functions import FunctionRef
from kfn.events.delivery import DeliverySettings
from kfn.events.sqlite import SqliteStore
from kfn_gateway.asyncinvoke import AsyncDelivery
from tests.support.backend import ControlledFunctions, FakeBackend
from tests.support.functions import make_function
from tests.support.gateway import RunningGateway, running_gateway
from tests.support.waiting import eventually

PUBLIC = FunctionRef("default", "public")


@dataclass
class Setup:
    gw: RunningGateway
    delivery: AsyncDelivery
    functions: ControlledFunctions
    store: SqliteStore

    async def post(self, name: str, path: str, call_id: str) -> tuple[int, dict[str, str]]:
        status, body, _ = await self.gw.json("POST", f"/async-function/{name}{path}", data=b"{}",
                                             headers={"X-Call-Id": call_id})
        return status, body

    def ran(self) -> list[str]:
        return [path for _, path in self.functions.finished]


@asynccontextmanager
async def delivering(tmp_path: Path) -> AsyncIterator[Setup]:
    store = SqliteStore(tmp_path / "events.sqlite3", poll=0.05)
    await store.start()
    functions = ControlledFunctions()
    backend = FakeBackend(make_function("public"), make_function("billing", namespace="team-b"), fn=functions,
                          in_process=True)
    try:
        async with backend, running_gateway(backend, events=store) as gw:
            delivery = AsyncDelivery(gw.gateway, store, settings=DeliverySettings(poll=0.05, stats_interval=0.05))
            await delivery.start()
            try:
                yield Setup(gw, delivery, functions, store)
            finally:
                await delivery.close()
    finally:
        await store.close()


async def test_an_x_call_id_another_functions_caller_used_first_does_not_suppress_the_event(tmp_path: Path) -> None:
    async with delivering(tmp_path) as setup:
        assert await setup.post("public", "/attacker", "invoice-1001") == (202, {"requestId": "invoice-1001"})
        assert await setup.post("billing.team-b", "/victim", "invoice-1001") == (202, {"requestId": "invoice-1001"})
        await eventually(lambda: setup.delivery.engine.counters.delivered >= 2)
        assert sorted(setup.ran()) == ["/attacker", "/victim"]


async def test_an_x_call_id_retried_after_its_event_ran_is_202_with_the_same_id_and_does_not_run_again(
        tmp_path: Path) -> None:
    async with delivering(tmp_path) as setup:
        assert await setup.post("public", "/first", "order-42") == (202, {"requestId": "order-42"})
        await eventually(lambda: setup.delivery.engine.counters.delivered == 1)
        assert await setup.post("public", "/retry", "order-42") == (202, {"requestId": "order-42"})
        assert await setup.post("public", "/next", "order-43") == (202, {"requestId": "order-43"})
        await eventually(lambda: "/next" in setup.ran())
        assert setup.ran() == ["/first", "/next"]
        assert (await setup.store.stats([PUBLIC]))[PUBLIC].depth == 0


async def test_a_caller_sending_the_id_of_a_coming_schedule_tick_does_not_suppress_the_tick(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "events.sqlite3")
    await store.start()
    backend = FakeBackend(make_function("public"))
    # Tick ids are derived (anyone can compute the next one), X-Call-Ids chosen: kept apart.
    tick = schedules.tick_id(str(PUBLIC), 0, dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    try:
        async with backend, running_gateway(backend, events=store) as gw:
            status, body, _ = await gw.json("POST", "/async-function/public", data=b"{}", headers={"X-Call-Id": tick})
            assert (status, body) == (202, {"requestId": tick})
        scheduled = await store.accept(PUBLIC, b'{"source": "aws.events"}', tick)   # as the scheduler does
        assert not scheduled.duplicate
        assert (await store.stats([PUBLIC]))[PUBLIC].depth == 2
    finally:
        await store.close()
