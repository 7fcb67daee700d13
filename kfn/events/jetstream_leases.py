"""The queue of the JetStream event store: claims through each function's pull consumer, the
leases JetStream keeps for them (`ack_wait`), the queue statistics, and removing a function's
queue (a purge of its subject; its durable consumer stays, for a function of that name to come).

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
import orjson
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

from kfn._cogs.nats import NATS_ERRORS
from kfn.core.functions import FunctionRef
from kfn.events.jetstream_connection import Connection
from kfn.events.jetstream_layout import (
    HEADER_NOT_BEFORE,
    JS_API,
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

    async def release_unclaimed(self) -> int:
        """Hand back (NAK: due again at once, for the other consumers) what the subscriptions
        received that no claim took: a claim cancelled while its pull request was answered (the
        engine stopping) leaves messages in its subscription's queue, and the server goes on
        sending more against the pull request until it expires, each leased to this process until
        `ack_wait` runs out. Each subscription is unsubscribed first (nothing more comes), then its
        queue emptied. Returns how many were handed back; a NAK that fails leaves that message to
        its lease. Call it before closing the connection; the subscriptions are gone after it."""
        released = 0
        subs, self._subs = list(self._subs.values()), {}
        for sub in subs:
            with contextlib.suppress(*NATS_ERRORS, ValueError):
                await sub.unsubscribe()
            queue = sub._sub._pending_queue   # nats-py keeps no public way to take what is buffered
            while not queue.empty():
                message = queue.get_nowait()
                if not message.reply:
                    continue   # a status message (no messages, request expired): nothing leased
                with contextlib.suppress(*NATS_ERRORS):
                    await message.nak()
                    released += 1
        return released

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

    async def queued(self) -> dict[FunctionRef, int]:
        """Every function with stored events, and how many: one request. Raises StoreUnavailable."""
        try:
            info = await self._connection.jetstream().stream_info(STREAM, subjects_filter=f"{SUBJECT_PREFIX}.>")
        except NATS_ERRORS as e:
            raise StoreUnavailable(f"could not read the queues: {e!r}") from e
        out: dict[FunctionRef, int] = {}
        for name, count in (info.state.subjects or {}).items():
            function = function_of(name)
            if function is not None and count > 0:
                out[function] = count
        return out

    async def newest(self, function: FunctionRef) -> int:
        """The stream sequence of the function's newest stored event (0: none): one request.
        Raises StoreUnavailable."""
        try:
            raw = await self._connection.jetstream().get_msg(STREAM, subject=subject(function))
        except nats.js.errors.NotFoundError:
            return 0
        except NATS_ERRORS as e:
            raise StoreUnavailable(f"could not read the queue of {function}: {e!r}") from e
        return int(raw.seq or 0)

    async def discard(self, function: FunctionRef, *, through: int | None = None) -> int:
        """Remove the stored events of `function` (a purge of its subject: one request, up to the
        publish timeout), only those up to stream sequence `through` when given; returns how many
        the server removed. An event in flight is removed too: its delivery goes on, and its end
        (an ack) finds nothing to remove, so callers purge a queue only once none is in flight.
        Raises StoreUnavailable."""
        nc = self._connection.client
        if nc is None:
            raise StoreUnavailable("the event store is not open")
        purge: dict[str, object] = {"filter": subject(function)}
        if through is not None:
            purge["seq"] = through + 1   # the server purges below `seq`, not including it
        request = orjson.dumps(purge)
        try:
            # nats-py's purge_stream answers only whether it succeeded; the server also says how many.
            reply = await nc.request(f"{JS_API}.STREAM.PURGE.{STREAM}", request,
                                     timeout=self._connection.publish_timeout)
            answer = orjson.loads(reply.data)
        except (*NATS_ERRORS, orjson.JSONDecodeError) as e:
            raise StoreUnavailable(f"could not remove the events of {function}: {e!r}") from e
        if not isinstance(answer, dict) or answer.get("error") or not answer.get("success"):
            error = answer.get("error") if isinstance(answer, dict) else answer
            raise StoreUnavailable(f"could not remove the events of {function}: {error!r}")
        return int(answer.get("purged") or 0)


def function_of(stream_subject: str) -> FunctionRef | None:
    """The function whose events `stream_subject` holds (`subject`'s inverse); None for another."""
    prefix, dot, rest = stream_subject.partition(f"{SUBJECT_PREFIX}.")
    namespace, dot, name = rest.partition(".")
    if prefix or not namespace or not name:
        return None
    return FunctionRef(namespace, name)


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
