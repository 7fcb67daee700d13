"""Fixtures of the end-to-end tests: the two async event stores each scenario runs on."""
from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from kfn.events.store import EventStore
from tests.e2e.asyncstores import Backend
from tests.support.nats import NatsServer


@pytest.fixture(params=["sqlite", "jetstream"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Each test asking for it runs twice: on SQLite, and on JetStream (a nats-server of its own)."""
    if request.param == "sqlite":
        yield Backend("sqlite", tmp_path)
        return
    server = NatsServer(tmp_path)
    server.start()
    try:
        yield Backend("jetstream", tmp_path, server)
    finally:
        server.stop()


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[EventStore]:
    """An opened store of `backend`, closed after the test."""
    opened = backend.store()
    await opened.start()
    try:
        yield opened
    finally:
        await opened.close()

