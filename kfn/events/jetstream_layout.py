"""The layout of the JetStream event store: its streams, subjects, consumers and message ids.

- stream `KFN_ASYNC` (file storage, work-queue retention, duplicate window 2 min) holds the
  queued events, subject `kfn.async.NAMESPACE.NAME`, one JSON envelope each (`Event.encode`);
- one durable pull consumer per function (`async_NAMESPACE_NAME`, filtered on its subject,
  explicit acks, `ack_wait` = the lease, no delivery limit) shared by every replica of the
  engine: JetStream hands each message to one fetcher at a time and again only after
  `ack_wait` without an ack or a progress signal — at least once;
- stream `KFN_DLQ` (file storage, limits retention, `dead_letter_max_age`) holds dead letters,
  subject `kfn.dlq.NAMESPACE.NAME`;
- stream `KFN_ASYNC_IDS` (file storage, limits retention, one message per subject, `max_age` the
  de-duplication window, 6 hours; at most `ids_max_bytes`, 128 MiB, the oldest discarded first)
  remembers the invocation ids each function accepted, subject `kfn.ids.NAMESPACE.NAME.HASH`
  (HASH: of the id), an empty message each.

Every message id (`Nats-Msg-Id`) names the function, since JetStream de-duplicates by message id
across a whole stream. The streams' own duplicate windows stay short (2 minutes, or the
de-duplication window if that is shorter) because nats-server keeps those ids in memory and
forgets them on a restart for messages already acknowledged; the ids stream is on disk and
expires them itself. NATS triggers may not subscribe to any `*_PREFIX` subject here.
"""
from __future__ import annotations

import hashlib

from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from kfn.core.functions import FunctionRef

STREAM = "KFN_ASYNC"
DLQ_STREAM = "KFN_DLQ"
IDS_STREAM = "KFN_ASYNC_IDS"
SUBJECT_PREFIX = "kfn.async"
DLQ_PREFIX = "kfn.dlq"
IDS_PREFIX = "kfn.ids"
JS_API = "$JS.API"   # the JetStream API's subjects (the default prefix, which the store's context uses)
HEADER_MSG_ID = "Nats-Msg-Id"
HEADER_NOT_BEFORE = "Kfn-Not-Before"
DUPLICATE_WINDOW = 120.0
# The ids stream's size: about 130 bytes an id, so a million ids (6 hours at 46 events a second);
# beyond it the oldest ids go first, and accepting events is never refused for the ids' sake.
IDS_MAX_BYTES = 128 * 1024 * 1024


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


def streams(*, dedup_window: float, dead_letter_max_age: float, ids_max_bytes: int) -> list[StreamConfig]:
    """The configurations of the store's three streams, in the order they are set up."""
    return [
        StreamConfig(
            name=STREAM, subjects=[f"{SUBJECT_PREFIX}.>"], storage=StorageType.FILE,
            retention=RetentionPolicy.WORK_QUEUE, duplicate_window=min(DUPLICATE_WINDOW, dedup_window)),
        StreamConfig(
            name=DLQ_STREAM, subjects=[f"{DLQ_PREFIX}.>"], storage=StorageType.FILE,
            retention=RetentionPolicy.LIMITS, duplicate_window=DUPLICATE_WINDOW, max_age=dead_letter_max_age),
        StreamConfig(
            name=IDS_STREAM, subjects=[f"{IDS_PREFIX}.>"], storage=StorageType.FILE,
            retention=RetentionPolicy.LIMITS, max_msgs_per_subject=1, max_age=dedup_window,
            max_bytes=ids_max_bytes, discard=DiscardPolicy.OLD, allow_direct=True,
            duplicate_window=min(DUPLICATE_WINDOW, dedup_window)),
    ]


def consumer(function: FunctionRef, *, lease: float, max_in_flight: int) -> ConsumerConfig:
    """The configuration of `function`'s pull consumer: a message is leased for `lease` seconds,
    at most `max_in_flight` at a time."""
    return ConsumerConfig(
        durable_name=consumer_name(function), ack_policy=AckPolicy.EXPLICIT, ack_wait=lease,
        max_deliver=-1, max_ack_pending=max_in_flight, filter_subject=subject(function),
        deliver_policy=DeliverPolicy.ALL)
