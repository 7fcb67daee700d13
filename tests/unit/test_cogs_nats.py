"""A NATS connection as kfn opens it (`kfn._cogs.nats`): kfn's options, attempts counted and waited
as the backoff says, typed errors, reconnection, closing. On a real `nats-server` (127.0.0.1,
stopped by its PID) where a server matters, on a stand-in for nats.connect where only the counting
does. Every wait is bounded."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest

from kfn._cogs.nats import Backoff, NatsUnreachable, connect, disconnect
from tests.support.nats import NatsServer, nats_server_binary
from tests.support.waiting import eventually


@pytest.fixture
def server(tmp_path: Path) -> Iterator[NatsServer]:
    nats_server_binary()
    started = NatsServer(tmp_path)
    started.start()
    try:
        yield started
    finally:
        started.stop()


class FailingConnect:
    """Stands in for nats.connect: raises `errors` one after the other, then returns `client`."""

    def __init__(self, *errors: BaseException, client: object = None) -> None:
        self.errors = list(errors)
        self.client = client
        self.calls: list[dict[str, Any]] = []

    async def __call__(self, servers: list[str], **options: Any) -> object:
        self.calls.append({"servers": servers, **options})
        if self.errors:
            raise self.errors.pop(0)
        return self.client


def test_the_backoff_grows_by_its_factor_up_to_its_most() -> None:
    waits = [0.5]
    for _ in range(7):
        waits.append(Backoff(0.5, factor=2.0, most=15.0).after(waits[-1]))
    assert waits == [0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 15.0, 15.0]
    assert Backoff(1.0).after(1.0) == 1.0


async def test_a_connection_has_kfns_options_and_closes(server: NatsServer) -> None:
    client = await asyncio.wait_for(connect(server.url, name="kfn-test", attempts=1, backoff=Backoff(1.0)), 20)
    try:
        assert client.is_connected
        assert {k: client.options[k] for k in ("name", "max_reconnect_attempts", "reconnect_time_wait",
                                               "connect_timeout")} == {
            "name": "kfn-test", "max_reconnect_attempts": -1, "reconnect_time_wait": 0.5, "connect_timeout": 2}
        await client.publish("kfn.test", b"x")
        await client.flush(timeout=5)
    finally:
        await disconnect(client)
    assert client.is_closed
    await disconnect(client)          # closing twice, or nothing: no error
    await disconnect(None)


async def test_a_server_not_up_yet_is_waited_for_within_one_attempt(tmp_path: Path) -> None:
    nats_server_binary()
    later = NatsServer(tmp_path)       # its port is chosen; nothing listens there yet
    retried: list[float] = []
    connecting = asyncio.ensure_future(connect(later.url, name="kfn-test", attempts=1, backoff=Backoff(1.0),
                                               on_retry=lambda _e, wait: retried.append(wait)))
    try:
        await asyncio.sleep(1.0)
        assert not connecting.done()
        later.start()
        client = await asyncio.wait_for(connecting, 20)
        assert client.is_connected and retried == []
        await disconnect(client)
    finally:
        connecting.cancel()
        later.stop()


async def test_the_connection_comes_back_after_the_server_restarts_and_says_so(server: NatsServer) -> None:
    events: list[str] = []

    async def lost() -> None:
        events.append("disconnected")

    async def back() -> None:
        events.append("reconnected")

    client = await asyncio.wait_for(connect(server.url, name="kfn-test", attempts=1, backoff=Backoff(1.0),
                                            disconnected_cb=lost, reconnected_cb=back), 20)
    try:
        server.kill()
        await eventually(lambda: "disconnected" in events, timeout=20, what="the disconnection")
        server.start()
        await eventually(lambda: "reconnected" in events and client.is_connected, timeout=20,
                         what="the reconnection")
    finally:
        await disconnect(client)


async def test_attempts_are_bounded_and_waited_as_the_backoff_says(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FailingConnect(OSError("refused"), nats.errors.NoServersError(), TimeoutError(),
                          OSError("boom"))
    monkeypatch.setattr(nats, "connect", fake)
    retried: list[tuple[str, float]] = []
    with pytest.raises(NatsUnreachable) as caught:
        await asyncio.wait_for(connect("nats://a:4222,nats://b:4222", name="kfn-test", attempts=3,
                                       backoff=Backoff(0.01, factor=2.0),
                                       on_retry=lambda e, wait: retried.append((type(e).__name__, wait))), 10)
    assert len(fake.calls) == 3
    assert retried == [("OSError", 0.01), ("NoServersError", 0.02)]
    assert str(caught.value) == "could not connect to NATS at nats://a:4222,nats://b:4222: "
    assert caught.value.attempts == 3 and isinstance(caught.value.last, TimeoutError)
    assert fake.calls[0]["servers"] == ["nats://a:4222", "nats://b:4222"]


async def test_without_a_bound_it_tries_until_it_connects(monkeypatch: pytest.MonkeyPatch) -> None:
    client = object()
    fake = FailingConnect(*(OSError("refused") for _ in range(5)), client=client)
    monkeypatch.setattr(nats, "connect", fake)
    retried: list[float] = []
    got = await asyncio.wait_for(connect("nats://a:4222", name="kfn-test", attempts=None,
                                         backoff=Backoff(0.001, factor=2.0, most=0.004),
                                         on_retry=lambda _e, wait: retried.append(wait)), 10)
    assert got is client and len(fake.calls) == 6
    assert retried == [0.001, 0.002, 0.004, 0.004, 0.004]


async def test_trying_without_a_bound_stops_when_cancelled(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FailingConnect(*(OSError("refused") for _ in range(10_000)))
    monkeypatch.setattr(nats, "connect", fake)
    task = asyncio.ensure_future(connect("nats://a:4222", name="kfn-test", attempts=None, backoff=Backoff(0.01)))
    await eventually(lambda: len(fake.calls) >= 3, timeout=10, what="a few attempts")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)


async def test_what_is_no_nats_url_or_no_attempt_is_refused_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FailingConnect()
    monkeypatch.setattr(nats, "connect", fake)
    with pytest.raises(ValueError, match="must look like"):
        await connect("http://a:4222", name="kfn-test", attempts=3, backoff=Backoff(1.0))
    with pytest.raises(ValueError, match="at least 1"):
        await connect("nats://a:4222", name="kfn-test", attempts=0, backoff=Backoff(1.0))
    assert fake.calls == []


async def test_the_clients_own_errors_are_logged_at_debug_level_under_its_name(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    fake = FailingConnect(client=object())
    monkeypatch.setattr(nats, "connect", fake)
    await connect("nats://a:4222", name="kfn-events", attempts=1, backoff=Backoff(1.0))
    with caplog.at_level(logging.DEBUG, logger="kfn._cogs.nats"):
        await fake.calls[0]["error_cb"](nats.errors.StaleConnectionError())
    assert [(r.levelno, r.getMessage().startswith("NATS (kfn-events): ")) for r in caplog.records] == [
        (logging.DEBUG, True)]
