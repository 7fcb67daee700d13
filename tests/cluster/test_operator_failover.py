"""Two operator replicas: the holder of the Lease kfn-operator acts, the other stands by and takes
over when the leader dies (SIGKILL, no hand-over) in the middle of a batch of Functions."""
from __future__ import annotations

import collections
import re
import threading
import time

import pytest

from tests.cluster import platform
from tests.cluster.platform import Release

BATCH = 10   # applied before the leader dies, and as many again while no one leads
CODE = """
def handler(event, context):
    return {{"n": {n}}}
"""
# A 409 answer, not a timestamp's milliseconds (",409").
CONFLICT = re.compile(r"(?<![,.])\b409\b|Conflict")


def lease_holder(release: Release, name: str = "kfn-operator") -> str | None:
    lease = platform.get("lease", name, namespace=release.namespace)
    return None if lease is None else lease["spec"].get("holderIdentity")


@pytest.mark.timeout(420)
def test_the_standby_operator_takes_over_from_a_killed_leader_mid_batch_without_conflicts(release: Release) -> None:
    assert platform.COLLECTOR is not None
    platform.record("helm upgrade --wait: operator.replicas 2", release.upgrade({"operator": {"replicas": 2}}), "s")
    namespace = platform.create_namespace("failover")
    try:
        operators = {p["metadata"]["name"]: p for p in platform.ready_pods(release.namespace,
                                                                          release.selector("operator"))}
        assert len(operators) == 2, sorted(operators)
        deadline = time.monotonic() + 30
        while (holder := lease_holder(release)) not in operators and time.monotonic() < deadline:
            time.sleep(0.25)
        # No holder (every replica acts): one is killed all the same, and the checks below say what that did.
        leader_elected = holder is not None and holder in operators
        leader = holder if holder is not None and leader_elected else sorted(operators)[0]
        (standby,) = set(operators) - {leader}

        names = [f"fo-{n}" for n in range(2 * BATCH)]
        batch = [platform.function(name, CODE.format(n=n)) for n, name in enumerate(names)]
        applying = threading.Thread(target=platform.apply, args=(batch[:BATCH],), kwargs={"namespace": namespace})
        applying.start()
        platform.wait_until("the leader building the batch",
                            lambda: platform.items("deployments", namespace=namespace), timeout=60, interval=0.05)
        # Dies as a crash would end it (SIGKILL: no hand-over of the Lease), and its pod goes, so
        # that only the standby may lead next (a container restarted in the same pod would be the
        # same identity).
        killed = platform.kill_container(operators[leader], "operator")
        died = time.monotonic()
        platform.kubectl("delete", "pod", leader, "--grace-period=0", "--force", "--wait=false",
                         namespace=release.namespace, check=False)
        applying.join(60)
        platform.apply(batch[BATCH:], namespace=namespace)
        if leader_elected:
            # The standby, or the replica the ReplicaSet starts in the killed one's place: whichever asks
            # first once the Lease has run out (both are replicas that never led; either is right).
            standby = platform.wait_until(
                "a replica other than the killed one to take the Lease",
                lambda: (holder := lease_holder(release)) not in (None, leader) and holder, timeout=60)
            platform.record("operator leader SIGKILLed: another replica leads after", time.monotonic() - died, "s")
        for name in names:
            platform.wait_ready(name, namespace, timeout=90)
        converged = time.monotonic() - died

        per_function: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        for kind in ("deployments", "services", "configmaps"):
            for obj in platform.items(kind, namespace=namespace, selector=platform.LABEL_FUNCTION):
                per_function[obj["metadata"]["labels"][platform.LABEL_FUNCTION]][kind] += 1
        expected = {"deployments": 1, "configmaps": 1}   # and no Service: the gateway reaches pods at their IPs
        assert {name: dict(per_function[name]) for name in names} == {name: expected for name in names}
        survivor = platform.get("pod", standby, namespace=release.namespace)
        assert survivor is not None
        assert [s["restartCount"] for s in survivor["status"]["containerStatuses"]] == [0]

        conflicts = {}
        for pod in (leader, standby):
            files = list(platform.COLLECTOR.files(f"{release.namespace}_{pod}_"))
            assert files, f"no log of {pod} collected"
            lines = [line for path in files for line in path.read_text(errors="replace").splitlines()
                     if CONFLICT.search(line)]
            if lines:
                conflicts[pod] = lines[:5]
        assert conflicts == {}
        platform.record(f"operator leader SIGKILLed ({killed} processes) mid-batch of {2 * BATCH}: all Ready after",
                        converged, "s")
        assert leader_elected, "no replica held the Lease kfn-operator"
    finally:
        platform.record("helm upgrade --wait: operator.replicas 1", release.back_to_one_operator(), "s")
        platform.delete_namespace(namespace)
