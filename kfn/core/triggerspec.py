"""The event sources of a function other than HTTP (schedules and NATS subjects), each event an
asynchronous invocation."""
from __future__ import annotations

import re

from pydantic import Field, field_validator, model_validator

from kfn.core import schedules
from kfn.core.fields import StrictModel, invalid

# A NATS subject: dot-separated tokens without spaces; `*` a whole token, `>` only the last one.
NATS_SUBJECT_PATTERN = r"^([^\s.*>]+|\*)(\.([^\s.*>]+|\*))*(\.>)?$|^>$"
_NATS_SUBJECT = re.compile(NATS_SUBJECT_PATTERN)
# The first token of every subject kfn itself uses on NATS (kfn.events.jetstream: kfn.async, kfn.dlq,
# kfn.ids), which no trigger may subscribe to.
RESERVED_SUBJECT_ROOT = "kfn"
# The trigger kinds, written once: a new kind is a field of Trigger named here (and a source that
# turns its events into asynchronous invocations).
TRIGGER_KINDS: tuple[str, ...] = ("schedule", "nats")
MAX_TRIGGERS = 16


class NatsTrigger(StrictModel):
    """Messages on a NATS subject, each one an asynchronous invocation with the message as its event."""

    subject: str = Field(description="The subject (wildcards * and > allowed), e.g. orders.created.")
    stream: str | None = Field(
        default=None,
        description="A JetStream stream holding the subject: messages are then consumed durably and acknowledged "
                    "only once stored. Without it, a core NATS subscription (a message is stored before it is "
                    "answered, but what is published while no trigger listens is not seen).")

    @field_validator("subject")
    @classmethod
    def _subject(cls, value: str) -> str:
        if not _NATS_SUBJECT.fullmatch(value):
            raise invalid(f"must be a NATS subject such as orders.created (got {value!r})")
        first = value.split(".", 1)[0]
        if first in ("*", ">", RESERVED_SUBJECT_ROOT) or first.startswith(("$", "_INBOX")):
            # The trigger listens on the platform's connection, which carries every namespace's
            # stored events (kfn.async.NAMESPACE.NAME, kfn.dlq..., kfn.ids...), NATS's API and
            # system subjects and request replies: none of it is a function's to read.
            raise invalid(f"must start with a subject token of the application's own, not a wildcard, "
                         f"{RESERVED_SUBJECT_ROOT!r} (kfn's), '$...' (NATS's) or '_INBOX' (got {value!r})")
        return value


class Trigger(StrictModel):
    """An event source other than HTTP: exactly one kind per entry."""

    schedule: str | None = Field(
        default=None,
        description="rate(5 minutes), cron(0 12 * * ? *) (EventBridge) or a five-field cron line, in UTC; "
                    "each tick invokes the function asynchronously with EventBridge's Scheduled Event.")
    nats: NatsTrigger | None = Field(default=None, description="A NATS subject whose messages invoke the function.")

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                schedules.parse(value)
            except schedules.InvalidSchedule as e:
                raise invalid(str(e)) from None
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> Trigger:
        kinds = [name for name in TRIGGER_KINDS if getattr(self, name) is not None]
        if len(kinds) != 1:
            raise invalid(f"must set exactly one of {', '.join(TRIGGER_KINDS)}")
        return self

    @property
    def kind(self) -> str:
        return next(name for name in TRIGGER_KINDS if getattr(self, name) is not None)
