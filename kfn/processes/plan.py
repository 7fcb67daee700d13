"""What to do with one function's local instances: a pure function of what runs and what is wanted.

`plan` compares the instances a function has (as their supervisors report them) with the
replica count and version wanted, and says which instances to start and which to stop. It is the
rule Kubernetes applies to a Deployment with no unavailability: old instances keep serving until
enough new ones are ready, so traffic never sees a gap, even if the new version fails to start.
Scaling down stops instances that serve nobody yet first, then the newest ready ones.

Failed starts back off (`after_failure`), doubling up to a ceiling, and are retried for as long
as instances are wanted: a start failure that heals (a file restored, a port freed) heals the
function without anyone touching it.

No processes, clocks or I/O here; `kfn.processes.fleet` observes and acts.
"""
from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass


class State(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"   # out of rotation, finishing in-flight requests
    STOPPING = "stopping"   # asked to stop before it was ready


@dataclass(frozen=True)
class Observed:
    """One instance as its supervisor reports it."""

    id: str
    version: str      # the spec hash of the definition it runs
    state: State
    started: float    # when it was launched (monotonic seconds)


@dataclass(frozen=True)
class Wanted:
    replicas: int     # 0 when the function is removed or the backend is closing
    version: str      # the spec hash of the current definition
    can_start: bool   # False while blocked (local mode cannot run it), quiescing or removed


@dataclass(frozen=True)
class Backoff:
    """Start failures of the current version in a row, and when the next start may happen."""

    failures: int = 0
    retry_at: float = 0.0


@dataclass(frozen=True)
class Plan:
    start: int = 0                        # new instances of the wanted version to launch
    stop: tuple[str, ...] = ()            # instances to take out of rotation and stop
    wake_at: float | None = None          # look again then, even if nothing changes


def plan(instances: Iterable[Observed], wanted: Wanted, backoff: Backoff, *, now: float) -> Plan:
    """One step towards the wanted instances."""
    every = list(instances)
    current = [i for i in every if i.version == wanted.version and i.state in (State.STARTING, State.READY)]
    current_ready = [i for i in current if i.state is State.READY]
    old = [i for i in every if i.version != wanted.version]
    stop: list[str] = []
    start = 0
    wake_at: float | None = None

    # Old instances that are not serving yet never will: stop them.
    stop.extend(i.id for i in old if i.state is State.STARTING)

    missing = wanted.replicas - len(current)
    if missing > 0 and wanted.can_start:
        if now < backoff.retry_at:
            wake_at = backoff.retry_at
        else:
            start = missing
    elif missing < 0:
        # Instances that serve nobody yet go first, then the newest ready ones.
        excess = sorted(current, key=lambda i: (i.state is State.READY, -i.started))
        stop.extend(i.id for i in excess[:-missing])

    # Old instances serve until enough current ones are ready; the newest old ones stay longest.
    keep_old = max(0, wanted.replicas - len(current_ready))
    old_ready = sorted((i for i in old if i.state is State.READY), key=lambda i: i.started, reverse=True)
    stop.extend(i.id for i in old_ready[keep_old:])
    return Plan(start=start, stop=tuple(stop), wake_at=wake_at)


def after_failure(backoff: Backoff, *, now: float, initial: float = 0.5, maximum: float = 10.0) -> Backoff:
    """The backoff after one more failed start: 0.5 s, 1 s, 2 s, … up to `maximum`."""
    failures = backoff.failures + 1
    delay = min(maximum, initial * 2 ** (failures - 1))
    return Backoff(failures=failures, retry_at=now + delay)


def retry_delay(backoff: Backoff, *, now: float) -> float:
    """Seconds until the next start may happen (0 if it may happen now)."""
    return max(0.0, backoff.retry_at - now)
