"""The dead letters of the JetStream event store: stream `KFN_DLQ`, subject `kfn.dlq.NAMESPACE.NAME`,
one `DeadLetter.encode` each, kept for `dead_letter_max_age`.

Burying a claimed event publishes its dead letter, then acknowledges the event: a crash between
the two leaves both (the event is delivered again, never lost). A replay publishes the event
again, records its id, then deletes the dead letter.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import nats.js.errors

from kfn._cogs.nats import NATS_ERRORS
from kfn.core.functions import FunctionRef
from kfn.events.jetstream_connection import Connection
from kfn.events.jetstream_ids import CallIds
from kfn.events.jetstream_layout import DLQ_STREAM, dlq_subject, msg_id, subject
from kfn.events.jetstream_leases import Leases, stream_sequence
from kfn.events.store import DeadLetter, Delivery, StoreUnavailable


class DeadLetters:
    """The dead letters kept through `connection`; a burial ends the lease in `leases`, a replay
    records the id again in `ids`."""

    def __init__(self, connection: Connection, leases: Leases, ids: CallIds, *, clock: Callable[[], float]) -> None:
        self._connection = connection
        self._leases = leases
        self._ids = ids
        self._clock = clock

    async def bury(self, delivery: Delivery, letter: DeadLetter) -> None:
        """Publish `letter`, then acknowledge `delivery` (see the module docstring). Raises
        StoreUnavailable."""
        await self._connection.publish(dlq_subject(letter.function), letter.encode(),
                                       msg_id(letter.function, letter.id, "dead", stream_sequence(delivery)))
        await self._leases.complete(delivery)

    async def read(self, function: FunctionRef, *, limit: int) -> list[DeadLetter]:
        """Up to `limit` dead letters of `function`, oldest first (see `_letters`)."""
        return [letter for _, letter in await self._letters(function, limit)]

    async def _letters(self, function: FunctionRef, limit: int) -> list[tuple[int, DeadLetter]]:
        """Up to `limit` dead letters of `function` with their stream sequences, oldest first: one
        request each (up to the publish timeout). Raises StoreUnavailable."""
        js = self._connection.jetstream()
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
        except NATS_ERRORS as e:
            raise StoreUnavailable(f"could not read the dead letters of {function}: {e!r}") from e
        return out

    async def replay(self, function: FunctionRef, ids: Sequence[str] | None) -> list[str]:
        """Publish the dead letters of `function` (all, or those with these ids) as events again,
        one after the other, and delete each; returns the ids replayed. Raises StoreUnavailable
        at the first that fails (those before it are replayed)."""
        wanted = None if ids is None else set(ids)
        replayed: list[str] = []
        for seq, letter in await self._letters(function, 1_000_000):
            if wanted is not None and letter.id not in wanted:
                continue
            event = letter.replayed(self._clock())
            # Under the key it was accepted with: a caller's id stays apart from kfn's own.
            await self._connection.publish(subject(function), event.encode(),
                                           msg_id(function, event.dedup_key, "replay", seq))
            # A caller retrying the original invocation now finds it stored again.
            await self._ids.remember(function, event.dedup_key)
            try:
                await self._connection.jetstream().delete_msg(DLQ_STREAM, seq)
            except NATS_ERRORS as e:
                raise StoreUnavailable(f"replayed {letter.id} but could not remove its dead letter: {e!r}") from e
            replayed.append(letter.id)
        return replayed
