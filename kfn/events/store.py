"""The durable store of asynchronous invocations: one semantics, two backends.

`EventStore` is what the gateway (accepting events) and the delivery engine (handing them to
functions) see; `kfn.events.sqlite.SqliteStore` (local mode) and
`kfn.events.jetstream.JetStreamStore` (Kubernetes) implement it. The semantics:

- `accept` returns only once the event is durable (SQLite: the WAL commit is fsync'd; JetStream:
  the server's PubAck, i.e. the message is in the stream's files). Invocation ids are the
  function's own: the same id for two functions is two events. An id the function accepted
  within the last `DEDUP_WINDOW` seconds (6 hours, the longest maximum event age) stores
  nothing new (`Accepted.duplicate`), whether its event is queued, in flight, delivered or
  dead-lettered: a caller whose accept failed or timed out, or that is not sure, retries with
  the same id and the function runs once. (A replay stores the dead letter's id again.) Ids a
  caller chose (`AcceptOptions.caller_chosen`) are kept apart from those kfn derives, in
  events and dead letters too, so a replay cannot take kfn's own id either.
- `claim` hands out up to `limit` due events of one function, each under a **lease**: until the
  lease runs out nobody else gets it; a consumer that dies holding it loses it, and the event
  is handed out again (at least once; `Delivery.deliveries` says how often). `extend` renews a
  lease during a long invocation.
- A claimed event ends in exactly one of: `complete` (gone), `reschedule` (replaced by an
  updated event, due after a delay: a retry, or an outcome whose destinations remain to be
  told), `dead_letter` (moved to the dead-letter store), `release` (handed back untouched).
  A crash between the new state being stored and the old one being removed delivers the event
  twice, never zero times.
- Dead letters are listed and replayed per function; a replay accepts the event again (a fresh
  age, no attempts) and then removes the dead letter.
- `stats` gives, per function, the events stored (queued, waiting for a retry, or in flight),
  those in flight, and when the oldest was accepted: the queue-depth and oldest-age metrics and
  the autoscaler's queued-work input.
- `queued` names every function with stored events (whichever namespace, known or not), `newest`
  where a function's newest event stands, and `discard` removes a function's stored events unrun
  (up to a `newest` read earlier): how the queues of deleted functions are removed
  (`kfn.events.orphans`, by the rule of `kfn.core.orphans`).
"""
from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import orjson

from kfn.core.asyncspec import MAX_EVENT_AGE_SECONDS
from kfn.core.functions import FunctionRef

# How long an accepted invocation id stays the function's: a retry within it stores nothing.
DEDUP_WINDOW = float(MAX_EVENT_AGE_SECONDS)


@dataclass(frozen=True)
class AcceptOptions:
    """What comes with an event besides its payload."""

    callback_url: str | None = None   # X-Callback-Url (OpenFaaS): POSTed the result at the end
    # The caller chose the id (X-Call-Id): it is de-duplicated apart from the ids kfn derives
    # (schedule ticks, trigger messages, destinations), which anyone can compute, so that a
    # caller who sends one ahead cannot take it from the event it names.
    caller_chosen: bool = False


NO_OPTIONS = AcceptOptions()


def dedup_key(invocation_id: str, options: AcceptOptions) -> str:
    """What a store de-duplicates an accepted id by, within its function."""
    return f"caller:{invocation_id}" if options.caller_chosen else invocation_id


@dataclass(frozen=True)
class Accepted:
    invocation_id: str
    duplicate: bool = False           # the function took this id within the window: nothing new was stored


@dataclass(frozen=True)
class Dispatch:
    """One message still to send about an outcome: to a destination function (`kind` function,
    `target` NAME.NAMESPACE), a destination URL (`url`) or the caller's callback URL (`callback`)."""

    kind: str
    target: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Outcome:
    """How an event ended (the function's last answer), and what is still to be told of it."""

    condition: str                    # Success, RetriesExhausted, EventAgeExceeded
    at: float                         # when it was decided (epoch seconds)
    pending: tuple[Dispatch, ...] = ()
    error: str | None = None          # the function's error type, for a failure


