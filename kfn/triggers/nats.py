"""NATS subject triggers: `spec.triggers: [{nats: {subject: orders.created, stream: ORDERS}}]`; each
message becomes an asynchronous invocation, acknowledged only once the event store holds it.

Two ways to take messages, as the trigger says:

- **with `stream`** (JetStream: durable, nothing lost): a durable pull consumer per function and
  subject on that stream (`kfn_NAMESPACE_NAME_HASH`, filtered on the subject, explicit acks,
  `ack_wait`, no delivery limit), shared by every process running this source — every gateway
  replica on Kubernetes: JetStream hands each message to one of them. A message is acked after
  the sink stored its event; if the sink fails it is NAKed with a growing delay, and if the
  process dies first JetStream delivers it again after `ack_wait`. The event's id is derived
  from the function, the stream and the message's stream sequence, so a message delivered twice
  is the same invocation twice, which the store keeps once (at least once + idempotent ids). A
  new consumer starts with the messages published after it was created (DeliverPolicy.NEW, as a
  Lambda event source mapping at LATEST); it is deleted when its trigger is removed (not when the
  process stops: it keeps its place across restarts). kfn does not create the stream.
- **without `stream`** (core NATS): a queue subscription (`kfn.NAMESPACE.NAME.HASH`), so each
  message reaches one process. A request (a message with a reply subject) is answered once the
  event is stored — `{"invocationId": ID}`, or on failure the NATS services error headers
  (`Nats-Service-Error`, `Nats-Service-Error-Code: 503`) — which is the publisher's
  acknowledgement: retry on error or timeout. What is published while no trigger listens is not
  seen (core NATS keeps nothing). The id is derived from the `Nats-Msg-Id` header when there is
  one (a retried request is then stored once), random otherwise.

The event (`message_event`): the message body itself when it is JSON — what a publisher sends is
what the handler gets, as with Lambda's Invoke API — else an envelope:

    {"eventSource": "kfn:nats", "subject": "orders.created", "data": "<base64 of the body>",
     "headers": {"Name": "value", ...}, "stream": "ORDERS", "sequence": 42}

(`headers` only if the message has any; `stream` and `sequence` only from JetStream). A JSON body
keeps no subject or headers: publish a non-JSON body (or wrap it) if the handler needs them.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from kfn._cogs.nats import NATS_ERRORS, Backoff, connect, disconnect
from kfn.core import natsurl
from kfn.core.aiotasks import stop_tasks
from kfn.core.functions import Function, FunctionRef
from kfn.core.triggerspec import NatsTrigger
from kfn.triggers.base import EventSink, triggers_of

logger = logging.getLogger(__name__)

KIND = "nats"
EVENT_SOURCE = "kfn:nats"
HEADER_MSG_ID = "Nats-Msg-Id"
HEADER_SERVICE_ERROR = "Nats-Service-Error"
HEADER_SERVICE_ERROR_CODE = "Nats-Service-Error-Code"
# Fixed, so every process derives the same id for one message.
_ID_NAMESPACE = uuid.UUID("0b6f4c0e-2f5d-4a8e-9a53-7c1e5b2d9e44")


@dataclass(frozen=True)
class NatsBinding:
    """One function's NATS trigger, as this source consumes it."""

    function: FunctionRef
    subject: str
    stream: str | None

    @property
    def digest(self) -> str:
        return hashlib.sha256(f"{self.stream or ''}\0{self.subject}".encode()).hexdigest()[:10]

    @property
    def consumer(self) -> str:
        """The durable JetStream consumer (names allow no dots; `_` is in no DNS label)."""
        return f"kfn_{self.function.namespace}_{self.function.name}_{self.digest}"

    @property
    def queue_group(self) -> str:
        return f"kfn.{self.function.namespace}.{self.function.name}.{self.digest}"


def nats_bindings(functions: Sequence[Function]) -> dict[NatsBinding, int]:
    """Every NATS trigger of `functions` (two entries with the same subject and stream are one),
    with its index in spec.triggers."""
    out: dict[NatsBinding, int] = {}
    for function in functions:
        for index, trigger in triggers_of(function, KIND):
            assert isinstance(trigger, NatsTrigger)
            out.setdefault(NatsBinding(function.ref, trigger.subject, trigger.stream), index)
    return out


def message_event(data: bytes, subject: str, headers: dict[str, str] | None, *, stream: str | None = None,
                  sequence: int | None = None) -> bytes:
    """The event a message becomes (see the module docstring)."""
    if data:
        try:
            orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
        else:
            return data
    envelope: dict[str, Any] = {"eventSource": EVENT_SOURCE, "subject": subject,
                                "data": base64.b64encode(data).decode("ascii")}
    if headers:
        envelope["headers"] = dict(headers)
    if stream is not None:
        envelope["stream"] = stream
        envelope["sequence"] = sequence
    return orjson.dumps(envelope)


def stream_event_id(function: FunctionRef, stream: str, sequence: int) -> str:
    return str(uuid.uuid5(_ID_NAMESPACE, f"{function}/stream/{stream}/{sequence}"))


