"""Operator replicas against the emulated API: the holder of the Lease `kfn-operator` runs kopf,
the others stand by; a leader that cannot renew stops acting; status writes survive a second writer."""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import pytest

from kfn.core.functions import Function, FunctionRef, parse_function
from kfn.kube.mirror import DeploymentState
from kfn_operator.config import OperatorConfig
from kfn_operator.handlers import Controller
from tests.support import kube
from tests.support.functions import function_manifest
from tests.support.kube import create_function, deployment, ready_condition
from tests.support.operator import running_operator
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(120)

NAMESPACE = "kfn-system"


def config(identity: str) -> OperatorConfig:
    return OperatorConfig(identity=identity, lease_duration=3, lease_namespace=NAMESPACE, autoscaler=False,
                          scheduler=False)


class Replica(Controller):
    """A Controller that records what its replica does: kopf's terms (start → close) and the
    Functions it reconciled in each."""

    def __init__(self, identity: str) -> None:
        super().__init__(config(identity))
        self.terms = 0
        self.running = False
        self.reconciled: list[tuple[int, str]] = []     # (term, Function name)
        self.status_syncs = 0

    async def start(self) -> None:
        self.terms += 1
        self.running = True
        await super().start()

    async def close(self) -> None:
        await super().close()
        self.running = False

    async def reconcile(self, body: Mapping[str, Any], patch: Any, log: Any) -> None:
        self.reconciled.append((self.terms, body["metadata"]["name"]))
        await super().reconcile(body, patch, log)

    async def sync_status(self, ref: FunctionRef) -> None:
        self.status_syncs += 1
        await super().sync_status(ref)


def operator_holder(cluster: kube.Cluster) -> str | None:
    lease = cluster.object(kube.LEASES, NAMESPACE, "kfn-operator")
    return None if lease is None else lease["spec"].get("holderIdentity")


def stands_by(caplog: pytest.LogCaptureFixture, identity: str) -> bool:
    return any(f"{identity} stands by" in r.getMessage() and "kfn-operator" in r.getMessage() for r in caplog.records)


async def test_of_two_replicas_only_the_lease_holder_reconciles(cluster, caplog) -> None:
    caplog.set_level(logging.INFO, logger="kfn.kube.lease")
    a, b = Replica("operator-a"), Replica("operator-b")
    names = [f"fn-{i}" for i in range(5)]
    async with running_operator(a.config, controller=a):
        async with running_operator(b.config, controller=b, wait_ready=False):
            for name in names:
                await create_function(cluster, function_manifest(name))
            await eventually(lambda: all(deployment(cluster, n) and ready_condition(cluster, n) for n in names),
                             timeout=30, what="every Function built and its status written")
            assert (b.terms, b.reconciled, b.status_syncs) == (0, [], 0)
            await eventually(lambda: stands_by(caplog, "operator-b"), what="operator-b to see the leader")
            assert operator_holder(cluster) == "operator-a"
            assert (b.terms, b.reconciled, b.status_syncs) == (0, [], 0)
            assert {name for _, name in a.reconciled} == set(names)


async def test_the_standby_takes_over_and_resumes_when_the_leader_stops(cluster, caplog) -> None:
    caplog.set_level(logging.INFO, logger="kfn.kube.lease")
    a, b = Replica("operator-a"), Replica("operator-b")
    async with contextlib.AsyncExitStack() as leader:
        await leader.enter_async_context(running_operator(a.config, controller=a))
        async with running_operator(b.config, controller=b, wait_ready=False):
            await create_function(cluster, function_manifest("before"))
            await eventually(lambda: deployment(cluster, "before"), what="the leader to build it")
            await eventually(lambda: stands_by(caplog, "operator-b"), what="operator-b to stand by")
            assert b.terms == 0
            await leader.aclose()   # operator-a stops cleanly and hands the Lease back
            await eventually(lambda: b.running, timeout=15, what="operator-b to take over")
            assert operator_holder(cluster) == "operator-b"
            await create_function(cluster, function_manifest("after"))
            await eventually(lambda: deployment(cluster, "after"), what="the new leader to build it")
            # kopf's resume handler brings what the old leader made to the spec again.
            await eventually(lambda: {n for _, n in b.reconciled} == {"before", "after"}, what="both reconciled")


async def test_a_leader_that_cannot_renew_the_lease_stops_acting_until_it_leads_again(cluster) -> None:
    a = Replica("operator-a")
    async with running_operator(a.config, controller=a):
        await create_function(cluster, function_manifest("early"))
        await eventually(lambda: deployment(cluster, "early"), what="the leader to build it")
        # The Lease cannot be read or renewed (the API server only half reachable, a partition):
        # within the renew deadline (2 s of 3) the leader stops kopf, before anyone else could lead.
        cluster.fail_requests(kube.LEASES, 100_000)
        await eventually(lambda: not a.running, timeout=15, what="the leader to stop kopf")
        await create_function(cluster, function_manifest("late"))
        cluster.fail_requests(kube.LEASES, 0)
        await eventually(lambda: deployment(cluster, "late"), timeout=20, what="a second term to build it")
        assert a.terms == 2
        assert {term for term, name in a.reconciled if name == "late"} == {2}


async def test_a_status_write_that_meets_a_newer_function_is_computed_and_written_again(cluster, api) -> None:
    """The mirror's Function is older than the cluster's (a careless second writer changed it): the
    conditional write meets a 409, the Function is read again, and Ready is written."""
    created = await create_function(cluster, function_manifest("hello"))
    path = "/apis/kfn.dev/v1alpha1/namespaces/default/functions/hello"
    async with cluster.patch(path, json={"metadata": {"annotations": {"someone/else": "wrote"}}},
                             headers={"Content-Type": "application/merge-patch+json"}) as r:
        assert r.status == 200

    class Mirror:   # what the operator's KubernetesBackend shows: the Function as it was created
        def function(self, ref: FunctionRef) -> Function | None:
            return parse_function(created)

        def deployment(self, ref: FunctionRef) -> DeploymentState | None:
            return DeploymentState(replicas=1, ready_replicas=1)

    class Counted(Controller):
        reads = 0

        async def _get_function(self, ref: FunctionRef) -> dict[str, Any] | None:
            Counted.reads += 1
            return await super()._get_function(ref)

    controller = Counted(OperatorConfig(standalone=True, autoscaler=False, scheduler=False), api=api)
    controller._backend = Mirror()  # type: ignore[assignment]
    await controller.sync_status(FunctionRef("default", "hello"))
    assert Counted.reads == 1
    ready = ready_condition(cluster)
    assert ready is not None and (ready["status"], ready["reason"]) == ("True", "Ready")
