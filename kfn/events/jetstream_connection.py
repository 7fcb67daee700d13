"""The JetStream event store's connection to NATS, and how it publishes.

The connection is `kfn._cogs.nats.connect`'s: it reconnects by itself, forever. A publish
returns after the PubAck, i.e. once the stream leader has written the message to its files;
nats-server fsyncs those every `sync_interval` (2 min by default), so a machine crash within
that interval can lose it unless the server runs with `jetstream { sync_interval: always }` (the
chart's default) or the stream is replicated (R3). A publish that times out may still have been
stored, so it is retried with the same `Nats-Msg-Id`, which the stream stores once. Nothing is
published while NATS is away (see `Connection.publish`).
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import nats.js.errors
from nats.aio.client import Client
from nats.js.api import StreamConfig
from nats.js.client import JetStreamContext

from kfn._cogs.nats import NATS_ERRORS, Backoff, NatsUnreachable, connect, disconnect
from kfn.core import natsurl
from kfn.events.jetstream_layout import HEADER_MSG_ID
from kfn.events.store import StoreUnavailable

logger = logging.getLogger(__name__)


class Connection:
    """The store's connection to the NATS server(s) at `url` (see the module docstring): each
    request waits up to `publish_timeout` seconds, a publish is tried `publish_attempts` times,
    connecting `connect_attempts` times."""

    def __init__(self, url: str, *, publish_timeout: float, publish_attempts: int, connect_attempts: int) -> None:
        self.url = url
        self.publish_timeout = publish_timeout
        self._publish_attempts = publish_attempts
        self._connect_attempts = connect_attempts
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._closing = False
        self._reconnected = asyncio.Event()   # set (and replaced) on each reconnect

    @property
    def client(self) -> Client | None:
        """The NATS client while open, else None."""
        return self._nc

    @property
    def reconnected(self) -> asyncio.Event:
        """Set when the connection is next back after being lost (a new one after that)."""
        return self._reconnected

    async def open(self, streams: Sequence[StreamConfig]) -> None:
        """Connect, then create `streams` or update them to these configurations (each request up
        to `publish_timeout`); nothing if open. Connecting makes up to `connect_attempts` attempts a
        second apart, each bounded (`kfn._cogs.nats.connect`). Raises StoreUnavailable, closed again."""
        if self._nc is not None:
            return
        self._closing = False
        try:
            self._nc = await connect(self.url, name="kfn-events", attempts=self._connect_attempts,
                                     backoff=Backoff(1.0), disconnected_cb=self._on_disconnected,
                                     reconnected_cb=self._on_reconnected)
        except NatsUnreachable as e:
            raise StoreUnavailable(str(e)) from e
        self._js = self._nc.jetstream(timeout=self.publish_timeout)
        try:
            for config in streams:
                await self._ensure_stream(config)
        except NATS_ERRORS as e:
            await self.close()
            raise StoreUnavailable(f"could not set up the JetStream streams: {e}") from e

    async def _ensure_stream(self, config: StreamConfig) -> None:
        js = self.jetstream()
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError:
            # It exists with another configuration (an older kfn, another max age): bring it up to date.
            await js.update_stream(config)

    async def close(self) -> None:
        """Close the connection (see `kfn._cogs.nats.disconnect`); nothing if it is not open."""
        self._closing = True
        nc, self._nc, self._js = self._nc, None, None
        await disconnect(nc)

    async def _on_disconnected(self) -> None:
        if self._closing:
            return
        logger.warning("NATS: disconnected from %s; reconnecting", natsurl.masked(self.url))

    async def _on_reconnected(self) -> None:
        logger.warning("NATS: reconnected to %s", natsurl.masked(self.url))
        # The server forgot the pull requests waiting: their claims ask again.
        self._reconnected.set()
        self._reconnected = asyncio.Event()

    def jetstream(self) -> JetStreamContext:
        """The JetStream context; StoreUnavailable when the connection is not open."""
        if self._js is None:
            raise StoreUnavailable("the event store is not open")
        return self._js

    async def publish(self, to: str, body: bytes, msg_id: str | None, headers: dict[str, str] | None = None) -> bool:
        """Publish until a PubAck says it is stored (retrying with the same id, each attempt up to
        `publish_timeout`); True if the stream already had that id. Without an id, a retry may
        store the message twice. Raises StoreUnavailable after `publish_attempts` failed
        attempts, or at once while NATS is away or the connection is not open."""
        js = self.jetstream()
        all_headers = {**({HEADER_MSG_ID: msg_id} if msg_id else {}), **(headers or {})}
        last: BaseException | None = None
        for _ in range(self._publish_attempts):
            if self._nc is None or not self._nc.is_connected:
                # Not published at all while NATS is away: nats-py would buffer the message and send
                # it on reconnecting, after the caller had been told it was not stored (and waited
                # the publish timeouts for it). Refused at once, it is the caller's to retry.
                raise StoreUnavailable(f"not connected to NATS at {natsurl.masked(self.url)}: {msg_id} not stored")
            try:
                ack = await js.publish(to, body, timeout=self.publish_timeout, headers=all_headers)
                return bool(ack.duplicate)
            except NATS_ERRORS as e:
                last = e
        raise StoreUnavailable(f"JetStream did not confirm {msg_id}: {last!r}")
