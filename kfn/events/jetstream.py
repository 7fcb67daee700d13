"""The event store on Kubernetes: NATS JetStream (a real `nats-server`), through nats-py.

Layout:

- stream `KFN_ASYNC` (file storage, work-queue retention, duplicate window 2 min) holds the
  queued events, subject `kfn.async.NAMESPACE.NAME`, one JSON envelope each (`Event.encode`);
- one durable pull consumer per function (`async_NAMESPACE_NAME`, filtered on its subject,
  explicit acks, `ack_wait` = the lease, no delivery limit) shared by every replica of the
  engine: JetStream hands each message to one fetcher at a time and again only after
  `ack_wait` without an ack or a progress signal (`extend` sends +WPI) — at least once;
- stream `KFN_DLQ` (file storage, limits retention, `dead_letter_max_age`) holds dead letters,
  subject `kfn.dlq.NAMESPACE.NAME`;
- stream `KFN_ASYNC_IDS` (file storage, limits retention, one message per subject, `max_age` the
  de-duplication window, 6 hours; at most `ids_max_bytes`, 128 MiB, the oldest discarded first)
  remembers the invocation ids each function accepted, subject `kfn.ids.NAMESPACE.NAME.HASH`
  (HASH: of the id), an empty message each.

De-duplication is per function: `accept` looks the id up in `KFN_ASYNC_IDS` (there: a duplicate,
nothing stored), publishes the event with `Nats-Msg-Id` NAMESPACE/NAME/ID, then records the id.
Every message id names the function, since JetStream de-duplicates by message id across a whole
stream. The stream's own duplicate window (2 minutes, or the de-duplication window if that is
shorter) covers two accepts of one id at the same
moment and an accept retried after the event was stored but before its id was (the id is
recorded after the event, so a 202 is never given for an event that is not stored). Its window
stays short because nats-server keeps those ids in memory and forgets them on a restart for
messages already acknowledged; the ids stream is on disk and expires them itself.

Waiting: a claim is one pull request that the server holds for up to the claim's `wait` and
answers as soon as a message is deliverable (new, retried after its delay, or its lease run
out), so an idle function costs one request per `wait`; after a reconnect (the server forgot
the pull requests) waiting claims return at once and ask again. The queue statistics are one
request for every function's depth, plus two per function that has events.

Durability: `accept` returns after the PubAck, i.e. once the stream leader has written the
message to its files. nats-server fsyncs those every `sync_interval` (2 min by default): the
event survives a SIGKILL of the server, but a machine crash within that interval can lose it
unless the server runs with `jetstream { sync_interval: always }` (the chart's default) or the
stream is replicated (R3). A publish that times out may still have been stored, so `accept`
retries it with the same `Nats-Msg-Id` (`msg_id`), which the stream stores once.

State changes of a claimed event are a publish then an ack: `reschedule` publishes the updated
event (header `Kfn-Not-Before`: not due before then; a fetch of it earlier NAKs it with that
delay) and acks the old message; `dead_letter` publishes to the DLQ and acks. A crash between the
two leaves both: the event is delivered twice, never lost. Attempts are counted in the envelope,
not by JetStream's `num_delivered`, so a consumer killed mid-invocation costs no attempt.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.client import JetStreamContext

from kfn.core.functions import FunctionRef
from kfn.core.natsurl import servers
from kfn.events.store import (
    DEDUP_WINDOW,
    NO_OPTIONS,
    Accepted,
    AcceptOptions,
    DeadLetter,
    Delivery,
    Event,
    QueueStats,
    StoreUnavailable,
    dedup_key,
)

logger = logging.getLogger(__name__)

STREAM = "KFN_ASYNC"
DLQ_STREAM = "KFN_DLQ"
IDS_STREAM = "KFN_ASYNC_IDS"
SUBJECT_PREFIX = "kfn.async"
DLQ_PREFIX = "kfn.dlq"
IDS_PREFIX = "kfn.ids"
HEADER_MSG_ID = "Nats-Msg-Id"
HEADER_NOT_BEFORE = "Kfn-Not-Before"
DUPLICATE_WINDOW = 120.0
# The ids stream's size: about 130 bytes an id, so a million ids (6 hours at 46 events a second);
# beyond it the oldest ids go first, and accepting events is never refused for the ids' sake.
IDS_MAX_BYTES = 128 * 1024 * 1024
_ERRORS = (nats.errors.Error, asyncio.TimeoutError, OSError)


def subject(function: FunctionRef) -> str:
    return f"{SUBJECT_PREFIX}.{function.namespace}.{function.name}"


def dlq_subject(function: FunctionRef) -> str:
    return f"{DLQ_PREFIX}.{function.namespace}.{function.name}"


def id_subject(function: FunctionRef, invocation_id: str) -> str:
    # Ids may hold `.` and `:`, which a subject token may not: a hash names them.
    digest = hashlib.sha256(invocation_id.encode()).hexdigest()[:32]
    return f"{IDS_PREFIX}.{function.namespace}.{function.name}.{digest}"


def msg_id(function: FunctionRef, invocation_id: str, *suffix: object) -> str:
    """The `Nats-Msg-Id` of a message about one function's event."""
    return "/".join((function.namespace, function.name, invocation_id, *map(str, suffix)))


