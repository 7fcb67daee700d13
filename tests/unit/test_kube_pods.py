"""What a pod's status says about a function that cannot start (kfn.kube.pods)."""
from __future__ import annotations

from kubernetes.aio import client

from kfn.kube.pods import _problem


def pending(message: str) -> client.V1Pod:
    condition = client.V1PodCondition(type="PodScheduled", status="False", reason="Unschedulable", message=message)
    return client.V1Pod(metadata=client.V1ObjectMeta(name="hello-abc"),
                        status=client.V1PodStatus(phase="Pending", conditions=[condition]))


def test_a_pod_no_node_can_take_is_a_problem_saying_why() -> None:
    problem = _problem(pending("0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are available."))
    assert problem is not None and "cannot be scheduled" in problem and "Insufficient cpu" in problem


def test_a_pod_waiting_only_for_tainted_nodes_is_no_problem_yet() -> None:
    # A node tainted by its own condition (an API server outage makes it unreachable for a while)
    # is untainted by the cluster: the pod is scheduled then, and callers keep waiting meanwhile.
    assert _problem(pending("0/1 nodes are available: 1 node(s) had untolerated taint(s). no new claims to "
                            "deallocate, preemption: 0/1 nodes are available: 1 Preemption is not helpful.")) is None


def test_taints_beside_a_missing_resource_are_a_problem() -> None:
    assert _problem(pending("0/3 nodes are available: 1 Insufficient memory, 2 node(s) had untolerated taint(s). "
                            "preemption: 0/3 nodes are available.")) is not None
