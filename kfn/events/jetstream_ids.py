"""The de-duplication ledger of the JetStream event store: stream `KFN_ASYNC_IDS`, one empty
message per id a function accepted (subject `kfn.ids.NAMESPACE.NAME.HASH`), which the stream
expires once the de-duplication window is over.

An accept looks the id up (there: a duplicate, nothing stored), publishes the event with
`Nats-Msg-Id` NAMESPACE/NAME/ID, then records the id. The events stream's own duplicate window
(2 minutes) covers two accepts of one id at the same moment and an accept retried after the
event was stored but before its id was: the id is recorded after the event, so a 202 is never
given for an event that is not stored.
"""
from __future__ import annotations

import nats.js.errors

from kfn._cogs.nats import NATS_ERRORS
from kfn.core.functions import FunctionRef
from kfn.events.jetstream_connection import Connection
from kfn.events.jetstream_layout import IDS_STREAM, id_subject
from kfn.events.store import StoreUnavailable


class CallIds:
    """The ids each function accepted within the window, kept through `connection`."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    async def known(self, function: FunctionRef, key: str) -> bool:
        """Whether `function` accepted the id of de-duplication key `key` within the window: one
        direct get, up to the publish timeout. Raises StoreUnavailable."""
        try:
            await self._connection.jetstream().get_last_msg(IDS_STREAM, id_subject(function, key), direct=True)
        except nats.js.errors.NotFoundError:
            return False
        except NATS_ERRORS as e:
            raise StoreUnavailable(f"could not look up {key}: {e!r}") from e
        return True

    async def remember(self, function: FunctionRef, key: str) -> None:
        """Record that `function` took the id of de-duplication key `key` (for the window, from
        now): one publish (see `Connection.publish`). Raises StoreUnavailable."""
        try:
            # No message id: a record stored twice is one per subject all the same.
            await self._connection.publish(id_subject(function, key), b"", None)
        except StoreUnavailable as e:
            # The event is stored; retried within 2 minutes it is a duplicate all the same.
            raise StoreUnavailable(f"stored {key} but could not record its id: {e}") from e
