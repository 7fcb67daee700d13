"""The event store on Kubernetes: NATS JetStream (a real `nats-server`), through nats-py.

`JetStreamStore` is the `EventStore` over its parts, each owning what it names:
`kfn.events.jetstream_layout` (the streams, subjects, consumers and message ids),
`kfn.events.jetstream_connection` (the connection, and publishing until stored),
`kfn.events.jetstream_ids` (the invocation ids each function accepted: de-duplication),
`kfn.events.jetstream_leases` (claims through each function's pull consumer, what ends or
renews their leases, queue statistics) and `kfn.events.jetstream_dead_letters` (dead letters,
listed and replayed).

De-duplication is per function: `accept` looks the id up in `KFN_ASYNC_IDS` (there: a duplicate,
nothing stored), publishes the event with `Nats-Msg-Id` NAMESPACE/NAME/ID, then records the id.

Durability: `accept` returns after the PubAck, i.e. once the stream leader has written the
message to its files (see `kfn.events.jetstream_connection` for when those are fsync'd).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from kfn.core.functions import FunctionRef
from kfn.events.jetstream_connection import Connection
from kfn.events.jetstream_dead_letters import DeadLetters
from kfn.events.jetstream_ids import CallIds
from kfn.events.jetstream_layout import IDS_MAX_BYTES, msg_id, streams, subject
from kfn.events.jetstream_leases import Leases
from kfn.events.store import (
    DEDUP_WINDOW,
    NO_OPTIONS,
    Accepted,
    AcceptOptions,
    DeadLetter,
    Delivery,
    Event,
    QueueStats,
    dedup_key,
)

logger = logging.getLogger(__name__)


class JetStreamStore:
    """`EventStore` on NATS JetStream at `url` (see the module docstring)."""

    def __init__(self, url: str, *, lease: float = 30.0, max_in_flight: int = 10_000,
                 dead_letter_max_age: float = 14 * 86400.0, publish_timeout: float = 5.0,
                 publish_attempts: int = 3, connect_attempts: int = 30, dedup_window: float = DEDUP_WINDOW,
                 ids_max_bytes: int = IDS_MAX_BYTES, clock: Callable[[], float] = time.time) -> None:
        self.url = url
        self._streams = streams(dedup_window=dedup_window, dead_letter_max_age=dead_letter_max_age,
                                ids_max_bytes=ids_max_bytes)
        self._clock = clock
        self._connection = Connection(url, publish_timeout=publish_timeout, publish_attempts=publish_attempts,
                                      connect_attempts=connect_attempts)
        self._ids = CallIds(self._connection)
        self._leases = Leases(self._connection, lease=lease, max_in_flight=max_in_flight, clock=clock)
        self._dead = DeadLetters(self._connection, self._leases, self._ids, clock=clock)

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, then create or update the streams (each request up to `publish_timeout`).
        Connecting makes up to `connect_attempts` attempts a second apart, each bounded
        (`kfn._cogs.nats.connect`). Raises StoreUnavailable."""
        await self._connection.open(self._streams)

    async def close(self) -> None:
        """Hand back the events received and not claimed (`Leases.release_unclaimed`, up to the
        publish timeout), then close the connection; leases of claimed events are the engine's
        to end (it releases those it stops)."""
        try:
            async with asyncio.timeout(self._connection.publish_timeout):
                released = await self._leases.release_unclaimed()
            if released:
                logger.info("handed back %d async events received and not yet claimed", released)
        except TimeoutError:
            logger.warning("could not hand back the async events received and not yet claimed within %gs: "
                           "they are delivered again once their lease runs out", self._connection.publish_timeout)
        self._leases.forget()
        await self._connection.close()

    # -- accepting -------------------------------------------------------------------------------

    async def accept(self, function: FunctionRef, payload: bytes, invocation_id: str,
                     options: AcceptOptions = NO_OPTIONS) -> Accepted:
        key = dedup_key(invocation_id, options)
        if await self._ids.known(function, key):
            return Accepted(invocation_id, duplicate=True)
        event = Event.new(function, payload, invocation_id, options, accepted_at=self._clock())
        duplicate = await self._connection.publish(subject(function), event.encode(), msg_id(function, key))
        await self._ids.remember(function, key)
        return Accepted(invocation_id, duplicate=duplicate)

    # -- delivering ------------------------------------------------------------------------------

    async def claim(self, function: FunctionRef, limit: int, *, wait: float) -> list[Delivery]:
        return await self._leases.claim(function, limit, wait=wait)

    async def extend(self, delivery: Delivery) -> None:
        await self._leases.extend(delivery)

    async def complete(self, delivery: Delivery) -> None:
        await self._leases.complete(delivery)

    async def release(self, delivery: Delivery) -> None:
        await self._leases.release(delivery)

    async def reschedule(self, delivery: Delivery, event: Event, *, delay: float) -> None:
        await self._leases.reschedule(delivery, event, delay=delay)

    async def dead_letter(self, delivery: Delivery, letter: DeadLetter) -> None:
        await self._dead.bury(delivery, letter)

    # -- dead letters ----------------------------------------------------------------------------

    async def dead_letters(self, function: FunctionRef, *, limit: int = 100) -> list[DeadLetter]:
        return await self._dead.read(function, limit=limit)

    async def replay(self, function: FunctionRef, ids: Sequence[str] | None = None) -> list[str]:
        return await self._dead.replay(function, ids)

    # -- what is queued --------------------------------------------------------------------------

    async def stats(self, functions: Sequence[FunctionRef]) -> dict[FunctionRef, QueueStats]:
        return await self._leases.stats(functions)

    async def queued(self) -> dict[FunctionRef, int]:
        return await self._leases.queued()

    async def newest(self, function: FunctionRef) -> int:
        return await self._leases.newest(function)

    async def discard(self, function: FunctionRef, *, through: int | None = None) -> int:
        return await self._leases.discard(function, through=through)