@dataclass(frozen=True)
class Event:
    """An asynchronous invocation as stored."""

    id: str                           # the invocation (request) id the function sees
    function: FunctionRef
    payload: bytes
    accepted_at: float                # epoch seconds; the event's age counts from here
    attempts: int = 0                 # attempts that ended in a function error
    failures: int = 0                 # system or destination errors in a row (backoff)
    generation: int = 0               # bumped by each reschedule
    callback_url: str | None = None
    last_error: str | None = None     # the last function error's type
    last_response: bytes | None = None
    outcome: Outcome | None = None
    caller_chosen: bool = False       # the id is the caller's (X-Call-Id): see `dedup_key`

    @classmethod
    def new(cls, function: FunctionRef, payload: bytes, invocation_id: str, options: AcceptOptions, *,
            accepted_at: float) -> Event:
        """The event an accept stores: no attempts yet, its age counting from `accepted_at`."""
        return cls(id=invocation_id, function=function, payload=payload, accepted_at=accepted_at,
                   callback_url=options.callback_url, caller_chosen=options.caller_chosen)

    @property
    def dedup_key(self) -> str:
        return dedup_key(self.id, AcceptOptions(caller_chosen=self.caller_chosen))

    def encode(self) -> bytes:
        return orjson.dumps(_to_json(self))

    @classmethod
    def decode(cls, data: bytes) -> Event:
        """ValueError if `data` is not an envelope of ours (not JSON, a field missing or of another type)."""
        try:
            return _from_json(orjson.loads(data))
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"not an event envelope: {type(e).__name__}: {e}") from None

    def next(self, **changes: Any) -> Event:
        """This event as it is stored again by a reschedule."""
        return replace(self, generation=self.generation + 1, **changes)


@dataclass(frozen=True)
class Delivery:
    """A claimed event: its lease is the consumer's until completed, rescheduled, dead-lettered,
    released or expired. `handle` is the backend's own."""

    event: Event
    deliveries: int                   # 1 the first time it is handed out
    handle: Any = field(repr=False, compare=False, default=None)


@dataclass(frozen=True)
class DeadLetter:
    """An event given up, kept for inspection and replay."""

    id: str
    function: FunctionRef
    payload: bytes
    accepted_at: float
    failed_at: float
    condition: str
    attempts: int
    error: str | None = None          # the last function error type, or what failed
    response: bytes | None = None     # the function's last answer
    caller_chosen: bool = False       # the caller chose the id: a replay keeps it apart from kfn's

    @property
    def dedup_key(self) -> str:
        return dedup_key(self.id, AcceptOptions(caller_chosen=self.caller_chosen))

    def replayed(self, accepted_at: float) -> Event:
        """The event a replay stores again: the same id (still the caller's, if it was) and
        payload, a fresh age from `accepted_at`, no attempts and no callback."""
        return Event(id=self.id, function=self.function, payload=self.payload, accepted_at=accepted_at,
                     caller_chosen=self.caller_chosen)

    def encode(self) -> bytes:
        return orjson.dumps({
            "id": self.id, "namespace": self.function.namespace, "name": self.function.name,
            "payload": _b64(self.payload), "accepted_at": self.accepted_at, "failed_at": self.failed_at,
            "condition": self.condition, "attempts": self.attempts, "error": self.error,
            "response": None if self.response is None else _b64(self.response),
            **({"caller": True} if self.caller_chosen else {}),
        })

    @classmethod
    def decode(cls, data: bytes) -> DeadLetter:
        raw = orjson.loads(data)
        return cls(id=raw["id"], function=FunctionRef(raw["namespace"], raw["name"]),
                   payload=base64.b64decode(raw["payload"]), accepted_at=raw["accepted_at"],
                   failed_at=raw["failed_at"], condition=raw["condition"], attempts=raw["attempts"],
                   error=raw.get("error"),
                   response=None if raw.get("response") is None else base64.b64decode(raw["response"]),
                   caller_chosen=bool(raw.get("caller", False)))


@dataclass(frozen=True)
class QueueStats:
    depth: int                        # events stored: queued, waiting for a retry or in flight
    in_flight: int                    # under a lease now
    oldest_accepted_at: float | None  # epoch seconds of the oldest stored event

    def oldest_age(self, now: float) -> float:
        return 0.0 if self.oldest_accepted_at is None else max(0.0, now - self.oldest_accepted_at)


class StoreUnavailable(Exception):
    """The store could not be reached or did not confirm in time; the operation may or may not
    have happened (retry an accept with the same id)."""


