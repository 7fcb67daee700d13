"""The queues of deleted functions: which to remove, and when (pure; `kfn.events.orphans` acts).

Lambda deletes a function's queue of asynchronous invocations with the function. kfn does the
same, after a grace: the stored events of a function that has been gone for `grace` seconds
(60 s by default: `DEFAULT_GRACE`) are removed, unrun, and counted (reason `function_deleted`).
The grace lets a delete-and-recreate (`kubectl replace --force`, a manifest renamed under
`kfn local`) keep its events: a function known again before the grace ends keeps its queue, and
its clock starts afresh if it goes again.

- A function is gone when the process deciding does not know it (its backend lists no such
  Function) although its namespace is one the process serves (`namespaces`; empty: all). A queue
  in a namespace it does not serve is never its to remove.
- A process that finds a queue of a function it never knew (it started after the deletion, or
  the queue is a destination's that never existed) counts the grace from that moment.
- A queue with events in flight is not removed while any is: a delivery under way is not
  interrupted (its function is gone, so it ends soon, handing the event back), and the queue is
  removed once none is in flight.

Several processes may decide over one store (gateway replicas): the removal is idempotent, and
each counts only the events its own removal took.
"""
from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Final

from kfn.core.functions import FunctionRef

DEFAULT_GRACE: Final = 60.0
# The `reason` label of the events removed because their function is gone.
REASON_FUNCTION_DELETED: Final = "function_deleted"


@dataclass(frozen=True)
class Decision:
    """What to do now: the functions whose queues to remove, and since when each function with a
    queue has been seen gone (the next decision's `missing_since`)."""

    remove: frozenset[FunctionRef]
    missing_since: Mapping[FunctionRef, float]


def decide(*, known: Collection[FunctionRef], in_flight: Mapping[FunctionRef, int],
           missing_since: Mapping[FunctionRef, float], now: float, grace: float,
           namespaces: Collection[str] = ()) -> Decision:
    """Which queues to remove (see the module docstring).

    `known`: the functions the process knows now; `in_flight`: every function with stored events,
    and how many of those are in flight; `missing_since`: the last decision's (empty at first);
    `now` and the returned moments on one clock (seconds). Only functions that still have a queue
    are remembered, so the memory is as large as the store's queues of functions gone."""
    known = known if isinstance(known, (set, frozenset)) else frozenset(known)
    remove: set[FunctionRef] = set()
    since: dict[FunctionRef, float] = {}
    for function, flying in in_flight.items():
        if function in known or (namespaces and function.namespace not in namespaces):
            continue
        gone_at = since[function] = missing_since.get(function, now)
        if now - gone_at >= grace and flying <= 0:
            remove.add(function)
    return Decision(frozenset(remove), since)
