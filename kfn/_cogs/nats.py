"""A connection to NATS as every kfn part opens it (the event store, the tick store, the NATS
triggers), through nats-py.

`connect` connects to the servers of a kfn NATS URL (`kfn.core.natsurl`: one server, or several of
one cluster). The connection reconnects by itself, forever, every 0.5 s (nats-py buffers what is
published meanwhile: a caller that must not publish while away checks `is_connected`). nats-py
applies that to the first connection too, never giving up by itself, so each attempt `connect`
counts is bounded (`ATTEMPT_TIMEOUT` per server): within it, a server that refuses is tried again
every 0.5 s; past it, the attempt has failed with the last error nats-py reported. The attempts
(a bounded number, or until cancelled) are waited between as its `Backoff` says. The client's own
errors (a refused connection, a slow consumer, a server's `-ERR`) are logged at debug level:
whoever uses the connection learns of what matters from its calls. `disconnect` closes it.

Credentials in the URL (`nats://USER:PASSWORD@HOST:4222`, percent-encoded; `kfn.core.natsurl`)
are handed to nats-py as its user and password (or token), decoded, and the server URLs without
them: nats-py's own messages never show them, and kfn's show the URL `natsurl.masked`. A server
that refuses them fails the attempt like one that is away (nats-py reports "Authorization
Violation").
"""
from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import nats
import nats.errors
from nats.aio.client import Client

from kfn.core import natsurl

logger = logging.getLogger(__name__)

# What a call on a NATS connection raises when the server is away, slow or refuses it.
NATS_ERRORS = (nats.errors.Error, asyncio.TimeoutError, OSError)
CONNECT_TIMEOUT = 2          # seconds, per server: for its TCP connection, then for its INFO
RECONNECT_WAIT = 0.5         # seconds between reconnection attempts
# Seconds per server of an attempt at a first connection: its TCP connection and its INFO, each up to
# CONNECT_TIMEOUT, and a wait before it is tried again.
ATTEMPT_TIMEOUT = 2 * CONNECT_TIMEOUT + RECONNECT_WAIT


class NatsUnreachable(Exception):
    """No server of `url` accepted a connection within `attempts` attempts; `last` is the last
    attempt's error."""

    def __init__(self, url: str, attempts: int, last: BaseException) -> None:
        super().__init__(f"could not connect to NATS at {natsurl.masked(url)}: {last}")
        self.url = url
        self.attempts = attempts
        self.last = last


@dataclass(frozen=True)
class Backoff:
    """The wait after a failed attempt: `first` seconds, then each `factor` times the previous,
    at most `most` (factor 1: the same wait every time)."""

    first: float
    factor: float = 1.0
    most: float = math.inf

    def after(self, delay: float) -> float:
        """The wait that follows a wait of `delay` seconds."""
        return min(delay * self.factor, self.most)


async def connect(url: str, *, name: str, attempts: int | None, backoff: Backoff,
                  on_retry: Callable[[BaseException, float], None] | None = None,
                  disconnected_cb: Callable[[], Awaitable[None]] | None = None,
                  reconnected_cb: Callable[[], Awaitable[None]] | None = None) -> Client:
    """A connection to the NATS server(s) at `url`, named `name` (the server's monitoring shows it).

    Runs until a server accepts, or is cancelled: an attempt tries the servers of `url` (again
    every `RECONNECT_WAIT` while none accepts) for up to `ATTEMPT_TIMEOUT` seconds per server, see
    the module docstring; after one that failed, `on_retry(error, wait)` is called and the next
    waits `wait` seconds (`backoff`). With `attempts` (at least 1) it gives up after that many,
    raising `NatsUnreachable`; with None it tries until cancelled. Raises ValueError at once
    for a URL that is not one (`kfn.core.natsurl.servers`) or whose servers carry different
    credentials. `disconnected_cb` is called when the connection is lost (and when it is
    closed), `reconnected_cb` when it is back."""
    if attempts is not None and attempts < 1:
        raise ValueError(f"attempts must be at least 1 (got {attempts})")
    urls = natsurl.bare(url)
    login = natsurl.credentials(url) or natsurl.Credentials()
    bound = ATTEMPT_TIMEOUT * len(urls)
    wait = backoff.first
    attempt = 0
    while True:
        attempt += 1
        errors = _ClientErrors(name)
        deadline = asyncio.timeout(bound)
        try:
            async with deadline:
                return await nats.connect(urls, name=name, max_reconnect_attempts=-1,
                                          reconnect_time_wait=RECONNECT_WAIT, connect_timeout=CONNECT_TIMEOUT,
                                          error_cb=errors.report, disconnected_cb=disconnected_cb,
                                          reconnected_cb=reconnected_cb, user=login.user,
                                          password=login.password, token=login.token)
        except NATS_ERRORS as e:
            error: Exception = e
            if deadline.expired():   # the attempt's bound: why, as nats-py reported it
                error = errors.last or TimeoutError(f"no answer within {bound:g}s")
            if attempts is not None and attempt >= attempts:
                raise NatsUnreachable(url, attempt, error) from e
            if on_retry is not None:
                on_retry(error, wait)
        await asyncio.sleep(wait)
        wait = backoff.after(wait)


class _ClientErrors:
    """The errors a client reports as it runs: logged at debug level, the last one kept."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.last: Exception | None = None

    async def report(self, error: Exception) -> None:
        self.last = error
        logger.debug("NATS (%s): %s", self.name, error)


async def disconnect(client: Client | None) -> None:
    """Close `client` (nothing for None): returns once it is closed, after at most nats-py's
    flush of what it still buffers; what a connection already lost raises on closing is
    swallowed (logged at debug level), as nothing is left to do about it."""
    if client is not None:
        try:
            await client.close()
        except (*NATS_ERRORS, RuntimeError) as e:   # RuntimeError: uvloop's, writing to a transport closed
            logger.debug("NATS: closing a lost connection: %r", e)
