"""The bounds of a NATS connection as kfn opens it (`kfn._cogs.nats`): an attempt at a server that
refuses, or accepts and says nothing, fails within ATTEMPT_TIMEOUT with the reason nats-py reported;
closing a connection nats-py cannot flush any more raises nothing. 127.0.0.1 only; every wait is
bounded."""
from __future__ import annotations

import asyncio
import socket
import time

import pytest

from kfn._cogs import nats as cog
from kfn._cogs.nats import Backoff, NatsUnreachable, connect, disconnect
from tests.support.ports import free_port


async def test_an_attempt_at_a_server_that_refuses_fails_within_its_bound_saying_why(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cog, "ATTEMPT_TIMEOUT", 1.0)
    url = f"nats://127.0.0.1:{free_port()}"
    retried: list[BaseException] = []
    started = time.monotonic()
    with pytest.raises(NatsUnreachable) as caught:
        await asyncio.wait_for(connect(url, name="kfn-test", attempts=2, backoff=Backoff(0.1),
                                       on_retry=lambda e, _wait: retried.append(e)), 10)
    assert time.monotonic() - started < 5
    assert caught.value.attempts == 2 and isinstance(caught.value.last, OSError)
    assert [type(e) for e in retried] == [type(caught.value.last)]
    assert str(caught.value).startswith(f"could not connect to NATS at {url}: ")


async def test_an_attempt_at_a_server_that_says_nothing_fails_within_its_bound(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cog, "ATTEMPT_TIMEOUT", 1.0)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        with pytest.raises(NatsUnreachable) as caught:
            await asyncio.wait_for(connect(f"nats://127.0.0.1:{silent.getsockname()[1]}", name="kfn-test",
                                           attempts=1, backoff=Backoff(0.1)), 10)
    assert isinstance(caught.value.last, TimeoutError)


async def test_closing_a_connection_that_cannot_flush_any_more_raises_nothing() -> None:
    class Lost:
        async def close(self) -> None:
            raise RuntimeError("unable to perform operation on <TCPTransport closed=True>")

    await disconnect(Lost())  # type: ignore[arg-type]
