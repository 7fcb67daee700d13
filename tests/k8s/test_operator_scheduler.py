"""The operator's scheduler: one leader per Lease, Functions from the emulated API, tick records and events
on a real nats-server (the ticks themselves, over a clock, are tested in tests/unit and tests/e2e)."""
from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kfn.core.functions import FunctionRef
from kfn.kube import KubernetesBackend
from kfn.triggers.ticks import KvTicks
from kfn_operator.config import OperatorConfig
from kfn_operator.scheduler import OperatorScheduler
from tests.support import kube
from tests.support.functions import function_manifest
from tests.support.kube import create_function
from tests.support.nats import NatsServer, nats_server_binary
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def nats_url(tmp_path: Path) -> Iterator[str]:
    nats_server_binary()
    server = NatsServer(tmp_path)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def config(identity: str, nats_url: str | None, **kwargs: Any) -> OperatorConfig:
    return OperatorConfig(identity=identity, lease_duration=3, lease_namespace="kfn-system", nats_url=nats_url,
                          **kwargs)


async def test_one_replica_schedules_and_the_other_takes_over(cluster, api, nats_url) -> None:
    await create_function(cluster, function_manifest("hourly", triggers=[{"schedule": "rate(1 hour)"}]))
    # Each replica's operator process watches the cluster through one backend (handlers.Controller's).
    first_backend, second_backend = KubernetesBackend(api), KubernetesBackend(api)
    await first_backend.start()
    await second_backend.start()
    first = OperatorScheduler(api, config("operator-a", nats_url), first_backend, retry=0.5)
    second = OperatorScheduler(api, config("operator-b", nats_url), second_backend, retry=0.5)
    await first.start()
    try:
        await eventually(lambda: first.source is not None and first.source._triggers != {}, timeout=30,
                         what="the first replica to schedule the function")
        await second.start()
        assert cluster.object(kube.LEASES, "kfn-system", "kfn-scheduler")["spec"]["holderIdentity"] == "operator-a"
        # The trigger seen for the first time starts at its next tick: its record says so.
        ticks = KvTicks(nats_url)
        await ticks.start()
        try:
            record = None
            for _ in range(200):
                if (record := await ticks.get("default.hourly.0")) is not None:
                    break
                await asyncio.sleep(0.05)
        finally:
            await ticks.close()
        assert record is not None and record.expression == "rate(1 hour)"
        assert dt.datetime.now(dt.UTC) - record.through < dt.timedelta(minutes=5)
        assert not second.leading.is_set()

        await first.close()
        await eventually(lambda: second.source is not None and second.source._triggers != {}, timeout=30,
                         what="the second replica to take over")
        assert cluster.object(kube.LEASES, "kfn-system", "kfn-scheduler")["spec"]["holderIdentity"] == "operator-b"
        assert {t.function for t in second.source._triggers.values()} == {FunctionRef("default", "hourly")}
    finally:
        await first.close()
        await second.close()
        await first_backend.close()
        await second_backend.close()


async def test_without_nats_no_schedule_is_fired_and_no_lease_taken(cluster, api) -> None:
    scheduler = OperatorScheduler(api, config("operator-a", None), KubernetesBackend(api))
    await scheduler.start()
    try:
        assert not scheduler.leading.is_set()
        assert cluster.list_objects(kube.LEASES) == []
    finally:
        await scheduler.close()


def test_the_nats_url_comes_from_the_environment() -> None:
    assert OperatorConfig.build(env={"KFN_NATS_URL": "nats://kfn-nats:4222"}).nats_url == "nats://kfn-nats:4222"
    assert OperatorConfig.build(env={}).nats_url is None
