"""The delivery engine: stored asynchronous invocations → functions, with Lambda's policy.

One engine runs per process that delivers (local mode; each gateway replica on Kubernetes). It
keeps one consumer loop per function it is told of (`configs`), which claims due events from
the store, never more at once than its share of the function's async concurrency
(`delivery_share`: `AsyncConfig.concurrency` divided among the engines sharing the store, which
`set_replicas` updates as gateway replicas come and go; `DeliverySettings.replicas` until then),
and delivers each one through the injected
`invoke(function, payload, invocation_id)` — the gateway's dispatch, or a fake in tests — so the
engine knows nothing of HTTP or instances. A consumer with nothing to do waits in the store's
`claim` (`claim_wait`, long), which wakes it when an event of its function arrives or becomes due
(a retry's delay, a lease running out): idle, the engine costs nothing per function.

For each event (`kfn.core.asyncpolicy` has the policy):

1. an event whose outcome is already known only has destinations left to tell (step 4);
2. one older than `maximumEventAgeSeconds` is given up (EventAgeExceeded);
3. otherwise the function is invoked, at most its timeout plus `timeout_margin`; the lease is
   renewed every `heartbeat` meanwhile. Success → step 4. A function error (error result,
   `InvocationFailed`, timeout) with attempts left → rescheduled after Lambda's delay; without
   → given up (RetriesExhausted). `NotInvoked` (throttled, no instance) → rescheduled with
   backoff, no attempt counted;
4. the outcome is told: the destination (a function: an async invocation stored for it; a URL: a
   POST of Lambda's invocation record, whose answer is read at most `destination_answer_bytes`:
   only its status counts, a redirect is not followed) and the caller's X-Callback-Url. Telling
   takes none of the function's concurrency (as Lambda's destinations): up to
   `tells_per_function` of its events tell at once beside it, so a URL that is slow to answer
   does not hold up the function's other events. What cannot be told yet
   is rescheduled with backoff for up to `destination_retry_for`; then a success is complete,
   and an event given up (or whose destinations stayed unreachable) becomes a dead letter.

Every step stores its result before the lease is given up, so a consumer killed at any point
leaves the event to be delivered again: at least once, nothing lost.

On `close`, deliveries still running when `drain_timeout` runs out are stopped and their events
released (`EventStore.release`: due again at once, for another engine), not left leased until
the lease runs out. Such an event may have run: it runs again (at least once, as Lambda's
asynchronous invocations), and is counted (`Counters.released`, kfn_async_events_total's
outcome "released"): the duplicates a shutdown may cause.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import socket
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from kfn.core import asyncpolicy
from kfn.core.aiotasks import stop_tasks
from kfn.core.asyncpolicy import AsyncConfig, InvocationFailed, NotInvoked, RetryDelays, Target
from kfn.core.functions import FunctionRef
from kfn.core.instances import InvocationResult
from kfn.events.store import DeadLetter, Delivery, Dispatch, Event, EventStore, Outcome, QueueStats, StoreUnavailable
from kfn_runtime import awslambda

logger = logging.getLogger(__name__)

Invoke = Callable[[FunctionRef, bytes, str], Awaitable[InvocationResult]]
# POST body with headers to a URL; returns the HTTP status (raises OSError/aiohttp errors when unreachable).
Post = Callable[[str, bytes, Mapping[str, str]], Awaitable[int]]


@dataclass(frozen=True)
class DeliverySettings:
    delays: RetryDelays = RetryDelays()
    heartbeat: float = 10.0            # lease renewal during an invocation (keep it under a third of the lease)
    poll: float = 1.0                  # how often the functions' settings are read again without being told
    claim_wait: float = 60.0           # how long one claim waits for events (the store wakes it when one comes)
    timeout_margin: float = 5.0        # beyond the function's timeout before the engine gives up on an attempt
    destination_timeout: float = 10.0  # one POST to a destination or callback URL
    destination_answer_bytes: int = 64 * 1024  # of a destination's or callback's answer, read at most (then cut off)
    destination_lookup_threads: int = 64  # name lookups of destination and callback hosts at once (own threads)
    destination_retry_for: float = 3600.0  # how long an unreachable destination is retried
    tells_per_function: int = 100      # events of a function telling their outcome at once (beside its concurrency)
    stats_interval: float = 5.0        # how often the queue statistics are refreshed
    replicas: int = 1                  # engines sharing the store until told otherwise (`set_replicas`)
    error_backoff: float = 1.0         # wait after the store failed, growing to 30 s
    drain_timeout: float = 10.0        # on close, how long deliveries in progress may finish
    release_timeout: float = 2.0       # then, how long handing back the events still running may take


def delivery_share(concurrency: int, replicas: int) -> int:
    """How many of a function's events one engine delivers at once when `replicas` engines share
    the store: its concurrency divided among them, rounded up, never 0."""
    return max(1, math.ceil(concurrency / max(1, replicas)))


def live_replicas(seen: int | None, last_known: int) -> int:
    """The engines sharing the store: `seen` (the live count) when it is one or more, else
    `last_known` (none seen, or a count not known yet), never below 1."""
    if seen is not None and seen >= 1:
        return seen
    return max(1, last_known)


@dataclass
class Counters:
    """What this engine did, since it started (exported as kfn_async_events_total)."""

    invocations: int = 0     # attempts made (function invoked)
    delivered: int = 0       # events whose function succeeded and whose outcome was told
    retried: int = 0         # function errors followed by another attempt
    throttled: int = 0       # events put back because the function could not run (not an attempt)
    dead_lettered: int = 0   # events given up
    destinations: int = 0    # destination and callback messages delivered
    destination_errors: int = 0
    expired: int = 0         # given up for their age (also counted in dead_lettered)
    released: int = 0        # still running at the drain timeout: handed back (they may run again)

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class _Consumer:
    task: asyncio.Task[None]
    in_flight: set[asyncio.Task[None]] = field(default_factory=set)   # deliveries taking the concurrency
    telling: set[asyncio.Task[None]] = field(default_factory=set)     # deliveries only telling their outcome
    held: dict[asyncio.Task[None], Delivery] = field(default_factory=dict)   # each delivery task's lease


class DeliveryEngine:
    """Delivers a store's events to functions; see the module docstring."""

    def __init__(self, store: EventStore, invoke: Invoke, configs: Callable[[], Mapping[FunctionRef, AsyncConfig]],
                 *, post: Post | None = None, settings: DeliverySettings = DeliverySettings(),
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self._invoke = invoke
        self._configs = configs
        self._post = post
        self.settings = settings
        self._clock = clock
        self.counters = Counters()
        self._consumers: dict[FunctionRef, _Consumer] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self._lookups: ThreadPoolExecutor | None = None
        self._stats: dict[FunctionRef, QueueStats] = {}
        self._stats_at: float | None = None
        self._closing = False
        self._wake = asyncio.Event()
        self.replicas = live_replicas(None, settings.replicas)

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start consuming for every function `configs` names (and those it names later)."""
        if self._tasks:
            return
        self._closing = False
        self._tasks = [asyncio.create_task(self._supervise(), name="kfn-async-supervisor"),
                       asyncio.create_task(self._refresh_stats(), name="kfn-async-stats")]

    def refresh(self) -> None:
        """The set of functions or their settings changed: reconcile consumers now."""
        self._wake.set()

    def set_replicas(self, seen: int | None) -> None:
        """The engines sharing the store are now `seen` (None or 0: not known, the last count
        stays): each function's share (`delivery_share`) follows from the next claim on."""
        replicas = live_replicas(seen, self.replicas)
        if replicas != self.replicas:
            logger.info("async delivery shared by %d gateway replicas (was %d)", replicas, self.replicas)
            self.replicas = replicas

    async def close(self) -> None:
        """Stop claiming, let deliveries in progress finish for up to `drain_timeout`, then stop
        the rest and release their events (due again at once, for another engine; for up to
        `release_timeout`: an event not released is delivered again once its lease runs out)."""
        self._closing = True
        consumers = list(self._consumers.values())
        self._consumers.clear()
        await stop_tasks([*self._tasks, *(c.task for c in consumers)], what="the async delivery engine")
        self._tasks = []
        in_flight = [task for c in consumers for task in (*c.in_flight, *c.telling)]
        if in_flight:
            await asyncio.wait(in_flight, timeout=self.settings.drain_timeout)
            unfinished = [c.held[task] for c in consumers for task in in_flight
                          if not task.done() and task in c.held]
            await stop_tasks(in_flight, what="async deliveries")
            if unfinished:
                await self._release(unfinished)
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._lookups is not None:
            self._lookups.shutdown(wait=False, cancel_futures=True)   # a lookup still hanging ends on its own
            self._lookups = None

    async def _release(self, deliveries: list[Delivery]) -> None:
        """Hand back the events of deliveries stopped at the drain timeout, for at most
        `release_timeout`; a failure is logged (that event waits for its lease to run out)."""
        async def release(delivery: Delivery) -> None:
            try:
                await self.store.release(delivery)
            except StoreUnavailable as e:
                logger.warning("could not release async event %s: %s", delivery.event.id, e)
                return
            self.counters.released += 1

        logger.warning("releasing %d async events still running after the drain timeout (%gs): other "
                       "gateways deliver them again", len(deliveries), self.settings.drain_timeout)
        tasks = [asyncio.create_task(release(d), name=f"kfn-async-release-{d.event.id}") for d in deliveries]
        await asyncio.wait(tasks, timeout=self.settings.release_timeout)
        await stop_tasks(tasks, what="async releases")

    # -- what others read ------------------------------------------------------------------------

    def queue_stats(self) -> dict[FunctionRef, QueueStats]:
        """Queue depth, in-flight count and oldest event per function, as last refreshed."""
        return dict(self._stats)

    async def refresh_stats(self) -> dict[FunctionRef, QueueStats]:
        self._stats = await self.store.stats(list(self._configs()))
        self._stats_at = self._clock()
        return dict(self._stats)

    # -- consumers -------------------------------------------------------------------------------

    async def _supervise(self) -> None:
        while not self._closing:
            self._wake.clear()
            try:
                configs = self._configs()
            except Exception:
                logger.exception("could not read the functions' async settings")
                configs = {}
            for ref in list(self._consumers):
                if ref not in configs:
                    consumer = self._consumers.pop(ref)
                    consumer.task.cancel()
            for ref in configs:
                existing = self._consumers.get(ref)
                if existing is None or existing.task.done():
                    task = asyncio.create_task(self._consume(ref), name=f"kfn-async-{ref}")
                    self._consumers[ref] = _Consumer(task)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.settings.poll)

    async def _refresh_stats(self) -> None:
        while not self._closing:
            try:
                await self.refresh_stats()
            except StoreUnavailable as e:
                logger.warning("could not read the async queues: %s", e)
            except Exception:
                logger.exception("could not read the async queues")
            await asyncio.sleep(self.settings.stats_interval)

    def _limit(self, config: AsyncConfig) -> int:
        return delivery_share(config.concurrency, self.replicas)

    async def _consume(self, ref: FunctionRef) -> None:
        consumer = self._consumers[ref]
        backoff = self.settings.error_backoff
        while not self._closing:
            config = self._configs().get(ref)
            if config is None:
                return
            in_flight = consumer.in_flight
            free = self._limit(config) - len(in_flight)
            if free <= 0 or len(consumer.telling) >= self.settings.tells_per_function:
                await asyncio.wait(in_flight | consumer.telling, return_when=asyncio.FIRST_COMPLETED,
                                   timeout=self.settings.poll)
                continue
            try:
                deliveries = await self.store.claim(ref, free, wait=self.settings.claim_wait)
            except StoreUnavailable as e:
                logger.warning("async events of %s: %s; trying again in %.1fs", ref, e, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            backoff = self.settings.error_backoff
            if not deliveries:
                continue
            # The claim may have waited long: deliver with the settings of now.
            config = self._configs().get(ref)
            if config is None:
                for delivery in deliveries:
                    with contextlib.suppress(StoreUnavailable):   # else its lease runs out
                        await self.store.release(delivery)
                return
            for delivery in deliveries:
                task = asyncio.create_task(self._deliver(config, delivery), name=f"kfn-async-{delivery.event.id}")
                in_flight.add(task)
                consumer.held[task] = delivery
                task.add_done_callback(in_flight.discard)
                task.add_done_callback(consumer.telling.discard)
                task.add_done_callback(functools.partial(_forget, consumer.held))

    # -- one event -------------------------------------------------------------------------------

    async def _deliver(self, config: AsyncConfig, delivery: Delivery) -> None:
        heartbeat = asyncio.create_task(self._heartbeat(delivery), name=f"kfn-async-lease-{delivery.event.id}")
        try:
            await self._process(config, delivery)
        except StoreUnavailable as e:
            # The event's new state may not be stored: its lease runs out and it comes again.
            logger.warning("async event %s of %s: %s", delivery.event.id, config.function, e)
        except Exception:
            logger.exception("async event %s of %s failed in the engine", delivery.event.id, config.function)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat

    async def _heartbeat(self, delivery: Delivery) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat)
            try:
                await self.store.extend(delivery)
            except StoreUnavailable as e:
                logger.warning("could not renew the lease of %s: %s", delivery.event.id, e)

    async def _process(self, config: AsyncConfig, delivery: Delivery) -> None:
        event = delivery.event
        if event.outcome is not None:
            await self._tell(config, delivery, event, event.outcome)
            return
        now = self._clock()
        if asyncpolicy.too_old(config, accepted_at=event.accepted_at, now=now):
            self.counters.expired += 1
            outcome = self._outcome(config, event, asyncpolicy.EVENT_AGE_EXCEEDED, event.last_response,
                                    event.last_error, now=now)
            await self._tell(config, delivery, event, outcome)
            return
        self.counters.invocations += 1
        try:
            result = await asyncio.wait_for(self._invoke(config.function, event.payload, event.id),
                                            timeout=config.timeout + self.settings.timeout_margin)
        except NotInvoked as e:
            self.counters.throttled += 1
            failures = event.failures + 1
            delay = self.settings.delays.after_system_error(failures, retry_after=e.retry_after)
            await self.store.reschedule(delivery, event.next(failures=failures), delay=delay)
            return
        except InvocationFailed as e:
            result = _failed(str(e), e.error_type)
        except TimeoutError:
            result = _failed(f"RequestId: {event.id} Error: Task timed out after {config.timeout:.2f} seconds",
                             awslambda.ERROR_TIMED_OUT)
        attempts = event.attempts + 1
        now = self._clock()
        if result.function_error is None:
            outcome = self._outcome(config, event, asyncpolicy.SUCCESS, result.payload, None, now=now,
                                    attempts=attempts)
            await self._tell(config, delivery, event, outcome)
            return
        error = result.error_type or result.function_error
        if asyncpolicy.should_retry(config, attempts=attempts):
            self.counters.retried += 1
            delay = self.settings.delays.after_function_error(attempts)
            await self.store.reschedule(
                delivery, event.next(attempts=attempts, failures=0, last_error=error, last_response=result.payload),
                delay=delay)
            return
        outcome = self._outcome(config, event, asyncpolicy.RETRIES_EXHAUSTED, result.payload, error, now=now,
                                attempts=attempts)
        given_up = event.next(attempts=attempts, last_error=error, last_response=result.payload)
        await self._tell(config, delivery, given_up, outcome)

    def _outcome(self, config: AsyncConfig, event: Event, condition: str, response: bytes | None,
                 error: str | None, *, now: float, attempts: int | None = None) -> Outcome:
        attempts = event.attempts if attempts is None else attempts
        success = condition == asyncpolicy.SUCCESS
        target = config.on_success if success else config.on_failure
        pending: list[Dispatch] = []
        if target is not None:
            record = asyncpolicy.destination_record(
                invocation_id=event.id, function_arn=config.function_arn, condition=condition,
                approximate_invoke_count=attempts, request_payload=event.payload, response_payload=response,
                function_error=None if success else awslambda.UNHANDLED, timestamp=now)
            pending.append(_dispatch_to(target, orjson.dumps(record)))
        if event.callback_url:
            # OpenFaaS's queue worker: the result as the body, the status in X-Function-Status.
            pending.append(Dispatch("callback", event.callback_url, response or b"", (
                ("X-Call-Id", event.id), ("X-Function-Name", str(config.function)),
                ("X-Function-Status", "200" if success else "500"), ("Content-Type", "application/json"))))
        return Outcome(condition=condition, at=now, pending=tuple(pending), error=error)

    async def _tell(self, config: AsyncConfig, delivery: Delivery, event: Event, outcome: Outcome) -> None:
        if outcome.pending:
            self._only_telling(config.function)
        remaining = []
        for dispatch in outcome.pending:
            if await self._send(event, outcome, dispatch):
                self.counters.destinations += 1
            else:
                self.counters.destination_errors += 1
                remaining.append(dispatch)
        now = self._clock()
        if remaining and now - outcome.at < self.settings.destination_retry_for:
            failures = event.failures + 1
            delay = self.settings.delays.after_destination_error(failures)
            told = Outcome(outcome.condition, outcome.at, tuple(remaining), outcome.error)
            await self.store.reschedule(delivery, event.next(failures=failures, outcome=told), delay=delay)
            return
        if outcome.condition == asyncpolicy.SUCCESS and not remaining:
            await self.store.complete(delivery)
            self.counters.delivered += 1
            return
        condition = outcome.condition
        error = outcome.error
        if remaining:
            error = f"could not tell {', '.join(_shown(d.target) for d in remaining)}"
            if condition == asyncpolicy.SUCCESS:
                condition = asyncpolicy.DESTINATION_FAILED
        letter = DeadLetter(id=event.id, function=config.function, payload=event.payload,
                            accepted_at=event.accepted_at, failed_at=now, condition=condition,
                            attempts=event.attempts, error=error, response=event.last_response,
                            caller_chosen=event.caller_chosen)
        await self.store.dead_letter(delivery, letter)
        self.counters.dead_lettered += 1

    def _only_telling(self, function: FunctionRef) -> None:
        """The current delivery is done with its function: waiting for its destination or callback
        URL (up to `destination_timeout` a POST, the caller's choice), it gives the function's
        concurrency back, as Lambda's destinations take none of it, and takes one of the
        `tells_per_function` instead."""
        task = asyncio.current_task()
        consumer = self._consumers.get(function)
        if task is not None and consumer is not None and task in consumer.in_flight:
            consumer.in_flight.discard(task)
            consumer.telling.add(task)

    async def _send(self, event: Event, outcome: Outcome, dispatch: Dispatch) -> bool:
        try:
            if dispatch.kind == "function":
                ref = FunctionRef.parse(dispatch.target)
                # Derived from this event (its function, id and arrival: a replay is a new one), so
                # a retried hand-over is stored once and two functions' events never collide.
                source = f"{event.function}/{event.id}/{event.accepted_at!r}"
                await self.store.accept(ref, dispatch.body,
                                        asyncpolicy.destination_invocation_id(source, outcome.condition))
                return True
            status = await self._post_to(dispatch.target, dispatch.body, dict(dispatch.headers))
        except StoreUnavailable as e:
            logger.warning("could not hand %s's outcome to %s: %s", event.id, _shown(dispatch.target), e)
            return False
        except (OSError, aiohttp.ClientError, TimeoutError, ValueError) as e:
            # ValueError: a URL aiohttp takes but cannot reach (a host name the name lookup refuses
            # raises UnicodeError): as unreachable, never a crash that would run the function again.
            logger.warning("could not POST %s's outcome to %s: %s", event.id, _shown(dispatch.target),
                           _shown(f"{type(e).__name__}: {e}", dispatch.target))
            return False
        if 200 <= status < 300:
            return True
        logger.warning("%s answered %d to %s's outcome", _shown(dispatch.target), status, event.id)
        # A client error will not change by trying again, except for throttling.
        return 400 <= status < 500 and status not in (408, 429)

    async def _post_to(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        if self._post is not None:
            return await self._post(url, body, headers)
        if self._session is None:
            # The answer is not looked at: not worth decompressing either. No pool limit: the
            # functions' async concurrency bounds the POSTs at once, and aiohttp's default (100 for
            # all URLs) would let one function's URLs that never answer hold up every other's.
            self._lookups = ThreadPoolExecutor(self.settings.destination_lookup_threads,
                                               thread_name_prefix="kfn-destination-lookup")
            connector = aiohttp.TCPConnector(limit=0, resolver=aiohttp.ThreadedResolver(
                loop=_LookupLoop(self._lookups)))   # type: ignore[arg-type]  # the two methods it calls
            self._session = aiohttp.ClientSession(connector=connector, trust_env=False, auto_decompress=False)
        timeout = aiohttp.ClientTimeout(total=self.settings.destination_timeout)
        all_headers = {"Content-Type": "application/json", **headers}
        # A redirect is the answer (its 3xx is not a success), not a POST to make elsewhere: Lambda's
        # destinations do not follow them, and the URL is the caller's choice.
        async with self._session.post(url, data=body, headers=all_headers, timeout=timeout,
                                      allow_redirects=False) as response:
            # The status is the answer: a body that breaks off or stalls after it changes nothing
            # (its connection is closed, not reused).
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                await _discard(response, self.settings.destination_answer_bytes)
            return response.status


def _forget(held: dict[asyncio.Task[None], Delivery], task: asyncio.Task[None]) -> None:
    held.pop(task, None)


class _LookupLoop:
    """What aiohttp's ThreadedResolver uses of its event loop, in threads of the engine's own.

    The hosts are the callers' choice: a name whose DNS never answers holds a thread for as long
    as the system's resolver tries (seconds to minutes). In the loop's default threads, a few such
    names would stall everything else the process runs in them; here they can only wait for each
    other, `DeliverySettings.destination_lookup_threads` at a time."""

    def __init__(self, threads: ThreadPoolExecutor) -> None:
        self._threads = threads

    async def getaddrinfo(self, host: str, port: int, *, family: int = 0, type: int = 0, proto: int = 0,
                          flags: int = 0) -> list[Any]:
        call = functools.partial(socket.getaddrinfo, host, port, family, type, proto, flags)
        return await asyncio.get_running_loop().run_in_executor(self._threads, call)

    async def getnameinfo(self, address: tuple[Any, ...], flags: int = 0) -> tuple[str, str]:
        return await asyncio.get_running_loop().run_in_executor(self._threads, socket.getnameinfo, address, flags)


async def _discard(response: aiohttp.ClientResponse, limit: int) -> None:
    """Read and drop the body of an answer: a whole body of at most `limit` bytes leaves its
    connection for the next POST; the first bytes past it close the connection (the URL is the
    caller's choice: its answer may be endless). Raises aiohttp's errors when the body breaks off,
    TimeoutError when the POST's time runs out."""
    read = 0
    while chunk := await response.content.readany():
        read += len(chunk)
        if read > limit:
            response.close()
            return


def _shown(text: str, url: str | None = None) -> str:
    """`text` as logs and dead letters show it: without the password of `url` (by default, `text`
    itself is the URL), which the caller who chose it may have put in it (http://user:password@host)."""
    try:
        password = urllib.parse.urlsplit(text if url is None else url).password
    except ValueError:
        return text
    return text.replace(f":{password}@", ":***@") if password else text


def _dispatch_to(target: Target, body: bytes) -> Dispatch:
    if target.function is not None:
        return Dispatch("function", str(target.function), body)
    return Dispatch("url", str(target.url), body, (("Content-Type", "application/json"),))


def _failed(message: str, error_type: str) -> InvocationResult:
    return InvocationResult(payload=awslambda.error_payload(error_type, message), function_error=awslambda.UNHANDLED,
                            error_type=error_type)