def consumer_name(function: FunctionRef) -> str:
    # `_` appears in no DNS label, so namespace and name cannot run into each other.
    return f"async_{function.namespace}_{function.name}"


class JetStreamStore:
    """`EventStore` on NATS JetStream (see the module docstring)."""

    def __init__(self, url: str, *, lease: float = 30.0, max_in_flight: int = 10_000,
                 dead_letter_max_age: float = 14 * 86400.0, publish_timeout: float = 5.0,
                 publish_attempts: int = 3, connect_attempts: int = 30, dedup_window: float = DEDUP_WINDOW,
                 ids_max_bytes: int = IDS_MAX_BYTES, clock: Callable[[], float] = time.time) -> None:
        self.url = url
        self.lease = lease
        self._max_in_flight = max_in_flight
        self._dlq_max_age = dead_letter_max_age
        self._publish_timeout = publish_timeout
        self._publish_attempts = publish_attempts
        self._connect_attempts = connect_attempts
        self.dedup_window = dedup_window
        self._ids_max_bytes = ids_max_bytes
        self._clock = clock
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._subs: dict[FunctionRef, JetStreamContext.PullSubscription] = {}
        self._sub_lock = asyncio.Lock()
        self._closing = False
        self._reconnected = asyncio.Event()   # set (and replaced) on each reconnect

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._nc is not None:
            return
        self._closing = False
        last: BaseException | None = None
        for attempt in range(self._connect_attempts):
            try:
                self._nc = await nats.connect(
                    servers(self.url), name="kfn-events", max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                    connect_timeout=2, error_cb=self._on_error, disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected)
                break
            except (*_ERRORS, nats.errors.NoServersError) as e:
                last = e
                if attempt + 1 < self._connect_attempts:
                    await asyncio.sleep(1.0)
        if self._nc is None:
            raise StoreUnavailable(f"could not connect to NATS at {self.url}: {last}")
        self._js = self._nc.jetstream(timeout=self._publish_timeout)
        try:
            await self._ensure_stream(StreamConfig(
                name=STREAM, subjects=[f"{SUBJECT_PREFIX}.>"], storage=StorageType.FILE,
                retention=RetentionPolicy.WORK_QUEUE, duplicate_window=min(DUPLICATE_WINDOW, self.dedup_window)))
            await self._ensure_stream(StreamConfig(
                name=DLQ_STREAM, subjects=[f"{DLQ_PREFIX}.>"], storage=StorageType.FILE,
                retention=RetentionPolicy.LIMITS, duplicate_window=DUPLICATE_WINDOW, max_age=self._dlq_max_age))
            await self._ensure_stream(StreamConfig(
                name=IDS_STREAM, subjects=[f"{IDS_PREFIX}.>"], storage=StorageType.FILE,
                retention=RetentionPolicy.LIMITS, max_msgs_per_subject=1, max_age=self.dedup_window,
                max_bytes=self._ids_max_bytes, discard=DiscardPolicy.OLD, allow_direct=True,
                duplicate_window=min(DUPLICATE_WINDOW, self.dedup_window)))
        except _ERRORS as e:
            await self.close()
            raise StoreUnavailable(f"could not set up the JetStream streams: {e}") from e

    async def _ensure_stream(self, config: StreamConfig) -> None:
        js = self._jetstream()
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError:
            # It exists with another configuration (an older kfn, another max age): bring it up to date.
            await js.update_stream(config)

    async def close(self) -> None:
        self._closing = True
        nc, self._nc, self._js = self._nc, None, None
        self._subs.clear()
        if nc is not None:
            with contextlib.suppress(*_ERRORS):
                await nc.close()

    async def _on_error(self, error: Exception) -> None:
        logger.debug("NATS: %s", error)

    async def _on_disconnected(self) -> None:
        if self._closing:
            return
        logger.warning("NATS: disconnected from %s; reconnecting", self.url)

    async def _on_reconnected(self) -> None:
        logger.warning("NATS: reconnected to %s", self.url)
        # The server forgot the pull requests waiting: their claims ask again.
        self._reconnected.set()
        self._reconnected = asyncio.Event()

    def _jetstream(self) -> JetStreamContext:
        if self._js is None:
            raise StoreUnavailable("the event store is not open")
        return self._js

    # -- accepting -------------------------------------------------------------------------------

    async def accept(self, function: FunctionRef, payload: bytes, invocation_id: str,
                     options: AcceptOptions = NO_OPTIONS) -> Accepted:
        key = dedup_key(invocation_id, options)
        if await self._known(function, key):
            return Accepted(invocation_id, duplicate=True)
        event = Event(id=invocation_id, function=function, payload=payload, accepted_at=self._clock(),
                      callback_url=options.callback_url, caller_chosen=options.caller_chosen)
        duplicate = await self._publish(subject(function), event.encode(), msg_id(function, key))
        await self._remember(function, key)
        return Accepted(invocation_id, duplicate=duplicate)

    async def _known(self, function: FunctionRef, key: str) -> bool:
        """Whether `function` accepted the id of de-duplication key `key` within the window."""
        try:
            await self._jetstream().get_last_msg(IDS_STREAM, id_subject(function, key), direct=True)
        except nats.js.errors.NotFoundError:
            return False
        except _ERRORS as e:
            raise StoreUnavailable(f"could not look up {key}: {e!r}") from e
        return True

    async def _remember(self, function: FunctionRef, key: str) -> None:
        """Record that `function` took the id of de-duplication key `key` (for the window, from now)."""
        try:
            # No message id: a record stored twice is one per subject all the same.
            await self._publish(id_subject(function, key), b"", None)
        except StoreUnavailable as e:
            # The event is stored; retried within 2 minutes it is a duplicate all the same.
            raise StoreUnavailable(f"stored {key} but could not record its id: {e}") from e

    async def _publish(self, to: str, body: bytes, msg_id: str | None, headers: dict[str, str] | None = None) -> bool:
        """Publish until a PubAck says it is stored (retrying with the same id); True if the
        stream already had that id. Without an id, a retry may store the message twice."""
        js = self._jetstream()
        all_headers = {**({HEADER_MSG_ID: msg_id} if msg_id else {}), **(headers or {})}
        last: BaseException | None = None
        for _ in range(self._publish_attempts):
            if self._nc is None or not self._nc.is_connected:
                # Not published at all while NATS is away: nats-py would buffer the message and send
                # it on reconnecting, after the caller had been told it was not stored (and waited
                # the publish timeouts for it). Refused at once, it is the caller's to retry.
                raise StoreUnavailable(f"not connected to NATS at {self.url}: {msg_id} not stored")
            try:
                ack = await js.publish(to, body, timeout=self._publish_timeout, headers=all_headers)
                return bool(ack.duplicate)
            except _ERRORS as e:
                last = e
        raise StoreUnavailable(f"JetStream did not confirm {msg_id}: {last!r}")

    # -- delivering ------------------------------------------------------------------------------

    async def _subscription(self, function: FunctionRef) -> JetStreamContext.PullSubscription:
        sub = self._subs.get(function)
        if sub is not None:
            return sub
        async with self._sub_lock:
            sub = self._subs.get(function)
            if sub is None:
                config = ConsumerConfig(
                    durable_name=consumer_name(function), ack_policy=AckPolicy.EXPLICIT, ack_wait=self.lease,
                    max_deliver=-1, max_ack_pending=self._max_in_flight, filter_subject=subject(function),
                    deliver_policy=DeliverPolicy.ALL)
                sub = await self._jetstream().pull_subscribe(
                    subject(function), durable=consumer_name(function), stream=STREAM, config=config)
                self._subs[function] = sub
        return sub

    async def claim(self, function: FunctionRef, limit: int, *, wait: float) -> list[Delivery]:
        if limit <= 0:
            return []
        try:
            sub = await self._subscription(function)
            reconnected = asyncio.ensure_future(self._reconnected.wait())
            fetch = asyncio.ensure_future(sub.fetch(batch=limit, timeout=max(wait, 0.05)))
            try:
                await asyncio.wait((fetch, reconnected), return_when=asyncio.FIRST_COMPLETED)
            finally:
                reconnected.cancel()
                if not fetch.done():
                    # Whatever it had been sent stays in the subscription's queue for the next fetch.
                    fetch.cancel()
                    with contextlib.suppress(asyncio.CancelledError, *_ERRORS):
                        await fetch
            if fetch.cancelled():
                return []
            try:
                messages = fetch.result()
            except (TimeoutError, nats.errors.TimeoutError):
                return []
        except _ERRORS as e:
            raise StoreUnavailable(f"could not fetch events of {function}: {e!r}") from e
        out: list[Delivery] = []
        now = self._clock()
        for message in messages:
            not_before = float((message.headers or {}).get(HEADER_NOT_BEFORE) or 0)
            try:
                if not_before > now:
                    await message.nak(delay=not_before - now)
                    continue
                event = Event.decode(message.data)
            except _ERRORS as e:
                logger.warning("could not hand back a message of %s: %s", function, e)
                continue
            except ValueError as e:
                # Not an envelope of ours: never deliverable; keep it out of the way.
                logger.error("dropping an unreadable message of %s: %s", function, e)
                with contextlib.suppress(*_ERRORS):
                    await message.term()
                continue
            out.append(Delivery(event, message.metadata.num_delivered or 1, message))
        return out

    async def extend(self, delivery: Delivery) -> None:
        message: Msg = delivery.handle
        try:
            await message.in_progress()
        except _ERRORS as e:
            raise StoreUnavailable(f"could not extend the lease of {delivery.event.id}: {e!r}") from e

    async def complete(self, delivery: Delivery) -> None:
        await self._ack(delivery)

    async def _ack(self, delivery: Delivery) -> None:
        message: Msg = delivery.handle
        try:
            await message.ack_sync(timeout=self._publish_timeout)
        except _ERRORS as e:
            # The ack may still have been applied; if not, the event comes again after ack_wait.
            raise StoreUnavailable(f"could not acknowledge {delivery.event.id}: {e!r}") from e

    async def release(self, delivery: Delivery) -> None:
        message: Msg = delivery.handle
        with contextlib.suppress(*_ERRORS):
            await message.nak()

    async def reschedule(self, delivery: Delivery, event: Event, *, delay: float) -> None:
        not_before = self._clock() + delay
        await self._publish(subject(event.function), event.encode(), msg_id(event.function, event.id, _seq(delivery)),
                            {HEADER_NOT_BEFORE: repr(not_before)})
        await self._ack(delivery)

    async def dead_letter(self, delivery: Delivery, letter: DeadLetter) -> None:
        await self._publish(dlq_subject(letter.function), letter.encode(),
                            msg_id(letter.function, letter.id, "dead", _seq(delivery)))
        await self._ack(delivery)

    # -- dead letters ----------------------------------------------------------------------------

    async def _letters(self, function: FunctionRef, limit: int) -> list[tuple[int, DeadLetter]]:
        js = self._jetstream()
        out: list[tuple[int, DeadLetter]] = []
        seq = 1
        try:
            while len(out) < limit:
                try:
                    raw = await js.get_msg(DLQ_STREAM, seq=seq, subject=dlq_subject(function), next=True)
                except nats.js.errors.NotFoundError:
                    break
                if raw.seq is None or raw.data is None:
                    break
                out.append((raw.seq, DeadLetter.decode(raw.data)))
                seq = raw.seq + 1
        except _ERRORS as e:
            raise StoreUnavailable(f"could not read the dead letters of {function}: {e!r}") from e
        return out

    async def dead_letters(self, function: FunctionRef, *, limit: int = 100) -> list[DeadLetter]:
        return [letter for _, letter in await self._letters(function, limit)]

    async def replay(self, function: FunctionRef, ids: Sequence[str] | None = None) -> list[str]:
        wanted = None if ids is None else set(ids)
        replayed: list[str] = []
        for seq, letter in await self._letters(function, 1_000_000):
            if wanted is not None and letter.id not in wanted:
                continue
            event = Event(id=letter.id, function=function, payload=letter.payload, accepted_at=self._clock(),
                          caller_chosen=letter.caller_chosen)
            # Under the key it was accepted with: a caller's id stays apart from kfn's own.
            await self._publish(subject(function), event.encode(), msg_id(function, event.dedup_key, "replay", seq))
            # A caller retrying the original invocation now finds it stored again.
            await self._remember(function, event.dedup_key)
            try:
                await self._jetstream().delete_msg(DLQ_STREAM, seq)
            except _ERRORS as e:
                raise StoreUnavailable(f"replayed {letter.id} but could not remove its dead letter: {e!r}") from e
            replayed.append(letter.id)
        return replayed

    # -- what is queued --------------------------------------------------------------------------

    async def stats(self, functions: Sequence[FunctionRef]) -> dict[FunctionRef, QueueStats]:
        js = self._jetstream()
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
                    consumer = await js.consumer_info(STREAM, consumer_name(function))
                    in_flight = consumer.num_ack_pending or 0
                oldest = None
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    raw = await js.get_msg(STREAM, seq=1, subject=subject(function), next=True)
                    if raw.data is not None:
                        oldest = _accepted_at(raw.data)
                out[function] = QueueStats(depth, min(in_flight, depth), oldest)
        except _ERRORS as e:
            raise StoreUnavailable(f"could not read the queue statistics: {e!r}") from e
        return out


def _seq(delivery: Delivery) -> int:
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
