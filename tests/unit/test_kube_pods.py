"""What a pod's status says about a function that cannot start (kfn.kube.pods)."""
from __future__ import annotations

import json

import pytest
from kubernetes.aio import client

from kfn.core.instances import InitError, StartReason
from kfn.kube.pods import _problem
from kfn_runtime import contract
from kfn_runtime.__main__ import termination_message
from kfn_runtime.execution import InitFailed


def pending(message: str) -> client.V1Pod:
    condition = client.V1PodCondition(type="PodScheduled", status="False", reason="Unschedulable", message=message)
    return client.V1Pod(metadata=client.V1ObjectMeta(name="hello-abc"),
                        status=client.V1PodStatus(phase="Pending", conditions=[condition]))


def test_a_pod_no_node_can_take_is_a_problem_saying_why() -> None:
    problem = _problem(pending("0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are available."))
    assert problem is not None and "cannot be scheduled" in str(problem) and "Insufficient cpu" in str(problem)


def test_a_pod_waiting_only_for_tainted_nodes_is_no_problem_yet() -> None:
    # A node tainted by its own condition (an API server outage makes it unreachable for a while)
    # is untainted by the cluster: the pod is scheduled then, and callers keep waiting meanwhile.
    assert _problem(pending("0/1 nodes are available: 1 node(s) had untolerated taint(s). no new claims to "
                            "deallocate, preemption: 0/1 nodes are available: 1 Preemption is not helpful.")) is None


def test_taints_beside_a_missing_resource_are_a_problem() -> None:
    assert _problem(pending("0/3 nodes are available: 1 Insufficient memory, 2 node(s) had untolerated taint(s). "
                            "preemption: 0/3 nodes are available.")) is not None


def crashing(message: str | None, *, reason: str = "CrashLoopBackOff", init: bool = False,
             code: int = 1) -> client.V1Pod:
    """A pod whose function container (or its init container) keeps failing."""
    last = client.V1ContainerState(terminated=client.V1ContainerStateTerminated(exit_code=code, message=message))
    waiting = client.V1ContainerState(waiting=client.V1ContainerStateWaiting(reason=reason, message="back-off"))
    container = client.V1ContainerStatus(name="requirements" if init else "function", ready=False, restart_count=3,
                                         image="x", image_id="", state=waiting, last_state=last)
    status = client.V1PodStatus(phase="Pending" if init else "Running",
                                **{"init_container_statuses" if init else "container_statuses": [container]})
    return client.V1Pod(metadata=client.V1ObjectMeta(name="hello-abc"), status=status)


SECRET = "hunter2-the-database-password"


def runtime_report(error_type: str, message: str, **more: object) -> str:
    return json.dumps({contract.TERMINATION_MARK: True, "errorType": error_type, "errorMessage": message, **more})


def test_an_init_error_the_runtime_reported_is_the_functions_error_for_callers() -> None:
    problem = _problem(crashing(runtime_report("Runtime.ImportModuleError", "Unable to import module 'main'")))
    assert problem is not None and problem.reason == StartReason.INIT
    assert problem.init_error == InitError("Runtime.ImportModuleError", "Unable to import module 'main'")


def test_the_termination_message_the_runtime_writes_is_what_the_gateway_reads() -> None:
    failed = InitFailed("boom", json.dumps({"errorType": "RuntimeError", "errorMessage": "boom",
                                            "stackTrace": ["x" * 5000]}).encode())
    problem = _problem(crashing(termination_message(failed).decode()))
    assert problem is not None and problem.init_error == InitError("RuntimeError", "boom")


def test_a_platform_failure_the_runtime_reported_is_the_platforms() -> None:
    failed = InitFailed("cannot run /usr/bin/python3: no such file", platform=True)
    problem = _problem(crashing(termination_message(failed).decode()))
    assert problem is not None and problem.reason == StartReason.PLATFORM and problem.init_error is None


def test_a_crash_whose_message_is_the_outputs_end_keeps_it_for_the_owner_only() -> None:
    problem = _problem(crashing(f"DB_PASSWORD={SECRET}\nTraceback (most recent call last): ..."))
    assert problem is not None and problem.reason == StartReason.PLATFORM and problem.init_error is None
    assert SECRET in problem.detail and SECRET not in problem.reason


def test_a_failing_requirements_install_is_the_requirements_class() -> None:
    problem = _problem(crashing(f"ERROR: index {SECRET} refused", init=True))
    assert problem is not None and problem.reason == StartReason.REQUIREMENTS and SECRET in problem.detail


def test_requirements_the_instance_could_not_fetch_are_the_requirements_class() -> None:
    from kfn_runtime.__main__ import requirements_termination_message

    message = requirements_termination_message(f"the archive store refused: 404 {SECRET}").decode()
    problem = _problem(crashing(message))
    assert problem is not None and problem.reason == StartReason.REQUIREMENTS and problem.init_error is None
    assert SECRET in problem.detail and SECRET not in problem.reason


@pytest.mark.parametrize("reason", ["ErrImagePull", "ImagePullBackOff", "InvalidImageName"])
def test_an_image_that_cannot_be_pulled_is_the_image_class(reason: str) -> None:
    problem = _problem(crashing(None, reason=reason))
    assert problem is not None and problem.reason == StartReason.IMAGE


def test_a_pod_no_node_can_take_is_the_capacity_class() -> None:
    problem = _problem(pending("0/1 nodes are available: 1 Insufficient cpu."))
    assert problem is not None and problem.reason == StartReason.CAPACITY


def test_the_runtime_writes_its_init_error_into_the_kubelets_file_only(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from kfn_runtime.__main__ import write_termination_message

    failed = InitFailed("boom", json.dumps({"errorType": "RuntimeError", "errorMessage": "boom"}).encode())
    log = tmp_path / "termination-log"
    log.write_bytes(b"")   # the kubelet's: mounted empty
    write_termination_message(failed, str(log))
    assert json.loads(log.read_bytes()) == {contract.TERMINATION_MARK: True, "errorType": "RuntimeError",
                                            "errorMessage": "boom"}
    write_termination_message(failed, str(tmp_path / "absent"))   # outside a pod: nothing, no error
    assert not (tmp_path / "absent").exists()
