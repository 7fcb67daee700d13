"""LeaseElection against the emulated API: one leader, a hand-over on a clean stop."""
from __future__ import annotations

import asyncio
import contextlib

from kubernetes.aio import client

from kfn.kube.lease import LeaseElection
from tests.support import kube
from tests.support.waiting import eventually

NAMESPACE = "kfn-system"


def election(api: client.ApiClient, identity: str, name: str = "duty") -> LeaseElection:
    return LeaseElection(api, name=name, namespace=NAMESPACE, identity=identity, duration=3)


class Duty:
    """What a leader runs: counts starts and stops."""

    def __init__(self) -> None:
        self.running = 0
        self.started = 0
        self.stopped = 0

    async def __call__(self) -> None:
        self.running += 1
        self.started += 1
        try:
            await asyncio.Event().wait()
        finally:
            self.running -= 1
            self.stopped += 1


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=15)


async def test_one_of_two_candidates_leads(cluster, api) -> None:
    a, b = election(api, "a"), election(api, "b")
    duty_a, duty_b = Duty(), Duty()
    task_a = asyncio.create_task(a.run(duty_a))
    try:
        await eventually(lambda: a.leading.is_set(), what="a to lead")
        task_b = asyncio.create_task(b.run(duty_b))
        try:
            await eventually(lambda: len([r for r in cluster.served if r.resource is not None
                                             and r.resource.plural == "leases" and r.method == "GET"]) > 6,
                             what="both candidates to poll the Lease")
            assert (duty_a.running, duty_b.running) == (1, 0)
            assert cluster.object(kube.LEASES, NAMESPACE, "duty")["spec"]["holderIdentity"] == "a"
        finally:
            await stop(task_b)
    finally:
        await stop(task_a)


async def test_a_leader_that_stops_hands_the_lease_over(cluster, api) -> None:
    a, b = election(api, "a"), election(api, "b")
    duty_a, duty_b = Duty(), Duty()
    task_a = asyncio.create_task(a.run(duty_a))
    task_b: asyncio.Task[None] | None = None
    try:
        await eventually(lambda: a.leading.is_set(), what="a to lead")
        task_b = asyncio.create_task(b.run(duty_b))
        await stop(task_a)
        assert (duty_a.running, duty_a.stopped) == (0, 1)
        assert cluster.object(kube.LEASES, NAMESPACE, "duty")["spec"].get("holderIdentity") in (None, "b")
        # Handed back, not expired: b takes it at its next retry (1 s), well before a 3 s Lease could expire.
        await eventually(lambda: b.leading.is_set(), timeout=10, what="b to take over")
        assert duty_b.running == 1
    finally:
        await stop(task_a)
        if task_b is not None:
            await stop(task_b)


async def test_release_leaves_another_holders_lease_alone(cluster, api) -> None:
    a = election(api, "a")
    task_a = asyncio.create_task(a.run(Duty()))
    try:
        await eventually(lambda: a.leading.is_set(), what="a to lead")
        assert not await election(api, "b").release()
        assert cluster.object(kube.LEASES, NAMESPACE, "duty")["spec"]["holderIdentity"] == "a"
    finally:
        await stop(task_a)


async def test_two_duties_have_two_leases(cluster, api) -> None:
    first = election(api, "a", name="first")
    second = election(api, "b", name="second")
    tasks = [asyncio.create_task(first.run(Duty())), asyncio.create_task(second.run(Duty()))]
    try:
        await eventually(lambda: first.leading.is_set() and second.leading.is_set(), what="both to lead")
    finally:
        for task in tasks:
            await stop(task)
