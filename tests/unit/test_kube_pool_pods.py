"""What a warm pool's pod says about itself, and that only a function's own pods are its instances
(kfn.kube.pods)."""
from __future__ import annotations

from kubernetes.aio import client

from kfn.core import naming
from kfn.core.functions import FunctionRef
from kfn.kube.pods import view

HELLO = FunctionRef("default", "hello")


def pool_pod(state: str, *, function: str | None = None, component: str = naming.COMPONENT_POOL,
             annotations: dict[str, str] | None = None, restarts: int = 0, deleting: bool = False) -> client.V1Pod:
    labels = {naming.LABEL_COMPONENT: component, naming.LABEL_POOL: "python3.12", naming.LABEL_POOL_STATE: state}
    if function is not None:
        labels[naming.LABEL_FUNCTION] = function
    meta = client.V1ObjectMeta(name="kfn-pool-python3-12-abc", namespace="default", labels=labels,
                               annotations=annotations, uid="uid-1", resource_version="1234",
                               deletion_timestamp="2026-01-01T00:00:00Z" if deleting else None)
    container = client.V1ContainerStatus(name="function", ready=True, restart_count=restarts, image="x",
                                         image_id="")
    status = client.V1PodStatus(phase="Running", pod_ip="10.0.0.9", container_statuses=[container],
                                conditions=[client.V1PodCondition(type="Ready", status="True")])
    return client.V1Pod(metadata=meta, status=status)


def test_an_idle_pool_pod_is_no_functions_instance() -> None:
    pod = view(pool_pod(naming.POOL_IDLE))
    assert pod.function is None
    assert pod.pooled is not None and pod.pooled.state == naming.POOL_IDLE and pod.pooled.function is None


def test_a_claimed_pool_pod_names_its_function_only_as_pooled() -> None:
    pod = view(pool_pod(naming.POOL_CLAIMED, function="hello"))
    assert pod.function is None
    assert pod.pooled is not None and pod.pooled.function == HELLO


def test_a_specialised_pool_pod_is_an_instance_of_its_function() -> None:
    pod = view(pool_pod(naming.POOL_SPECIALIZED, function="hello", component=naming.COMPONENT_FUNCTION))
    assert pod.function == HELLO
    assert pod.pooled is not None and pod.pooled.state == naming.POOL_SPECIALIZED


def test_a_pool_pod_keeps_its_runtime_uid_and_resource_version() -> None:
    pod = view(pool_pod(naming.POOL_IDLE))
    assert pod.pooled is not None and pod.pooled.runtime == "python3.12"
    assert (pod.uid, pod.resource_version) == ("uid-1", "1234")


def test_a_claim_annotation_gives_when_it_was_claimed() -> None:
    pod = view(pool_pod(naming.POOL_CLAIMED, function="hello",
                        annotations={naming.ANNOTATION_CLAIMED_AT: "1700000000.250"}))
    assert pod.pooled is not None and pod.pooled.claimed_at == 1700000000.25


def test_a_claim_annotation_that_is_no_number_gives_no_time() -> None:
    pod = view(pool_pod(naming.POOL_CLAIMED, function="hello", annotations={naming.ANNOTATION_CLAIMED_AT: "soon"}))
    assert pod.pooled is not None and pod.pooled.claimed_at is None


def test_the_specialised_hash_annotation_is_read() -> None:
    pod = view(pool_pod(naming.POOL_SPECIALIZED, function="hello", component=naming.COMPONENT_FUNCTION,
                        annotations={naming.ANNOTATION_SPECIALIZED_HASH: "abc123"}))
    assert pod.pooled is not None and pod.pooled.specialized_hash == "abc123"


def test_restarts_of_the_instance_container_are_counted() -> None:
    pod = view(pool_pod(naming.POOL_SPECIALIZED, function="hello", component=naming.COMPONENT_FUNCTION, restarts=2))
    assert pod.pooled is not None and pod.pooled.restarts == 2


def test_a_pool_pod_being_deleted_is_terminating() -> None:
    pod = view(pool_pod(naming.POOL_CLAIMED, function="hello", deleting=True))
    assert pod.pooled is not None and pod.pooled.terminating


def test_a_pod_without_a_pool_state_is_not_pooled() -> None:
    pod = client.V1Pod(metadata=client.V1ObjectMeta(
        name="hello-1", namespace="default",
        labels={naming.LABEL_FUNCTION: "hello", naming.LABEL_COMPONENT: naming.COMPONENT_FUNCTION}))
    seen = view(pod)
    assert seen.pooled is None and seen.function == HELLO