def message_event_id(function: FunctionRef, subject: str, headers: dict[str, str] | None) -> str:
    msg_id = (headers or {}).get(HEADER_MSG_ID)
    if msg_id:
        return str(uuid.uuid5(_ID_NAMESPACE, f"{function}/subject/{subject}/{msg_id}"))
    return str(uuid.uuid4())


@dataclass
class NatsCounters:
    stored: int = 0         # messages whose event the sink stored (acked or answered)
    failed: int = 0         # sink failures (message NAKed, or the request answered with an error)


@dataclass
class _Worker:
    binding: NatsBinding
    task: asyncio.Task[None]
    in_flight: set[asyncio.Task[None]] = field(default_factory=set)


class NatsSubjectSource:
    """The `nats` trigger kind on the NATS server at `url`; see the module docstring."""

    kind = KIND

    def __init__(self, url: str, *, ack_wait: float = 30.0, batch: int = 64, max_in_flight: int = 64,
                 fetch_wait: float = 1.0, retry: float = 5.0, nak_delay: float = 1.0, max_nak_delay: float = 60.0,
                 name: str = "kfn-triggers") -> None:
        self.url = url
        self._ack_wait = ack_wait
        self._batch = batch
        self._max_in_flight = max_in_flight
        self._fetch_wait = fetch_wait
        self._retry = retry
        self._nak_delay = nak_delay
        self._max_nak_delay = max_nak_delay
        self._name = name
        self.counters = NatsCounters()
        self._sink: EventSink | None = None
        self._nc: Client | None = None
        self._wanted: dict[NatsBinding, int] = {}
        self._workers: dict[NatsBinding, _Worker] = {}
        self._consuming: set[NatsBinding] = set()
        self._problems: dict[FunctionRef, str] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    # -- TriggerSource ----------------------------------------------------------------------------

    async def start(self, sink: EventSink) -> None:
        self._sink = sink
        self._closing = False
        self._task = asyncio.create_task(self._reconcile(), name="kfn-nats-triggers")

    def update(self, functions: Sequence[Function]) -> None:
        self._wanted = nats_bindings(functions)
        self._wake.set()

    async def close(self) -> None:
        self._closing = True
        workers = list(self._workers.values())
        self._workers.clear()
        await stop_tasks([t for t in (self._task, *(w.task for w in workers)) if t is not None],
                         what="NATS triggers")
        self._task = None
        in_flight = [task for w in workers for task in w.in_flight]
        if in_flight:
            # Events being stored: let them finish (and be acked) rather than be offered again.
            await asyncio.wait(in_flight, timeout=5.0)
            await stop_tasks(in_flight, what="NATS trigger messages")
        nc, self._nc = self._nc, None
        await disconnect(nc)

    def problems(self) -> dict[FunctionRef, str]:
        return dict(self._problems)

    def consuming(self) -> set[NatsBinding]:
        """The bindings subscribed right now (their consumer or queue subscription in place)."""
        return set(self._consuming)

    # -- reconciling ------------------------------------------------------------------------------

    async def _connect(self) -> Client:
        """A connection to NATS: runs until one is made or it is cancelled. After each failed
        attempt (bounded, `kfn._cogs.nats.connect`), each wanted trigger's function has the
        problem and it tries again (0.5 s later, doubling up to 15 s)."""

        def unreachable(error: BaseException, wait: float) -> None:
            logger.warning("NATS triggers: cannot connect to %s (%s); trying again in %.1fs",
                           natsurl.masked(self.url), error, wait)
            for binding in self._wanted:
                self._problems[binding.function] = f"NATS at {natsurl.masked(self.url)} unreachable: {error}"

        return await connect(self.url, name=self._name, attempts=None, backoff=Backoff(0.5, factor=2.0, most=15.0),
                             on_retry=unreachable)

    async def _reconcile(self) -> None:
        self._nc = await self._connect()
        while not self._closing:
            self._wake.clear()
            wanted = dict(self._wanted)
            for binding in list(self._workers):
                if binding not in wanted:
                    await self._remove(binding)
            for binding in wanted:
                worker = self._workers.get(binding)
                if worker is None or worker.task.done():
                    task = asyncio.create_task(self._consume(binding), name=f"kfn-nats-{binding.consumer}")
                    self._workers[binding] = _Worker(binding, task)
            functions = {b.function for b in wanted}
            for ref in list(self._problems):
                if ref not in functions:
                    del self._problems[ref]
            await self._wake.wait()

    async def _remove(self, binding: NatsBinding) -> None:
        worker = self._workers.pop(binding)
        await stop_tasks([worker.task], what=f"NATS trigger {binding.consumer}")
        if worker.in_flight:
            await asyncio.wait(worker.in_flight, timeout=5.0)
        if binding.stream is not None and self._nc is not None:
            # The trigger is gone: so is its place in the stream (Lambda deletes an event source
            # mapping the same way). Every replica may try; one succeeds.
            try:
                await self._nc.jetstream().delete_consumer(binding.stream, binding.consumer)
                logger.info("NATS triggers: deleted the consumer %s of %s", binding.consumer, binding.stream)
            except nats.js.errors.NotFoundError:
                pass
            except NATS_ERRORS as e:
                logger.warning("could not delete the consumer %s of %s: %s", binding.consumer, binding.stream, e)

    # -- consuming --------------------------------------------------------------------------------

    async def _consume(self, binding: NatsBinding) -> None:
        worker = self._workers[binding]
        while True:
            try:
                if binding.stream is None:
                    await self._consume_subject(binding, worker)
                else:
                    await self._consume_stream(binding, worker)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - reported, and tried again: a stream may appear later
                problem = _describe(e)
                self._problems[binding.function] = f"nats trigger {binding.subject}: {problem}"
                logger.warning("NATS trigger %s of %s: %s; trying again in %.0fs", binding.subject, binding.function,
                               problem, self._retry)
                await asyncio.sleep(self._retry)

    def _client(self) -> Client:
        if self._nc is None:
            raise nats.errors.ConnectionClosedError
        return self._nc

    async def _consume_subject(self, binding: NatsBinding, worker: _Worker) -> None:
        sub = await self._client().subscribe(binding.subject, queue=binding.queue_group)
        await self._client().flush()
        self._problems.pop(binding.function, None)
        self._consuming.add(binding)
        limit = asyncio.Semaphore(self._max_in_flight)
        try:
            async for message in sub.messages:
                await limit.acquire()
                task = asyncio.create_task(self._take_core(binding, message))
                worker.in_flight.add(task)
                task.add_done_callback(worker.in_flight.discard)
                task.add_done_callback(lambda _: limit.release())
        finally:
            self._consuming.discard(binding)
            with contextlib.suppress(*NATS_ERRORS):
                await sub.unsubscribe()

    async def _consume_stream(self, binding: NatsBinding, worker: _Worker) -> None:
        assert binding.stream is not None
        js = self._client().jetstream()
        config = ConsumerConfig(
            durable_name=binding.consumer, ack_policy=AckPolicy.EXPLICIT, ack_wait=self._ack_wait, max_deliver=-1,
            max_ack_pending=max(1000, self._max_in_flight * 4), filter_subject=binding.subject,
            deliver_policy=DeliverPolicy.NEW, description=f"kfn: nats trigger of {binding.function}")
        sub = await js.pull_subscribe(binding.subject, durable=binding.consumer, stream=binding.stream, config=config)
        self._problems.pop(binding.function, None)
        self._consuming.add(binding)
        try:
            while True:
                free = self._max_in_flight - len(worker.in_flight)
                if free <= 0:
                    await asyncio.wait(worker.in_flight, return_when=asyncio.FIRST_COMPLETED)
                    continue
                try:
                    messages = await sub.fetch(batch=min(free, self._batch), timeout=self._fetch_wait)
                except (TimeoutError, nats.errors.TimeoutError):
                    continue
                for message in messages:
                    task = asyncio.create_task(self._take_stream(binding, message))
                    worker.in_flight.add(task)
                    task.add_done_callback(worker.in_flight.discard)
        finally:
            self._consuming.discard(binding)
            with contextlib.suppress(*NATS_ERRORS):
                await sub.unsubscribe()

    async def _store(self, binding: NatsBinding, event: bytes, event_id: str) -> BaseException | None:
        assert self._sink is not None
        try:
            await self._sink(binding.function, event, event_id)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - any failure leaves the message to be offered again
            self.counters.failed += 1
            logger.warning("NATS trigger %s of %s: could not store %s: %s", binding.subject, binding.function,
                           event_id, _describe(e))
            return e
        self.counters.stored += 1
        return None

    async def _take_stream(self, binding: NatsBinding, message: Msg) -> None:
        assert binding.stream is not None
        meta = message.metadata
        event = message_event(message.data, message.subject, message.headers, stream=meta.stream or binding.stream,
                              sequence=meta.sequence.stream)
        event_id = stream_event_id(binding.function, meta.stream or binding.stream, meta.sequence.stream)
        error = await self._store(binding, event, event_id)
        try:
            if error is None:
                await message.ack()
            else:
                delivered = max(1, meta.num_delivered or 1)
                await message.nak(delay=min(self._max_nak_delay, self._nak_delay * 2 ** min(delivered - 1, 10)))
        except NATS_ERRORS as e:
            # Not acked: delivered again after ack_wait, and stored once (same id).
            logger.warning("could not acknowledge a message of %s: %s", binding.subject, _describe(e))

    async def _take_core(self, binding: NatsBinding, message: Msg) -> None:
        event = message_event(message.data, message.subject, message.headers)
        event_id = message_event_id(binding.function, message.subject, message.headers)
        error = await self._store(binding, event, event_id)
        if not message.reply:
            return
        try:
            if error is None:
                await self._client().publish(message.reply, orjson.dumps({"invocationId": event_id}))
            else:
                await self._client().publish(message.reply, b"", headers={
                    HEADER_SERVICE_ERROR: f"not stored: {_describe(error)}", HEADER_SERVICE_ERROR_CODE: "503"})
        except NATS_ERRORS as e:
            logger.warning("could not answer a request on %s: %s", binding.subject, _describe(e))


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
