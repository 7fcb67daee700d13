"""The plan for a function's local instances: synthetic instances in, actions out, no processes."""
from __future__ import annotations

from kfn.processes.plan import Backoff, Observed, Plan, State, Wanted, after_failure, plan, retry_delay

V1, V2 = "v1", "v2"
NOW = 100.0


def instance(id: str, state: State = State.READY, version: str = V1, started: float = 0.0) -> Observed:
    return Observed(id=id, version=version, state=state, started=started)


def wanted(replicas: int, version: str = V1, *, can_start: bool = True) -> Wanted:
    return Wanted(replicas=replicas, version=version, can_start=can_start)


def test_missing_instances_are_started() -> None:
    assert plan([instance("a")], wanted(3), Backoff(), now=NOW) == Plan(start=2)


def test_instances_still_starting_count_as_on_their_way() -> None:
    assert plan([instance("a"), instance("b", State.STARTING)], wanted(2), Backoff(), now=NOW) == Plan()


def test_nothing_starts_while_starting_is_not_allowed() -> None:
    assert plan([], wanted(2, can_start=False), Backoff(), now=NOW) == Plan()


def test_a_start_waits_for_the_backoff_and_says_when_to_look_again() -> None:
    backoff = Backoff(failures=2, retry_at=NOW + 1.5)
    assert plan([], wanted(1), backoff, now=NOW) == Plan(wake_at=NOW + 1.5)
    assert plan([], wanted(1), backoff, now=NOW + 1.5) == Plan(start=1)


def test_scaling_down_stops_instances_that_serve_nobody_yet_first() -> None:
    instances = [instance("old-ready", started=1), instance("new-ready", started=5),
                 instance("starting", State.STARTING, started=9)]
    assert plan(instances, wanted(1), Backoff(), now=NOW).stop == ("starting", "new-ready")


def test_scaling_to_zero_stops_every_instance() -> None:
    instances = [instance("a"), instance("b", State.STARTING)]
    assert set(plan(instances, wanted(0), Backoff(), now=NOW).stop) == {"a", "b"}


def test_draining_and_stopping_instances_are_neither_counted_nor_stopped_again() -> None:
    instances = [instance("going", State.DRAINING), instance("gone", State.STOPPING), instance("a")]
    assert plan(instances, wanted(2), Backoff(), now=NOW) == Plan(start=1)


def test_a_new_version_starts_beside_the_old_one_which_keeps_serving() -> None:
    assert plan([instance("old")], wanted(1, V2), Backoff(), now=NOW) == Plan(start=1)


def test_old_instances_serve_until_enough_new_ones_are_ready() -> None:
    instances = [instance("old-1", started=1), instance("old-2", started=2),
                 instance("new-1", version=V2, started=10), instance("new-2", State.STARTING, version=V2, started=11)]
    # One new instance ready: one old one may go, and the newest old one stays.
    assert plan(instances, wanted(2, V2), Backoff(), now=NOW) == Plan(stop=("old-1",))


def test_old_instances_all_go_once_the_new_version_is_ready() -> None:
    instances = [instance("old", started=1), instance("new", version=V2, started=10)]
    assert plan(instances, wanted(1, V2), Backoff(), now=NOW) == Plan(stop=("old",))


def test_an_old_instance_that_never_got_ready_is_stopped_at_once() -> None:
    instances = [instance("old-starting", State.STARTING), instance("new", version=V2)]
    assert plan(instances, wanted(1, V2), Backoff(), now=NOW) == Plan(stop=("old-starting",))


def test_a_new_version_that_fails_to_start_leaves_the_old_one_serving() -> None:
    backoff = Backoff(failures=5, retry_at=NOW + 10)
    assert plan([instance("old")], wanted(1, V2), backoff, now=NOW) == Plan(wake_at=NOW + 10)


def test_failed_starts_back_off_doubling_up_to_a_ceiling_and_never_give_up() -> None:
    backoff = Backoff()
    delays = []
    for _ in range(8):
        backoff = after_failure(backoff, now=NOW, initial=0.5, maximum=10.0)
        delays.append(retry_delay(backoff, now=NOW))
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    assert plan([], wanted(1), backoff, now=NOW + 10) == Plan(start=1)
