"""The queue of the JetStream event store: claims through each function's pull consumer, the
leases JetStream keeps for them (`ack_wait`), and the queue statistics.

Waiting: a claim is one pull request that the server holds for up to the claim's `wait` and
answers as soon as a message is deliverable (new, retried after its delay, or its lease run
out), so an idle function costs one request per `wait`; after a reconnect (the server forgot
the pull requests) waiting claims return at once and ask again. The queue statistics are one
request for every function's depth, plus two per function that has events.

State changes of a claimed event are a publish then an ack: `reschedule` publishes the updated
event (header `Kfn-Not-Before`: not due before then; a fetch of it earlier NAKs it with that
delay) and acks the old message. A crash between the two leaves both: the event is delivered
twice, never lost. Attempts are counted in the envelope, not by JetStream's `num_delivered`, so
a consumer killed mid-invocation costs no attempt; `extend` sends +WPI.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

from kfn._cogs.nats import NATS_ERRORS
from kfn.core.functions import FunctionRef
from kfn.events.jetstream_connection import Connection
from kfn.events.jetstream_layout import (
    HEADER_NOT_BEFORE,
    STREAM,
    SUBJECT_PREFIX,
    consumer,
    consumer_name,
    msg_id,
    subject,
)
from kfn.events.store import Delivery, Event, QueueStats, StoreUnavailable

logger = logging.getLogger(__name__)


class Leases:
    """Claims of the events in stream `KFN_ASYNC` through `connection`, leased for `lease`
    seconds, at most `max_in_flight` per function (see the module docstring)."""

    def __init__(self, connection: Connection, *, lease: float, max_in_flight: int,
                 clock: Callable[[], float]) -> None:
        self.lease = lease
        self._connection = connection
        self._max_in_flight = max_in_flight
        self._clock = clock
        self._subs: dict[FunctionRef, JetStreamContext.PullSubscription] = {}
        self._sub_lock = asyncio.Lock()

    def forget(self) -> None:
        """Drop the subscriptions (the connection they were on is closing)."""
        self._subs.clear()

    async def _subscription(self, function: FunctionRef) -> JetStreamContext.PullSubscription:
        """`function`'s pull subscription, its durable consumer created (or updated) the first time."""
        sub = self._subs.get(function)
        if sub is not None:
            return sub
        async with self._sub_lock:
            sub = self._subs.get(function)
            if sub is None:
                config = consumer(function, lease=self.lease, max_in_flight=self._max_in_flight)
                sub = await self._connection.jetstream().pull_subscribe(
                    subject(function), durable=consumer_name(function), stream=STREAM, config=config)
                self._subs[function] = sub
        return sub

    async def claim(self, function: FunctionRef, limit: int, *, wait: float) -> list[Delivery]:
        """Up to `limit` due events of `function`, each under a lease: one pull request, which
        waits up to `wait` seconds (at least 0.05) for the first, and returns nothing at once
        when the connection comes back from being lost. Raises StoreUnavailable."""
        if limit <= 0:
            return []
        try:
            sub = await self._subscription(function)
            reconnected = asyncio.ensure_future(self._connection.reconnected.wait())
            fetch = asyncio.ensure_future(sub.fetch(batch=limit, timeout=max(wait, 0.05)))
            try:
                await asyncio.wait((fetch, reconnected), return_when=asyncio.FIRST_COMPLETED)
            finally:
                reconnected.cancel()
                if not fetch.done():
                    # Whatever it had been sent stays in the subscription's queue for the next fetch.
                    fetch.cancel()
                    with contextlib.suppress(asyncio.CancelledError, *NATS_ERRORS):
                        await fetch
            if fetch.cancelled():
                return []
            try:
                messages = fetch.result()
            except (TimeoutError, nats.errors.TimeoutError):
                return []
        except NATS_ERRORS as e:
            raise StoreUnavailable(f"could not fetch events of {function}: {e!r}") from e
        return await self._deliveries(function, messages)

    async def _deliveries(self, function: FunctionRef, messages: list[Msg]) -> list[Delivery]:
        """The fetched messages that are due, as deliveries: one not due yet is handed back with
        the delay it has left, one that is not an envelope of ours is dropped (both logged if
        that fails)."""
        out: list[Delivery] = []
        now = self._clock()
        for message in messages:
            not_before = float((message.headers or {}).get(HEADER_NOT_BEFORE) or 0)
            try:
                if not_before > now:
                    await message.nak(delay=not_before - now)
                    continue
                event = Event.decode(message.data)
            except NATS_ERRORS as e:
                logger.warning("could not hand back a message of %s: %s", function, e)
                continue
            except ValueError as e:
                # Not an envelope of ours: never deliverable; keep it out of the way.
                logger.error("dropping an unreadable message of %s: %s", function, e)
                with contextlib.suppress(*NATS_ERRORS):
                    await message.term()
                continue
            out.append(Delivery(event, message.metadata.num_delivered or 1, message))
        return out

    async def extend(self, delivery: Delivery) -> None:
        """Renew the lease of `delivery` (+WPI: another `ack_wait`). Raises StoreUnavailable."""
        message: Msg = delivery.handle
        try:
            await message.in_progress()
        except NATS_ERRORS as e:
            raise StoreUnavailable(f"could not extend the lease of {delivery.event.id}: {e!r}") from e

    async def complete(self, delivery: Delivery) -> None:
        """Acknowledge `delivery`: its message is gone from the stream once the server confirms
        (up to the publish timeout). Raises StoreUnavailable: the ack may still have been
        applied; if not, the event comes again after `ack_wait`."""
        message: Msg = delivery.handle
        try:
            await message.ack_sync(timeout=self._connection.publish_timeout)
        except NATS_ERRORS as e:
            # The ack may still have been applied; if not, the event comes again after ack_wait.
            raise StoreUnavailable(f"could not acknowledge {delivery.event.id}: {e!r}") from e

    async def release(self, delivery: Delivery) -> None:
        """Hand `delivery` back (NAK: due again at once); if that fails, it is due again once its
        lease runs out."""
        message: Msg = delivery.handle
        with contextlib.suppress(*NATS_ERRORS):
            await message.nak()

    async def reschedule(self, delivery: Delivery, event: Event, *, delay: float) -> None:
        """Publish `event`, not due for `delay` seconds, then acknowledge `delivery` (see the
        module docstring). Raises StoreUnavailable."""
        not_before = self._clock() + delay
        await self._connection.publish(subject(event.function), event.encode(),
                                       msg_id(event.function, event.id, stream_sequence(delivery)),
                                       {HEADER_NOT_BEFORE: repr(not_before)})
        await self.complete(delivery)

    async def stats(self, functions: Sequence[FunctionRef]) -> dict[FunctionRef, QueueStats]:
        """Per function of `functions`, the events stored, those leased now and the oldest's
        accept (see the module docstring for the requests). Raises StoreUnavailable."""
        js = self._connection.jetstream()
        out: dict[FunctionRef, QueueStats] = {}
        try:
            # One request for every function's depth: idle functions cost nothing more.
            info = await js.stream_info(STREAM, subjects_filter=f"{SUBJECT_PREFIX}.>")
            depths = info.state.subjects or {}
            for function in functions:
                depth = depths.get(subject(function), 0)
                if depth == 0:
                    out[function] = QueueStats(0, 0, None)
                    continue
                in_flight = 0
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    consumer_info = await js.consumer_info(STREAM, consumer_name(function))
                    in_flight = consumer_info.num_ack_pending or 0
                oldest = None
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    raw = await js.get_msg(STREAM, seq=1, subject=subject(function), next=True)
                    if raw.data is not None:
                        oldest = _accepted_at(raw.data)
                out[function] = QueueStats(depth, min(in_flight, depth), oldest)
        except NATS_ERRORS as e:
            raise StoreUnavailable(f"could not read the queue statistics: {e!r}") from e
        return out


def stream_sequence(delivery: Delivery) -> int:
    """The stream sequence of the message a delivery replaces: what names its successor's
    message id, the same however often the replacement is retried (or the old message
    redelivered and replaced again), and another for every other event, even one of the same
    function with the same invocation id (one chosen by a caller, one kfn derived)."""
    message: Msg = delivery.handle
    return int(message.metadata.sequence.stream)


def _accepted_at(data: bytes) -> float | None:
    try:
        raw: Any = Event.decode(data)
    except (ValueError, KeyError):
        return None
    return float(raw.accepted_at)