class EventStore(Protocol):
    async def start(self) -> None:
        """Open the store (create what is missing); returns once it can accept."""

    async def close(self) -> None:
        """Close it; leases held are left to expire."""

    async def accept(self, function: FunctionRef, payload: bytes, invocation_id: str,
                     options: AcceptOptions = NO_OPTIONS) -> Accepted:
        """Store an event durably; returns only once it is, or once it is known that `function`
        took `invocation_id` within the de-duplication window (`duplicate`, nothing stored).
        Raises StoreUnavailable."""

    async def claim(self, function: FunctionRef, limit: int, *, wait: float) -> list[Delivery]:
        """Up to `limit` due events of `function`, each under a lease; waits up to `wait` seconds
        for the first one. Waiting costs nothing per function: the store is woken by events it
        accepts, and times the next retry or lease expiry itself. Raises StoreUnavailable."""

    async def extend(self, delivery: Delivery) -> None:
        """Renew the lease of a delivery still in progress."""

    async def complete(self, delivery: Delivery) -> None:
        """The event is done: remove it."""

    async def reschedule(self, delivery: Delivery, event: Event, *, delay: float) -> None:
        """Replace the delivered event by `event`, handed out again after `delay` seconds."""

    async def release(self, delivery: Delivery) -> None:
        """Hand the event back untouched (a consumer stopping): due again at once."""

    async def dead_letter(self, delivery: Delivery, letter: DeadLetter) -> None:
        """Move the event to the dead-letter store."""

    async def dead_letters(self, function: FunctionRef, *, limit: int = 100) -> list[DeadLetter]:
        """The function's dead letters, oldest first."""

    async def replay(self, function: FunctionRef, ids: Sequence[str] | None = None) -> list[str]:
        """Accept dead letters again (all of the function's, or those with these ids) and remove
        them from the dead-letter store; returns the ids replayed."""

    async def stats(self, functions: Sequence[FunctionRef]) -> dict[FunctionRef, QueueStats]:
        """Queue depth, in-flight count and oldest event, per function."""

    async def queued(self) -> dict[FunctionRef, int]:
        """Every function with stored events, and how many. Raises StoreUnavailable."""

    async def newest(self, function: FunctionRef) -> int:
        """Where the function's newest stored event stands in the store's order (a sequence that
        only grows; 0 when it has none): what `discard(through=...)` takes. Raises
        StoreUnavailable."""

    async def discard(self, function: FunctionRef, *, through: int | None = None) -> int:
        """Remove the function's stored events, unrun (SQLite leaves those in flight; JetStream
        removes them too: call it for a queue with none in flight), only those stored at or
        before `through` (a `newest` read earlier) when given, so an event accepted since is
        kept; returns how many were removed, 0 when there were none (another process took them
        first). Raises StoreUnavailable."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _to_json(event: Event) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": event.id, "namespace": event.function.namespace, "name": event.function.name,
        "payload": _b64(event.payload), "accepted_at": event.accepted_at,
    }
    if event.attempts:
        out["attempts"] = event.attempts
    if event.failures:
        out["failures"] = event.failures
    if event.generation:
        out["generation"] = event.generation
    if event.callback_url:
        out["callback_url"] = event.callback_url
    if event.last_error:
        out["last_error"] = event.last_error
    if event.last_response is not None:
        out["last_response"] = _b64(event.last_response)
    if event.caller_chosen:
        out["caller"] = True
    if event.outcome is not None:
        outcome = event.outcome
        out["outcome"] = {
            "condition": outcome.condition, "at": outcome.at, "error": outcome.error,
            "pending": [{"kind": d.kind, "target": d.target, "body": _b64(d.body), "headers": list(d.headers)}
                        for d in outcome.pending],
        }
    return out


def _from_json(raw: dict[str, Any]) -> Event:
    outcome = None
    if raw.get("outcome") is not None:
        o = raw["outcome"]
        outcome = Outcome(
            condition=o["condition"], at=o["at"], error=o.get("error"),
            pending=tuple(Dispatch(kind=d["kind"], target=d["target"], body=base64.b64decode(d["body"]),
                                   headers=tuple((k, v) for k, v in d.get("headers", ())))
                          for d in o.get("pending", ())))
    last_response = raw.get("last_response")
    return Event(
        id=raw["id"], function=FunctionRef(raw["namespace"], raw["name"]),
        payload=base64.b64decode(raw["payload"]), accepted_at=raw["accepted_at"],
        attempts=raw.get("attempts", 0), failures=raw.get("failures", 0), generation=raw.get("generation", 0),
        callback_url=raw.get("callback_url"), last_error=raw.get("last_error"),
        last_response=None if last_response is None else base64.b64decode(last_response),
        outcome=outcome, caller_chosen=bool(raw.get("caller", False)),
    )
