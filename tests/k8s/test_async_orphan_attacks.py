"""Attacks on the removal of deleted functions' queues (`kfn.events.orphans`) through a gateway's
real view of the cluster (`KubernetesBackend` on the emulated API server): a Function that exists
but is invalid is not a deleted one, and its queued events are never removed for it."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes.aio import client

from kfn.core.functions import FunctionRef
from kfn.events.orphans import OrphanSettings
from kfn.events.sqlite import SqliteStore
from kfn.kube import Backoff, KubernetesBackend
from kfn.kube.mirror import ClusterMirror
from kfn_gateway.asyncinvoke import AsyncDelivery
from kfn_gateway.server import Gateway
from tests.support.functions import function_manifest
from tests.support.kube import create_function

pytestmark = pytest.mark.timeout(60)
BROKEN = FunctionRef("default", "broken")
GRACE = 0.3


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(tmp_path / "events.sqlite3", lease=5.0, poll=0.05)
    await store.start()
    try:
        yield store
    finally:
        await store.close()


async def queue_of(store: SqliteStore, function: FunctionRef, count: int = 3) -> None:
    for i in range(count):
        await store.accept(function, b'{"n": %d}' % i, f"{function.name}-{i}")


async def sweep_past_the_grace(delivery: AsyncDelivery) -> dict[FunctionRef, int]:
    """Two looks at the queues, the grace apart: what the second removed."""
    await delivery.orphans.sweep()
    await asyncio.sleep(GRACE * 2)
    return await delivery.orphans.sweep()


async def test_a_function_invalid_when_the_gateway_starts_keeps_its_queued_events(
        cluster: Any, api: client.ApiClient, store: SqliteStore) -> None:
    # Its events were accepted while it was valid; an edit made it invalid; then the gateway restarted.
    await queue_of(store, BROKEN)
    await create_function(cluster, function_manifest("broken", handler="nodot"))
    backend = KubernetesBackend(api, backoff=Backoff(initial=0.05, maximum=0.2))
    await backend.start()
    try:
        delivery = AsyncDelivery(Gateway(backend), store, orphans=OrphanSettings(grace=GRACE))
        assert await sweep_past_the_grace(delivery) == {}
    finally:
        await backend.close()
    assert (await store.stats([BROKEN]))[BROKEN].depth == 3


async def test_a_function_made_invalid_keeps_its_last_valid_definition_through_a_relist(
        api: client.ApiClient) -> None:
    # A relist (a watch expired, the API server restarted) must not read as the function's deletion.
    mirror = ClusterMirror(api, namespaces=(), backoff=Backoff(), sync_timeout=1.0, probe=False,
                           probe_interval=1.0, probe_timeout=1.0)
    good = function_manifest("broken")
    mirror._replace_functions(None, [good])
    valid = mirror.functions[BROKEN]
    mirror._replace_functions(None, [function_manifest("broken", handler="nodot")])
    assert mirror.functions.get(BROKEN) == valid
